"""Chapter 1 checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import torch

from transformer_book.data.numbers import GERMAN_MORPHEMES
from transformer_book.exercises import ch01

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)

CHECKERS = (ch01.check_additive_score, ch01.check_dot_attention_weights, ch01.check_split_german)


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


def test_additive_right_and_wrong():
    assert _run(ch01.check_additive_score, _additive_right).passed

    def no_tanh(query, keys, w_query, w_key, v):
        return ((query @ w_query.T)[:, :, None] + (keys @ w_key.T)[:, None]) @ v

    report = _run(ch01.check_additive_score, no_tanh)
    assert not report.passed and "tanh" in _first_failure(report).hint

    def tanh_outside(query, keys, w_query, w_key, v):
        return torch.tanh(((query @ w_query.T)[:, :, None] + (keys @ w_key.T)[:, None]) @ v)

    assert not _run(ch01.check_additive_score, tanh_outside).passed

    def swapped(query, keys, w_query, w_key, v):
        return torch.tanh((query @ w_key.T)[:, :, None] + (keys @ w_query.T)[:, None]) @ v

    report = _run(ch01.check_additive_score, swapped)
    assert not report.passed and report.n_passed <= 2  # only the square cases can pass by accident

    def keys_by_queries(query, keys, w_query, w_key, v):
        return (torch.tanh((query @ w_query.T)[:, None, :] + (keys @ w_key.T)[:, :, None]) @ v)

    report = _run(ch01.check_additive_score, keys_by_queries)
    assert not report.passed and "shape" in _first_failure(report).reason


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


def test_split_right_and_wrong():
    assert _run(ch01.check_split_german, _split_right).passed

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

    report = _run(ch01.check_split_german, shortest_first)
    assert not report.passed and "longest first" in _first_failure(report).hint

    def only_und(word):
        return word.replace("und", " und ").split()

    assert not _run(ch01.check_split_german, only_und).passed
    assert not _run(ch01.check_split_german, lambda word: word).passed
    assert not _run(ch01.check_split_german, lambda word: None).passed


# ---------------------------------------------------------------------------------- general score (new)
def test_general_score_right_and_wrong():
    from transformer_book.exercises.ch01 import check_general_score

    def general_score(query, keys, w):
        return (query @ w) @ keys.transpose(1, 2)

    assert check_general_score(general_score, quiet=True).passed
    for wrong, named in [
        (lambda q, k, w: q @ w.T @ k.transpose(1, 2), "W is transposed"),
        (lambda q, k, w: q @ k.transpose(1, 2), "W is missing"),
        (lambda q, k, w: q @ w @ k.transpose(1, 2) / k.shape[-1] ** 0.5, "No 1/sqrt(d) scale"),
        (lambda q, k, w: (q @ w) @ k[:1].transpose(1, 2), "output differs"),  # batch 0's keys for all
    ]:
        report = check_general_score(wrong, quiet=True)
        failure = next(c for c in report.cases if not c.passed)
        assert not report.passed and (named in failure.hint or named in failure.reason), (named, report.text())
