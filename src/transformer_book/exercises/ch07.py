"""Checkers for the exercises of chapter 7 (GPT).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
implementation (:mod:`transformer_book.generate`, :mod:`transformer_book.bigram`, or a reference
written here), prints a short verdict and returns a
:class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transformer_book.bigram import bigram_counts
from transformer_book.exercises.core import Case, CheckReport, check_function
from transformer_book.generate import top_k_filter, top_p_filter

__all__ = ["check_top_k", "check_top_p", "check_lm_loss", "check_bigram_counts", "check_min_p",
           "check_repetition_penalty"]

_NEG_INF = float("-inf")
_INF_HINT = "Removed tokens get float('-inf') (probability exactly 0 after the softmax); kept logits stay unchanged."


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def check_top_k(fn, *, quiet: bool = False) -> CheckReport:
    """ex-07-top-k: ``fn(logits, k)``: keep each row's ``k`` largest logits, ``-inf`` elsewhere."""
    hint = "torch.topk(logits, k, dim=-1).values[..., -1:] is each row's k-th largest value. " + _INF_HINT
    cases = [
        Case(args=(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2), label="4 logits, k=2", hint=hint),
        Case(args=(_randn(3, 10, seed=1, scale=3.0), 3), label="3 rows of 10, k=3",
             hint="Each row keeps its own k largest: work along the last dimension. " + hint),
        Case(args=(_randn(2, 6, seed=2), 1), label="k=1 (greedy)", hint=hint),
        Case(args=(_randn(2, 5, seed=3), 5), label="k = V keeps everything", hint=hint),
        Case(args=(_randn(2, 3, 7, seed=4), 4), label="batch of (2, 3, 7), k=4",
             hint="Any number of leading dimensions: index with [..., -1:]. " + hint),
    ]
    def keep_k(logits, k, fill=_NEG_INF):
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, fill)

    mistakes = [
        (lambda x, k: keep_k(x, min(k + 1, x.shape[-1])),
         "Off by one: you kept k + 1 tokens per row; keep exactly k (the k-th largest itself stays)."),
        (lambda x, k: keep_k(x, k - 1) if k > 1 else torch.full_like(x, _NEG_INF),
         "Off by one: you kept k - 1 tokens per row; keep exactly k (the k-th largest itself stays)."),
        (lambda x, k: keep_k(x, k, 0.0),
         "Removed tokens must get -inf, not 0: a logit of 0 still has a probability after the softmax."),
        (lambda x, k: x.masked_fill(x < x.flatten().topk(k).values[-1], _NEG_INF),
         "One threshold for the whole tensor: each row keeps its own k largest (work along dim=-1)."),
        (lambda x, k: x.masked_fill(x > torch.topk(x, k, dim=-1, largest=False).values[..., -1:], _NEG_INF),
         "You kept the k *smallest* logits: keep the k largest."),
    ]
    return check_function(fn, reference=top_k_filter, cases=cases, exercise="ex-07-top-k", quiet=quiet,
                          mistakes=mistakes)


def check_top_p(fn, *, quiet: bool = False) -> CheckReport:
    """ex-07-top-p: ``fn(logits, p)``: keep the smallest set of most likely tokens with mass >= ``p``."""
    hint = ("Sort the probabilities in decreasing order; keep a token when the probability of the tokens "
            "*before* it (cumsum minus itself) is still < p, so the token that crosses p is kept. "
            "Then put the decision back in vocabulary order (scatter). " + _INF_HINT)
    quarter = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    cases = [
        Case(args=(quarter, 0.6), label="probs (0.5, 0.3, 0.15, 0.05), p=0.6: keep two", hint=hint),
        Case(args=(quarter[[3, 1, 0, 2]], 0.9), label="same probs shuffled, p=0.9: keep three",
             hint="The vocabulary is not sorted: sort, decide, then undo the sort. " + hint),
        Case(args=(quarter, 0.4), label="p below the top probability: keep only the top token", hint=hint),
        Case(args=(_randn(4, 20, seed=5, scale=2.0), 0.8), label="4 rows of 20, p=0.8",
             hint="Each row has its own nucleus: softmax, sort and cumsum along the last dimension. " + hint),
        Case(args=(_randn(2, 9, seed=6), 1.0), label="p=1 keeps everything", hint=hint),
    ]
    def nucleus(logits, p, *, include_self=False, unsort=True, on_logits=False):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits if on_logits else torch.softmax(sorted_logits, dim=-1)
        mass = probs.cumsum(dim=-1) - (0 if include_self else probs)
        remove = mass >= p
        if not include_self:
            remove[..., 0] = False
        if unsort:
            remove = remove.scatter(-1, order, remove)
        return logits.masked_fill(remove, _NEG_INF)

    mistakes = [
        (lambda x, p: nucleus(x, p, include_self=True),
         "You dropped the token whose probability makes the sum cross p: it is kept (decide with the mass of "
         "the tokens *before* each one, cumsum minus itself)."),
        (lambda x, p: nucleus(x, p, unsort=False),
         "The decisions were made in sorted order but applied in vocabulary order: put them back where the "
         "tokens are (scatter with the sort's indices)."),
        (lambda x, p: nucleus(x, p, on_logits=True),
         "You added up logits: the nucleus is defined by probabilities, softmax first."),
    ]
    return check_function(fn, reference=top_p_filter, cases=cases, exercise="ex-07-top-p", quiet=quiet,
                          mistakes=mistakes)


def _lm_loss_reference(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def check_lm_loss(fn, *, quiet: bool = False) -> CheckReport:
    """ex-07-lm-loss: ``fn(logits, ids)``: mean cross-entropy of ``logits[:, t]`` against ``ids[:, t + 1]``."""
    hint = ("Position t predicts the token at t + 1: drop the last position of logits (logits[:, :-1]) and "
            "the first token of ids (ids[:, 1:]), flatten, then F.cross_entropy (a mean).")

    def case(b, t, v, seed, label):
        g = torch.Generator().manual_seed(seed)
        return Case(args=(torch.randn(b, t, v, generator=g) * 2, torch.randint(0, v, (b, t), generator=g)),
                    label=label, hint=hint)

    cases = [
        case(1, 5, 7, 1, "one sequence, T=5, V=7"),
        case(3, 8, 11, 2, "batch of 3, T=8, V=11"),
        case(2, 2, 4, 3, "T=2: a single prediction per sequence"),
        case(4, 16, 50, 4, "batch of 4, T=16, V=50"),
    ]
    def flat(logits):
        return logits.reshape(-1, logits.shape[-1])

    mistakes = [
        (lambda lg, ids: F.cross_entropy(flat(lg), ids.reshape(-1)),
         "No shift: logits[:, t] is the prediction for the *next* token ids[:, t + 1], not for ids[:, t]."),
        (lambda lg, ids: F.cross_entropy(flat(lg[:, 1:]), ids[:, :-1].reshape(-1)),
         "Shifted the wrong way: drop the *last* position of logits and the *first* token of ids."),
        (lambda lg, ids: F.cross_entropy(flat(lg[:, :-1]), ids[:, 1:].reshape(-1), reduction="sum"),
         "A sum, not a mean: average over the B * (T - 1) predictions."),
        (lambda lg, ids: F.cross_entropy(flat(lg[:, :-1]), ids[:, 1:].reshape(-1)) * (ids.shape[1] - 1)
         / ids.shape[1],
         "Divide by the number of predictions that have a target, B * (T - 1), not B * T."),
    ]
    return check_function(fn, reference=_lm_loss_reference, cases=cases, exercise="ex-07-lm-loss", quiet=quiet,
                          mistakes=mistakes)


def check_bigram_counts(fn, *, quiet: bool = False) -> CheckReport:
    """ex-07-bigram-counts: ``fn(ids, vocab_size)``: ``(V, V)`` int64, ``[a, b]`` = times ``b`` follows ``a``."""
    hint = ("Row = the current token a, column = the next token b: count every adjacent pair "
            "(ids[i], ids[i + 1]) once, for i from 0 to len(ids) - 2. Return torch.int64 counts.")
    g = torch.Generator().manual_seed(7)
    cases = [
        Case(args=([0, 1, 1, 2], 3), label="ids 0 1 1 2, V=3", hint=hint),
        Case(args=([2, 0, 2, 0, 2], 3), label="ids 2 0 2 0 2: rows vs columns", hint=hint),
        Case(args=([4], 5), label="one token: no pairs at all", hint=hint),
        Case(args=(torch.randint(0, 6, (200,), generator=g).tolist(), 6), label="200 random ids, V=6", hint=hint),
        Case(args=([1, 1, 1, 1], 4), label="a repeated token", hint=hint),
    ]
    def counts(ids, v, pairs=None):
        out = torch.zeros(v, v, dtype=torch.int64)
        for a, b in (pairs if pairs is not None else zip(ids, ids[1:])):
            out[a, b] += 1
        return out

    mistakes = [
        (lambda ids, v: counts(ids, v).T.contiguous(),
         "Rows and columns are swapped: the row is the current token a, the column the token b that follows it."),
        (lambda ids, v: counts(ids, v, zip(ids, ids[1:] + ids[:1])),
         "One pair too many: the last token is followed by nothing (no pair wraps around to the first)."),
        (lambda ids, v: counts(ids, v, zip(ids[:-2], ids[1:-1])),
         "The last pair (ids[-2], ids[-1]) is missing: there are len(ids) - 1 pairs."),
        (lambda ids, v: (counts(ids, v) > 0).long(),
         "Count every occurrence of a pair, not only whether it occurs."),
        (lambda ids, v: counts(ids, v).float(),
         "Return torch.int64 counts (torch.zeros(..., dtype=torch.long)), not floats."),
    ]
    return check_function(fn, reference=bigram_counts, cases=cases, exercise="ex-07-bigram-counts", quiet=quiet,
                          mistakes=mistakes)


def _min_p_reference(logits, p_min):
    # min-p sampling (Nguyen et al., 2024): keep the tokens whose probability is at least
    # p_min times the most likely token's; the threshold scales with the model's confidence.
    probs = torch.softmax(logits, dim=-1)
    keep = probs >= p_min * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(~keep, float("-inf"))


def check_min_p(fn, *, quiet: bool = False) -> CheckReport:
    """ex-07-min-p: ``fn(logits (..., V), p_min) -> (..., V)``: keep the logits of the tokens whose
    probability is >= ``p_min`` x the largest probability of the row, the others -inf (a sampling
    filter the chapter does not build)."""
    g = torch.Generator().manual_seed(7)
    hint = ("Convert to probabilities (softmax), compare each with p_min * the row's maximum probability, "
            "and set the logits of the others to -inf (keep the kept logits unchanged).")
    cases = [
        Case(args=(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), 0.5), label="p_min 0.5: keeps 0.5 and 0.3",
             hint=hint),
        Case(args=(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), 0.3), label="p_min 0.3: threshold 0.15 is kept",
             hint="The comparison is >=: a probability equal to the threshold stays."),
        Case(args=(torch.randn(3, 10, generator=g) * 3, 0.1), label="a batch of 3 rows, each its own threshold",
             hint="The threshold is per row: amax(dim=-1, keepdim=True)."),
        Case(args=(torch.randn(2, 6, generator=g) + 100.0, 0.2), label="logits around 100 (exp overflows)",
             hint="Use torch.softmax (or compare logits: log p - log p_max >= log p_min), never exp(logits)."),
    ]
    mistakes = [
        (lambda x, p: x.masked_fill(torch.softmax(x, -1) < p, float("-inf")),
         "The threshold is relative: p_min times the row's largest probability, not p_min itself."),
        (lambda x, p: x.masked_fill(x < p * x.amax(-1, keepdim=True), float("-inf")),
         "Compare probabilities, not logits: softmax first (logits can be negative, and scaling a logit "
         "is not scaling a probability)."),
        (lambda x, p: torch.softmax(x, -1).masked_fill(
            torch.softmax(x, -1) < p * torch.softmax(x, -1).amax(-1, keepdim=True), 0.0),
         "Return filtered logits (the others -inf), not probabilities."),
    ]
    return check_function(fn, reference=_min_p_reference, cases=cases, exercise="ex-07-min-p", quiet=quiet,
                          mistakes=mistakes)


def _repetition_penalty_reference(logits, context, penalty):
    # CTRL's repetition penalty (Keskar et al., 2019): every token of the row's context, counted
    # once, has its logit pushed down: a positive one divided by the penalty, a negative one
    # multiplied by it (dividing a negative logit would raise it).
    seen = _seen(context, logits.shape[-1])  # (B, V)
    factor = torch.where(logits < 0, torch.full_like(logits, penalty), torch.full_like(logits, 1 / penalty))
    return torch.where(seen, logits * factor, logits)


def _seen(context, vocab_size):
    """``(B, V)`` bool: ``True`` where the token occurs in the row's context ``(B, T)``."""
    return F.one_hot(context, vocab_size).amax(dim=-2).bool()


def _penalise(logits, seen, penalty, *, swapped=False):
    """Penalise the logits where ``seen`` (a bool mask, or a count of occurrences) is set."""
    times = seen.to(logits.dtype)
    down, up = penalty ** times, penalty ** -times  # down for negative logits, up for positive ones
    if swapped:
        down, up = up, down
    return torch.where(logits < 0, logits * down, logits * up)


def check_repetition_penalty(fn, *, quiet: bool = False) -> CheckReport:
    """ex-07-repetition-penalty: ``fn(logits (B, V), context (B, T), penalty) -> (B, V)``: the logit
    of every token that occurs in the row's context is divided by ``penalty`` when positive and
    multiplied by it when negative, once per token; the other logits are unchanged (CTRL's
    repetition penalty, a change to the chapter's sampler)."""
    hint = ("Mark, for each row, the tokens that occur in its context (a (B, V) bool mask, e.g. scatter "
            "True at the context's ids); where the mask is set, divide positive logits by penalty and "
            "multiply negative ones; elsewhere keep the logit. Build a new tensor.")
    g = torch.Generator().manual_seed(11)
    cases = [
        Case(args=(torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0]]), torch.tensor([[0, 1]]), 2.0),
             label="one row, context (0, 1), penalty 2: one positive and one negative logit", hint=hint),
        Case(args=(torch.tensor([[1.5, -0.5, 3.0, -2.0, 0.25, 1.0]]), torch.tensor([[2, 2, 2, 0, 1, 1]]), 1.5),
             label="a context that repeats tokens: each penalised once", hint=hint),
        Case(args=(torch.randn(3, 10, generator=g) * 2, torch.tensor([[0, 1, 2], [3, 4, 5], [5, 6, 7]]), 1.2),
             label="3 rows, each with its own context",
             hint="Row b of logits is penalised by the tokens of context[b] only. " + hint),
        Case(args=(torch.randn(4, 50, generator=g) * 3, torch.randint(0, 50, (4, 12), generator=g), 1.3),
             label="4 rows of 50 logits, 12 random context tokens each, penalty 1.3", hint=hint),
        Case(args=(torch.randn(2, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g), 1.0),
             label="penalty 1 changes nothing", hint=hint),
    ]

    def counts(logits, context):
        return F.one_hot(context, logits.shape[-1]).sum(dim=-2)

    mistakes = [
        (lambda x, c, p: torch.where(_seen(c, x.shape[-1]), x / p, x),
         "You divided every penalised logit by penalty: a negative logit divided by penalty > 1 moves towards "
         "0, which makes the token *more* likely. Divide the positive logits, multiply the negative ones."),
        (lambda x, c, p: _penalise(x, _seen(c, x.shape[-1]), p, swapped=True),
         "The rule is the wrong way round: divide a *positive* logit by penalty and multiply a *negative* one "
         "(both move the logit down, so a repeated token becomes less likely)."),
        (lambda x, c, p: _penalise(x, counts(x, c), p),
         "You penalised a token once per occurrence (penalty ** count): a token that occurs in the context is "
         "penalised once, however often it occurs."),
        (lambda x, c, p: _penalise(x, torch.ones_like(x, dtype=torch.bool), p),
         "You penalised every token: only the tokens that occur in the row's context change; the others keep "
         "their logits."),
        (lambda x, c, p: _penalise(x, _seen(c[:1].expand_as(c), x.shape[-1]), p),
         "Every row used the context of row 0: row b of logits is penalised by the tokens of context[b]."),
        (lambda x, c, p: _penalise(x, _seen(c.reshape(1, -1).expand(c.shape[0], -1), x.shape[-1]), p),
         "Every row used the tokens of the whole batch's context: row b of logits is penalised by the tokens "
         "of context[b] only."),
    ]
    return check_function(fn, reference=_repetition_penalty_reference, cases=cases,
                          exercise="ex-07-repetition-penalty", quiet=quiet, mistakes=mistakes)
