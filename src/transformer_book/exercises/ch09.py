"""Checkers for the exercises of chapter 9 (FlashAttention).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
implementation in :mod:`transformer_book.flash`, prints a short verdict and returns a
:class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import torch

from transformer_book.exercises.core import Case, CheckReport, check_function
from transformer_book.flash import online_softmax_update, tiled_attention

__all__ = ["check_online_update", "check_causal_block_kind", "check_merge_attention", "check_window_block_kind"]

_NEG_INF = float("-inf")


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ----------------------------------------------------------------------------------------
# ex-09-online-update
# ----------------------------------------------------------------------------------------


def check_online_update(fn, *, quiet: bool = False) -> CheckReport:
    """ex-09-online-update: ``fn(m, l, x_block) -> (m_new, l_new)``, one online-softmax step."""
    rescale = ("When the maximum grows from m to m_new, the old sum was measured against m: multiply it "
               "by exp(m - m_new) before adding sum(exp(x_block - m_new)).")
    empty = ("Before the first block m = -inf and l = 0. If m_new is still -inf (every score so far is "
             "-inf), exp(x - m_new) computes -inf - (-inf) = NaN: measure against 0 instead (the sum stays 0).")
    start = (torch.full((3,), _NEG_INF), torch.zeros(3))
    m1 = torch.tensor([0.5, -1.0, 2.0])
    l1 = torch.tensor([1.0, 2.5, 1.2])
    masked = _randn(3, 4, seed=3)
    masked[:, 1] = _NEG_INF
    cases = [
        Case(args=(*start, _randn(3, 4, seed=1)), label="first block (m = -inf, l = 0)", hint=empty),
        Case(args=(m1, l1, _randn(3, 5, seed=2, scale=4.0)), label="a block that raises the max", hint=rescale),
        Case(args=(m1 + 10, l1, _randn(3, 2, seed=4)), label="a block below the max (no rescale)", hint=rescale),
        Case(args=(m1, l1, masked), label="masked (-inf) scores in the block", hint=rescale),
        Case(args=(*start, torch.full((3, 4), _NEG_INF)), label="an all -inf block first: (-inf, 0), no NaN",
             hint=empty),
        Case(args=(m1, l1, torch.tensor([[1e4, 1e4 - 2.0], [3.0, 1e4], [-5.0, -6.0]])),
             label="scores of 1e4 (exp would overflow)",
             hint="Never compute exp(x) on its own: subtract the (new) maximum first."),
        Case(args=(torch.full((2, 3), _NEG_INF), torch.zeros(2, 3), _randn(2, 3, 6, seed=5)),
             label="batched state (2, 3), block (2, 3, 6)",
             hint="Reduce over the last dimension only: x_block.amax(dim=-1), .sum(dim=-1)."),
    ]
    def update(m, l, x_block, *, rescale=True, guard=True, subtract=True, keep_old_max=True, sign=1.0):
        m_new = torch.maximum(m, x_block.amax(dim=-1)) if keep_old_max else x_block.amax(dim=-1)
        ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new) if guard else m_new
        if not subtract:
            return m_new, l + torch.exp(x_block).sum(dim=-1)
        alpha = torch.exp(sign * (m - ref)) if rescale else 1.0
        return m_new, l * alpha + torch.exp(x_block - ref.unsqueeze(-1)).sum(dim=-1)

    mistakes = [  # the NaN-making mistake first: a NaN answer is matched by the first mistake that makes it
        (lambda m, l, x: update(m, l, x, guard=False),
         "While every score so far is -inf, m_new is -inf and x - m_new computes -inf - (-inf) = NaN: "
         "measure against 0 instead in that case (the sum then stays 0)."),
        (lambda m, l, x: update(m, l, x, rescale=False),
         "The old sum is not rescaled: it was measured against the old maximum m, so multiply it by "
         "exp(m - m_new) before adding the block's terms."),
        (lambda m, l, x: update(m, l, x, sign=-1.0),
         "The rescaling factor is upside down: it is exp(m - m_new) <= 1 (the old sum shrinks when the "
         "maximum grows), not exp(m_new - m)."),
        (lambda m, l, x: update(m, l, x, keep_old_max=False),
         "The new maximum forgets the old one: m_new = max(m, the block's maximum)."),
        (lambda m, l, x: update(m, l, x, subtract=False),
         "You summed exp(x) itself: keep the sum relative to the running maximum, exp(x - m_new), or large "
         "scores overflow."),
    ]
    return check_function(fn, reference=online_softmax_update, cases=cases, exercise="ex-09-online-update",
                          quiet=quiet, mistakes=mistakes)


# ----------------------------------------------------------------------------------------
# ex-09-causal-blocks
# ----------------------------------------------------------------------------------------


def _causal_block_kind(q_start: int, q_stop: int, k_start: int, k_stop: int) -> str:
    if k_start > q_stop - 1:  # the first key comes after the last query: nobody sees it
        return "skip"
    if k_stop - 1 <= q_start:  # the last key is at or before the first query: everybody sees all
        return "full"
    return "diagonal"


# 2 * 10^14 (query, key) pairs: more than one can visit in the time limit, and as a tensor more than
# a 64-bit machine can address (2^47 bytes), so building the tile's mask fails at once, never swaps.
_HUGE_FULL_TILE = (3 * 10**7, 4 * 10**7, 0, 2 * 10**7)
_HUGE_HINT = ("Decide from the four integers with a few comparisons: a kernel decides this for every tile "
              "before it loads any data, and a tile can hold far more (query, key) pairs than one can visit "
              "or store.")


def check_causal_block_kind(fn, *, quiet: bool = False) -> CheckReport:
    """ex-09-causal-blocks: ``fn(q_start, q_stop, k_start, k_stop) -> "skip" | "full" | "diagonal"``."""
    full = ("A block is 'full' when even the first query (q_start) may see the last key (k_stop - 1): "
            "k_stop - 1 <= q_start. Query i sees key j when j <= i, so equality counts.")
    skip = ("A block is 'skip' when even the last query (q_stop - 1) may not see the first key "
            "(k_start): k_start > q_stop - 1.")
    diagonal = ("When neither rule holds, some (query, key) pairs of the block are visible and some are "
                "not: 'diagonal', the block the kernel masks element by element.")
    cases = [
        Case(args=(0, 4, 0, 4), label="the first diagonal block", hint=diagonal),
        Case(args=(4, 8, 0, 4), label="below the diagonal", hint=full),
        Case(args=(0, 4, 4, 8), label="above the diagonal", hint=skip),
        Case(args=(8, 16, 12, 16), label="tall query block (8 rows), key block inside its diagonal", hint=diagonal),
        Case(args=(8, 16, 4, 8), label="tall query block, key block before it", hint=full),
        Case(args=(0, 8, 8, 12), label="key block right after the query block", hint=skip),
        Case(args=(5, 6, 5, 6), label="one query, one key, same position (visible: full)", hint=full),
        Case(args=(5, 6, 6, 7), label="one query, the next key", hint=skip),
        Case(args=(0, 4, 3, 7), label="blocks not aligned: keys 3..6 vs queries 0..3", hint=diagonal),
        Case(args=(32, 37, 32, 40), label="ragged tail blocks", hint=diagonal),
        Case(args=_HUGE_FULL_TILE, label="a tile of 10^7 queries x 2 * 10^7 keys", hint=_HUGE_HINT),
    ]
    mistakes = [
        (lambda qs, qe, ks, ke: "skip" if ks >= qe else "full" if ke - 1 < qs else "diagonal",
         "Off by one at the diagonal: query i sees key j when j <= i, so a tile whose last key sits at the "
         "first query's own position (k_stop - 1 == q_start) is 'full'."),
        (lambda qs, qe, ks, ke: "skip" if ks > qs else "full" if ks < qs else "diagonal",
         "You compared where the tiles start. They need not be aligned or of equal size: compare the first "
         "query with the last key (full) and the last query with the first key (skip)."),
        (lambda qs, qe, ks, ke: "skip" if ks >= qe else "full",
         "Some tiles are neither full nor skipped: when part of the tile is visible, return 'diagonal' "
         "(the kernel then masks it element by element)."),
    ]
    return check_function(fn, reference=_causal_block_kind, cases=cases, exercise="ex-09-causal-blocks",
                          quiet=quiet, mistakes=mistakes)


# ----------------------------------------------------------------------------------------
# ex-09-merge-attention
# ----------------------------------------------------------------------------------------


def _merge_attention(o1, lse1, o2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    w1 = torch.exp(lse1 - safe).unsqueeze(-1)  # the share of the probability mass on part 1
    w2 = torch.exp(lse2 - safe).unsqueeze(-1)
    return w1 * o1 + w2 * o2, lse


def _halves(n_q, n_k, split, d, seed, scale=1.0, causal=False):
    q, k, v = (_randn(1, 2, n, d, seed=seed + i, scale=s) for i, (n, s) in enumerate(
        ((n_q, scale), (n_k, scale), (n_k, 1.0))))
    o1, lse1 = tiled_attention(q, k[:, :, :split], v[:, :, :split], return_lse=True, block_q=8, block_k=8)
    o2, lse2 = tiled_attention(q, k[:, :, split:], v[:, :, split:], return_lse=True, block_q=8, block_k=8)
    return o1, lse1, o2, lse2


def check_merge_attention(fn, *, quiet: bool = False) -> CheckReport:
    """ex-09-merge-attention: ``fn(o1, lse1, o2, lse2) -> (o, lse)``: combine attention over two
    disjoint sets of keys, each given as its normalised output ``(..., N, D)`` and log-sum-exp ``(..., N)``."""
    weights = ("Part 1 holds a fraction exp(lse1 - lse) of the probability mass, with "
               "lse = logaddexp(lse1, lse2); o = exp(lse1 - lse) * o1 + exp(lse2 - lse) * o2.")
    overflow = ("exp(lse1) overflows when the scores are large: never exponentiate an lse on its own; "
                "use differences lse1 - lse (which are <= 0).")
    o1, lse1, _, _ = _halves(5, 12, 6, 8, seed=40)
    empty_o, empty_lse = torch.zeros_like(o1), torch.full_like(lse1, _NEG_INF)
    cases = [
        Case(args=_halves(6, 12, 6, 8, seed=10), label="two equal halves of 12 keys", hint=weights),
        Case(args=_halves(7, 20, 1, 4, seed=20), label="1 key vs 19 keys", hint=weights),
        Case(args=_halves(4, 10, 5, 8, seed=30, scale=12.0), label="large scores (lse ~ 100s)", hint=overflow),
        Case(args=(o1, lse1, empty_o, empty_lse), label="second part empty (lse = -inf, o = 0)",
             hint="An empty part has lse = -inf: its weight exp(-inf - lse) is 0, and the result is the other part."),
        Case(args=(empty_o, empty_lse, o1, lse1), label="first part empty", hint=weights),
        Case(args=(empty_o, empty_lse, empty_o.clone(), empty_lse.clone()),
             label="both parts empty (a query with no visible key): o = 0, lse = -inf, no NaN",
             hint=("With both parts empty lse = -inf and lse1 - lse computes -inf - (-inf) = NaN: measure "
                   "against 0 instead in that case (both weights are then 0).")),
    ]

    def merged(o1, lse1, o2, lse2, *, guard=True, swap=False):
        lse = torch.logaddexp(lse1, lse2)
        ref = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse) if guard else lse
        w1, w2 = torch.exp(lse1 - ref).unsqueeze(-1), torch.exp(lse2 - ref).unsqueeze(-1)
        return (w2 * o1 + w1 * o2 if swap else w1 * o1 + w2 * o2), lse

    def overflowing(o1, lse1, o2, lse2):
        w1, w2 = torch.exp(lse1).unsqueeze(-1), torch.exp(lse2).unsqueeze(-1)
        return (w1 * o1 + w2 * o2) / (w1 + w2), torch.log(w1 + w2).squeeze(-1)

    mistakes = [
        (lambda o1, lse1, o2, lse2: ((o1 + o2) / 2, torch.logaddexp(lse1, lse2)),
         "A plain average treats both parts as equally likely: weight each by its share of the probability "
         "mass, exp(lse_i - lse)."),
        (lambda o1, lse1, o2, lse2: (merged(o1, lse1, o2, lse2)[0], torch.maximum(lse1, lse2)),
         "The log-sum-exp of all the keys is logaddexp(lse1, lse2) (the log of the sum of both masses), not "
         "the larger of the two."),
        (lambda o1, lse1, o2, lse2: merged(o1, lse1, o2, lse2, swap=True),
         "The weights are swapped: part 1's share exp(lse1 - lse) multiplies o1."),
        (lambda o1, lse1, o2, lse2: merged(o1, lse1, o2, lse2, guard=False),
         "With both parts empty lse = -inf and lse1 - lse computes -inf - (-inf) = NaN: measure against 0 "
         "instead in that case (both weights are then 0)."),
        (overflowing, overflow),
    ]
    return check_function(fn, reference=_merge_attention, cases=cases, exercise="ex-09-merge-attention",
                          quiet=quiet, mistakes=mistakes)


# ----------------------------------------------------------------------------------------
# ex-09-window-blocks (transfer: a tile kind the chapter does not show)
# ----------------------------------------------------------------------------------------


def _window_block_kind(q_start: int, q_stop: int, k_start: int, k_stop: int, window: int) -> str:
    # Query i sees key j when i - window < j <= i. In a tile, j - i is smallest at
    # (q_stop - 1, k_start) and largest at (q_start, k_stop - 1).
    lo, hi = k_start - (q_stop - 1), (k_stop - 1) - q_start
    if lo > 0 or hi <= -window:  # every key after its query, or every key too far back
        return "skip"
    if hi <= 0 and lo > -window:
        return "full"
    return "diagonal"


def check_window_block_kind(fn, *, quiet: bool = False) -> CheckReport:
    """ex-09-window-blocks: ``fn(q_start, q_stop, k_start, k_stop, window) -> "skip" | "full" | "diagonal"``
    for sliding-window causal attention: query i sees key j when ``i - window < j <= i``."""
    far = ("A key more than window - 1 positions before a query is out of its window: a tile whose last "
           "key is too far back for even the first query is 'skip' ((k_stop - 1) <= q_start - window).")
    full = ("'full' needs both ends inside every query's window: the last key at or before the first query "
            "(k_stop - 1 <= q_start) and the first key within reach of the last query "
            "(k_start > q_stop - 1 - window).")
    diag = "Part of the tile is visible and part is not: 'diagonal'."
    cases = [
        Case(args=(8, 12, 0, 4, 4), label="keys far behind the queries (window 4)", hint=far),
        Case(args=(0, 4, 4, 8, 4), label="keys after the queries (causal skip)", hint=far),
        Case(args=(8, 12, 4, 8, 8), label="inside the window for every query", hint=full),
        Case(args=(8, 12, 4, 8, 4), label="the window's trailing edge crosses the tile", hint=diag),
        Case(args=(8, 12, 8, 12, 16), label="the diagonal tile", hint=diag),
        Case(args=(8, 12, 5, 6, 4), label="one key, the lower edge: 5 is inside for query 8 only", hint=diag),
        Case(args=(8, 9, 5, 6, 4), label="query 8, key 5, window 4 (8 - 4 < 5)", hint=full),
        Case(args=(8, 9, 4, 5, 4), label="query 8, key 4, window 4 (just outside)", hint=far),
        Case(args=(0, 4, 0, 4, 1), label="window 1: each query sees only itself", hint=diag),
        Case(args=(100, 101, 0, 100, 1000), label="a window longer than the sequence: plain causal", hint=full),
        Case(args=(*_HUGE_FULL_TILE, 10**8), label="a tile of 10^7 queries x 2 * 10^7 keys, window 10^8",
             hint=_HUGE_HINT),
    ]
    mistakes = [  # the off-by-one first: where both match, it is the nearer miss
        (lambda qs, qe, ks, ke, w: _window_block_kind(qs, qe, ks, ke, w + 1),
         "Off by one at the window's edge: query i sees key j when i - window < j (strictly), so with "
         "window 4 query 8 sees keys 5..8, not 4."),
        (lambda qs, qe, ks, ke, w: "skip" if _window_block_kind(qs, qe, ks, ke, w) == "skip" else "full",
         "Some tiles are neither full nor skipped: where the diagonal or the window's edge crosses the "
         "tile, return 'diagonal'."),
        (lambda qs, qe, ks, ke, w: _causal_block_kind(qs, qe, ks, ke),
         "You ignored the window: keys more than window - 1 positions back are not visible, so tiles far "
         "below the diagonal are 'skip' (or 'diagonal' where the window's edge crosses them)."),
    ]
    return check_function(fn, reference=_window_block_kind, cases=cases, exercise="ex-09-window-blocks",
                          quiet=quiet, mistakes=mistakes)
