"""Chapter 4 checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import math

import pytest
import torch

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
