"""Chapter 8's C loops (transformer_book.cpu_kernels) against PyTorch's own kernels."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from transformer_book import cpu_kernels
from transformer_book.attention import scaled_dot_product_attention

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason=cpu_kernels.status())


@needs_kernels
@pytest.mark.parametrize("seed", range(12))
def test_gemv_equals_f_linear(seed):
    g = torch.Generator().manual_seed(seed)
    rows = [1, 2, 5, cpu_kernels.MAX_ROWS][seed % 4]
    n_in, n_out = (int(n) for n in torch.randint(1, 300, (2,), generator=g))  # odd sizes: vector tails
    x, w, b = torch.randn(rows, n_in, generator=g), torch.randn(n_out, n_in, generator=g), torch.randn(n_out, generator=g)
    for bias in (b, None):
        torch.testing.assert_close(cpu_kernels.gemv(x, w, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_gemv_on_gpt2_sized_matrices_and_any_thread_count():
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 768), torch.randn(3072, 768), torch.randn(3072)
    expected = F.linear(x.double(), w.double(), b.double()).float()
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            torch.testing.assert_close(cpu_kernels.gemv(x, w, b), expected, rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
@pytest.mark.parametrize("seed", range(12))
def test_decode_attention_equals_sdpa_on_cache_views(seed):
    g = torch.Generator().manual_seed(seed)
    b, d = 1 + seed % 3, [8, 24, 64][seed % 3]
    h_kv = [1, 2, 4][seed % 3]  # MQA, GQA, ...
    h = h_kv * [1, 2, 3][(seed // 3) % 3]  # ... and MHA when the group is 1
    n, t_max = 1 + (seed * 37) % 90, 100
    q = torch.randn(b, h, 1, d, generator=g)
    keys, values = torch.randn(b, h_kv, t_max, d, generator=g), torch.randn(b, h_kv, t_max, d, generator=g)
    k, v = keys[:, :, :n], values[:, :, :n]  # the filled part of a KVCache buffer: a strided view
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=h > h_kv)
    torch.testing.assert_close(cpu_kernels.decode_attention(q, k, v), expected, rtol=1e-5, atol=1e-5)
    ours, _ = scaled_dot_product_attention(q, k.repeat_interleave(h // h_kv, 1), v.repeat_interleave(h // h_kv, 1))
    torch.testing.assert_close(cpu_kernels.decode_attention(q, k, v), ours, rtol=1e-5, atol=1e-5)
    scale = 0.3
    torch.testing.assert_close(cpu_kernels.decode_attention(q, k, v, scale),
                               F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=h > h_kv),
                               rtol=1e-5, atol=1e-5)


@needs_kernels
def test_decode_attention_does_not_overflow_on_large_scores():
    q = torch.full((1, 2, 1, 4), 300.0)
    k, v = torch.full((1, 2, 5, 4), 300.0), torch.randn(1, 2, 5, 4)
    out = cpu_kernels.decode_attention(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


@needs_kernels
def test_bad_input_names_the_argument():
    x, w = torch.randn(1, 8), torch.randn(4, 8)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        cpu_kernels.gemv([1.0] * 8, w)
    with pytest.raises(TypeError, match="w must be a float32 CPU tensor, got tensor of shape \\(4, 8\\), dtype torch.float64"):
        cpu_kernels.gemv(x, w.double())
    with pytest.raises(ValueError, match=r"x must have shape \(M, in\) with in = w.shape\[1\] = \(\*, 8\), got shape \(1, 7\)"):
        cpu_kernels.gemv(torch.randn(1, 7), w)
    with pytest.raises(ValueError, match=r"x.shape\[0\] \(rows M\) must be"):
        cpu_kernels.gemv(torch.randn(cpu_kernels.MAX_ROWS + 1, 8), w)
    with pytest.raises(ValueError, match=r"bias must have shape \(out,\) = \(4\), got shape \(5,\)"):
        cpu_kernels.gemv(x, w, torch.randn(5))
    q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 6, 8)
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, 1, D\): one query"):
        cpu_kernels.decode_attention(torch.randn(1, 4, 2, 8), k, k)
    with pytest.raises(ValueError, match="k.shape\\[1\\] \\(H_kv\\)=3 must divide q.shape\\[1\\] \\(H\\)=4"):
        cpu_kernels.decode_attention(q, torch.randn(1, 3, 6, 8), torch.randn(1, 3, 6, 8))
    with pytest.raises(ValueError, match="rows of D=8 contiguous"):
        cpu_kernels.decode_attention(q, k.transpose(2, 3).contiguous().transpose(2, 3), k)
    with pytest.raises(ValueError, match="scale must be"):
        cpu_kernels.decode_attention(q, k, k, scale=0.0)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_compiled_once_into_the_cache_and_rebuilt_when_the_file_is_bad(tmp_path):
    code = """
        from transformer_book import cpu_kernels
        print(cpu_kernels.available(), cpu_kernels.library_path())
    """
    first = _python(code, TRANSFORMER_BOOK_CACHE=str(tmp_path))
    assert first.returncode == 0, first.stderr
    ok, path = first.stdout.split()
    if ok != "True":
        pytest.skip("no C compiler on this machine")
    assert path.startswith(str(tmp_path / "kernels")) and os.path.exists(path)
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [os.path.basename(path)]  # no temp file left
    with open(path, "wb") as f:
        f.write(b"not a shared library")  # a truncated or foreign file
    again = _python(code, TRANSFORMER_BOOK_CACHE=str(tmp_path))
    assert again.stdout.split() == ["True", path], again.stderr
    assert open(path, "rb").read(4) == b"\x7fELF"  # rebuilt


def test_without_a_compiler_the_model_falls_back_to_pytorch(tmp_path):
    code = """
        import torch
        from transformer_book import cpu_kernels
        from transformer_book.models import GPT, GPTConfig
        print(cpu_kernels.available())
        print(cpu_kernels.status())
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=512)).eval()
        seq = torch.randint(50, (1, 9))
        cache = model.new_cache(1, 9)
        model.decode_step(seq[:, :8], cache)
        step = model.decode_step(seq[:, 8:], cache)
        print(torch.allclose(step, model(seq).logits[:, -1], atol=1e-5))
        try:
            cpu_kernels.gemv(torch.randn(1, 4), torch.randn(2, 4))
        except RuntimeError as exc:
            print("RuntimeError", "not available" in str(exc))
    """
    done = _python(code, TRANSFORMER_BOOK_CACHE=str(tmp_path), CC=str(tmp_path / "no-such-compiler"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "False" and "C kernels not available" in lines[1] and "PyTorch's kernels are used" in lines[1]
    assert lines[2:] == ["True", "RuntimeError True"]
