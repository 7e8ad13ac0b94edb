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
def test_sdpa_wrong_solutions_fail():
    def no_scale(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return w @ v, w

    def softmax_over_queries(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)
        return w @ v, w

    def k_dot_t(q, k, v):  # .T reverses all dimensions: only works for 2-D
        w = torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1)
        return w @ v, w

    def only_output(q, k, v):
        return _sdpa_right(q, k, v)[0]

    report = _run(ch04.check_sdpa, no_scale)
    assert not report.passed and "sqrt(D)" in _first_failure(report).hint
    assert report.n_passed == 1  # only D=1, where the scale is 1
    assert not _run(ch04.check_sdpa, softmax_over_queries).passed
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


def test_split_merge_wrong_fail():
    def split_plain_view(x, n_heads):  # mixes positions into heads
        b, t, c = x.shape
        return x.reshape(b, n_heads, t, c // n_heads)

    def split_wrong_group(x, n_heads):  # channels strided across heads instead of contiguous blocks
        b, t, c = x.shape
        return x.view(b, t, c // n_heads, n_heads).permute(0, 3, 1, 2)

    def merge_plain_view(x):
        b, h, t, d = x.shape
        return x.reshape(b, t, h * d)

    def merge_forgets_return(x):
        x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    report = _run(ch04.check_split_heads, split_plain_view)
    assert not report.passed and "(B, T, H, D)" in _first_failure(report).hint
    assert not _run(ch04.check_split_heads, split_wrong_group).passed
    assert not _run(ch04.check_merge_heads, merge_plain_view).passed
    report = _run(ch04.check_merge_heads, merge_forgets_return)
    assert not report.passed and "None" in report.text()


# ---------------------------------------------------------------- repeat_kv
def test_repeat_kv_right_and_wrong():
    assert _run(ch04.check_repeat_kv, lambda x, n: x.repeat_interleave(n, dim=1)).passed
    wrong_order = _run(ch04.check_repeat_kv, lambda x, n: x.repeat(1, n, 1, 1))
    assert not wrong_order.passed and "repeat_interleave" in _first_failure(wrong_order).hint
    assert not _run(ch04.check_repeat_kv, lambda x, n: x.repeat_interleave(n, dim=2)).passed
    assert not _run(ch04.check_repeat_kv, lambda x, n: x).passed


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


# ---------------------------------------------------------------- soft-capped attention (new)
def test_softcap_attention_right_and_wrong():
    import math

    def softcap_attention(q, k, v, cap):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        w = torch.softmax(cap * torch.tanh(s / cap), dim=-1)
        return w @ v, w

    assert ch04.check_softcap_attention(softcap_attention, quiet=True).passed
    for wrong, named in [
        (lambda q, k, v, c: ch04._sdpa_reference(q, k, v), "No cap"),
        (ch04._capped_unscaled, "capped before scaling"),
        (ch04._clamped, "A hard clamp"),
    ]:
        report = _run(ch04.check_softcap_attention, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    report = _run(ch04.check_softcap_attention, lambda q, k, v, c: softcap_attention(q, k, v, c)[0])
    assert "expected a tuple of 2 items" in _first_failure(report).reason
