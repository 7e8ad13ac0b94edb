"""Checkers for the exercises of chapter 5 (masking).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
implementation in :mod:`transformer_book.masks` (or a reference written here), prints a short
verdict and returns a :class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import functools
import warnings

import torch

from transformer_book.exercises.core import Case, CheckReport, check_function, compare_values
from transformer_book.masks import causal_mask, padding_mask, prefix_lm_mask

__all__ = [
    "check_causal_mask",
    "check_padding_mask",
    "check_prefix_lm_mask",
    "check_masked_softmax",
    "check_causal_mask_rect",
    "check_document_mask",
]

_BOOL_HINT = "Return a torch.bool tensor (comparisons such as `s <= t` give one; .bool() converts)."


def check_causal_mask(fn, *, quiet: bool = False) -> CheckReport:
    """ex-05-causal-mask: ``fn(n) -> (n, n)`` bool, True where key s <= query t."""
    hint = ("Row t is the query, column s the key: allowed when s <= t, the lower triangle with its "
            "diagonal (a query may look at itself). " + _BOOL_HINT)
    cases = [Case(args=(n,), label=f"n={n}", hint=hint) for n in (2, 5, 9, 1)]
    mistakes = [
        (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1),
         "The diagonal is missing: a query may attend to itself (s <= t, not s < t)."),
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(),
         "That is the upper triangle, the future: row t is the query and True marks the keys s <= t."),
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(1),
         "Your mask marks the forbidden keys: True means *may attend* (the past and the query itself)."),
    ]
    return check_function(fn, reference=causal_mask, cases=cases, exercise="ex-05-causal-mask", quiet=quiet,
                          mistakes=mistakes)


def check_padding_mask(fn, *, quiet: bool = False) -> CheckReport:
    """ex-05-padding-mask: ``fn(tokens, pad_id) -> (B, 1, 1, T)`` bool, True at real tokens."""
    shape_hint = "The result has shape (B, 1, 1, T): index with [:, None, None, :] after comparing with pad_id."
    cases = [
        Case(args=(torch.tensor([[5, 6, 7, 0, 0], [1, 2, 0, 0, 0]]), 0), label="pad_id=0, trailing padding",
             hint=shape_hint),
        Case(args=(torch.tensor([[3, 3, 3]]), 0), label="no padding at all", hint=shape_hint),
        Case(args=(torch.tensor([[9, 1, 2, 9], [0, 9, 9, 9]]), 9), label="pad_id=9 (and 0 is a real token)",
             hint="Compare with pad_id, not with 0."),
        Case(args=(torch.tensor([[2, 2], [2, 4]]), 2), label="a sequence that is all padding", hint=shape_hint),
    ]
    mistakes = [
        (lambda t, p: (t == p)[:, None, None, :],
         "Your mask is True at the padding: True marks the real tokens, the keys a query may attend to."),
        (lambda t, p: (t != p)[:, None, :, None],
         "(B, 1, T, 1) runs along the queries: the padding mask hides *keys*, the last axis, (B, 1, 1, T)."),
        (lambda t, p: (t != 0)[:, None, None, :], "Compare with pad_id, not with 0."),
    ]
    return check_function(fn, reference=padding_mask, cases=cases, exercise="ex-05-padding-mask", quiet=quiet,
                          mistakes=mistakes)


def check_prefix_lm_mask(fn, *, quiet: bool = False) -> CheckReport:
    """ex-05-prefix-lm-mask: ``fn(n, p) -> (n, n)`` bool, True where s < p or s <= t."""
    hint = ("Two rules joined by OR: every query sees the prefix (key s < p), and every query sees its "
            "own past (s <= t). " + _BOOL_HINT)
    cases = [Case(args=(n, p), label=f"n={n}, p={p}", hint=hint)
             for n, p in ((6, 3), (5, 0), (5, 1), (4, 4), (7, 2), (1, 1))]

    def grid(n):
        return torch.arange(n)[:, None], torch.arange(n)[None, :]  # t (queries), s (keys)

    mistakes = [
        (lambda n, p: (grid(n)[1] < p) & (grid(n)[1] <= grid(n)[0]),
         "AND instead of OR: a key is visible when it is in the prefix *or* in the query's past."),
        (lambda n, p: (grid(n)[1] <= p) | (grid(n)[1] <= grid(n)[0]),
         "Off by one: the prefix is the keys 0 .. p - 1 (s < p, not s <= p)."),
        (lambda n, p: (grid(n)[0] < p) | (grid(n)[1] <= grid(n)[0]),
         "You let the prefix *queries* see everything (t < p), which shows them the continuation: the prefix "
         "is a set of *keys* (s < p) that every query may see."),
        (lambda n, p: grid(n)[1] <= grid(n)[0],
         "That is the plain causal mask: the prefix is missing (every query also sees the keys s < p)."),
    ]
    return check_function(fn, reference=prefix_lm_mask, cases=cases, exercise="ex-05-prefix-lm-mask", quiet=quiet,
                          mistakes=mistakes)


def _masked_softmax_reference(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.expand(scores.shape)
    empty = ~mask.any(dim=-1, keepdim=True)
    filled = scores.masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)
    return torch.softmax(filled, dim=-1).masked_fill(~mask, 0.0)


_NAN_INSIDE = "a NaN inside: "


def _with_gradient(fn, no_nan_inside: bool = False):
    """Call ``fn(scores, mask)`` and also return the gradient of a fixed loss w.r.t. ``scores``.

    With ``no_nan_inside``, the forward and backward passes run under
    ``torch.autograd.detect_anomaly``: a NaN that a later ``nan_to_num`` or ``masked_fill`` hides
    from the result is still found where it is made, in the backward pass.
    """

    @functools.wraps(fn)
    def run(scores, mask):
        scores = scores.detach().clone().requires_grad_()
        if not no_nan_inside:
            return _forward_backward(fn, scores, mask)
        try:
            with warnings.catch_warnings():  # anomaly mode warns that it is on, and where it fired
                warnings.simplefilter("ignore", UserWarning)
                with torch.autograd.detect_anomaly(check_nan=True):
                    return _forward_backward(fn, scores, mask)
        except RuntimeError as err:
            if "nan" not in str(err).lower():
                raise
            op = str(err).split("'")[1] if "'" in str(err) else "an operation"
            with torch.no_grad():  # is the NaN visible in the result too, or was it cleaned up?
                out = fn(scores.detach(), mask)
            visible = isinstance(out, torch.Tensor) and bool(torch.isnan(out).any())
            # A str, not an (output, gradient) pair: the verdict shows it as what came back.
            return _NAN_INSIDE + f"{op} made NaN values in the backward pass" + (
                ", and your result itself has NaN" if visible else "")

    return run


def _forward_backward(fn, scores, mask):
    out = fn(scores, mask)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return out, None  # the comparison then says what is wrong with the output
    weights = torch.linspace(-1.0, 1.0, out.numel()).view(out.shape).to(out.dtype)
    (grad,) = torch.autograd.grad((out * weights).sum(), scores)
    return out.detach(), grad


def _nan_inside_compare(expected, received):
    if isinstance(received, str) and received.startswith(_NAN_INSIDE):
        if received.endswith("has NaN"):
            return received[len(_NAN_INSIDE):]
        return (f"{received[len(_NAN_INSIDE):]} (the result and the gradient may look fine: a later "
                f"nan_to_num or masked_fill hid the NaN)")
    return compare_values(expected, received)


def check_masked_softmax(fn, *, no_nan_inside: bool = False, quiet: bool = False) -> CheckReport:
    """ex-05-masked-softmax: ``fn(scores, mask)``; rows with nothing allowed give zeros; finite gradients.

    Each case compares the output *and* the gradient of a fixed loss with respect to ``scores``
    (``output[1]`` in the verdict): a NaN in the gradient fails even when the values are right.

    ``no_nan_inside=True`` asks for the chapter's technique (finite scores in the empty rows
    *before* the softmax): the cases then run under ``torch.autograd.detect_anomaly``, so that
    ``torch.softmax(scores.masked_fill(~mask, -inf), -1).nan_to_num(0)``, whose softmax makes NaN
    that ``nan_to_num`` and ``masked_fill``'s backward happen to hide, fails. Use it when the
    exercise's statement says that no NaN may appear anywhere, forward or backward.
    """
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 5, generator=g)
    some = torch.tensor([[True, False, True, True, False], [True] * 5, [False, True, False, False, False]])
    empty_row = some.clone()
    empty_row[1] = False
    nan_hint = ("A row with nothing allowed must give zeros and a finite gradient (output[1]): fill the "
                "empty rows with finite scores *before* the softmax, then zero their weights.")
    cases = [
        Case(args=(scores, torch.ones(3, 5, dtype=torch.bool)), label="nothing masked: a plain softmax",
             hint="With every entry allowed the result is torch.softmax(scores, dim=-1)."),
        Case(args=(scores, some), label="some entries masked",
             hint="Masked entries get weight 0 and the allowed ones share the whole row (sum 1)."),
        Case(args=(scores, empty_row), label="a row with nothing allowed", hint=nan_hint),
        Case(args=(torch.randn(2, 4, 6, generator=g), torch.tensor([[True, True, False, True, False, False]])),
             label="mask (1, 6) broadcast against scores (2, 4, 6)",
             hint="The mask broadcasts: expand it to the scores' shape (mask.expand(scores.shape))."),
        Case(args=(torch.tensor([[1000.0, 999.0, -1000.0]]), torch.tensor([[True, True, False]])),
             label="large scores (overflow in a hand-made exp)",
             hint="exp(1000) overflows to inf: use torch.softmax, or subtract the row maximum first."),
    ]
    if no_nan_inside:
        cases[2] = Case(args=(scores, empty_row), label="a row with nothing allowed: no NaN anywhere inside",
                        hint=("The softmax of a row of -inf is 0/0 = NaN even if you clean it afterwards "
                              "(nan_to_num), and its backward pass makes NaN too; masked_fill's backward happens "
                              "to zero them here, but an additive mask (scores + bias) would carry them into "
                              "the gradient. Give the empty rows finite scores (e.g. 0) *before* the softmax, "
                              "then zero their weights."))
    mistakes = [
        (_with_gradient(lambda s, m: torch.softmax(s, -1) * m, no_nan_inside),
         "You zeroed the masked weights after a softmax over the whole row, so the allowed ones no longer sum "
         "to 1: leave the masked entries out of the softmax itself (their weight must be exactly 0 and the "
         "allowed ones share the whole row)."),
    ]
    return check_function(_with_gradient(fn, no_nan_inside), reference=_with_gradient(_masked_softmax_reference),
                          cases=cases, exercise="ex-05-masked-softmax", name=getattr(fn, "__name__", None),
                          quiet=quiet, compare=_nan_inside_compare if no_nan_inside else None, mistakes=mistakes)


def _causal_rect_reference(n_q: int, n_k: int) -> torch.Tensor:
    # The queries are the last n_q positions of the n_k keys: query i sits at position i + n_k - n_q.
    return torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + (n_k - n_q)


def check_causal_mask_rect(fn, *, quiet: bool = False) -> CheckReport:
    """ex-05-causal-rect: ``fn(n_q, n_k) -> (n_q, n_k)`` bool, the causal mask aligned bottom-right.

    The ``n_q`` queries are the *last* ``n_q`` of ``n_k`` positions (decoding with a cache: the
    keys include every earlier token): query ``i`` may attend to key ``j`` when
    ``j <= i + n_k - n_q``. For ``n_q == n_k`` this is the ordinary causal mask.
    """
    hint = ("The queries are the last n_q of the n_k positions, so query i sits at position i + (n_k - n_q): "
            "allowed when j <= i + n_k - n_q. torch.tril(ones(n_q, n_k)) aligns top-left instead (the "
            "first query would see only key 0). " + _BOOL_HINT)
    cases = [Case(args=(n, n), label=f"n_q = n_k = {n}", hint=hint) for n in (4,)]
    cases += [Case(args=(nq, nk), label=f"n_q={nq}, n_k={nk}", hint=hint) for nq, nk in ((2, 6), (3, 7), (1, 5))]
    cases += [Case(args=(1, 1), label="n_q = n_k = 1", hint=hint)]
    cases += [Case(args=(4, 2), label="more queries than keys (n_q=4, n_k=2): the first rows see nothing",
                   hint="With n_q > n_k the offset is negative: the first n_q - n_k queries see no key.")]
    mistakes = [
        (lambda nq, nk: torch.ones(nq, nk).tril().bool(),
         "Your mask is aligned top-left (torch.tril): with a cache the queries are the *last* positions, "
         "so query i sits at position i + n_k - n_q."),
        (lambda nq, nk: torch.arange(nk)[None, :] < torch.arange(nq)[:, None] + (nk - nq),
         "Off by one: a query may attend to its own position (<=, not <)."),
        (lambda nq, nk: torch.ones(nq, nk).triu(nk - nq + 1).bool(),
         "Your mask is the opposite (True where the future is): True means *may attend*."),
    ]
    return check_function(fn, reference=_causal_rect_reference, cases=cases, exercise="ex-05-causal-rect",
                          quiet=quiet, mistakes=mistakes)


def _document_mask_reference(doc_ids: torch.Tensor) -> torch.Tensor:
    # Packed sequences: a query sees the keys of its own document, causally.
    t = torch.arange(doc_ids.shape[-1])
    same = doc_ids[..., :, None] == doc_ids[..., None, :]
    return same & (t[None, :] <= t[:, None])


def check_document_mask(fn, *, quiet: bool = False) -> CheckReport:
    """ex-05-document-mask: ``fn(doc_ids (..., T)) -> (..., T, T)`` bool: several documents packed
    into one sequence; query t may attend to key s when both belong to the same document and
    ``s <= t`` (a mask the chapter does not build: it combines two of its ideas)."""
    hint = ("Two conditions joined by AND: the same document (doc_ids[..., :, None] == doc_ids[..., None, :]) "
            "and causal (s <= t). " + _BOOL_HINT)
    cases = [
        Case(args=(torch.tensor([0, 0, 0, 1, 1, 2]),), label="three documents of lengths 3, 2, 1", hint=hint),
        Case(args=(torch.tensor([5, 5, 5, 5]),), label="one document: the causal mask", hint=hint),
        Case(args=(torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),), label="a batch of two packings (2, 4)",
             hint="Compare within each row: doc_ids[..., :, None] == doc_ids[..., None, :] keeps the batch."),
        Case(args=(torch.tensor([3, 3, 7, 3]),), label="ids that come back (3, 3, 7, 3): still one id, one document",
             hint="Documents are defined by their id: equal ids attend to each other, causally."),
    ]
    mistakes = [
        (lambda d: d[..., :, None] == d[..., None, :],
         "Not causal: within a document a query may only look back (s <= t)."),
        (lambda d: (torch.arange(d.shape[-1])[None, :] <= torch.arange(d.shape[-1])[:, None]).expand(
            *d.shape, d.shape[-1]),
         "The documents leak into each other: also require the same document id."),
        (lambda d: (d[..., :, None] == d[..., None, :]) | (torch.arange(d.shape[-1])[None, :]
                                                          <= torch.arange(d.shape[-1])[:, None]),
         "OR instead of AND: a key must be in the same document *and* not in the future."),
    ]
    return check_function(fn, reference=_document_mask_reference, cases=cases, exercise="ex-05-document-mask",
                          quiet=quiet, mistakes=mistakes)
