"""Chapter 9 in plain PyTorch: online softmax, tiled attention, memory, configs, guards.

The Triton kernel itself is tested in ``test_flash_triton.py``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from transformer_book.flash import (
    FlashConfig,
    TensorMemoryTracker,
    flash_attention,
    measure_peak_memory,
    merge_block,
    naive_attention,
    online_softmax,
    online_softmax_update,
    performance_ladder,
    softmax_stats,
    tiled_attention,
)

torch.set_num_threads(1)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def qkv(b=2, h=3, n_q=37, n_k=None, d=16, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    n_k = n_q if n_k is None else n_k
    shapes = [(b, h, n_q, d), (b, h, n_k, d), (b, h, n_k, d)]
    return [torch.randn(s, generator=g, dtype=torch.float32).to(dtype).requires_grad_(requires_grad) for s in shapes]


# ------------------------------------------------------------------------------------
# online softmax
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 8, 100])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_online_softmax_matches_torch(block_size, dim):
    x = torch.randn(5, 7, 11, generator=torch.Generator().manual_seed(1)) * 4
    torch.testing.assert_close(online_softmax(x, dim=dim, block_size=block_size), torch.softmax(x, dim=dim))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_online_softmax_dtypes(dtype):
    x = (torch.randn(4, 33, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
    y = online_softmax(x, block_size=5)
    assert y.dtype == dtype
    torch.testing.assert_close(y, torch.softmax(x.double(), dim=-1).to(dtype))


def test_online_softmax_with_minus_inf_entries():
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(3))
    x[0, [0, 4, 9]] = float("-inf")  # the first entry -inf: the running max starts at -inf
    x[1, 1:] = float("-inf")  # a single finite entry
    for block in (1, 2, 4):
        torch.testing.assert_close(online_softmax(x, block_size=block), torch.softmax(x, dim=-1))


def test_online_softmax_fully_masked_row_is_zero_not_nan():
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    x[1] = float("-inf")
    y = online_softmax(x, block_size=2)
    assert torch.isnan(torch.softmax(x, dim=-1)[1]).all()  # what torch does, for contrast
    assert not torch.isnan(y).any()
    assert torch.equal(y[1], torch.zeros(6))
    torch.testing.assert_close(y[[0, 2]], torch.softmax(x[[0, 2]], dim=-1))
    m, l = softmax_stats(x, block_size=2)
    assert m[1] == float("-inf") and l[1] == 0


def test_online_softmax_large_values_do_not_overflow():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [3e38, 3e38, 0.0], [88.0, 89.0, 90.0]])
    naive = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)  # overflows: inf / inf
    assert torch.isnan(naive[:2]).any(dim=-1).all()
    y = online_softmax(x, block_size=1)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.softmax(x, dim=-1))
    # Increasing maxima force a rescale at every step: still exact.
    ramp = torch.arange(0, 2000, 7, dtype=torch.float32)[None]
    torch.testing.assert_close(online_softmax(ramp, block_size=1), torch.softmax(ramp, dim=-1))


def test_online_softmax_nan_and_plus_inf_propagate_like_torch():
    x = torch.tensor([[0.0, float("inf"), 1.0], [0.0, float("nan"), 1.0]])
    assert torch.isnan(online_softmax(x)).all() and torch.isnan(torch.softmax(x, -1)).all()


def test_softmax_stats_give_logsumexp():
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(5)) * 10
    m, l = softmax_stats(x, block_size=7)
    torch.testing.assert_close(m, x.amax(-1))
    torch.testing.assert_close(m + torch.log(l), torch.logsumexp(x, dim=-1))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    block_size=st.integers(1, 45),
    scale=st.floats(0.01, 50.0),
    n_masked=st.integers(0, 39),
    seed=st.integers(0, 2**16),
)
def test_online_softmax_property(n, block_size, scale, n_masked, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, generator=g) * scale
    masked = torch.randperm(n, generator=g)[: min(n_masked, n - 1)]  # leave one entry finite
    x[:, masked] = float("-inf")
    torch.testing.assert_close(online_softmax(x, block_size=block_size), torch.softmax(x, dim=-1))


def test_online_softmax_update_in_any_split_equals_one_block():
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(6))
    m0, l0 = torch.full((4,), float("-inf")), torch.zeros(4)
    m_all, l_all = online_softmax_update(m0, l0, x)
    m, l = m0, l0
    for part in (x[:, :3], x[:, 3:4], x[:, 4:]):
        m, l = online_softmax_update(m, l, part)
    torch.testing.assert_close((m, l), (m_all, l_all))
    torch.testing.assert_close(l_all, torch.exp(x - x.amax(-1, keepdim=True)).sum(-1))


def test_online_softmax_input_errors():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        online_softmax([1.0, 2.0])
    with pytest.raises(TypeError, match="floating dtype.*torch.int64"):
        online_softmax(torch.arange(3))
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\].*got 2"):
        online_softmax(torch.zeros(2, 3), dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        online_softmax(torch.zeros(2, 3), dim=1.0)
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        online_softmax(torch.zeros(2, 3), block_size=0)
    with pytest.raises(ValueError, match="0-d"):
        online_softmax(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"m and l must have shape .*\(4,\).*got m \(3,\)"):
        online_softmax_update(torch.zeros(3), torch.zeros(3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="b >= 1"):
        online_softmax_update(torch.zeros(4), torch.zeros(4), torch.zeros(4, 0))


# ------------------------------------------------------------------------------------
# naive and tiled attention
# ------------------------------------------------------------------------------------


def sdpa(q, k, v, causal):
    if causal and q.shape[2] != k.shape[2]:  # is_causal is top-left aligned, as ours
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(37, 37), (64, 64), (20, 45), (45, 20), (1, 1), (1, 9)])
def test_naive_attention_matches_sdpa(causal, n_q, n_k):
    q, k, v = qkv(n_q=n_q, n_k=n_k)
    torch.testing.assert_close(naive_attention(q, k, v, causal=causal), sdpa(q, k, v, causal))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(37, 37), (64, 64), (20, 45), (45, 20), (1, 1), (5, 1)])
@pytest.mark.parametrize("block_q,block_k", [(16, 16), (8, 32), (32, 8), (7, 5), (1, 1), (128, 128)])
def test_tiled_attention_matches_sdpa(causal, n_q, n_k, block_q, block_k):
    q, k, v = qkv(n_q=n_q, n_k=n_k)
    out = tiled_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(out, sdpa(q, k, v, causal))
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=causal))


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_attention_lse_is_logsumexp_of_scores(causal):
    q, k, v = qkv(n_q=30, n_k=30, d=8)
    _, lse = tiled_attention(q, k, v, causal=causal, block_q=8, block_k=4, return_lse=True)
    scores = q @ k.transpose(-2, -1) / 8**0.5
    if causal:
        scores = scores.masked_fill(~torch.ones(30, 30, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1))


def test_tiled_attention_custom_scale_and_large_scores():
    q, k, v = qkv(n_q=20, d=8)
    torch.testing.assert_close(
        tiled_attention(q, k, v, scale=0.3, block_q=8, block_k=8),
        F.scaled_dot_product_attention(q, k, v, scale=0.3),
    )
    # Scores of size ~1e4: exp would overflow without the running max.
    out = tiled_attention(q * 100, k * 100, v, block_q=8, block_k=8)
    assert torch.isfinite(out).all()
    # (fp32 scores of size 1e4 carry rounding errors of ~1e-3 themselves, in ours and in torch's.)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q * 100, k * 100, v), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float64, 1e-12)])
def test_tiled_attention_dtypes(dtype, tol):
    q, k, v = qkv(n_q=40, dtype=dtype)
    out = tiled_attention(q, k, v, causal=True, block_q=16, block_k=16)
    assert out.dtype == dtype
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert (out.double() - ref).abs().max().item() <= tol


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_attention_gradients_match_sdpa(causal):
    q, k, v = qkv(n_q=29, n_k=29, requires_grad=True)
    do = torch.randn(2, 3, 29, 16, generator=torch.Generator().manual_seed(9))
    tiled_attention(q, k, v, causal=causal, block_q=8, block_k=8).backward(do)
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(do)
    for mine, t in zip(ours, (q, k, v)):
        torch.testing.assert_close(mine, t.grad)


def test_tiled_attention_gradcheck_float64():
    q, k, v = qkv(b=1, h=1, n_q=6, n_k=6, d=4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: tiled_attention(a, b, c, causal=True, block_q=4, block_k=4), (q, k, v))


class _ShapeWatch(TorchFunctionMode):
    """Records every tensor shape a torch function returns."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_attention_never_builds_the_n_by_n_matrix(causal):
    n, block = 256, 32
    q, k, v = qkv(b=1, h=2, n_q=n, d=16)

    def biggest(fn):
        with _ShapeWatch() as watch:
            fn(q, k, v, causal=causal)
        return max(torch.Size(s).numel() for s in watch.shapes), watch.shapes

    # The detector can fail: naive attention builds (1, 2, n, n).
    naive_max, naive_shapes = biggest(naive_attention)
    assert (1, 2, n, n) in naive_shapes and naive_max == 2 * n * n
    tiled_max, tiled_shapes = biggest(lambda *a, **kw: tiled_attention(*a, **kw, block_q=block, block_k=block))
    assert not any(len(s) >= 2 and s[-2:] == (n, n) for s in tiled_shapes)
    assert tiled_max <= max(2 * n * 16, 2 * block * block)  # the output, or one score tile


def test_tiled_attention_peak_memory_is_linear_in_n():
    peaks = {}
    for n in (128, 256):
        q, k, v = qkv(b=1, h=2, n_q=n, d=16)
        _, peaks[("naive", n)] = measure_peak_memory(naive_attention, q, k, v)
        _, peaks[("tiled", n)] = measure_peak_memory(tiled_attention, q, k, v, block_q=32, block_k=32)
    score_bytes = 2 * 256 * 256 * 4  # one float32 (B, H, N, N) matrix at N = 256
    assert peaks[("naive", 256)] >= score_bytes
    assert peaks[("tiled", 256)] < score_bytes / 4
    assert peaks[("naive", 256)] / peaks[("naive", 128)] > 3.5  # ~4x: quadratic
    assert peaks[("tiled", 256)] / peaks[("tiled", 128)] < 2.5  # ~2x: linear


def test_merge_block_two_halves_equal_one_block():
    g = torch.Generator().manual_seed(11)
    s, vb = torch.randn(3, 5, 12, generator=g), torch.randn(3, 12, 4, generator=g)
    start = (torch.full((3, 5), float("-inf")), torch.zeros(3, 5), torch.zeros(3, 5, 4))
    whole = merge_block(*start, s, vb)
    halves = merge_block(*merge_block(*start, s[..., :7], vb[:, :7]), s[..., 7:], vb[:, 7:])
    torch.testing.assert_close(halves, whole)
    torch.testing.assert_close(whole[2] / whole[1][..., None], torch.softmax(s, -1) @ vb)


@pytest.mark.parametrize("fn", [naive_attention, tiled_attention])
def test_attention_input_errors(fn):
    q, k, v = qkv(b=1, h=2, n_q=8, d=16)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        fn(q.numpy(), k, v)
    with pytest.raises(ValueError, match=r"k must have 4 dimensions.*\(2, 8, 16\)"):
        fn(q, k[0], v)
    with pytest.raises(TypeError, match="v must have a floating dtype.*torch.int64"):
        fn(q, k, v.long())
    with pytest.raises(TypeError, match="share one dtype.*float16"):
        fn(q, k.half(), v.half())
    with pytest.raises(ValueError, match=r"k and v must have the same shape.*\(1, 2, 7, 16\)"):
        fn(q, k, v[:, :, :7])
    with pytest.raises(ValueError, match=r"must agree on B, H and D.*\(1, 1, 8, 16\)"):
        fn(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="one device.*meta"):
        fn(q, k.to("meta"), v.to("meta"))
    with pytest.raises(TypeError, match="causal must be a bool.*'yes'"):
        fn(q, k, v, causal="yes")
    with pytest.raises(ValueError, match=r"scale must be a .*number.*, got -1.0"):
        fn(q, k, v, scale=-1.0)


def test_tiled_attention_block_errors():
    q, k, v = qkv(b=1, h=1, n_q=8, d=16)
    with pytest.raises(ValueError, match="block_q must be a positive int, got 0"):
        tiled_attention(q, k, v, block_q=0)
    with pytest.raises(TypeError, match="block_k must be a positive int, got (float )?2.5"):
        tiled_attention(q, k, v, block_k=2.5)


# ------------------------------------------------------------------------------------
# memory tracker
# ------------------------------------------------------------------------------------


def test_tensor_memory_tracker_counts_live_tensors():
    def work():
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 8000 alive
        view = b[10:]  # a view: no new memory
        del a
        c = b + view[:1].sum()  # a 4-byte scalar, then (b, c) = 8000 alive
        return c

    _, peak = measure_peak_memory(work)
    assert 8000 <= peak <= 8016
    existing = torch.ones(1000)
    with TensorMemoryTracker() as tracker:
        existing.mul_(2)  # in place on a tensor made outside: nothing new
    assert tracker.peak_bytes == 0
    with pytest.raises(TypeError, match="fn must be callable"):
        measure_peak_memory(3)


# ------------------------------------------------------------------------------------
# configuration and the ladder
# ------------------------------------------------------------------------------------


def test_performance_ladder_adds_one_switch_at_a_time():
    ladder = performance_ladder()
    assert len(ladder) >= 6
    configs = [c for _, c in ladder]
    for before, after in zip(configs, configs[1:]):
        changed = [f.name for f in dataclasses.fields(FlashConfig) if getattr(before, f.name) != getattr(after, f.name)]
        assert len(changed) == 1, changed
    first = configs[0]
    assert not (first.use_exp2 or first.deferred_norm or first.causal_skip or first.autotune)
    assert first.num_stages == 1 and first.grid_order == "heads_fastest"
    assert dataclasses.replace(configs[-1], autotune=None) == FlashConfig() and configs[-1].autotune is True


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(block_m=48), ValueError, "block_m must be one of .*got 48"),
        (dict(block_m=32, block_n=64), ValueError, "multiple of block_n.*block_m=32, block_n=64"),
        (dict(bwd_block_owned=16, bwd_block_loop=32), ValueError, "bwd_block_owned must be a multiple"),
        (dict(num_warps=3), ValueError, "num_warps must be one of.*got 3"),
        (dict(num_stages=0), ValueError, r"num_stages must be an int in \[1, 8\], got 0"),
        (dict(grid_order="random"), ValueError, "grid_order must be one of.*'random'"),
        (dict(use_exp2=1), TypeError, "use_exp2 must be a bool, got 1"),
        (dict(autotune="yes"), TypeError, "autotune must be True, False or None"),
    ],
)
def test_flash_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        FlashConfig(**kwargs)


# ------------------------------------------------------------------------------------
# flash_attention's guards that need no kernel run (this process never sets TRITON_INTERPRET)
# ------------------------------------------------------------------------------------

needs_no_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="checks the behaviour without the interpreter"
)


@needs_no_interpreter
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machine behaviour")
def test_flash_attention_refuses_cpu_tensors_without_interpreter():
    q, k, v = qkv(b=1, h=1, n_q=8, d=16)
    with pytest.raises(ValueError, match="device 'cpu'.*TRITON_INTERPRET.*tiled_attention"):
        flash_attention(q, k, v)


def test_flash_attention_input_errors():
    q, k, v = qkv(b=1, h=2, n_q=8, d=16)
    with pytest.raises(ValueError, match=r"head size D in \(16, 32, 64, 128\), got D=48"):
        flash_attention(*qkv(b=1, h=1, n_q=8, d=48))
    with pytest.raises(TypeError, match="q must have a floating dtype in .*got torch.float64"):
        flash_attention(q.double(), k.double(), v.double())
    with pytest.raises(TypeError, match="share one dtype"):
        flash_attention(q, k.half(), v)
    with pytest.raises(ValueError, match="agree on B, H and D"):
        flash_attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="device 'meta'"):
        flash_attention(q.to("meta"), k.to("meta"), v.to("meta"))
    with pytest.raises(TypeError, match="config must be a FlashConfig or None, got dict"):
        flash_attention(q, k, v, config={"block_m": 16})


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_flash_import_guards_in_a_fresh_process():
    """One fresh interpreter (imports are process-wide state), three facts in order:
    1. importing the package does not import triton;
    2. without triton installed, flash_attention raises ImportError naming it;
    3. TRITON_INTERPRET=1 set only after triton was imported (GPU mode) is refused clearly."""
    pytest.importorskip("triton")
    code = (
        "import os, sys, torch\n"
        "import transformer_book.flash as flash\n"
        "print('imported triton:', 'triton' in sys.modules)\n"
        "q = torch.randn(1, 1, 8, 16)\n"
        "flash.tiled_attention(q, q, q)\n"
        "sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    flash.flash_attention(q, q, q)\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
        "del sys.modules['triton']\n"
        "os.environ['TRITON_INTERPRET'] = '0'\n"
        "import triton\n"  # imported in GPU mode: too late for the interpreter
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    flash.flash_attention(q, q, q)\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "imported triton: False"
    assert lines[1].startswith("ImportError:") and "'triton'" in lines[1] and "tiled_attention" in lines[1]
    assert lines[2].startswith("ValueError:") and "before triton is first imported" in lines[2]


# --------------------------------------------------------------------------- issue 10
def test_online_softmax_refuses_an_empty_dimension():
    from transformer_book.flash import online_softmax

    with pytest.raises(ValueError, match="x must have at least one entry along dim=1"):
        online_softmax(torch.zeros(3, 0))
