"""Chapter 1 checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import math
import re

import torch

from transformer_book.data.numbers import GERMAN_MORPHEMES
from transformer_book.exercises import ch01

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)

CHECKERS = (ch01.check_additive_score, ch01.check_dot_attention_weights, ch01.check_split_german,
            ch01.check_local_p_weights, ch01.check_general_score)


def test_not_done_is_reported():
    def stub(*args):
        raise NotImplementedError("Exercise ex-01-...: write it")

    for checker in CHECKERS:
        report = _run(checker, stub)
        assert report.not_done and not report.passed, checker.__name__


def test_verdict_is_printed(capsys):
    ch01.check_split_german(lambda w: ["x"])
    out = capsys.readouterr().out
    assert out.startswith("ex-01-split-german") and "FAILED" in out


# ---------------------------------------------------------------- additive score
def _additive_right(query, keys, w_query, w_key, v):
    q, k = query @ w_query.T, keys @ w_key.T
    return torch.tanh(q[:, :, None, :] + k[:, None, :, :]) @ v


def test_additive_right_passes():
    assert _run(ch01.check_additive_score, _additive_right).passed


def test_additive_wrong_answers_are_named():
    def no_tanh(query, keys, w_query, w_key, v):
        return ((query @ w_query.T)[:, :, None] + (keys @ w_key.T)[:, None]) @ v

    def tanh_outside(query, keys, w_query, w_key, v):
        return torch.tanh(((query @ w_query.T)[:, :, None] + (keys @ w_key.T)[:, None]) @ v)

    def swapped(query, keys, w_query, w_key, v):
        return torch.tanh((query @ w_key.T)[:, :, None] + (keys @ w_query.T)[:, None]) @ v

    def sums_instead_of_v(query, keys, w_query, w_key, v):
        return torch.tanh((query @ w_query.T)[:, :, None] + (keys @ w_key.T)[:, None]).sum(-1)

    for wrong, named in [(no_tanh, "tanh is missing"), (tanh_outside, "tanh is in the wrong place"),
                         (swapped, "The weights are swapped"), (sums_instead_of_v, "v is missing")]:
        report = _run(ch01.check_additive_score, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())

    def keys_by_queries(query, keys, w_query, w_key, v):
        return torch.tanh((query @ w_query.T)[:, None, :] + (keys @ w_key.T)[:, :, None]) @ v

    report = _run(ch01.check_additive_score, keys_by_queries)
    assert not report.passed and "shape" in _first_failure(report).reason


def test_additive_python_loop_is_too_slow():
    # The chapter checks additive_scores against loops over (b, i, j); as an answer, they time out.
    def loops(query, keys, w_query, w_key, v):
        B, T, S = query.shape[0], query.shape[1], keys.shape[1]
        out = torch.zeros(B, T, S)
        for b in range(B):
            for i in range(T):
                for j in range(S):
                    out[b, i, j] = v @ torch.tanh(w_query @ query[b, i] + w_key @ keys[b, j])
        return out

    report = _run(ch01.check_additive_score, loops)
    failure = _first_failure(report)
    assert report.n_passed == len(report.cases) - 1 and failure.label.startswith("B=32, T=S=128")
    assert "did not return within" in failure.reason and "Python loop" in failure.hint


# ---------------------------------------------------------------- dot-product weights
def _dot_right(query, keys, mask):
    scores = query @ keys.transpose(1, 2)
    return scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)


def test_dot_right_and_wrong():
    assert _run(ch01.check_dot_attention_weights, _dot_right).passed

    def ignores_mask(query, keys, mask):
        return (query @ keys.transpose(1, 2)).softmax(-1)

    report = _run(ch01.check_dot_attention_weights, ignores_mask)
    assert not report.passed and _first_failure(report).label.startswith("source lengths")
    assert "The mask is ignored" in _first_failure(report).hint

    def zeroed_after_softmax(query, keys, mask):
        return (query @ keys.transpose(1, 2)).softmax(-1) * mask[:, None, :]

    report = _run(ch01.check_dot_attention_weights, zeroed_after_softmax)
    assert not report.passed and "after the softmax" in _first_failure(report).hint

    def wrong_axis(query, keys, mask):
        scores = query @ keys.transpose(1, 2)
        return scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(1)

    report = _run(ch01.check_dot_attention_weights, wrong_axis)
    assert not report.passed and "wrong axis" in _first_failure(report).hint

    def naive_exp(query, keys, mask):
        e = (query @ keys.transpose(1, 2)).exp() * mask[:, None, :]
        return e / e.sum(-1, keepdim=True)

    report = _run(ch01.check_dot_attention_weights, naive_exp)
    assert not report.passed and _first_failure(report).label.startswith("large scores")


# ---------------------------------------------------------------- German splitter
def _split_right(word):
    pieces, i = [], 0
    by_length = sorted(GERMAN_MORPHEMES, key=len, reverse=True)
    while i < len(word):
        m = next(m for m in by_length if word.startswith(m, i))
        pieces.append(m)
        i += len(m)
    return pieces


def test_split_right_passes():
    assert _run(ch01.check_split_german, _split_right).passed


def test_split_wrong_answers_are_named():
    def shortest_first(word):
        pieces, i = [], 0
        by_length = sorted(GERMAN_MORPHEMES, key=len)
        while i < len(word):
            m = next((m for m in by_length if word.startswith(m, i)), None)
            if m is None:
                return pieces
            pieces.append(m)
            i += len(m)
        return pieces

    def regex_in_list_order(word):
        return re.findall("|".join(GERMAN_MORPHEMES), word)

    def drops_und(word):
        return [m for m in _split_right(word) if m != "und"]

    def whole_word(word):
        return [word]

    def joined(word):
        return " ".join(_split_right(word))

    for wrong, named in [(shortest_first, "longest morphemes first"), (regex_in_list_order, "regular expression"),
                         (drops_und, "'und' are missing"), (whole_word, "the whole word as one piece"),
                         (joined, "not one string")]:
        report = _run(ch01.check_split_german, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
    assert not _run(ch01.check_split_german, lambda word: None).passed


# ---------------------------------------------------------------- Luong's local-p attention
def _local_p_loops(scores, position, width, mask):
    """Luong et al.'s local-p weights written out position by position, in plain Python floats."""
    B, T, S = scores.shape
    out = torch.zeros(B, T, S)
    sigma = width / 2
    for b in range(B):
        for i in range(T):
            p = float(position[b, i])
            window = [j for j in range(S) if p - width <= j <= p + width and bool(mask[b, j])]
            if not window:
                continue  # nothing to attend to: the row stays 0
            top = max(float(scores[b, i, j]) for j in window)
            e = {j: math.exp(float(scores[b, i, j]) - top) for j in window}
            total = sum(e.values())
            for j in window:
                out[b, i, j] = e[j] / total * math.exp(-((j - p) ** 2) / (2 * sigma**2))
    return out


def _local_p_right(scores, position, width, mask):
    distance = torch.arange(scores.shape[-1]) - position[..., None]  # (B, T, S), float
    allowed = (distance.abs() <= width) & mask[:, None, :]
    alpha = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    return alpha * torch.exp(-distance**2 / (2 * (width / 2) ** 2))


def test_local_p_reference_agrees_with_loops():
    # The checker's reference against the loops, on random inputs (positions, widths, padding) ...
    g = torch.Generator().manual_seed(0)
    for B, T, S, width in [(1, 1, 1, 1), (2, 3, 7, 2), (3, 4, 10, 3), (2, 5, 6, 9), (4, 2, 12, 1)]:
        scores = torch.randn(B, T, S, generator=g) * 3
        position = torch.rand(B, T, generator=g) * S
        lengths = torch.randint(1, S + 1, (B,), generator=g)
        mask = torch.arange(S)[None, :] < lengths[:, None]
        torch.testing.assert_close(ch01._local_p_reference(scores, position, width, mask),
                                   _local_p_loops(scores, position, width, mask))
    # ... and on every case of the checker: the loops, given as an answer, pass.
    assert _run(ch01.check_local_p_weights, _local_p_loops).passed


def test_local_p_right_passes():
    assert _run(ch01.check_local_p_weights, _local_p_right).passed


def test_local_p_wrong_answers_are_named():
    def gaussian(scores, position, sigma):
        distance = torch.arange(scores.shape[-1]) - position[..., None]
        return torch.exp(-distance**2 / (2 * sigma**2))

    def window_softmax(scores, position, width, mask, centre=None):
        centre = position if centre is None else centre
        allowed = ((torch.arange(scores.shape[-1]) - centre[..., None]).abs() <= width) & mask[:, None, :]
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)

    def gaussian_only(scores, position, width, mask):  # no window
        alpha = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        return alpha * gaussian(scores, position, width / 2)

    def softmax_then_cut(scores, position, width, mask):
        inside = (torch.arange(scores.shape[-1]) - position[..., None]).abs() <= width
        return gaussian_only(scores, position, width, mask) * inside

    def renormalised(scores, position, width, mask):
        a = window_softmax(scores, position, width, mask) * gaussian(scores, position, width / 2)
        return a / a.sum(-1, keepdim=True)

    def sigma_is_width(scores, position, width, mask):
        return window_softmax(scores, position, width, mask) * gaussian(scores, position, width)

    def sigma_floor_divided(scores, position, width, mask):
        return window_softmax(scores, position, width, mask) * gaussian(scores, position, width // 2)

    def window_around_round(scores, position, width, mask):
        return (window_softmax(scores, position, width, mask, centre=position.round())
                * gaussian(scores, position, width / 2))

    def window_around_int(scores, position, width, mask):  # int(p): the window's centre truncated
        return (window_softmax(scores, position, width, mask, centre=position.long().float())
                * gaussian(scores, position, width / 2))

    def open_window(scores, position, width, mask):
        distance = torch.arange(scores.shape[-1]) - position[..., None]
        allowed = (distance.abs() < width) & mask[:, None, :]
        alpha = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
        return alpha * gaussian(scores, position, width / 2)

    def ignores_mask(scores, position, width, mask):
        return _local_p_right(scores, position, width, torch.ones_like(mask))

    for wrong, named in [(gaussian_only, "No window"), (softmax_then_cut, "softmax over the whole source"),
                         (renormalised, "renormalised after the Gaussian"), (sigma_is_width, "sigma is D / 2, not D"),
                         (sigma_floor_divided, "width // 2 rounds it down"),
                         (window_around_round, "built around a rounded p"),
                         (window_around_int, "built around a rounded p"),
                         (open_window, "closed interval"), (ignores_mask, "The mask is ignored")]:
        report = _run(ch01.check_local_p_weights, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())

    def nan_on_empty_window(scores, position, width, mask):  # no nan_to_num: 0/0 where nothing is left
        distance = torch.arange(scores.shape[-1]) - position[..., None]
        allowed = (distance.abs() <= width) & mask[:, None, :]
        alpha = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        return alpha * torch.exp(-distance**2 / (2 * (width / 2) ** 2))

    report = _run(ch01.check_local_p_weights, nan_on_empty_window)
    failure = _first_failure(report)
    assert report.n_passed == len(report.cases) - 1 and "NaN" in failure.reason and "not NaN" in failure.hint

    def naive_exp(scores, position, width, mask):
        distance = torch.arange(scores.shape[-1]) - position[..., None]
        allowed = (distance.abs() <= width) & mask[:, None, :]
        e = scores.exp() * allowed
        return (e / e.sum(-1, keepdim=True)).nan_to_num(0.0) * torch.exp(-2 * distance**2 / width**2)

    report = _run(ch01.check_local_p_weights, naive_exp)
    assert not report.passed and _first_failure(report).label.startswith("large scores")


# ---------------------------------------------------------------- Luong's general score
def test_general_score_right_and_wrong():
    def general_score(query, keys, w):
        return torch.einsum("bti,ij,bsj->bts", query, w, keys)

    assert _run(ch01.check_general_score, general_score).passed

    def w_transposed(query, keys, w):
        return query @ w.T @ keys.transpose(1, 2)

    def dot_only(query, keys, w):
        return query @ keys.transpose(1, 2)

    def scaled(query, keys, w):
        return (query @ w) @ keys.transpose(1, 2) / math.sqrt(keys.shape[-1])

    def first_batch_keys(query, keys, w):  # every batch element scored against batch 0's keys
        return (query @ w) @ keys[:1].transpose(1, 2)

    for wrong, named in [(w_transposed, "W is transposed"), (dot_only, "W is missing"),
                         (scaled, "No 1/sqrt(d) scale"), (first_batch_keys, "batch 0's keys")]:
        report = _run(ch01.check_general_score, wrong)
        assert not report.passed and named in _first_failure(report).hint, (wrong.__name__, report.text())
