"""Chapter 4 checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_book.exercises import ch04

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)


# ---------------------------------------------------------------- scaled dot-product attention
def _sdpa_right(q, k, v):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v, w


def test_sdpa_right_passes_and_stub_is_not_done():
    assert _run(ch04.check_sdpa, _sdpa_right).passed

    def stub(q, k, v):
        raise NotImplementedError("Exercise ex-04-scaled-attention: write it")

    report = _run(ch04.check_sdpa, stub)
    assert report.not_done and "not done yet" in report.text()


@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # one wrong solution uses k.T on purpose
def test_sdpa_wrong_solutions_are_named():
    def no_scale(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return w @ v, w

    def divided_by_d(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], dim=-1)
        return w @ v, w

    def softmax_over_queries(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)
        return w @ v, w

    def weights_first(q, k, v):
        out, w = _sdpa_right(q, k, v)
        return w, out

    for wrong, named in [(no_scale, "The scale is missing"), (divided_by_d, "You divided by D"),
                         (softmax_over_queries, "ran over the queries"), (weights_first, "wrong order")]:
        report = _run(ch04.check_sdpa, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
    assert _run(ch04.check_sdpa, no_scale).n_passed == 1  # only D=1, where the scale is 1

    def k_dot_t(q, k, v):  # .T reverses all dimensions: only works for 2-D
        w = torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1)
        return w @ v, w

    def only_output(q, k, v):
        return _sdpa_right(q, k, v)[0]

    report = _run(ch04.check_sdpa, k_dot_t)
    assert not report.passed and report.n_passed >= 1  # the 2-D case passes, batched ones do not
    report = _run(ch04.check_sdpa, only_output)
    assert not report.passed and "expected a tuple of 2 items" in _first_failure(report).reason


# ---------------------------------------------------------------- split / merge heads
def test_split_merge_right_pass():
    def split(x, n_heads):
        b, t, c = x.shape
        return x.view(b, t, n_heads, c // n_heads).transpose(1, 2)

    def merge(x):
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    assert _run(ch04.check_split_heads, split).passed
    assert _run(ch04.check_merge_heads, merge).passed


def test_split_wrong_answers_are_named():
    def split_plain_reshape(x, n_heads):  # cuts the sequence into heads
        b, t, c = x.shape
        return x.reshape(b, n_heads, t, c // n_heads)

    def split_strided(x, n_heads):  # channels strided across heads instead of contiguous blocks
        b, t, c = x.shape
        return x.view(b, t, c // n_heads, n_heads).permute(0, 3, 1, 2)

    def split_no_transpose(x, n_heads):
        b, t, c = x.shape
        return x.view(b, t, n_heads, c // n_heads)

    for wrong, named in [(split_plain_reshape, "straight to (B, H, T, D)"), (split_strided, "every H-th channel"),
                         (split_no_transpose, "still after T")]:
        report = _run(ch04.check_split_heads, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())


def test_merge_wrong_answers_are_named():
    def merge_plain_reshape(x):
        b, h, t, d = x.shape
        return x.reshape(b, t, h * d)

    def merge_interleaved(x):
        b, h, t, d = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, t, h * d)

    def merge_only_transpose(x):
        return x.transpose(1, 2)

    def merge_view_after_transpose(x):  # view() refuses a transposed (non-contiguous) tensor
        b, h, t, d = x.shape
        return x.transpose(1, 2).view(b, t, h * d)

    def merge_forgets_return(x):
        x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    for wrong, named in [(merge_plain_reshape, "without moving the head axis back"),
                         (merge_interleaved, "interleaved"), (merge_only_transpose, "heads are not merged"),
                         (merge_view_after_transpose, "use reshape (or .contiguous().view)")]:
        report = _run(ch04.check_merge_heads, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
    report = _run(ch04.check_merge_heads, merge_forgets_return)
    assert not report.passed and "None" in report.text()


# ---------------------------------------------------------------- repeat_kv
def test_repeat_kv_right_and_wrong():
    def right(x, n_rep):  # Llama's way: a broadcast view, then one copy
        b, h, t, d = x.shape
        return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)

    def tiled(x, n_rep):
        return x.repeat(1, n_rep, 1, 1)

    def tiled_by_expand(x, n_rep):  # the new axis in front of the heads: the same tiling
        b, h, t, d = x.shape
        return x[:, None].expand(b, n_rep, h, t, d).reshape(b, n_rep * h, t, d)

    def along_positions(x, n_rep):
        return x.repeat_interleave(n_rep, dim=2)

    def unchanged(x, n_rep):
        return x

    assert _run(ch04.check_repeat_kv, right).passed
    for wrong, named in [(tiled, "whole stack of heads was repeated"), (tiled_by_expand, "whole stack"),
                         (along_positions, "along the positions"), (unchanged, "came back unchanged")]:
        report = _run(ch04.check_repeat_kv, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())


# ---------------------------------------------------------------- parameter count
def test_param_count_right_and_wrong():
    def right(d, h, kv, bias):
        kv_dim = kv * (d // h)
        return 2 * d * d + 2 * d * kv_dim + ((2 * d + 2 * kv_dim) if bias else 0)

    def ignores_kv_heads(d, h, kv, bias):
        return 4 * d * d + (4 * d if bias else 0)

    def forgets_bias(d, h, kv, bias):
        return 2 * d * d + 2 * d * kv * (d // h)

    def counts_kv_heads_as_full(d, h, kv, bias):
        return 2 * d * d + 2 * d * kv * d + ((2 * d + 2 * kv * d) if bias else 0)

    assert _run(ch04.check_param_count, right).passed
    for wrong, named in [(ignores_kv_heads, "four d_model x d_model projections"),
                         (forgets_bias, "The biases are missing"), (counts_kv_heads_as_full, "head_dim = d_model")]:
        report = _run(ch04.check_param_count, wrong)
        assert not report.passed, wrong.__name__
        assert "expected" in report.text() and named in _first_failure(report).hint, (wrong.__name__, report.text())
    report = _run(ch04.check_param_count, lambda d, h, kv, bias: 2 * d * d + 2 * d * kv * (d // h) + 4 * d * bias)
    assert not report.passed and "The key and value biases" in _first_failure(report).hint


# ---------------------------------------------------------------- soft-capped attention
def test_softcap_attention_right_and_wrong():
    def softcap_attention(q, k, v, cap):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        w = torch.softmax(cap * torch.tanh(s / cap), dim=-1)
        return w @ v, w

    def no_cap(q, k, v, cap):
        return _sdpa_right(q, k, v)

    def cap_then_scale(q, k, v, cap):
        s = cap * torch.tanh(q @ k.transpose(-2, -1) / cap) / math.sqrt(q.shape[-1])
        w = torch.softmax(s, dim=-1)
        return w @ v, w

    def clamped(q, k, v, cap):
        s = torch.clamp(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), min=-cap, max=cap)
        w = torch.softmax(s, dim=-1)
        return w @ v, w

    assert _run(ch04.check_softcap_attention, softcap_attention).passed
    for wrong, named in [(no_cap, "No cap"), (cap_then_scale, "capped before scaling"), (clamped, "A hard clamp")]:
        report = _run(ch04.check_softcap_attention, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
    report = _run(ch04.check_softcap_attention, lambda q, k, v, c: softcap_attention(q, k, v, c)[0])
    assert "expected a tuple of 2 items" in _first_failure(report).reason


# ---------------------------------------------------------------- QK-norm attention
def _torch_qk_norm(q, k, v, g_q, g_k, eps=1e-6):
    # PyTorch's own pieces: F.rms_norm over the last dimension, the fused attention for the output,
    # and the same attention over identity values for the weights (row i of I is one-hot at key i).
    d, t_k = q.shape[-1], k.shape[-2]
    q_hat, k_hat = F.rms_norm(q, (d,), g_q, eps), F.rms_norm(k, (d,), g_k, eps)
    eye = torch.eye(t_k).expand(*k.shape[:-2], t_k, t_k)
    return F.scaled_dot_product_attention(q_hat, k_hat, v), F.scaled_dot_product_attention(q_hat, k_hat, eye)


def test_qk_norm_reference_agrees_with_torch():
    g = torch.Generator().manual_seed(0)
    for b, h, t_q, t_k, d, d_v, eps, size in [(2, 3, 4, 4, 8, 8, 1e-6, 1.0), (1, 2, 3, 7, 16, 5, 1e-5, 300.0),
                                              (3, 1, 1, 2, 4, 2, 0.1, 0.05), (1, 4, 6, 6, 32, 32, 1e-6, 1.0)]:
        q, k = torch.randn(b, h, t_q, d, generator=g) * size, torch.randn(b, h, t_k, d, generator=g) * size
        v = torch.randn(b, h, t_k, d_v, generator=g)
        q[0, 0, 0] = 0.0  # an all-zero query: normalised to zeros, uniform weights
        g_q, g_k = 1 + 0.5 * torch.randn(d, generator=g), 1 + 0.5 * torch.randn(d, generator=g)
        ours, theirs = ch04._qk_norm_attention_reference(q, k, v, g_q, g_k, eps), _torch_qk_norm(q, k, v, g_q, g_k, eps)
        for a, r in zip(ours, theirs):
            torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours[1][0, 0, 0], torch.full((t_k,), 1 / t_k))
        # the point of QK-norm: |score| <= sqrt(D) * max |g_q * g_k|, however large q and k are
        scores = torch.log(ours[1]) - torch.log(ours[1]).mean(-1, keepdim=True)
        assert float(scores.abs().max()) <= 2 * math.sqrt(d) * float((g_q * g_k).abs().max()) + 1e-4


def test_qk_norm_right_passes_and_stub_is_not_done():
    def by_hand(q, k, v, g_q, g_k, eps=1e-6):
        q = g_q * q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps)
        k = g_k * k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + eps)
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return w @ v, w

    assert _run(ch04.check_qk_norm_attention, _torch_qk_norm).passed
    assert _run(ch04.check_qk_norm_attention, by_hand).passed

    def stub(q, k, v, g_q, g_k, eps=1e-6):
        raise NotImplementedError("Exercise ex-04-qk-norm: write it")

    report = _run(ch04.check_qk_norm_attention, stub)
    assert report.not_done and "not done yet" in report.text()


def _attend_normed(q_hat, k_hat, v, scale=True):
    s = q_hat @ k_hat.transpose(-2, -1)
    w = torch.softmax(s / math.sqrt(q_hat.shape[-1]) if scale else s, dim=-1)
    return w @ v, w


def test_qk_norm_wrong_answers_are_named():
    def rms(x, gain, eps, dim=-1):
        return gain * x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + eps)

    def over_positions(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, g_q, eps, dim=2), rms(k, g_k, eps, dim=2), v)

    def over_heads(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, g_q, eps, dim=1), rms(k, g_k, eps, dim=1), v)

    def layer_norm(q, k, v, g_q, g_k, eps=1e-6):
        d = q.shape[-1]
        return _attend_normed(F.layer_norm(q, (d,), g_q, eps=eps), F.layer_norm(k, (d,), g_k, eps=eps), v)

    def one_gain(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, g_q, eps), rms(k, g_q, eps), v)

    def no_gains(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, 1.0, eps), rms(k, 1.0, eps), v)

    def values_too(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, g_q, eps), rms(k, g_k, eps), rms(v, 1.0, eps))

    def eps_outside(q, k, v, g_q, g_k, eps=1e-6):
        def norm(x, gain):
            return gain * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)
        return _attend_normed(norm(q, g_q), norm(k, g_k), v)

    def no_eps(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, g_q, 0.0), rms(k, g_k, 0.0), v)

    def unit_length(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(g_q * F.normalize(q, dim=-1), g_k * F.normalize(k, dim=-1), v)

    def no_scale(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, g_q, eps), rms(k, g_k, eps), v, scale=False)

    def only_queries(q, k, v, g_q, g_k, eps=1e-6):
        return _attend_normed(rms(q, g_q, eps), k, v)

    for wrong, named in [(over_positions, "over the positions"), (over_heads, "over the heads"),
                         (layer_norm, "that is LayerNorm"), (one_gain, "The keys were scaled by g_q"),
                         (no_gains, "The gains are missing"), (values_too, "The values were normalised too"),
                         (eps_outside, "eps went outside the square root"), (no_eps, "eps is missing"),
                         (unit_length, "root *mean* square"), (no_scale, "1/sqrt(D) scale is missing"),
                         (only_queries, "Only the queries were normalised")]:
        report = _run(ch04.check_qk_norm_attention, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
    # eps inside or outside the root differ only where eps is not tiny: the eps=0.1 case catches it
    report = _run(ch04.check_qk_norm_attention, eps_outside)
    assert "eps=0.1" in _first_failure(report).label and report.n_passed == 4, report.text()
    report = _run(ch04.check_qk_norm_attention, no_eps)
    assert not report.cases[-1].passed and "NaN" in report.cases[-1].reason, report.text()
    report = _run(ch04.check_qk_norm_attention, lambda q, k, v, g_q, g_k, eps=1e-6: _torch_qk_norm(
        q, k, v, g_q, g_k, eps)[0])
    assert "expected a tuple of 2 items" in _first_failure(report).reason
