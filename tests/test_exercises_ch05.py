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
                    ch05.check_masked_softmax, ch05.check_causal_mask_rect, ch05.check_document_mask):
        report = _run(checker, stub)
        assert report.not_done, checker.__name__


# ---------------------------------------------------------------- causal
def test_causal_right_and_wrong():
    assert _run(ch05.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).tril()).passed
    for wrong, named in [
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "upper triangle"),
        (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), "The diagonal is missing"),
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(1), "True means *may attend*"),
    ]:
        report = _run(ch05.check_causal_mask, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    as_float = _run(ch05.check_causal_mask, lambda n: torch.ones(n, n).tril())
    assert not as_float.passed and "dtype" in _first_failure(as_float).reason


# ---------------------------------------------------------------- padding
def test_padding_right_and_wrong():
    assert _run(ch05.check_padding_mask, lambda t, p: (t != p)[:, None, None, :]).passed
    flat = _run(ch05.check_padding_mask, lambda t, p: t != p)
    assert not flat.passed and "shape" in _first_failure(flat).reason
    for wrong, named in [
        (lambda t, p: (t == p)[:, None, None, :], "True at the padding"),
        (lambda t, p: (t != 0)[:, None, None, :], "not with 0"),
        (lambda t, p: (t != p)[:, None, :, None], "the last axis, (B, 1, 1, T)"),
    ]:
        report = _run(ch05.check_padding_mask, wrong)
        assert not report.passed and named in _first_failure(report).hint, (named, report.text())
    zero_only = _run(ch05.check_padding_mask, lambda t, p: (t != 0)[:, None, None, :])
    assert _first_failure(zero_only).label.startswith("pad_id=9")


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

    def causal_only(n, p):
        return torch.ones(n, n, dtype=torch.bool).tril()

    for wrong, named in [(and_instead_of_or, "AND instead of OR"), (off_by_one, "s < p, not s <= p"),
                         (prefix_rows_only, "prefix *queries*"), (causal_only, "the prefix is missing")]:
        report = _run(ch05.check_prefix_lm_mask, wrong)
        assert not report.passed, wrong.__name__
        assert named in _first_failure(report).hint, (wrong.__name__, report.text())


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
    assert "must give zeros and a finite gradient" in _first_failure(report).hint
    report = _run(ch05.check_masked_softmax, nan_then_fixed)
    failure = _first_failure(report)
    assert not report.passed and failure.label == "a row with nothing allowed"
    assert "output[1]" in failure.reason  # the values are right; the gradient is NaN
    report = _run(ch05.check_masked_softmax, multiply_after)
    assert not report.passed and _first_failure(report).label == "some entries masked"
    assert "no longer sum to 1" in _first_failure(report).hint
    report = _run(ch05.check_masked_softmax, naive_exp)
    assert not report.passed and [c.label for c in report.cases if not c.passed] == [
        "large scores (overflow in a hand-made exp)"]
    assert "exp(1000) overflows" in _first_failure(report).hint


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
    assert "hid the NaN" in failure.reason


def _masked_softmax_strict(fn):
    return ch05.check_masked_softmax(fn, no_nan_inside=True, quiet=True)


def test_masked_softmax_strict_names_each_mistake():
    def where_after(scores, mask):  # picks the zeros with torch.where: the softmax's NaN is still made
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
        return torch.where(mask.any(-1, keepdim=True), probs, torch.zeros_like(probs))

    def additive_bias(scores, mask):  # an additive -inf mask, cleaned up afterwards
        bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        return torch.nan_to_num(torch.softmax(scores + bias, -1), nan=0.0)

    def plain_fill(scores, mask):  # NaN in the result itself
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)

    for wrong in (_naive_nan_to_num, where_after, additive_bias, plain_fill):
        report = _masked_softmax_strict(wrong)
        failure = _first_failure(report)
        assert not report.passed and failure.label == "a row with nothing allowed: no NaN anywhere inside"
        assert "made NaN values in the backward pass" in failure.reason, (wrong.__name__, failure.reason)
        assert "*before* the softmax" in failure.hint
    assert "your result itself has NaN" in _first_failure(_masked_softmax_strict(plain_fill)).reason
    report = _masked_softmax_strict(lambda s, m: torch.softmax(s, -1) * m)
    assert not report.passed and "no longer sum to 1" in _first_failure(report).hint

    def finite_fill(scores, mask):  # another right answer: a large finite negative instead of -inf
        mask = mask.expand(scores.shape)
        return torch.softmax(scores.masked_fill(~mask, -1e9), -1).masked_fill(~mask, 0.0)

    assert _masked_softmax_strict(finite_fill).passed


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
