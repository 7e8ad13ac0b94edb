"""Checkers for the exercises of chapter 1 (seq2seq with attention).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
implementation in :mod:`transformer_book.seq2seq` / :mod:`transformer_book.data.numbers`,
prints a short verdict and returns a :class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import torch

from transformer_book.data.numbers import GERMAN_MORPHEMES, german_word, split_german
from transformer_book.exercises.core import Case, CheckReport, check_function
from transformer_book.seq2seq import additive_scores, dot_scores, masked_softmax

__all__ = [
    "check_additive_score",
    "check_dot_attention_weights",
    "check_split_german",
    "check_local_p_weights",
    "check_general_score",
]


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _additive_no_tanh(query, keys, w_query, w_key, v):  # a known mistake: tanh left out
    return ((query @ w_query.T)[:, :, None] + (keys @ w_key.T)[:, None]) @ v


def _additive_tanh_outside(query, keys, w_query, w_key, v):  # a known mistake: tanh of the score
    return torch.tanh(_additive_no_tanh(query, keys, w_query, w_key, v))


def _additive_swapped(query, keys, w_query, w_key, v):  # a known mistake: W_k on the query
    return additive_scores(query, keys, w_key, w_query, v)


def _additive_summed(query, keys, w_query, w_key, v):  # a known mistake: v left out
    return torch.tanh((query @ w_query.T)[:, :, None] + (keys @ w_key.T)[:, None]).sum(-1)


def check_additive_score(fn, *, quiet: bool = False) -> CheckReport:
    """ex-01-additive-score: ``fn(query, keys, w_query, w_key, v) -> (B, T, S)``, without a Python loop."""
    hint = ("Project first: q = query @ w_query.T is (B, T, A), k = keys @ w_key.T is (B, S, A). "
            "Add every query to every key with q[:, :, None, :] + k[:, None, :, :] (B, T, S, A), "
            "take tanh, then the dot product with v over the last axis.")
    cases = []
    # (B, T, S, C_q, C_k, A): query and key widths differ so that swapped weights cannot pass.
    for i, (B, T, S, Cq, Ck, A) in enumerate([(1, 1, 1, 3, 3, 2), (2, 3, 4, 5, 6, 7), (3, 5, 2, 4, 8, 3),
                                              (2, 1, 6, 6, 4, 5)]):
        cases.append(Case(
            args=(_randn(B, T, Cq, seed=10 * i), _randn(B, S, Ck, seed=10 * i + 1), _randn(A, Cq, seed=10 * i + 2),
                  _randn(A, Ck, seed=10 * i + 3), _randn(A, seed=10 * i + 4)),
            label=f"B={B}, T={T}, S={S}, C_q={Cq}, C_k={Ck}, A={A}", hint=hint))
    big = (_randn(1, 2, 3, seed=99) * 50, _randn(1, 4, 3, seed=98) * 50, _randn(2, 3, seed=97), _randn(2, 3, seed=96),
           _randn(2, seed=95))
    cases.append(Case(args=big, label="large inputs (tanh saturates at +-1)",
                      hint="tanh goes inside the sum with v, after adding the projected query and key."))
    # Last: half a million (b, i, j) pairs. Broadcasting does them in milliseconds; a Python loop over
    # the pairs (the chapter's reference check) runs past the time limit.
    cases.append(Case(
        args=(_randn(32, 128, 8, seed=90), _randn(32, 128, 6, seed=91), _randn(8, 8, seed=92),
              _randn(8, 6, seed=93), _randn(8, seed=94)),
        label="B=32, T=S=128: half a million (query, key) pairs",
        hint=("A Python loop over (b, i, j) is far too slow here: broadcast instead, a (B, T, 1, A) "
              "tensor plus a (B, 1, S, A) one gives all pairs at once.")))
    mistakes = [
        (_additive_no_tanh, "tanh is missing: the score is v . tanh(W_q q + W_k k), the tanh applied to the "
                            "sum of the projected query and key, before the dot product with v."),
        (_additive_tanh_outside, "tanh is in the wrong place: it squashes the (A,)-vector W_q q + W_k k, "
                                 "before the dot product with v, not the final score."),
        (_additive_swapped, "The weights are swapped: w_query projects the query (C_q -> A), w_key the keys "
                            "(C_k -> A)."),
        (_additive_summed, "v is missing: after the tanh take the dot product with v over the A features "
                           "(@ v), not a plain sum."),
    ]
    return check_function(fn, reference=additive_scores, cases=cases, exercise="ex-01-additive-score", quiet=quiet,
                          mistakes=mistakes)


def _dot_attention_weights_reference(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_softmax(dot_scores(query, keys), mask[:, None, :])


def check_dot_attention_weights(fn, *, quiet: bool = False) -> CheckReport:
    """ex-01-dot-attention: ``fn(query, keys, mask) -> weights (B, T, S)``, 0 where ``mask`` is False."""
    hint = ("Scores are query @ keys.transpose(1, 2), shape (B, T, S). The mask (B, S) must become "
            "(B, 1, S) to cover every query; fill masked scores with -inf before the softmax over the "
            "last axis, so that padding gets weight exactly 0 and the rest still sums to 1.")
    cases = []
    lengths = [[3], [4, 2], [1, 5, 3], [6, 6]]
    for i, lens in enumerate(lengths):
        B, S, T, C = len(lens), max(lens), 2 + i, 4
        mask = torch.arange(S)[None, :] < torch.tensor(lens)[:, None]
        label = f"no padding (B={B}, S={S})" if min(lens) == S else f"source lengths {lens} padded to {S}"
        cases.append(Case(args=(_randn(B, T, C, seed=20 + i), _randn(B, S, C, seed=30 + i), mask), label=label,
                          hint=hint))
    q, k = _randn(2, 3, 4, seed=40) * 30, _randn(2, 5, 4, seed=41) * 30
    cases.append(Case(args=(q, k, torch.tensor([[True] * 5, [True, True, False, False, False]])),
                      label="large scores (a naive exp overflows)",
                      hint="Use torch.softmax (it subtracts the row maximum) rather than exp / sum."))
    def scores(q, k):
        return q @ k.transpose(1, 2)

    mistakes = [
        (lambda q, k, m: scores(q, k).softmax(-1),
         "The mask is ignored: padding keys get weight. Fill their scores with -inf before the softmax."),
        (lambda q, k, m: scores(q, k).softmax(-1) * m[:, None, :],
         "You zeroed the padding after the softmax: the rows no longer sum to 1. Mask the scores (-inf) "
         "*before* the softmax, so the real tokens share the whole weight."),
        (lambda q, k, m: scores(q, k).masked_fill(~m[:, None, :], float("-inf")).softmax(1),
         "The softmax runs over the wrong axis: normalise over the keys, the last dimension (dim=-1)."),
    ]
    return check_function(fn, reference=_dot_attention_weights_reference, cases=cases,
                          exercise="ex-01-dot-attention", quiet=quiet, mistakes=mistakes)


def _split_shorter_first(word):  # a known mistake: shortest (or list-order) match first
    by_length = sorted(GERMAN_MORPHEMES, key=len)
    pieces, i = [], 0
    while i < len(word):
        piece = next(m for m in by_length if word.startswith(m, i))
        pieces.append(piece)
        i += len(piece)
    return pieces


def check_split_german(fn, *, quiet: bool = False) -> CheckReport:
    """ex-01-split-german: ``fn(word) -> list of morphemes`` from GERMAN_MORPHEMES."""
    hint = ("Walk through the word; at each position try the morphemes longest first (sorted by len, "
            "reverse=True) and take the first the rest of the word starts with (str.startswith(m, i)).")
    hints = {13: "'dreizehn' is one morpheme (13), not 'drei' + 'zehn': prefer the longest morpheme that fits.",
             1: "'eins' is one morpheme: 'ein' also fits, but leaves an 's' that no morpheme starts with."}
    numbers = [24, 13, 0, 1, 17, 101, 1_024, 13_003, 66, 777_777, 372_845, 210_011, 101_001]
    cases = [Case(args=(german_word(x),), label=f"{german_word(x)!r} ({x:,})", hint=hints.get(x, hint))
             for x in numbers]
    mistakes = [
        (_split_shorter_first,
         "A shorter morpheme was taken where a longer one fits ('drei' + 'zehn' for 'dreizehn'): at each "
         "position try the longest morphemes first. (A regular expression 'a|b|...' also tries its "
         "alternatives in the order written, not the longest first.)"),
        (lambda word: [word], "You returned the whole word as one piece: cut it into its morphemes."),
        (lambda word: [m for m in split_german(word) if m != "und"],
         "The pieces 'und' are missing: the English side drops 'and', but 'und' is a German morpheme "
         "and stays."),
        (lambda word: " ".join(split_german(word)), "Return a list of str, not one string joined by spaces."),
    ]
    return check_function(fn, reference=split_german, cases=cases, exercise="ex-01-split-german", quiet=quiet,
                          mistakes=mistakes)


def _local_offsets(scores, position):
    # (B, T, S): j - p_i for every source position j; p stays a float (never rounded).
    return torch.arange(scores.shape[-1], dtype=scores.dtype) - position[..., None]


def _local_window_softmax(scores, position, width, mask, *, centre=None, strict=False):
    # Softmax over the window |j - p| <= D of real tokens; `centre`/`strict`: known mistakes.
    centre = position if centre is None else centre
    offsets = _local_offsets(scores, centre).abs()
    window = offsets < width if strict else offsets <= width
    return masked_softmax(scores, window & mask[:, None, :])


def _local_gaussian(scores, position, sigma, *, two=True):
    offsets = _local_offsets(scores, position)
    return torch.exp(-offsets**2 / ((2 if two else 1) * sigma**2))


def _local_p_reference(scores, position, width, mask):
    # Luong et al.'s local-p: a_ij = softmax over the window of the scores * exp(-(j - p)^2 / (2 sigma^2)),
    # sigma = D / 2, with no renormalisation after the Gaussian.
    return _local_window_softmax(scores, position, width, mask) * _local_gaussian(scores, position, width / 2)


def _local_case(B, T, S, width, positions, lengths, seed, scale=1.0):
    scores = _randn(B, T, S, seed=seed) * scale
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]
    return (scores, torch.tensor(positions, dtype=torch.float32), width, mask)


def check_local_p_weights(fn, *, quiet: bool = False) -> CheckReport:
    """ex-01-local-p-attention: ``fn(scores (B, T, S), position (B, T), width, mask (B, S)) -> (B, T, S)``,
    Luong et al.'s local-p weights: a softmax over the window [p - D, p + D] of real tokens, times a
    Gaussian of sigma D / 2, not renormalised."""
    hint = ("The window of row (b, i) holds the positions j = 0..S-1 with |j - p| <= D (p not rounded) that are "
            "real tokens: fill every other score with -inf, take the softmax over the last axis, then multiply "
            "by exp(-(j - p)^2 / (2 sigma^2)) with sigma = width / 2, and stop there (no renormalising).")
    cases = [
        Case(args=_local_case(1, 1, 7, 2, [[3.0]], [7], seed=60), label="p = 3, width = 2: the window is 1..5 of 7",
             hint=hint),
        Case(args=_local_case(2, 3, 9, 3, [[2.4, 5.7, 4.5], [1.25, 6.9, 3.1]], [9, 9], seed=61),
             label="p between two positions, width = 3",
             hint=("p is a real number: the window holds the integers j with p - D <= j <= p + D (for p = 2.4, "
                   "D = 3: 0..5), and the Gaussian is centred on p itself. " + hint)),
        Case(args=_local_case(1, 3, 6, 2, [[0.3, 5.0, 4.6]], [6], seed=62),
             label="windows cut at the start and the end of the source",
             hint=("A window that crosses the start or the end of the source keeps only the positions 0..S-1 "
                   "inside it (beware of negative indices: in Python x[-1] is the last element). " + hint)),
        Case(args=_local_case(3, 2, 7, 2, [[1.5, 3.0], [2.2, 5.8], [0.0, 1.0]], [4, 7, 2], seed=63),
             label="source lengths [4, 7, 2] padded to 7",
             hint=("mask (B, S) must become (B, 1, S) and be combined (&) with the window: padding inside the "
                   "window gets weight exactly 0. " + hint)),
        Case(args=_local_case(2, 4, 5, 1, [[0.0, 1.5, 2.7, 4.0], [3.3, 0.8, 2.0, 4.4]], [5, 5], seed=64),
             label="width = 1: at most three positions", hint=hint),
        Case(args=_local_case(2, 2, 5, 8, [[1.0, 3.6], [0.4, 2.0]], [5, 3], seed=65),
             label="width = 8, wider than the source (S = 5)",
             hint=("The window covers the whole source here, but the Gaussian (sigma = width / 2) still "
                   "multiplies the softmax. " + hint)),
        Case(args=_local_case(2, 3, 6, 2, [[1.0, 2.5, 4.0], [0.5, 1.5, 3.2]], [6, 4], seed=66, scale=1000.0),
             label="large scores (a naive exp overflows)",
             hint="Use torch.softmax (it subtracts the row maximum) rather than exp / sum."),
        Case(args=_local_case(1, 2, 8, 2, [[6.5, 1.0]], [3], seed=67),
             label="a window over padding only: that row is all 0",
             hint=("Row 0's window (p = 6.5, width = 2: positions 5..7) holds only padding: nothing to attend "
                   "to, so its weights are all 0, not NaN (a softmax of all -inf is 0/0 = NaN; the chapter's "
                   "masked_softmax zeroes such rows).")),
    ]

    def no_window(scores, position, width, mask):
        return masked_softmax(scores, mask[:, None, :]) * _local_gaussian(scores, position, width / 2)

    def cut_after(scores, position, width, mask):
        window = _local_offsets(scores, position).abs() <= width
        return no_window(scores, position, width, mask) * window

    def renormalised(scores, position, width, mask):
        weights = _local_p_reference(scores, position, width, mask)
        return weights / weights.sum(-1, keepdim=True)

    def sigma_is(scores, position, width, mask, sigma, two=True):
        return (_local_window_softmax(scores, position, width, mask)
                * _local_gaussian(scores, position, sigma, two=two))

    def centred(scores, position, width, mask, centre):
        return (_local_window_softmax(scores, position, width, mask, centre=centre)
                * _local_gaussian(scores, position, width / 2))

    def strict(scores, position, width, mask):
        return (_local_window_softmax(scores, position, width, mask, strict=True)
                * _local_gaussian(scores, position, width / 2))

    def all_rounded(scores, position, width, mask):
        p = position.round()
        return _local_p_reference(scores, p, width, mask)

    def ignores_mask(scores, position, width, mask):
        return _local_p_reference(scores, position, width, torch.ones_like(mask))

    rounded = ("The window was built around a rounded p (round, floor or int): Luong et al.'s window is "
               "[p - D, p + D] with p a real number, so it holds the integers j with p - D <= j <= p + D "
               "(2D of them when p is not an integer). Compare the float distance |j - p| with D.")
    mistakes = [
        (no_window,
         "No window: positions farther than D from p still get weight (the Gaussian makes them small, not 0). "
         "Keep only |j - p| <= D: fill the other scores with -inf before the softmax."),
        (cut_after,
         "You took the softmax over the whole source, then cut the window out: the softmax must run over the "
         "window only (-inf outside it *before* the softmax), so the window's positions share the whole weight."),
        (renormalised,
         "You renormalised after the Gaussian: Luong et al. multiply the softmax weights by the Gaussian and "
         "stop there, so a row sums to less than 1. Drop the final division."),
        (lambda scores, position, width, mask: sigma_is(scores, position, width, mask, width),
         "sigma is D / 2, not D: the Gaussian is exp(-(j - p)^2 / (2 sigma^2)) with sigma = width / 2."),
        (lambda scores, position, width, mask: sigma_is(scores, position, width, mask, width // 2),
         "sigma = width // 2 rounds it down: sigma is width / 2, a float (1.5 for width = 3)."),
        (lambda scores, position, width, mask: sigma_is(scores, position, width, mask, (width / 2) ** 0.5),
         "The Gaussian divides by 2 sigma^2, sigma squared: exp(-(j - p)^2 / (2 (width / 2)^2))."),
        (lambda scores, position, width, mask: sigma_is(scores, position, width, mask, width / 2, two=False),
         "The Gaussian's denominator is 2 sigma^2: the factor 2 is missing."),
        (lambda scores, position, width, mask: centred(scores, position, width, mask, position.round()), rounded),
        (lambda scores, position, width, mask: centred(scores, position, width, mask, position.floor()), rounded),
        (all_rounded,
         "p was rounded: Luong et al.'s p is a real number; both the window [p - D, p + D] and the Gaussian's "
         "centre use it as it is."),
        (strict,
         "The window's ends are missing: it is the closed interval [p - D, p + D], |j - p| <= D, not < D."),
        (ignores_mask,
         "The mask is ignored: padding inside the window gets weight. Combine the window with mask[:, None, :] "
         "(&) before the softmax."),
    ]
    return check_function(fn, reference=_local_p_reference, cases=cases, exercise="ex-01-local-p-attention",
                          quiet=quiet, mistakes=mistakes)


def _general_score_reference(query, keys, w):
    # Luong's "general" score: e_bij = q_bi^T W k_bj, one bilinear form for every pair.
    return torch.einsum("btq,qk,bsk->bts", query, w, keys)


def check_general_score(fn, *, quiet: bool = False) -> CheckReport:
    """ex-01-general-score: ``fn(query (B, T, C_q), keys (B, S, C_k), w (C_q, C_k)) -> (B, T, S)``,
    Luong et al.'s "general" score ``q^T W k`` (a variant the chapter does not build)."""
    hint = ("e[b, i, j] = query[b, i] @ w @ keys[b, j]: map the queries with w (query @ w, shape (B, T, C_k)), "
            "then take dot products with every key (@ keys.transpose(1, 2)).")
    cases = [
        Case(args=(_randn(1, 1, 3, seed=1), _randn(1, 1, 3, seed=2), torch.eye(3)),
             label="W = identity: the dot score", hint="With W = I the score is q · k."),
        Case(args=(_randn(2, 3, 4, seed=3), _randn(2, 5, 4, seed=4), _randn(4, 4, seed=5)),
             label="square W (4, 4), T=3, S=5", hint=hint),
        Case(args=(_randn(2, 3, 4, seed=6), _randn(2, 5, 6, seed=7), _randn(4, 6, seed=8)),
             label="rectangular W (C_q=4, C_k=6)", hint=hint),
        Case(args=(_randn(3, 2, 5, seed=9), _randn(3, 7, 5, seed=10), _randn(5, 5, seed=11)),
             label="batch of 3: each batch element with its own keys", hint=hint),
    ]
    mistakes = [
        (lambda q, k, w: q @ w.T @ k.transpose(1, 2),
         "W is transposed: the score is q^T W k, so the query meets W's rows (query @ w), not its columns."),
        (lambda q, k, w: q @ k.transpose(1, 2),
         "W is missing: that is the dot score. Map the queries with W first."),
        (lambda q, k, w: (q @ w @ k.transpose(1, 2)) / (k.shape[-1] ** 0.5),
         "No 1/sqrt(d) scale in Luong's general score: return q^T W k as it is."),
        (lambda q, k, w: (q @ w) @ k[:1].transpose(1, 2),
         "Every batch element was scored against batch 0's keys: batch b's queries meet batch b's own "
         "keys (a batched product over B)."),
    ]
    return check_function(fn, reference=_general_score_reference, cases=cases, exercise="ex-01-general-score",
                          quiet=quiet, mistakes=mistakes)
