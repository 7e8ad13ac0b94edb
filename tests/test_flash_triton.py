"""The Triton FlashAttention kernels against PyTorch's attention: forward, lse, gradients.

Where they run:

* With ``TRITON_INTERPRET=1`` in the environment (set before triton is imported): on the CPU,
  under Triton's interpreter, on tiny shapes with 16/32-row tiles.
* Otherwise, on a machine with a CUDA GPU: on the GPU, compiled (and bfloat16 is added).
* Otherwise (the usual test run on a CPU): ``test_interpreter_suite`` runs *this file* again in
  a fresh Python process with ``TRITON_INTERPRET=1``. Triton fixes interpreter-or-GPU when it is
  first imported, so a subprocess is the only way that cannot be spoiled by another test module
  having imported triton already.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


@pytest.mark.slow  # ~40-60 s on 2 cores: every kernel test of this file, interpreted
@pytest.mark.skipif(INTERPRET, reason="already inside the interpreter run")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_interpreter_suite():
    """Run this module's kernel tests on the CPU under TRITON_INTERPRET=1, in a fresh process."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-x"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    # Everything ran, except this very test (skipped inside the subprocess).
    assert passed and int(passed.group(1)) >= 30 and "1 skipped" in summary, summary


if DEVICE is None or not HAS_TRITON:
    pytestmark = []  # only test_interpreter_suite (above) applies here
else:
    from transformer_book.flash import FlashConfig, flash_attention, flash_attention_forward, performance_ladder

    # Tiny tiles under the interpreter (its cost grows with the number of tile operations). On a
    # GPU fixed tiles too: autotuning compiles every candidate for every shape, which would make
    # this module slow; the autotuned kernel has its own GPU test at the end.
    SMALL = dict(block_m=32, block_n=16, bwd_block_owned=32, bwd_block_loop=16, num_stages=1)
    CONFIG = FlashConfig(**SMALL) if DEVICE == "cpu" else FlashConfig(autotune=False)
    DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])

    def make(b, h, n_q, n_k, d, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        shapes = [(b, h, n_q, d), (b, h, n_k, d), (b, h, n_k, d), (b, h, n_q, d)]
        q, k, v, do = (torch.randn(s, generator=g).to(DEVICE, dtype) for s in shapes)
        return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do

    def reference(q, k, v, do, causal, dtype=torch.float64):
        """Output and gradients of torch's attention, computed in ``dtype`` (float64: exact)."""
        q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        if causal and q.shape[2] != k.shape[2]:  # top-left aligned causal mask, as ours
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # lets PyTorch pick its fused kernels in half precision
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        o.backward(do.to(dtype))
        return o, q.grad, k.grad, v.grad

    def ours(q, k, v, do, causal, config=CONFIG):
        for t in (q, k, v):
            t.grad = None
        o = flash_attention(q, k, v, causal=causal, config=config)
        o.backward(do)
        return o, q.grad, k.grad, v.grad

    def max_errors(got, want):
        return [(g.double() - w.double()).abs().max().item() for g, w in zip(got, want)]

    # Max |error| vs the float64 reference on standard-normal inputs: float32 is exact up to
    # rounding; half precision errors are those of rounding the inputs, P and the outputs.
    TOL = {torch.float32: (1e-5, 2e-5), torch.float16: (4e-3, 2e-2), torch.bfloat16: (3e-2, 1.5e-1)}

    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("d", [16, 32, 64, 128])
    def test_forward_and_gradients_every_head_dim(d, causal):
        q, k, v, do = make(1, 2, 45, 45, d, torch.float32, seed=d)
        errors = max_errors(ours(q, k, v, do, causal), reference(q, k, v, do, causal))
        assert max(errors) < TOL[torch.float32][1], errors

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("causal", [False, True])
    def test_dtypes(dtype, causal):
        q, k, v, do = make(2, 2, 40, 40, 32, dtype, seed=1)
        got = ours(q, k, v, do, causal)
        assert all(t.dtype == dtype for t in got)
        errors = max_errors(got, reference(q, k, v, do, causal))
        fwd_tol, grad_tol = TOL[dtype]
        assert errors[0] < fwd_tol and max(errors[1:]) < grad_tol, errors

    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("n_q,n_k", [(1, 1), (16, 16), (17, 50), (50, 17), (33, 64)])
    def test_ragged_and_unequal_lengths(n_q, n_k, causal):
        q, k, v, do = make(1, 1, n_q, n_k, 16, torch.float32, seed=n_q * 100 + n_k)
        errors = max_errors(ours(q, k, v, do, causal), reference(q, k, v, do, causal))
        assert max(errors) < 2e-5, errors

    @pytest.mark.parametrize("causal", [False, True])
    def test_lse_is_logsumexp_of_scaled_scores(causal):
        q, k, v, _ = make(1, 2, 37, 37, 32, torch.float32, seed=3)
        _, lse = flash_attention_forward(q.detach(), k.detach(), v.detach(), causal=causal, config=CONFIG)
        scores = (q.double() @ k.double().transpose(-2, -1)) / 32**0.5
        if causal:
            scores = scores.masked_fill(~torch.ones(37, 37, dtype=torch.bool, device=DEVICE).tril(), float("-inf"))
        torch.testing.assert_close(lse.double(), torch.logsumexp(scores, dim=-1), atol=1e-5, rtol=1e-5)

    def _ladder_configs():
        rungs = performance_ladder()
        if DEVICE == "cpu":  # no autotuning under the interpreter; tiny tiles
            return [(name, dataclasses.replace(c, **SMALL)) for name, c in rungs if not c.autotune]
        return rungs

    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("rung", range(len(_ladder_configs())))
    def test_every_rung_of_the_ladder_is_correct(rung, causal):
        name, config = _ladder_configs()[rung]
        q, k, v, do = make(1, 2, 50, 50, 32, torch.float32, seed=rung)
        errors = max_errors(ours(q, k, v, do, causal, config=config), reference(q, k, v, do, causal))
        assert max(errors) < 2e-5, (name, errors)

    def test_custom_scale():
        q, k, v, do = make(1, 1, 20, 20, 16, torch.float32, seed=4)
        o = flash_attention(q, k, v, scale=0.7, config=CONFIG)
        torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, scale=0.7), atol=1e-5, rtol=1e-5)

    def test_strided_inputs_and_no_mutation():
        # (B, N, H, D) storage viewed as (B, H, N, D): strided, last dim contiguous, no copy.
        g = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(1, 24, 2, 16, generator=g).to(DEVICE).transpose(1, 2) for _ in range(3))
        # A last dimension that is not contiguous (stride 24): the wrapper copies it.
        k_t = k.contiguous().transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not q.is_contiguous() and k_t.stride(-1) != 1
        before = [t.clone() for t in (q, k_t, v)]
        o = flash_attention(q, k_t, v, causal=True, config=CONFIG)
        torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(before, (q, k_t, v)))
        assert o.is_contiguous() and o.data_ptr() not in {t.data_ptr() for t in (q, k, v)}

    def test_gradients_flow_only_where_asked():
        q, k, v, do = make(1, 1, 20, 20, 16, torch.float32, seed=6)
        k = k.detach()
        flash_attention(q, k, v, config=CONFIG).backward(do)
        assert q.grad is not None and v.grad is not None and k.grad is None
        with torch.no_grad():
            assert not flash_attention(q, k, v, config=CONFIG).requires_grad

    def test_autotune_candidates_keep_the_causal_split_aligned():
        from transformer_book.flash import _kernels

        for c in _kernels.FWD_CONFIGS + _kernels.DQ_CONFIGS:  # query tile a multiple of the key tile
            assert c.kwargs["BLOCK_M"] % c.kwargs["BLOCK_N"] == 0, c
        for c in _kernels.DKDV_CONFIGS:  # key tile (owned) a multiple of the query tile (looped)
            assert c.kwargs["BLOCK_N"] % c.kwargs["BLOCK_M"] == 0, c

    if DEVICE == "cpu":

        def test_interpreter_refuses_bfloat16_and_autotune():
            q = torch.randn(1, 1, 8, 16)
            with pytest.raises(TypeError, match="interpreter supports float16 and float32.*bfloat16"):
                flash_attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), config=CONFIG)
            with pytest.raises(ValueError, match="autotune=True needs a GPU"):
                flash_attention(q, q, q, config=FlashConfig(autotune=True))

    if DEVICE == "cuda":

        @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
        @pytest.mark.parametrize("causal", [False, True])
        @pytest.mark.parametrize("n,d", [(1024, 64), (1000, 128)])
        def test_gpu_autotuned_matches_sdpa_as_closely_as_sdpa_matches_float64(n, d, dtype, causal):
            """The default (autotuned) kernel may err vs float64 by at most 2x (+ a little) what
            torch's own kernel errs, for the output and every gradient."""
            q, k, v, do = make(2, 4, n, n, d, dtype, seed=n + d)
            exact = reference(q, k, v, do, causal, torch.float64)
            theirs = max_errors(reference(q, k, v, do, causal, dtype), exact)
            mine = max_errors(ours(q, k, v, do, causal, config=FlashConfig()), exact)
            for m, t in zip(mine, theirs):
                assert m <= 2 * t + 1e-3, (mine, theirs)


if DEVICE == "cpu":

    @pytest.mark.parametrize("n,causal", [(100, True), (128, False)])
    def test_every_autotune_candidate_under_the_interpreter(n, causal, monkeypatch):
        """The autotuned launch path (what a GPU runs by default), with the tuner's timer faked so
        that each round picks a different candidate: every candidate of the forward, dK/dV and dQ
        kernels computes the right thing (n=128: the unmasked EVEN path; n=100: ragged)."""
        from transformer_book.flash import _kernels, triton_attention

        tuned = [_kernels.attn_fwd_tuned, _kernels.attn_bwd_dkdv_tuned, _kernels.attn_bwd_dq_tuned]
        monkeypatch.setattr(triton_attention, "_use_autotune", lambda config, interpreted: True)
        rounds = max(len(t.configs) for t in tuned)
        for target in range(rounds):
            for t in tuned:
                calls = iter(range(len(t.configs)))

                def fake_do_bench(kernel_call, quantiles, t=t, calls=calls, target=target):
                    kernel_call()
                    timing = 0.0 if next(calls) == target % len(t.configs) else 1.0
                    return [timing] * len(quantiles)

                t.cache.clear()
                monkeypatch.setitem(t.__dict__, "do_bench", fake_do_bench)
            q, k, v, do = make(1, 1, n, n, 16, torch.float32, seed=target)
            errors = max_errors(ours(q, k, v, do, causal, config=FlashConfig()), reference(q, k, v, do, causal))
            chosen = [t.cache[next(iter(t.cache))].kwargs for t in tuned]
            assert chosen == [t.configs[target % len(t.configs)].kwargs for t in tuned]
            assert max(errors) < 2e-5, (chosen, errors)
