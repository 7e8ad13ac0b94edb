"""Chapter 8's C matrix-vector product (transformer_book.cpu_kernels) against PyTorch's."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from transformer_book import cpu_kernels

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
    assert lines[0] == "False" and "C kernel not available" in lines[1] and "PyTorch's kernels are used" in lines[1]
    assert lines[2:] == ["True", "RuntimeError True"]


def test_decode_step_with_and_without_the_kernel_equals_forward():
    """GPT-2's width: the matrices are large enough for the kernel (one row) and oneDNN (several)."""
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=24, n_layer=2, n_head=12, n_embd=768)).eval()
    seq = torch.randint(300, (2, 20))
    before = cpu_kernels.available()
    with torch.inference_mode():
        full = model(seq).logits
    for on in (True, False):
        with cpu_kernels.enabled(on):
            cache = model.new_cache(2, 20)
            got = [model.decode_step(seq[:, :12], cache)]
            got += [model.decode_step(seq[:, t:t + 1], cache, check=False) for t in range(12, 20)]
            torch.testing.assert_close(torch.stack(got, 1), full[:, 11:], atol=1e-4, rtol=1e-4)
            cache.crop(15)  # a verification-style pass of several tokens after a rollback
            torch.testing.assert_close(model.decode_step(seq[:, 15:20], cache, last_only=False), full[:, 15:20],
                                       atol=1e-4, rtol=1e-4)
    with pytest.raises(TypeError, match="on must be a bool"):
        with cpu_kernels.enabled(1):
            pass
    assert cpu_kernels.available() == before  # switched back on


@needs_kernels
def test_a_model_first_prepared_with_the_kernel_off_uses_it_once_on():
    from transformer_book.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=8, n_embd=512)).eval()
    calls = []
    real = cpu_kernels.gemv

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    cache = model.new_cache(1, 8)
    with cpu_kernels.enabled(False):
        model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)  # packs the weights
    cpu_kernels.gemv = counting
    try:
        model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)
    finally:
        cpu_kernels.gemv = real
    assert len(calls) == 4  # q/k/v, out, fc_in, fc_out; the 50-token head is too small
