"""Chapter 5 checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import torch

from transformer_book.exercises import ch05

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)


def test_not_done_is_reported():
    def stub(*args):
        raise NotImplementedError("Exercise ex-05-...: write it")

    for checker in (ch05.check_causal_mask, ch05.check_padding_mask, ch05.check_prefix_lm_mask,
                    ch05.check_masked_softmax):
        report = _run(checker, stub)
        assert report.not_done, checker.__name__


# ---------------------------------------------------------------- causal
def test_causal_right_and_wrong():
    assert _run(ch05.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).tril()).passed
    transposed = _run(ch05.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).triu())
    assert not transposed.passed and "lower triangle" in _first_failure(transposed).hint
    no_diagonal = _run(ch05.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1))
    assert not no_diagonal.passed
    as_float = _run(ch05.check_causal_mask, lambda n: torch.ones(n, n).tril())
    assert not as_float.passed and "dtype" in _first_failure(as_float).reason


# ---------------------------------------------------------------- padding
def test_padding_right_and_wrong():
    assert _run(ch05.check_padding_mask, lambda t, p: (t != p)[:, None, None, :]).passed
    flat = _run(ch05.check_padding_mask, lambda t, p: t != p)
    assert not flat.passed and "shape" in _first_failure(flat).reason
    inverted = _run(ch05.check_padding_mask, lambda t, p: (t == p)[:, None, None, :])
    assert not inverted.passed
    zero_only = _run(ch05.check_padding_mask, lambda t, p: (t != 0)[:, None, None, :])
    assert not zero_only.passed and _first_failure(zero_only).label.startswith("pad_id=9")
    wrong_axis = _run(ch05.check_padding_mask, lambda t, p: (t != p)[:, None, :, None])
    assert not wrong_axis.passed


# ---------------------------------------------------------------- prefix LM
def _prefix_right(n, p):
    t, s = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (s < p) | (s <= t)


def test_prefix_right_and_wrong():
    assert _run(ch05.check_prefix_lm_mask, _prefix_right).passed

    def and_instead_of_or(n, p):
        t, s = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return (s < p) & (s <= t)

    def off_by_one(n, p):
        t, s = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return (s <= p) | (s <= t)

    def prefix_rows_only(n, p):  # prefix *queries* see everything: leaks the continuation
        t, s = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return (t < p) | (s <= t)

    for wrong in (and_instead_of_or, off_by_one, prefix_rows_only):
        report = _run(ch05.check_prefix_lm_mask, wrong)
        assert not report.passed, wrong.__name__
        assert "OR" in _first_failure(report).hint


# ---------------------------------------------------------------- masked softmax
def _masked_softmax_right(scores, mask):
    mask = mask.expand(scores.shape)
    empty = ~mask.any(-1, keepdim=True)
    filled = scores.masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)
    return torch.softmax(filled, -1).masked_fill(~mask, 0.0)


def test_masked_softmax_right_passes():
    assert _run(ch05.check_masked_softmax, _masked_softmax_right).passed


def test_masked_softmax_wrong_fail():
    def nan_rows(scores, mask):  # plain -inf fill: NaN on empty rows
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)

    def nan_then_fixed(scores, mask):  # right values, but the additive -inf lets NaN into the gradient
        bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        return torch.nan_to_num(torch.softmax(scores + bias, -1), nan=0.0)

    def multiply_after(scores, mask):  # zeroes masked entries but does not renormalise
        return torch.softmax(scores, -1) * mask

    def naive_exp(scores, mask):  # overflows for large scores
        e = scores.exp() * mask
        total = e.sum(-1, keepdim=True)
        return torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))

    report = _run(ch05.check_masked_softmax, nan_rows)
    assert not report.passed and _first_failure(report).label == "a row with nothing allowed"
    report = _run(ch05.check_masked_softmax, nan_then_fixed)
    failure = _first_failure(report)
    assert not report.passed and failure.label == "a row with nothing allowed"
    assert "output[1]" in failure.reason  # the values are right; the gradient is NaN
    report = _run(ch05.check_masked_softmax, multiply_after)
    assert not report.passed and _first_failure(report).label == "some entries masked"
    report = _run(ch05.check_masked_softmax, naive_exp)
    assert not report.passed and [c.label for c in report.cases if not c.passed] == [
        "large scores (overflow in a hand-made exp)"]


def test_prefix_inputs_use_the_stubs_parameter_names():
    def prefix_lm(n, p):  # causal only: forgets the prefix
        t, s = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return s <= t

    report = _run(ch05.check_prefix_lm_mask, prefix_lm)
    failure = _first_failure(report)
    assert failure.input == "n = 6; p = 3" and "prefix_len" not in report.text()


def _naive_nan_to_num(scores, mask):  # the cheap answer: right values, finite gradient, NaN inside
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0)


def test_masked_softmax_no_nan_inside_tells_the_technique_apart():
    assert _run(ch05.check_masked_softmax, _naive_nan_to_num).passed  # the statement as it is today
    strict = ch05.check_masked_softmax(_masked_softmax_right, no_nan_inside=True, quiet=True)
    assert strict.passed, strict.text()
    report = ch05.check_masked_softmax(_naive_nan_to_num, no_nan_inside=True, quiet=True)
    failure = _first_failure(report)
    assert not report.passed and failure.label == "a row with nothing allowed: no NaN anywhere inside"
    assert "SoftmaxBackward0 made NaN values in the backward pass" in failure.reason
    assert "finite scores (e.g. 0) *before* the softmax" in failure.hint
    # the other wrong answers still fail under the strict check
    for wrong in (lambda s, m: torch.softmax(s.masked_fill(~m, float("-inf")), -1),
                  lambda s, m: torch.softmax(s, -1) * m):
        assert not ch05.check_masked_softmax(wrong, no_nan_inside=True, quiet=True).passed


def test_causal_rect_right_and_wrong():
    def causal_rect(n_q, n_k):
        return torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)

    assert _run(ch05.check_causal_mask_rect, causal_rect).passed
    for wrong, named in [
        (lambda nq, nk: torch.ones(nq, nk).tril().bool(), "aligned top-left"),
        (lambda nq, nk: torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq - 1), "Off by one"),
        (lambda nq, nk: torch.ones(nq, nk).triu(nk - nq + 1).bool(), "the opposite"),
    ]:
        report = _run(ch05.check_causal_mask_rect, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    report = _run(ch05.check_causal_mask_rect, lambda nq, nk: causal_rect(nq, nk).int())
    assert "dtype int32" in _first_failure(report).reason


def test_document_mask_right_and_wrong():
    def document_mask(doc_ids):
        t = torch.arange(doc_ids.shape[-1])
        return (doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)) & (t[None, :] <= t[:, None])

    assert _run(ch05.check_document_mask, document_mask).passed
    t = lambda d: torch.arange(d.shape[-1])  # noqa: E731
    for wrong, named in [
        (lambda d: d[..., :, None] == d[..., None, :], "Not causal"),
        (lambda d: (t(d)[None, :] <= t(d)[:, None]).expand(*d.shape, d.shape[-1]), "leak into each other"),
        (lambda d: (d[..., :, None] == d[..., None, :]) | (t(d)[None, :] <= t(d)[:, None]), "OR instead of AND"),
    ]:
        report = _run(ch05.check_document_mask, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
