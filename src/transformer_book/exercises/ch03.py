"""Checkers for the exercises of chapter 3 (embeddings and positions).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
implementation in :mod:`transformer_book.positional`, prints a short verdict and returns a
:class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import torch

from transformer_book.exercises.core import Case, CheckReport, check_function, compare_values
from transformer_book.positional import alibi_slopes, apply_rope, sinusoidal_encoding

__all__ = ["check_sinusoidal", "check_rope", "check_alibi_slopes", "check_partial_rope", "check_interpolated_rope"]


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _sinusoidal_reference(n_positions, d_model):
    return sinusoidal_encoding(n_positions, d_model)


def check_sinusoidal(fn, *, quiet: bool = False) -> CheckReport:
    """ex-03-sinusoidal: ``fn(n_positions, d_model) -> (n_positions, d_model)`` sinusoidal table."""
    formula_hint = ("PE[p, 2i] = sin(p / 10000^(2i/d)) and PE[p, 2i+1] = cos(p / 10000^(2i/d)): the exponent "
                    "uses 2i (the even dimension index), and both members of pair i share the frequency.")
    layout_hint = "Interleave: sines in the even columns (0::2), cosines in the odd ones (1::2)."
    cases = [
        Case(args=(1, 2), label="one position, d=2", hint="Position 0: sin(0) = 0, cos(0) = 1."),
        Case(args=(4, 4), label="4 positions, d=4", hint=layout_hint),
        Case(args=(50, 16), label="50 positions, d=16", hint=formula_hint),
        Case(args=(10, 128), label="10 positions, d=128", hint=formula_hint),
    ]
    d_index = lambda d: [k ^ 1 for k in range(d)]  # noqa: E731 - swaps each (sin, cos) pair
    mistakes = [
        (lambda n, d: sinusoidal_encoding(n, d)[:, d_index(d)],
         "Sine and cosine are swapped: the sine goes in the even columns (2i), the cosine in the odd ones."),
        (lambda n, d: torch.cat((sinusoidal_encoding(n, d)[:, 0::2], sinusoidal_encoding(n, d)[:, 1::2]), 1),
         "All sines first, then all cosines: interleave them instead (sines in columns 0::2, cosines in 1::2)."),
        (_sinusoidal_exponent_i,
         "The frequencies are off: the exponent is 2i/d with i the pair index (so 0, 2, 4, ... over d), "
         "not i/d."),
    ]
    return check_function(fn, reference=_sinusoidal_reference, cases=cases, exercise="ex-03-sinusoidal",
                          check_dtype=False, atol=1e-5, quiet=quiet, mistakes=mistakes)


def _sinusoidal_exponent_i(n_positions, d_model):  # a known mistake: exponent i/d instead of 2i/d
    p = torch.arange(n_positions, dtype=torch.float64)[:, None]
    angle = p / 10000 ** (torch.arange(d_model // 2, dtype=torch.float64) / d_model)
    return torch.stack((angle.sin(), angle.cos()), -1).flatten(1).float()


def _rope_reference(x, positions):
    return apply_rope(x, positions)


def check_rope(fn, *, quiet: bool = False) -> CheckReport:
    """ex-03-rope: ``fn(x, positions)``: RoPE with adjacent pairs ``(x[..., 2i], x[..., 2i+1])``."""
    pair_hint = ("Pair i is (x[..., 2i], x[..., 2i + 1]), rotated counter-clockwise by p * w_i: "
                 "(a, b) -> (a cos - b sin, a sin + b cos).")
    freq_hint = "w_i = 10000^(-2i / D) for i = 0 .. D/2 - 1, and the angle is position * w_i."
    cases = [
        Case(args=(torch.tensor([[1.0, 0.0]]), torch.tensor([1])), label="one pair (1, 0) at position 1, D=2",
             hint="With D=2 the only frequency is w_0 = 1: (1, 0) turns into (cos 1, sin 1)."),
        Case(args=(torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]]), torch.tensor([0, 2, 7])),
             label="three one-pair vectors at positions 0, 2, 7", hint=pair_hint),
        Case(args=(_randn(1, 1, 5, 8, seed=1), torch.arange(5)), label="(1, 1, 5, 8), positions 0..4",
             hint=pair_hint),
        Case(args=(_randn(2, 3, 7, 16, seed=2), torch.arange(7) + 100), label="(2, 3, 7, 16), positions 100..106",
             hint=freq_hint),
        Case(args=(_randn(1, 2, 4, 6, seed=3), torch.zeros(4, dtype=torch.long)), label="position 0 everywhere",
             hint="At position 0 the angle is 0: the output equals x."),
    ]
    mistakes = [
        (lambda x, pos: apply_rope(x, -pos), "The rotation goes the wrong way (clockwise): (a, b) -> "
                                             "(a cos - b sin, a sin + b cos), with + in the second."),
        (lambda x, pos: apply_rope(x, pos, pairing="half"),
         "You paired dimension i with i + D/2 (the 'half' layout of GPT-NeoX/Llama): this exercise pairs "
         "adjacent dimensions (2i, 2i + 1)."),
        (_rope_exponent_i, "The frequencies are off: w_i = 10000^(-2i/D) for pair i (exponent 2i/D), not "
                           "10000^(-i/D)."),
    ]
    return check_function(fn, reference=_rope_reference, cases=cases, exercise="ex-03-rope", atol=1e-5,
                          quiet=quiet, mistakes=mistakes)


def _rope_exponent_i(x, positions):  # a known mistake: exponent i/D instead of 2i/D
    d = x.shape[-1]
    angle = positions.double()[:, None] * 10000 ** (-torch.arange(d // 2, dtype=torch.float64) / d)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


def _slopes_compare(expected, received):
    if isinstance(received, torch.Tensor):
        received = received.detach().double().flatten().tolist()
    if not isinstance(received, (list, tuple)):
        return f"output is a {type(received).__name__}; expected a list (or 1-D tensor) of floats"
    try:
        received = [float(r) for r in received]
    except (TypeError, ValueError):
        return "output holds something that is not a number"
    return compare_values([float(e) for e in expected.tolist()], received, atol=1e-7, rtol=1e-5)


def check_alibi_slopes(fn, *, quiet: bool = False) -> CheckReport:
    """ex-03-alibi-slopes: ``fn(n_heads)`` -> the ALiBi head slopes (a list or 1-D tensor)."""
    power_hint = "For n heads (a power of two), slope h (h = 1..n) is 2^(-8h/n): the first is 2^(-8/n), the last 2^(-8)."
    other_hint = ("Not a power of two: take the slopes of the largest power of two n' < n, then append "
                  "every other slope (indices 0, 2, 4, ...) of the 2n' sequence until there are n.")
    cases = [
        Case(args=(8,), label="8 heads", hint=power_hint),
        Case(args=(1,), label="1 head", hint=power_hint),
        Case(args=(2,), label="2 heads", hint=power_hint),
        Case(args=(16,), label="16 heads", hint=power_hint),
        Case(args=(6,), label="6 heads (not a power of two)", hint=other_hint),
        Case(args=(12,), label="12 heads (not a power of two)", hint=other_hint),
        Case(args=(3,), label="3 heads (not a power of two)", hint=other_hint),
    ]
    mistakes = [  # as tensors, like the reference: _slopes_compare takes the expected value as one
        (lambda n: torch.tensor([2 ** (-8 * h / n) for h in range(n)]),
         "Off by one: h runs from 1 to n, so the first slope is 2^(-8/n), not 2^0 = 1."),
        (lambda n: torch.tensor([2 ** (-8 * h / n) for h in range(1, n + 1)]),
         "For a number of heads that is not a power of two, the formula 2^(-8h/n) is not used as it is: "
         "take the n' slopes of the largest power of two n' < n, then every other slope of the 2n' sequence."),
        (_slopes_odd_indices,
         "The extra slopes are those at indices 0, 2, 4, ... of the 2n'-head sequence (its odd-numbered "
         "heads h = 1, 3, 5, ...), not indices 1, 3, 5, ...."),
    ]
    return check_function(fn, reference=alibi_slopes, cases=cases, exercise="ex-03-alibi-slopes",
                          compare=_slopes_compare, quiet=quiet, mistakes=mistakes)


def _slopes_odd_indices(n):  # a known mistake: the extra slopes at indices 1, 3, 5, ...
    below = 2 ** (n.bit_length() - 1)
    power = lambda m: [2 ** (-8 * h / m) for h in range(1, m + 1)]  # noqa: E731
    return torch.tensor(power(below) + power(2 * below)[1::2][: n - below])


def _partial_rope_reference(x, positions, n_rot):
    # Partial rotary embedding (GPT-NeoX, Black et al., 2022; GPT-J): RoPE over the first n_rot
    # dimensions only, with the frequencies of an n_rot-dimensional RoPE; the rest pass through.
    return torch.cat((apply_rope(x[..., :n_rot], positions), x[..., n_rot:]), dim=-1)


def check_partial_rope(fn, *, quiet: bool = False) -> CheckReport:
    """ex-03-partial-rope: ``fn(x (..., T, D), positions (T,), n_rot) -> (..., T, D)``: RoPE (adjacent
    pairs, ``w_i = 10000^(-2i/n_rot)``) on ``x[..., :n_rot]``; ``x[..., n_rot:]`` unchanged."""
    which_hint = ("Only the first n_rot dimensions, x[..., :n_rot], are rotated; x[..., n_rot:] is returned "
                  "as it is, after them.")
    freq_hint = ("The rotated part is a RoPE of width n_rot: pair i = (x[..., 2i], x[..., 2i + 1]) turns by "
                 "p * w_i with w_i = 10000^(-2i / n_rot), i = 0 .. n_rot/2 - 1.")
    cases = [
        Case(args=(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), torch.tensor([1]), 2),
             label="(1, 0, 1, 0) at position 1, D=4, n_rot=2",
             hint="One rotated pair, frequency w_0 = 1: (1, 0) turns into (cos 1, sin 1); the second pair "
                  "(1, 0) stays as it is."),
        Case(args=(_randn(1, 1, 5, 8, seed=4), torch.arange(5), 4), label="(1, 1, 5, 8), positions 0..4, n_rot=4",
             hint=freq_hint),
        Case(args=(_randn(2, 3, 7, 16, seed=5), torch.arange(7) + 100, 4),
             label="(2, 3, 7, 16), positions 100..106, n_rot=4 (a quarter, as in GPT-NeoX)", hint=freq_hint),
        Case(args=(_randn(6, 12, seed=6), torch.arange(6), 6), label="(T, D) = (6, 12), n_rot=6", hint=which_hint),
        Case(args=(_randn(2, 2, 3, 64, seed=7), torch.tensor([0, 9, 513]), 16),
             label="(2, 2, 3, 64), positions 0, 9, 513, n_rot=16", hint=freq_hint),
        Case(args=(_randn(1, 2, 6, 8, seed=8), torch.arange(6), 8), label="n_rot = D: plain RoPE",
             hint="With n_rot = D every pair turns: the answer is ex-03-rope's, adjacent pairs (2i, 2i + 1)."),
    ]
    mistakes = [
        (lambda x, pos, n: apply_rope(x, pos),
         "You rotated all D dimensions: only the first n_rot turn, x[..., n_rot:] passes through unchanged."),
        (lambda x, pos, n: torch.cat((x[..., : x.shape[-1] - n], apply_rope(x[..., x.shape[-1] - n :], pos)), -1),
         "You rotated the last n_rot dimensions: the rotated ones are the first n_rot, x[..., :n_rot], "
         "followed by the unchanged x[..., n_rot:]."),
        (_partial_rope_frequencies_of_d,
         "The frequencies are off: they are those of a RoPE of width n_rot, w_i = 10000^(-2i/n_rot), "
         "not 10000^(-2i/D) with D the full head width."),
        (lambda x, pos, n: torch.cat((apply_rope(x[..., :n], pos, pairing="half"), x[..., n:]), -1),
         "You paired dimension i with i + n_rot/2 (the 'half' layout of the GPT-NeoX and Llama code): this "
         "exercise pairs adjacent dimensions (2i, 2i + 1), as in ex-03-rope."),
    ]
    return check_function(fn, reference=_partial_rope_reference, cases=cases, exercise="ex-03-partial-rope",
                          atol=1e-5, quiet=quiet, mistakes=mistakes)


def _partial_rope_frequencies_of_d(x, positions, n_rot):  # a known mistake: w_i = 10000^(-2i/D)
    # 10000^(-2i/D) = (10000^(n_rot/D))^(-2i/n_rot): an n_rot-wide RoPE with that base
    return torch.cat((apply_rope(x[..., :n_rot], positions, base=10000 ** (n_rot / x.shape[-1])),
                      x[..., n_rot:]), dim=-1)


def _interpolated_rope_reference(x, train_len):
    # Position interpolation (Chen et al., 2023): squeeze positions 0..T-1 into the trained range
    # [0, train_len) by a factor train_len / T when T > train_len; shorter inputs are unchanged.
    n = x.shape[-2]
    positions = torch.arange(n, dtype=torch.float32) * min(1.0, train_len / n)
    return apply_rope(x, positions)


def check_interpolated_rope(fn, *, quiet: bool = False) -> CheckReport:
    """ex-03-interpolated-rope: ``fn(x (..., T, D), train_len) -> (..., T, D)``: RoPE (adjacent pairs,
    as in ex-03-rope) at positions ``p * train_len / T`` when ``T > train_len``, at ``p`` otherwise
    (a variant the chapter does not show: stretching a model trained on ``train_len`` positions)."""
    g = torch.Generator().manual_seed(3)
    scale_hint = ("Scale the positions by train_len / T only when T > train_len (then the last position is "
                  "just below train_len); fractional positions are fine for RoPE.")
    cases = [
        Case(args=(torch.randn(1, 6, 8, generator=g), 16), label="T=6 <= train_len=16: plain RoPE",
             hint="Shorter than training: the positions stay 0..T-1."),
        Case(args=(torch.randn(2, 32, 8, generator=g), 16), label="T=32, train_len=16: positions halved",
             hint=scale_hint),
        Case(args=(torch.randn(2, 3, 20, 4, generator=g), 8), label="(B, H, T, D) with T=20, train_len=8",
             hint=scale_hint),
        Case(args=(torch.randn(1, 16, 8, generator=g), 16), label="T = train_len: unchanged", hint=scale_hint),
    ]
    mistakes = [
        (lambda x, L: apply_rope(x, torch.arange(x.shape[-2], dtype=torch.float32)),
         "The positions were not interpolated: when T > train_len, use p * train_len / T."),
        (lambda x, L: apply_rope(x, torch.arange(x.shape[-2], dtype=torch.float32) * (L / x.shape[-2])),
         "Short inputs must stay as they are: scale only when T > train_len (min(1, train_len / T))."),
        (lambda x, L: apply_rope(x, torch.arange(x.shape[-2], dtype=torch.float32)
                                 * min(1.0, (L - 1) / (x.shape[-2] - 1))),
         "The factor is train_len / T (positions 0..T-1 become 0 .. train_len * (T - 1) / T), not "
         "(train_len - 1) / (T - 1)."),
    ]
    return check_function(fn, reference=_interpolated_rope_reference, cases=cases,
                          exercise="ex-03-interpolated-rope", quiet=quiet, mistakes=mistakes)
