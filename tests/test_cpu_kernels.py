"""Chapter 8's C matrix-vector product (transformer_book.cpu_kernels) against PyTorch's."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
        # against float64, within the rounding bound of any float32 sum of n_in + 1 terms
        # (Higham's gamma_n: n u |x| |w|^T, u = 2^-24), which a product that skipped or
        # repeated a term (a vector tail, a row) would exceed
        b64 = None if bias is None else bias.double()
        exact = F.linear(x.double(), w.double(), b64)
        bound = (n_in + 1) * 2**-24 * F.linear(x.double().abs(), w.double().abs(),
                                               None if bias is None else b64.abs())
        assert ((cpu_kernels.gemv(x, w, bias).double() - exact).abs() <= bound).all()
        assert ((F.linear(x, w, bias).double() - exact).abs() <= bound).all()  # the bound holds for PyTorch too


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
    real_gemv, real_step = cpu_kernels.gemv, cpu_kernels.TokenStep.from_token

    def counting(*args, **kwargs):
        calls.append("gemv")
        return real_gemv(*args, **kwargs)

    def counting_step(*args, **kwargs):
        calls.append("step")
        return real_step(*args, **kwargs)

    cache = model.new_cache(1, 8)
    with cpu_kernels.enabled(False):
        model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)  # packs the weights
    cpu_kernels.gemv, cpu_kernels.TokenStep.from_token = counting, counting_step
    try:
        model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)
        assert calls == ["step"]  # the whole step in one call
        with cpu_kernels.whole_step(False):
            model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)
    finally:
        cpu_kernels.gemv, cpu_kernels.TokenStep.from_token = real_gemv, real_step
    assert calls[1:] == ["gemv"] * 4  # q/k/v, out, fc_in, fc_out; the 50-token head is too small


def _block_weights(model) -> list:
    """A small GPT's blocks as TokenStep takes them, straight from its modules (no size limit)."""
    blocks = []
    for h in model.h:
        a, m = h.attn, h.mlp
        qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        qkv_bias = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        blocks.append(cpu_kernels.BlockWeights(h.ln_1.weight, h.ln_1.bias, qkv, qkv_bias, a.out_proj.weight,
                                               a.out_proj.bias, h.ln_2.weight, h.ln_2.bias, m.fc_in.weight,
                                               m.fc_in.bias, m.fc_out.weight, m.fc_out.bias))
    return blocks


def _token_step_for(model, cache):
    return cpu_kernels.TokenStep(_block_weights(model), (model.ln_f.weight, model.ln_f.bias), model.wte.weight,
                                 cache.keys, cache.values, model.config.n_head, model.ln_f.eps,
                                 embeddings=(model.wte.weight, model.wpe.weight))


@needs_kernels
@pytest.mark.parametrize("seed", range(6))
def test_token_step_equals_the_pytorch_step_and_writes_the_same_cache(seed):
    """Odd widths (vector tails), grouped-query and multi-query heads, no biases, 1 to 4 threads
    (more than the cores of the book's machine: a thread waiting at a barrier must give its core
    away, or the one it waits for may not run)."""
    from transformer_book.models import GPT, GPTConfig

    g = torch.Generator().manual_seed(seed)
    n_head = [4, 6, 8][seed % 3]
    n_kv_head = [n_head, 2, 1][seed // 2 % 3]
    head_dim = int(torch.randint(3, 20, (), generator=g))
    config = GPTConfig(vocab_size=int(torch.randint(5, 200, (), generator=g)), block_size=24,
                       n_layer=1 + seed % 3, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_head * head_dim,
                       bias=seed % 2 == 0)
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the initialisation: biases and norms matter too
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    seq = torch.randint(config.vocab_size, (1, 20), generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 + seed % 4)
    try:
        with cpu_kernels.enabled(False), torch.inference_mode():
            ref_cache, cache = model.new_cache(1, 24), model.new_cache(1, 24)
            model.decode_step(seq[:, :8], ref_cache)
            model.decode_step(seq[:, :8], cache)
            step = _token_step_for(model, cache)
            for t in range(8, 20):
                expected = model.decode_step(seq[:, t:t + 1], ref_cache)
                if t % 2:  # the embedding looked up in C (int32 ids too), or given
                    got = step.from_token(seq[:, t:t + 1].to(torch.int32 if seed % 2 else torch.int64), t)
                else:
                    got = step(model.wte.weight[seq[0, t]] + model.wpe.weight[t], cache.length)
                cache.advance(1)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                assert torch.equal(got.argmax(-1), expected.argmax(-1))
            for a, b in zip(cache.keys + cache.values, ref_cache.keys + ref_cache.values):
                torch.testing.assert_close(a[:, :, :20], b[:, :, :20], rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
def test_from_token_is_the_call_with_the_embedding_made_in_python():
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_embd=40)).eval()
    caches = [model.new_cache(1, 16) for _ in range(2)]
    steps = [_token_step_for(model, cache) for cache in caches]
    with torch.inference_mode():
        for position, token in enumerate([3, 60, 0, 17, 17, 42]):
            x = model.wte.weight[token] + model.wpe.weight[position]
            given, looked_up = steps[0](x.clone(), position), steps[1].from_token(torch.tensor(token), position)
            assert torch.equal(given, looked_up)  # the same float additions, in C instead of PyTorch
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        assert torch.equal(a, b)


@needs_kernels
def test_token_step_gelu_holds_far_into_both_tails():
    """The C loop's GELU is built from exp (2^k times a polynomial), not libm's tanhf: feed-forward
    inputs from about -40 to 40 must still give PyTorch's numbers."""
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for h in model.h:
            h.mlp.fc_in.weight.mul_(60.0)  # pre-activations far beyond GELU's bend
    seq = torch.randint(50, (1, 12))
    with torch.inference_mode():
        h0 = model.h[0]
        pre = h0.mlp.fc_in(h0.ln_2(model.wte.weight[seq[0]] + model.wpe.weight[:12]))
        assert pre.min() < -20 and pre.max() > 20  # the test reaches the tails
        full = model(seq).logits
        cache = model.new_cache(1, 12)
        step = _token_step_for(model, cache)
        got = torch.cat([step.from_token(seq[:, t], t) for t in range(12)])
    torch.testing.assert_close(got, full[0], rtol=1e-4, atol=1e-4)


@needs_kernels
def test_decode_step_takes_the_whole_step_path_and_rebuilds_it_for_a_new_cache():
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=8, n_kv_head=4, n_embd=512)).eval()
    seq = torch.randint(300, (1, 30))
    with torch.inference_mode():
        full = model(seq).logits
    for _ in range(2):  # a second cache: the step made for the first must not write into it
        cache = model.new_cache(1, 30)
        model.decode_step(seq[:, :20], cache)
        got = torch.stack([model.decode_step(seq[:, t:t + 1], cache, check=False) for t in range(20, 30)], 1)
        torch.testing.assert_close(got, full[:, 20:30], rtol=1e-4, atol=1e-4)
        assert model.__dict__["_saved_token_step"][2].writes_to(cache.keys, cache.values)
    cache.crop(25)  # roll back, then one step with every position's logits
    last = model.decode_step(seq[:, 25:26], cache, last_only=False)
    assert last.shape == (1, 1, 300)
    torch.testing.assert_close(last[:, 0], full[:, 25], rtol=1e-4, atol=1e-4)


@needs_kernels
def test_token_step_bad_input_names_the_argument():
    from transformer_book.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=4, n_embd=32)).eval()
    cache = model.new_cache(1, 8)
    step = _token_step_for(model, cache)
    x = torch.zeros(32)
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 7\], got 8"):
        step(x, 8)
    with pytest.raises(ValueError, match=r"x must have shape \(C,\) = \(32\), got shape \(33,\)"):
        step(torch.zeros(33), 0)
    with pytest.raises(TypeError, match="x must be a float32 CPU tensor"):
        step(x.double(), 0)
    with pytest.raises(ValueError, match="x must be contiguous"):
        step(torch.zeros(64)[::2], 0)
    token = torch.tensor([[3]])
    with pytest.raises(ValueError, match=r"token holds ids in \[40, 40\], outside the vocabulary \[0, vocab_size=40\)"):
        step.from_token(torch.tensor([[40]]), 0)
    with pytest.raises(ValueError, match=r"token must hold one token id on the CPU, got shape \(1, 2\)"):
        step.from_token(torch.tensor([[3, 4]]), 0)
    with pytest.raises(TypeError, match="token must hold integer token ids"):
        step.from_token(token.float(), 0)
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 7\], got 8"):
        step.from_token(token, 8)
    bare = cpu_kernels.TokenStep(_block_weights(model), (model.ln_f.weight, model.ln_f.bias), model.wte.weight,
                                 cache.keys, cache.values, 4, 1e-5)
    for check in (True, False):  # unchecked too: the C loop would read a null table
        with pytest.raises(ValueError, match="from_token needs the embedding tables"):
            bare.from_token(token, 0, check=check)
    assert torch.equal(x, torch.zeros(32)) and cache.keys[0].abs().sum() == 0  # nothing written
    blocks, norm, head = _block_weights(model), (model.ln_f.weight, model.ln_f.bias), model.wte.weight
    with pytest.raises(ValueError, match="one entry per layer, got 2, 1 and 2"):
        cpu_kernels.TokenStep(blocks, norm, head, cache.keys[:1], cache.values, 4, 1e-5)
    with pytest.raises(ValueError, match=r"blocks\[1\].fc must have shape \(128, 32\), got shape \(128, 31\)"):
        cpu_kernels.TokenStep([blocks[0], blocks[1]._replace(fc=torch.zeros(128, 31))], norm, head, cache.keys,
                              cache.values, 4, 1e-5)
    with pytest.raises(ValueError, match=r"blocks\[0\].qkv_bias must have shape \(96\), got shape \(95,\)"):
        cpu_kernels.TokenStep([blocks[0]._replace(qkv_bias=torch.zeros(95)), blocks[1]], norm, head, cache.keys,
                              cache.values, 4, 1e-5)
    with pytest.raises(TypeError, match=r"blocks\[1\] must be"):
        cpu_kernels.TokenStep([blocks[0], tuple(blocks[1])], norm, head, cache.keys, cache.values, 4, 1e-5)
    with pytest.raises(ValueError, match=r"n_head=5 must divide n_embd \(head.shape\[1\]\)=32"):
        cpu_kernels.TokenStep(blocks, norm, head, cache.keys, cache.values, 5, 1e-5)
    with pytest.raises(ValueError, match=r"keys\[1\] must have shape \(1, H_kv, T, D\) = \(1, 4, 8, 8\), got shape "
                                         r"\(2, 4, 8, 8\)"):
        cpu_kernels.TokenStep(blocks, norm, head, cache.keys[:1] + [torch.zeros(2, 4, 8, 8)], cache.values, 4, 1e-5)
    with pytest.raises(TypeError, match="head must be a float32 CPU tensor"):
        cpu_kernels.TokenStep(blocks, norm, head.double(), cache.keys, cache.values, 4, 1e-5)
    with pytest.raises(ValueError, match="eps must be"):
        cpu_kernels.TokenStep(blocks, norm, head, cache.keys, cache.values, 4, 0.0)
    with pytest.raises(ValueError, match=r"ln_f must be \(weight, bias or None\), got a tuple of 1"):
        cpu_kernels.TokenStep(blocks, norm[:1], head, cache.keys, cache.values, 4, 1e-5)
    with pytest.raises(TypeError, match=r"embeddings must be a tuple \(token table, position table\) or None, got list"):
        cpu_kernels.TokenStep(blocks, norm, head, cache.keys, cache.values, 4, 1e-5, embeddings=[head, head])
    with pytest.raises(ValueError, match=r"embeddings\[1\] must have shape \(P, C\) = \(\*, 32\), got shape "
                                         r"\(8, 31\)"):
        cpu_kernels.TokenStep(blocks, norm, head, cache.keys, cache.values, 4, 1e-5,
                              embeddings=(head, torch.zeros(8, 31)))


@needs_kernels
def test_a_small_model_keeps_the_pytorch_step_and_asks_once():
    """Chapter 10's models are too small for the C loop: their step stays PyTorch's, and the
    answer is kept for the model's weights instead of being worked out again every token."""
    from transformer_book.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=32)).eval()
    cache = model.new_cache(1, 8)
    model.decode_step(torch.zeros(1, 2, dtype=torch.long), cache)
    model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)
    weights, matrices, step = model.__dict__["_saved_token_step"]
    assert step is None and matrices is None and weights is model.prepare_decoding()


def _huge_page_kb(address: int) -> int | None:
    """AnonHugePages (kB) of the mapping of this process that holds ``address`` (Linux smaps)."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(a, 16) for a in head.split("-"))
                inside = start <= address < end
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1])
    return None


def _thp_allowed() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[never]" not in path.read_text()


def test_on_huge_pages_gives_zeroed_float32_memory_on_2mb_pages():
    numel = 3 * cpu_kernels.HUGE_PAGE // 4 + 5  # three huge pages and a bit
    t = cpu_kernels.on_huge_pages(numel)
    assert t.dtype == torch.float32 and t.shape == (numel,) and t.is_contiguous()
    assert not t.any()  # zeroed
    t.fill_(1.5)  # writable, and every page touched
    assert float(t.sum()) == 1.5 * numel
    if sys.platform.startswith("linux"):
        assert t.data_ptr() % cpu_kernels.HUGE_PAGE == 0  # starts on a huge page's boundary
        if _thp_allowed():
            assert _huge_page_kb(t.data_ptr()) >= 2048  # the kernel gave it 2 MB pages
    view = t[-3:]
    del t  # the view alone keeps the mapping alive
    view.fill_(2.0)
    assert view.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="numel must be a positive int, got 0"):
        cpu_kernels.on_huge_pages(0)
    with pytest.raises(TypeError, match="numel must be a positive int, got float"):
        cpu_kernels.on_huge_pages(2.0)


def test_in_reading_order_copies_end_to_end_in_one_block():
    torch.manual_seed(0)
    tensors = [torch.randn(3, 5), torch.randn(7), torch.randn(2, 2, 2)]
    copies = cpu_kernels.in_reading_order(tensors)
    start = copies[0].data_ptr()
    if sys.platform.startswith("linux"):
        assert start % cpu_kernels.HUGE_PAGE == 0  # the block of cpu_kernels.on_huge_pages
    for t, c, offset in zip(tensors, copies, (0, 15, 22)):
        assert torch.equal(c, t) and c.shape == t.shape and c.is_contiguous()
        assert c.data_ptr() == start + 4 * offset  # laid one after the other, in the order given
        assert c.untyped_storage().data_ptr() == copies[0].untyped_storage().data_ptr()
    tensors[0].zero_()
    assert copies[0].abs().sum() > 0  # a copy: the originals can change without it
    with torch.inference_mode():
        assert not cpu_kernels.in_reading_order(tensors)[0].is_inference()
    with pytest.raises(ValueError, match="tensors must hold at least one tensor"):
        cpu_kernels.in_reading_order([])
    with pytest.raises(TypeError, match=r"tensors\[1\] must be a float32 CPU tensor, got .*float64"):
        cpu_kernels.in_reading_order([tensors[0], tensors[1].double()])
    with pytest.raises(TypeError, match=r"tensors\[0\] must be"):
        cpu_kernels.in_reading_order([[1.0, 2.0]])
    with pytest.raises(TypeError, match="tensors must be a sequence of float32 CPU tensors, got tensor"):
        cpu_kernels.in_reading_order(torch.randn(3))


@needs_kernels
def test_the_whole_step_reads_one_copy_of_its_matrices_remade_with_the_weights():
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=2, n_head=8, n_embd=512)).eval()
    seq = torch.randint(300, (1, 12))
    model.decode_step(seq[:, :1], model.new_cache(1, 16))  # one token: the whole step in C
    _, matrices, step = model.__dict__["_saved_token_step"]
    assert step is not None and len(matrices) == 4 * 2 + 1  # 4 a block, then the LM head
    assert all(a is b for a, b in zip(step.matrices, matrices, strict=True))
    assert matrices[-1].data_ptr() + matrices[-1].nbytes - matrices[0].data_ptr() == sum(m.nbytes for m in matrices)
    assert torch.equal(matrices[-1], model.wte.weight) and matrices[-1].data_ptr() != model.wte.weight.data_ptr()
    model.decode_step(seq[:, 1:2], model.new_cache(1, 16))  # another cache: another step, the same copy
    assert model.__dict__["_saved_token_step"][1] is matrices
    with torch.no_grad():  # new weights: a new copy, and the step reads them
        model.h[1].mlp.fc_out.weight.mul_(2)
    cache = model.new_cache(1, 16)
    got = torch.stack([model.decode_step(seq[:, t:t + 1], cache) for t in range(12)], 1)
    with torch.inference_mode():
        torch.testing.assert_close(got, model(seq).logits, rtol=1e-4, atol=1e-4)
    assert model.__dict__["_saved_token_step"][1] is not matrices


@needs_kernels
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_rows_taken_from_another_thread_are_computed_once(threads):
    """Products of hundreds of rows, so that a thread that runs out of its own rows takes the
    back half of another's (and more threads than cores make that happen): a row computed twice
    would add its residual twice, a row skipped would keep an old value. Every step's logits and
    every greedy token against the PyTorch step."""
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(threads)
    model = GPT(GPTConfig(vocab_size=3001, block_size=64, n_layer=2, n_head=6, n_embd=384)).eval()
    seq = torch.randint(3001, (1, 40))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            ref_cache, cache = model.new_cache(1, 64), model.new_cache(1, 64)
            with cpu_kernels.enabled(False):
                model.decode_step(seq[:, :8], ref_cache)
                expected = torch.cat([model.decode_step(seq[:, t:t + 1], ref_cache) for t in range(8, 40)])
            model.decode_step(seq[:, :8], cache)
            step = _token_step_for(model, cache)
            got = torch.cat([step.from_token(seq[:, t:t + 1], t) for t in range(8, 40)])
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            first = int(seq[0, 8])
            assert step.greedy(torch.tensor(first), 8, 24).tolist() == _greedy_by_steps(step, first, 8, 24)
    finally:
        torch.set_num_threads(before)


def _greedy_by_steps(step, token: int, position: int, n: int) -> list:
    """What TokenStep.greedy must return: one from_token call and one torch.argmax per token."""
    tokens = []
    for i in range(n):
        token = int(step.from_token(torch.tensor(token), position + i).argmax(-1))
        tokens.append(token)
    return tokens


@needs_kernels
@pytest.mark.parametrize("seed", range(4))
def test_greedy_in_one_call_chooses_what_step_and_argmax_choose(seed):
    """The C loop's argmax (two passes split among the threads) and its feeding of each chosen
    token at the next position, against one C step and torch.argmax a token, 1 to 4 threads."""
    from transformer_book.models import GPT, GPTConfig

    g = torch.Generator().manual_seed(seed)
    config = GPTConfig(vocab_size=int(torch.randint(50, 700, (), generator=g)), block_size=40, n_layer=2,
                       n_head=4, n_kv_head=[4, 2][seed % 2], n_embd=48, bias=seed % 2 == 0)
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        model.wte.weight.mul_(20.0)  # peaked logits: a long greedy run visits many different tokens
    threads = torch.get_num_threads()
    torch.set_num_threads(1 + seed % 4)
    try:
        with torch.inference_mode():
            caches = [model.new_cache(1, 40) for _ in range(2)]
            steps = [_token_step_for(model, cache) for cache in caches]
            first = int(torch.randint(config.vocab_size, (), generator=g))
            got = steps[0].greedy(torch.tensor([[first]], dtype=torch.int32), 3, 30)
            assert got.dtype == torch.int64 and got.shape == (30,)
            assert got.tolist() == _greedy_by_steps(steps[1], first, 3, 30)
        for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
            assert torch.equal(a[:, :, 3:33], b[:, :, 3:33])  # the same keys and values, fed at 3 .. 32
    finally:
        torch.set_num_threads(threads)


@needs_kernels
def test_greedy_takes_the_first_of_tied_logits_and_refuses_a_nan():
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=301, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # every even row of the (tied) head one vector, every odd row its negative
        row = torch.randn(16)
        model.wte.weight[0::2], model.wte.weight[1::2] = row, -row
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the tied maxima lie in both threads' halves
    try:
        with torch.inference_mode():
            step = _token_step_for(model, model.new_cache(1, 16))
            got = step.greedy(torch.tensor(7), 0, 10).tolist()
            assert set(got) <= {0, 1}  # 150 or 151 rows tie for the largest logit: the first wins
            assert got == _greedy_by_steps(_token_step_for(model, model.new_cache(1, 16)), 7, 0, 10)
            with torch.no_grad():
                model.wte.weight[200] = float("nan")
            with pytest.raises(ValueError, match="the logits at position 0 have a NaN"):
                step.greedy(torch.tensor(7), 0, 10)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
def test_greedy_bad_input_names_the_argument():
    from transformer_book.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=4, n_embd=32)).eval()
    cache = model.new_cache(1, 8)
    step = _token_step_for(model, cache)
    token = torch.tensor([[3]])
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 8\], got 0"):
        step.greedy(token, 0, 0)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 8\], got 9"):
        step.greedy(token, 0, 9)
    with pytest.raises(TypeError, match="n must be an int"):
        step.greedy(token, 0, 2.0)
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 5\], got 6"):
        step.greedy(token, 6, 3)  # positions 6, 7, 8: one past the cache
    with pytest.raises(ValueError, match=r"token holds ids in \[40, 40\]"):
        step.greedy(torch.tensor([[40]]), 0, 2)
    assert cache.keys[0].abs().sum() == 0  # nothing written
    bare = cpu_kernels.TokenStep(_block_weights(model), (model.ln_f.weight, model.ln_f.bias), model.wte.weight,
                                 cache.keys, cache.values, 4, 1e-5)
    for check in (True, False):
        with pytest.raises(ValueError, match="greedy needs the embedding tables"):
            bare.greedy(token, 0, 2, check=check)


@needs_kernels
def test_decode_greedy_and_generate_take_the_c_loop_and_choose_the_same_tokens():
    from transformer_book.generate import generate
    from transformer_book.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=48, n_layer=2, n_head=8, n_embd=512)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(10.0)
    prompt = torch.randint(300, (1, 12))
    with torch.inference_mode():
        cache = model.new_cache(1, 40)
        first = model.decode_step(prompt, cache).argmax(-1, keepdim=True)
        got = model.decode_greedy(first, cache, 20)
        assert model.__dict__["_saved_token_step"][2].writes_to(cache.keys, cache.values)  # the C loop ran
        assert cache.length == 12 + 20  # the prompt, the first token and 19 chosen ones
        out = generate(model, prompt, 21)
        with cpu_kernels.whole_step(False):  # PyTorch's step and argmax, a token at a time
            cache_py = model.new_cache(1, 40)
            model.decode_step(prompt, cache_py)
            assert torch.equal(model.decode_greedy(first, cache_py, 20), got)
            assert torch.equal(generate(model, prompt, 21), out)
        for a, b in zip(cache.keys + cache.values, cache_py.keys + cache_py.values):
            torch.testing.assert_close(a[:, :, :32], b[:, :, :32], rtol=1e-4, atol=1e-4)
        expected = prompt
        for _ in range(21):  # no cache at all
            expected = torch.cat([expected, model(expected).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out[:, 12:13], first) and torch.equal(out[:, 13:], got)
    assert torch.equal(out, expected)
