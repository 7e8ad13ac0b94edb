"""Checkers for the exercises of chapter 10 (speculative decoding).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with a reference
written here (the chapter does not print these answers), prints a short verdict and returns a
:class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import torch

from transformer_book.exercises.core import Case, CheckReport, check_function

__all__ = ["check_break_even_alpha", "check_expected_tokens_varying", "check_best_k_measured",
           "check_markov_tokens_per_pass"]


def _speedup(alpha: float, c: float, k: int) -> float:
    tokens = float(k + 1) if alpha == 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
    return tokens / (k * c + 1.0)


def _break_even_reference(c: float, k: int) -> float:
    # The speedup grows with alpha (from 1 / (k c + 1) at alpha = 0 to (k + 1) / (k c + 1) at 1):
    # bisection finds where it crosses 1.
    if _speedup(0.0, c, k) >= 1.0:
        return 0.0
    if _speedup(1.0, c, k) < 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _speedup(mid, c, k) < 1.0 else (lo, mid)
    return (lo + hi) / 2


def check_break_even_alpha(fn, *, quiet: bool = False) -> CheckReport:
    """ex-10-break-even: ``fn(c, k) -> alpha`` where Theorem 3.8's speedup equals 1."""
    hint = ("Solve (1 - alpha**(k+1)) / ((1 - alpha) * (k*c + 1)) = 1 for alpha: the left side grows with "
            "alpha, so bisection on [0, 1] works. Mind the k + 1 in the exponent and the + 1 in the cost.")
    cases = [Case(args=(c, k), label=f"c={c}, k={k}", hint=hint)
             for c, k in ((0.1, 1), (0.1, 4), (0.05, 8), (0.3, 2), (0.5, 3), (0.0, 3))]
    cases.append(Case(args=(1.0, 2), label="c=1.0, k=2 (a draft as slow as the target)",
                      hint="At c = 1 even alpha = 1 gives (k + 1) / (k + 1) = 1: the break-even point is alpha = 1."))
    return check_function(fn, reference=_break_even_reference, cases=cases, exercise="ex-10-break-even",
                          atol=1e-4, rtol=0.0, check_dtype=False, quiet=quiet)


def _varying_reference(alphas: list[float]) -> float:
    total, survive = 1.0, 1.0  # the target's own token, always there
    for a in alphas:
        survive *= a  # proposal j is kept only if proposals 1 .. j all are
        total += survive
    return total


def check_expected_tokens_varying(fn, *, quiet: bool = False) -> CheckReport:
    """ex-10-varying-alpha: ``fn(alphas) -> expected tokens per pass`` with a rate per position."""
    hint = ("Proposal j is kept only if proposals 1 .. j are all accepted: its chance is the product "
            "alpha_1 * ... * alpha_j. Add those chances, and 1 for the token the target always adds.")
    cases = [
        Case(args=([0.8, 0.8, 0.8],), label="constant alpha=0.8, k=3 (the theorem's case)", hint=hint),
        Case(args=([0.9, 0.7, 0.5, 0.3],), label="a draft that gets worse further out", hint=hint),
        Case(args=([1.0, 1.0],), label="always accepted, k=2", hint=hint),
        Case(args=([0.0, 0.9, 0.9],), label="the first proposal always rejected", hint=hint),
        Case(args=([],), label="k=0: no proposals", hint="With no proposals a pass yields exactly 1 token."),
        Case(args=([0.5],), label="k=1", hint=hint),
    ]
    return check_function(fn, reference=_varying_reference, cases=cases, exercise="ex-10-varying-alpha",
                          check_dtype=False, quiet=quiet)


def _best_k_reference(alpha: float, c: float, verify_cost: dict[int, float]) -> int:
    def speedup(k):
        tokens = float(k + 1) if alpha == 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
        return tokens / (k * c + verify_cost[k])

    return max(sorted(verify_cost), key=lambda k: (speedup(k), -k))


def check_best_k_measured(fn, *, quiet: bool = False) -> CheckReport:
    """ex-10-best-k-measured: ``fn(alpha, c, verify_cost) -> k`` maximising tokens / (k c + verify_cost[k])."""
    hint = ("A pass costs k draft steps (k * c target steps) plus one verification pass of k + 1 tokens, "
            "which costs verify_cost[k] target steps (not 1). Try every k in verify_cost; on a tie take "
            "the smallest k.")
    flat = {k: 1.0 for k in range(1, 9)}
    steep = {k: 1.0 + 0.25 * k for k in range(1, 9)}
    cases = [
        Case(args=(0.8, 0.05, flat), label="verify_cost = 1 for every k (the theorem)", hint=hint),
        Case(args=(0.8, 0.05, steep), label="verification costs 1 + 0.25 k target steps", hint=hint),
        Case(args=(0.6, 0.02, {1: 1.0, 2: 1.1, 4: 1.3, 8: 2.0}), label="only k in {1, 2, 4, 8} measured",
             hint="Return one of verify_cost's keys: those are the k that were measured."),
        Case(args=(0.95, 0.01, {k: 1.0 + 0.02 * k for k in range(1, 13)}), label="a very good draft", hint=hint),
        Case(args=(1.0, 0.0, {1: 2.0, 2: 3.0}), label="alpha=1, c=0: a tie between k=1 and k=2",
             hint="alpha = 1: a pass yields k + 1 tokens (the formula divides by zero). On a tie, the smallest k."),
    ]
    return check_function(fn, reference=_best_k_reference, cases=cases, exercise="ex-10-best-k-measured",
                          check_dtype=False, quiet=quiet)


def _markov_reference(P: torch.Tensor, Q: torch.Tensor, start: int, k: int) -> float:
    beta = torch.minimum(P, Q).double()  # (V, V): beta[s, x] = P(x proposed and accepted | state s)
    accepted = torch.zeros(P.shape[0], dtype=torch.float64)  # expected accepted proposals, 0 left
    for _ in range(k):
        # from state s: proposal x is accepted with probability min(P, Q)[s, x], then the chain is at x
        accepted = (beta * (1.0 + accepted[None, :])).sum(dim=1)
    return 1.0 + float(accepted[start])


def _markov_case(seed: int, v: int, sharp: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    P = torch.softmax(sharp * torch.randn(v, v, generator=g, dtype=torch.float64), dim=1)
    Q = torch.softmax(sharp * torch.randn(v, v, generator=g, dtype=torch.float64), dim=1)
    return P, Q


def check_markov_tokens_per_pass(fn, *, quiet: bool = False) -> CheckReport:
    """ex-10-markov: ``fn(P, Q, start, k)`` exact expected tokens per pass for Markov-chain target and draft."""
    hint = ("Work backwards from 0 proposals left. From state s, proposal x is accepted with probability "
            "min(P[s, x], Q[s, x]) (drawn from Q, kept with probability min(1, P/Q)); once accepted the "
            "chain is in state x with one proposal fewer left. Add 1 for the target's token at the end.")
    P3, Q3 = _markov_case(0, 3, 1.5)
    P5, Q5 = _markov_case(1, 5, 2.0)
    eye = torch.eye(4, dtype=torch.float64)
    cycle = torch.roll(eye, 1, dims=1)  # deterministic: state s -> s + 1
    cases = [
        Case(args=(P3, Q3, 0, 1), label="3 states, k=1", hint=hint),
        Case(args=(P3, Q3, 2, 3), label="3 states, k=3, start=2", hint=hint),
        Case(args=(P5, Q5, 1, 4), label="5 states, k=4", hint=hint),
        Case(args=(P5, P5, 3, 3), label="draft = target: every proposal accepted", hint=hint),
        Case(args=(cycle, eye, 0, 2), label="draft always wrong (it stays, the target moves)", hint=hint),
        Case(args=(P3, Q3, 1, 0), label="k=0", hint="With no proposals a pass yields exactly 1 token."),
    ]
    return check_function(fn, reference=_markov_reference, cases=cases, exercise="ex-10-markov",
                          check_dtype=False, quiet=quiet)
