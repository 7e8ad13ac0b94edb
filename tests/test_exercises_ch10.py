"""Chapter 10 checkers: right solutions pass, typical wrong ones fail with a message naming the mistake."""

from __future__ import annotations

import pytest
import torch

from transformer_book.exercises import ch10

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)


def test_not_done_is_reported():
    def stub(*args):
        raise NotImplementedError("Exercise ex-10-...: write it")

    for checker in (ch10.check_break_even_alpha, ch10.check_expected_tokens_varying, ch10.check_best_k_measured,
                    ch10.check_markov_tokens_per_pass):
        assert _run(checker, stub).not_done, checker.__name__


# ---------------------------------------------------------------- break-even alpha
def _break_even(c, k, exponent=lambda k: k + 1, cost=lambda k, c: k * c + 1):
    def speedup(a):
        return (1 - a ** exponent(k)) / ((1 - a) * cost(k, c)) if a < 1 else exponent(k) / cost(k, c)

    if speedup(0.0) >= 1:
        return 0.0
    if speedup(1.0) < 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if speedup(mid) < 1 else (lo, mid)
    return (lo + hi) / 2


def test_break_even_right_and_wrong():
    assert _run(ch10.check_break_even_alpha, _break_even).passed
    # k = 1 has a closed form: (1 + alpha) / (1 + c) = 1 -> alpha = c
    assert ch10._break_even_reference(0.1, 1) == pytest.approx(0.1, abs=1e-9)
    for wrong in (
        lambda c, k: _break_even(c, k, exponent=lambda k: k),  # alpha**k instead of alpha**(k+1)
        lambda c, k: _break_even(c, k, cost=lambda k, c: k * c),  # forgot the target pass in the cost
        lambda c, k: c,  # the k = 1 answer for every k
    ):
        report = _run(ch10.check_break_even_alpha, wrong)
        assert not report.passed
        assert "k + 1" in _first_failure(report).hint
    report = _run(ch10.check_break_even_alpha, lambda c, k: _break_even(c, k, cost=lambda k, c: k * c))
    assert "+ 1 in the cost" in _first_failure(report).hint


# ---------------------------------------------------------------- varying alpha
def test_varying_alpha_right_and_wrong():
    def right(alphas):
        total, keep = 1.0, 1.0
        for a in alphas:
            keep *= a
            total += keep
        return total

    assert _run(ch10.check_expected_tokens_varying, right).passed
    for wrong, word in (
        (lambda alphas: 1.0 + sum(alphas), "product"),  # ignores that a rejection ends the pass
        (lambda alphas: right(alphas) - 1.0, "1 for the token"),  # forgot the target's token
        (lambda alphas: right(alphas[:-1]), "product"),  # off by one: the last proposal dropped
    ):
        report = _run(ch10.check_expected_tokens_varying, wrong)
        assert not report.passed and word in _first_failure(report).hint


# ---------------------------------------------------------------- best k with a measured verification cost
def _best_k(alpha, c, verify_cost, cost=lambda k, c, v: k * c + v[k], tie=min):
    def tokens(k):
        return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)

    scores = {k: tokens(k) / cost(k, c, verify_cost) for k in verify_cost}
    best = max(scores.values())
    return tie(k for k, s in scores.items() if s == best)


def test_best_k_measured_right_and_wrong():
    assert _run(ch10.check_best_k_measured, _best_k).passed
    ignores_verify = lambda a, c, v: _best_k(a, c, v, cost=lambda k, c, v: k * c + 1)  # noqa: E731
    report = _run(ch10.check_best_k_measured, ignores_verify)
    assert not report.passed and "verify_cost[k]" in _first_failure(report).hint
    range_not_keys = lambda a, c, v: _best_k(a, c, {k: v.get(k, 1.0) for k in range(1, 9)})  # noqa: E731
    report = _run(ch10.check_best_k_measured, range_not_keys)
    assert not report.passed and "keys" in _first_failure(report).hint
    largest_on_tie = lambda a, c, v: _best_k(a, c, v, tie=max)  # noqa: E731
    report = _run(ch10.check_best_k_measured, largest_on_tie)
    assert not report.passed and "smallest k" in _first_failure(report).hint


# ---------------------------------------------------------------- Markov chains
def _markov(P, Q, start, k, accept=lambda P, Q: torch.minimum(P, Q), bonus=1.0):
    acc = torch.zeros(P.shape[0], dtype=torch.float64)
    for _ in range(k):
        acc = (accept(P, Q) * (1 + acc[None, :])).sum(1)
    return bonus + float(acc[start])


def test_markov_right_and_wrong():
    assert _run(ch10.check_markov_tokens_per_pass, _markov).passed

    def constant_alpha(P, Q, start, k):  # the theorem's formula with the start state's alpha
        a = float(torch.minimum(P[start], Q[start]).sum())
        return float(k + 1) if a == 1 else (1 - a ** (k + 1)) / (1 - a)

    for wrong in (
        constant_alpha,
        lambda P, Q, s, k: _markov(P, Q, s, k, accept=lambda P, Q: Q),  # every proposal kept
        lambda P, Q, s, k: _markov(P, Q, s, k, bonus=0.0),  # forgot the target's own token
        lambda P, Q, s, k: _markov(P, Q, s, k, accept=lambda P, Q: P * Q),  # p * q is not the acceptance
    ):
        report = _run(ch10.check_markov_tokens_per_pass, wrong)
        assert not report.passed
        assert "min(P[s, x], Q[s, x])" in _first_failure(report).hint or "1 token" in _first_failure(report).hint
