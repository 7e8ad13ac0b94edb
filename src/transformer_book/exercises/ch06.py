"""Checkers for the exercises of chapter 6 (the encoder-decoder Transformer).

Each ``check_*`` runs the learner's function on a handful of cases, compares it with the book's
reference (torch's own where there is one), prints a short verdict and returns a
:class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transformer_book.exercises.core import Case, CheckReport, check_function

__all__ = [
    "check_rms_norm",
    "check_residual",
    "check_beam_step",
    "check_beam_step_eos",
    "check_label_smoothing",
    "check_gnmt_rerank",
]


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------- RMSNorm
def _rms_norm_reference(x, weight, eps):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def check_rms_norm(fn, *, quiet: bool = False) -> CheckReport:
    """ex-06-rmsnorm: ``fn(x, weight, eps) -> x / sqrt(mean(x**2, last dim) + eps) * weight`` (vs ``F.rms_norm``)."""
    mean_hint = ("Divide by the root of the mean of the squares over the last dimension (keepdim=True), "
                 "plus eps inside the square root; do not subtract the mean.")
    cases = [
        Case(args=(_randn(2, 3, 8, seed=1), torch.ones(8), 1e-6), label="(2, 3, 8), weight 1", hint=mean_hint),
        Case(args=(_randn(4, 6, seed=2, scale=10.0) + 5.0, _randn(6, seed=3), 1e-6),
             label="shifted input (mean 5), learned weight",
             hint="RMSNorm does not centre: the mean stays in, unlike LayerNorm."),
        Case(args=(_randn(3, 5, seed=4, scale=1e-4), torch.ones(5), 1e-2), label="tiny input, eps=1e-2",
             hint="eps goes inside the square root: sqrt(mean(x**2) + eps)."),
        Case(args=(torch.zeros(2, 4), torch.ones(4), 1e-6), label="all-zero input (no division by zero)",
             hint="With eps inside the square root the result for x = 0 is 0, not NaN."),
        Case(args=(_randn(1, 2, 3, 16, seed=5), _randn(16, seed=6), 1e-5), label="4-D input, normalise the last axis",
             hint=mean_hint),
    ]
    mistakes = [
        (lambda x, w, eps: F.layer_norm(x, (x.shape[-1],), w, None, eps),
         "That is LayerNorm: RMSNorm does not subtract the mean, it divides x itself by its root mean square."),
        (lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w,
         "eps goes inside the square root: sqrt(mean(x**2) + eps), not sqrt(mean(x**2)) + eps."),
        (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps),
         "The learned weight is missing: multiply the normalised x by weight."),
        (lambda x, w, eps: x * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps) * w,
         "You divided by the standard deviation (which subtracts the mean inside): RMSNorm divides by "
         "sqrt(mean(x**2) + eps)."),
        (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * w,
         "Normalise over the last dimension (the features of one position), dim=-1, not over the batch."),
    ]
    return check_function(fn, reference=_rms_norm_reference, cases=cases, exercise="ex-06-rmsnorm", quiet=quiet,
                          mistakes=mistakes)


# --------------------------------------------------------------------------- post-LN / pre-LN residual
def _residual_reference(x, sublayer, norm, norm_first):
    if norm_first:
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


def _sublayer(d: int, seed: int):
    """A small feed-forward sub-layer ``(..., d) -> (..., d)`` as a plain function."""
    w1, w2 = _randn(2 * d, d, seed=seed, scale=d ** -0.5), _randn(d, 2 * d, seed=seed + 1, scale=(2 * d) ** -0.5)

    def sublayer(x):
        return torch.relu(x @ w1.T) @ w2.T

    return sublayer


def _norm(d: int, seed: int):
    """A LayerNorm with a learned-looking weight and bias, as a plain function."""
    weight, bias = 1.0 + 0.5 * _randn(d, seed=seed), 0.5 * _randn(d, seed=seed + 1)

    def norm(x):
        return F.layer_norm(x, (d,), weight, bias)

    return norm


def check_residual(fn, *, quiet: bool = False) -> CheckReport:
    """ex-06-residual: ``fn(x, sublayer, norm, norm_first)``: ``norm(x + f(x))`` (post-LN) or ``x + f(norm(x))`` (pre-LN)."""
    post = "Post-LN (norm_first=False): add first, then normalise the sum: norm(x + sublayer(x))."
    pre = "Pre-LN (norm_first=True): normalise the sub-layer's input only; the residual x is added untouched."
    cases = []
    for i, (shape, norm_first) in enumerate([((2, 3, 8), False), ((2, 3, 8), True), ((1, 5, 4), False),
                                             ((1, 5, 4), True), ((3, 1, 6), True)]):
        d = shape[-1]
        x = _randn(*shape, seed=10 + i, scale=3.0) + 2.0
        cases.append(Case(args=(x, _sublayer(d, i), _norm(d, 20 + i), norm_first),
                          label=f"{'pre' if norm_first else 'post'}-LN, x {shape}", hint=pre if norm_first else post))
    mistakes = [
        (lambda x, f, n, nf: _residual_reference(x, f, n, not nf),
         "On this case you computed the other variant: norm_first=True is pre-LN (normalise the sub-layer's "
         "input, add x untouched), False is post-LN (add first, then normalise the sum). Check how your "
         "function reads norm_first."),
        (lambda x, f, n, nf: f(n(x)) if nf else n(f(x)),
         "The residual connection is missing: add the input x to the sub-layer's output."),
        (lambda x, f, n, nf: n(x) + f(n(x)) if nf else n(x + f(x)),
         "In pre-LN only the sub-layer's input is normalised; the residual x is added untouched."),
        (lambda x, f, n, nf: x + n(f(x)) if not nf else x + f(n(x)),
         "Post-LN normalises the *sum* x + sublayer(x), not the sub-layer's output alone."),
    ]
    return check_function(fn, reference=_residual_reference, cases=cases, exercise="ex-06-residual", quiet=quiet,
                          mistakes=mistakes)


# --------------------------------------------------------------------------- one beam-search step
def _beam_step_reference(scores, log_probs, beam_size):
    v = log_probs.shape[-1]
    top, idx = (scores[:, None] + log_probs).reshape(-1).topk(beam_size)
    return top, idx // v, idx % v


def _log_probs(k: int, v: int, seed: int) -> torch.Tensor:
    return torch.log_softmax(_randn(k, v, seed=seed, scale=2.0), dim=-1)


def check_beam_step(fn, *, quiet: bool = False) -> CheckReport:
    """ex-06-beam-step: ``fn(scores (K,), log_probs (K, V), beam_size) -> (new_scores, beam, token)``.

    The ``beam_size`` best extensions over all beams and tokens, best first: their total scores,
    the beam each extends and the token it adds.
    """
    add_hint = ("Add each beam's score to its row of log-probabilities (scores[:, None] + log_probs), then take "
                "the top beam_size over all K*V entries at once (flatten first).")
    index_hint = ("After flattening (K, V), entry i is beam i // V and token i % V; return the indices as "
                  "integer tensors.")
    cases = [
        Case(args=(torch.tensor([0.0]), _log_probs(1, 5, 1), 3), label="first step: one beam, V=5, keep 3",
             hint=index_hint),
        Case(args=(torch.tensor([-0.5, -1.0, -3.0]), _log_probs(3, 4, 2), 3), label="K=3, V=4, keep 3",
             hint=add_hint),
        Case(args=(torch.tensor([-0.1, -6.0]), _log_probs(2, 6, 3), 2),
             label="a weak beam whose best token is still worse", hint=add_hint),
        Case(args=(torch.tensor([-2.0, -0.2]), _log_probs(2, 3, 4), 4),
             label="both extensions of the better beam win", hint=index_hint),
        Case(args=(torch.tensor([-1.0, -1.5, -0.7, -2.0]), _log_probs(4, 7, 5), 1), label="beam_size=1 (greedy)",
             hint=add_hint),
    ]
    def per_beam(scores, log_probs, beam_size):
        best, token = (scores[:, None] + log_probs).max(dim=-1)
        top, beam = best.topk(min(beam_size, len(scores)))
        return top, beam, token[beam]

    def transposed(scores, log_probs, beam_size):
        k = log_probs.shape[0]
        top, idx = (scores[:, None] + log_probs).reshape(-1).topk(beam_size)
        return top, idx % k, idx // k

    def worst_first(scores, log_probs, beam_size):
        v = log_probs.shape[-1]
        top, idx = (scores[:, None] + log_probs).reshape(-1).topk(beam_size, largest=False)
        return top, idx // v, idx % v

    mistakes = [
        (lambda s, lp, b: _beam_step_reference(torch.zeros_like(s), lp, b),
         "The prefixes' own scores are missing: a total is the prefix's score plus the token's "
         "log-probability (scores[:, None] + log_probs)."),
        (per_beam,
         "You kept each prefix's best token only: one prefix may supply several of the best extensions, "
         "so take the top beam_size over all K*V (prefix, token) pairs at once."),
        (transposed,
         "The flat index is decoded the wrong way round: after flattening (K, V), entry i extends prefix "
         "i // V with token i % V."),
        (lambda s, lp, b: tuple(t.float() for t in _beam_step_reference(s, lp, b)),
         "Return the prefix and token indices as integer tensors (int64), not floats."),
        (worst_first,
         "Best first means the *largest* totals (log-probabilities are <= 0: the least negative)."),
    ]
    return check_function(fn, reference=_beam_step_reference, cases=cases, exercise="ex-06-beam-step", quiet=quiet,
                          mistakes=mistakes)


# --------------------------------------------------------------------------- a beam step that refills after <eos>
def _ranked(scores, log_probs):
    """``V``, the totals ``(K * V,)`` of every extension (flat index ``b * V + t``), and their order, best first."""
    v = log_probs.shape[-1]
    total = (scores[:, None] + log_probs).reshape(-1)
    return v, total, torch.argsort(total, descending=True, stable=True)


def _beam_step_eos_reference(scores, log_probs, beam_size, eos_id):
    # Walk the whole ranking of the K*V extensions once: the <eos> ones among the first
    # beam_size finish; the first beam_size of the others form the new, full beam.
    v, total, order = _ranked(scores, log_probs)
    is_eos = order % v == eos_id
    done = order[:beam_size][is_eos[:beam_size]]
    live = order[~is_eos][:beam_size]
    return total[live], live // v, live % v, total[done], done // v


def _eos_log_probs(k: int, v: int, seed: int, eos_id: int, boost: list[float]) -> torch.Tensor:
    """Log-probabilities ``(k, v)`` whose ``eos_id`` column is raised by ``boost[b]`` in row ``b``."""
    logits = _randn(k, v, seed=seed, scale=2.0)
    logits[:, eos_id] += torch.tensor(boost, dtype=logits.dtype)
    return torch.log_softmax(logits, dim=-1)


def check_beam_step_eos(fn, *, quiet: bool = False) -> CheckReport:
    """ex-06-beam-refill: ``fn(scores (K,), log_probs (K, V), beam_size, eos_id) ->
    (live_scores, live_beam, live_token, done_scores, done_beam)``.

    The extensions ending in ``eos_id`` among the ``beam_size`` best of all K*V finish (their
    totals and prefixes, best first); the live beam is refilled with the ``beam_size`` best
    extensions whose token is not ``eos_id``, best first.
    """
    rank_hint = ("Rank all K*V extensions by scores[:, None] + log_probs. The <eos> ones among the first "
                 "beam_size finish (done_scores, done_beam, best first); the live beam is the beam_size best "
                 "extensions whose token is not eos_id.")
    refill_hint = ("The live beam must be full: take the beam_size best extensions that do not end in eos_id, "
                   "even when some of them rank below the first beam_size.")
    three = torch.tensor([-0.5, -1.0, -2.0])
    cases = [
        Case(args=(torch.tensor([0.0]), _eos_log_probs(1, 6, 43, 2, [1.0]), 3, 2),
             label="first step: one prefix, V=6, keep 3, <eos> third best", hint=refill_hint),
        Case(args=(three, _eos_log_probs(3, 5, 9, 2, [0.0, 0.0, 0.0]), 3, 2),
             label="K=3, V=5: no <eos> among the best 3 (nothing finishes)", hint=rank_hint),
        Case(args=(three, _eos_log_probs(3, 5, 2, 2, [0.0, 0.0, 0.0]), 3, 2),
             label="K=3, V=5: one <eos> among the best 3", hint=refill_hint),
        Case(args=(three, _eos_log_probs(3, 5, 1, 2, [1.0, 2.0, 3.0]), 3, 2),
             label="two more <eos> ranked 4th and 5th, above the last live one (dropped)", hint=rank_hint),
        Case(args=(three[:2], _eos_log_probs(2, 5, 3, 2, [3.0, 3.0]), 2, 2),
             label="both of the best 2 end in <eos>: the whole beam is refilled", hint=refill_hint),
        Case(args=(torch.tensor([-0.3, -0.9, -1.2, -2.5]), _eos_log_probs(4, 7, 53, 0, [0.0, 1.0, 3.0, 1.0]), 4, 0),
             label="eos_id=0, K=4, V=7, keep 4", hint="Compare the tokens with eos_id, the argument."),
        Case(args=(three, _eos_log_probs(3, 5, 4, 2, [0.0, 0.0, 0.0]), 1, 2),
             label="beam_size=1: the best extension ends in <eos>", hint=refill_hint),
    ]

    def eos_stays(scores, log_probs, beam_size, eos_id):  # Exercise 6.3's step, plus the finished list
        v, total, order = _ranked(scores, log_probs)
        top = order[:beam_size]
        done = top[top % v == eos_id]
        return total[top], top // v, top % v, total[done], done // v

    def no_refill(scores, log_probs, beam_size, eos_id):  # the chapter's beam_search: a dead slot
        v, total, order = _ranked(scores, log_probs)
        top = order[:beam_size]
        ended = top % v == eos_id
        return total[top[~ended]], top[~ended] // v, top[~ended] % v, total[top[ended]], top[ended] // v

    def eos_thrown_away(scores, log_probs, beam_size, eos_id):
        out = _beam_step_eos_reference(scores, log_probs, beam_size, eos_id)
        return out[:3] + (out[3][:0], out[4][:0])

    def every_eos_finishes(scores, log_probs, beam_size, eos_id):  # each prefix's <eos> extension
        v, total, order = _ranked(scores, log_probs)
        done = order[order % v == eos_id]
        return _beam_step_eos_reference(scores, log_probs, beam_size, eos_id)[:3] + (total[done], done // v)

    def eos_above_last_live(scores, log_probs, beam_size, eos_id):  # walks down until the beam is full
        v, total, order = _ranked(scores, log_probs)
        live = order[order % v != eos_id][:beam_size]
        cut = int((order == live[-1]).nonzero()[0, 0])
        done = order[:cut][order[:cut] % v == eos_id]
        return total[live], live // v, live % v, total[done], done // v

    def done_token(scores, log_probs, beam_size, eos_id):  # the flat index instead of the prefix
        v, total, order = _ranked(scores, log_probs)
        done = order[:beam_size][order[:beam_size] % v == eos_id]
        return _beam_step_eos_reference(scores, log_probs, beam_size, eos_id)[:4] + (done,)

    mistakes = [
        (lambda s, lp, b, e: _beam_step_eos_reference(s, lp, b, 2),
         "The end-of-sequence token is the argument eos_id: compare the tokens with eos_id, not with a fixed id."),
        (eos_stays,
         "A hypothesis that ends in eos_id is finished: it leaves the beam (it is returned among the finished "
         "ones only), so no live token may be eos_id."),
        (no_refill,
         "Refill the beam: dropping the finished ones from the beam_size best leaves it short (what the "
         "chapter's beam_search does); the live ones are the beam_size best extensions that do not end in "
         "eos_id, however far down the ranking the last of them is."),
        (eos_thrown_away,
         "The finished hypotheses are kept aside, not thrown away: return the <eos> extensions among the "
         "beam_size best, with their totals (done_scores) and the prefix each extends (done_beam)."),
        # before every_eos_finishes: on the case that first catches walking, the two agree
        (eos_above_last_live,
         "Only an <eos> extension ranked among the first beam_size finishes, not every one ranked above the "
         "last live extension: the ones below the first beam_size are dropped, even while the beam is refilled."),
        (every_eos_finishes,
         "Only an <eos> extension ranked among the beam_size best of all K*V finishes; the other prefixes' "
         "<eos> extensions are dropped."),
        (done_token,
         "done_beam is the index of the prefix each finished hypothesis extends (flat index // V), "
         "not the flat index."),
    ]
    return check_function(fn, reference=_beam_step_eos_reference, cases=cases, exercise="ex-06-beam-refill",
                          quiet=quiet, mistakes=mistakes)


# --------------------------------------------------------------------------- label smoothing
def _label_smoothing_reference(logits, targets, eps, pad_id):
    return F.cross_entropy(logits, targets, label_smoothing=eps, ignore_index=pad_id)


def check_label_smoothing(fn, *, quiet: bool = False) -> CheckReport:
    """ex-06-label-smoothing: ``fn(logits (N, V), targets (N,), eps, pad_id) -> scalar``, as ``F.cross_entropy``."""
    mix_hint = ("The loss is (1 - eps) * (-log p[target]) + eps * mean over all V classes of (-log p), "
                "averaged over the rows whose target is not pad_id.")
    g = torch.Generator().manual_seed(0)
    cases = [
        Case(args=(torch.randn(6, 5, generator=g), torch.tensor([1, 2, 3, 4, 1, 2]), 0.0, 0),
             label="eps=0: plain cross-entropy", hint="With eps=0 it is the mean of -log_softmax(logits)[target]."),
        Case(args=(torch.randn(6, 5, generator=g), torch.tensor([1, 2, 3, 4, 1, 2]), 0.1, 0), label="eps=0.1",
             hint=mix_hint),
        Case(args=(torch.randn(5, 7, generator=g) * 4, torch.tensor([3, 0, 6, 0, 2]), 0.2, 0),
             label="eps=0.2 with padding rows (target 0)",
             hint="Rows whose target is pad_id count neither in the sum nor in the number of rows."),
        Case(args=(torch.randn(4, 3, generator=g), torch.tensor([2, 1, 2, 1]), 0.5, 0), label="eps=0.5, V=3",
             hint=mix_hint),
        Case(args=(torch.randn(3, 6, generator=g), torch.tensor([5, 1, 0]), 0.1, 5), label="pad_id=5 (0 is a class)",
             hint="Compare the targets with pad_id, not with 0."),
    ]
    def smoothed(logits, targets, eps, pad_id, *, over_others=False, divide_by_all=False, swap=False):
        keep = targets != pad_id
        log_p = torch.log_softmax(logits[keep], dim=-1)
        nll = -log_p.gather(1, targets[keep][:, None]).squeeze(1)
        v = logits.shape[-1]
        uniform = -log_p.mean(dim=-1)
        if over_others:  # eps spread over the V - 1 wrong classes only
            uniform = (-log_p.sum(dim=-1) - nll) / (v - 1)
        a, b = (eps, 1 - eps) if swap else (1 - eps, eps)
        total = (a * nll + b * uniform).sum()
        return total / (len(targets) if divide_by_all else keep.sum())

    mistakes = [
        (lambda lg, t, e, p: F.cross_entropy(lg, t, label_smoothing=e),
         "The padding rows count: leave out every row whose target is pad_id."),
        (lambda lg, t, e, p: smoothed(lg, t, e, p, over_others=True),
         "eps is spread over all V classes, the target included (as F.cross_entropy's label_smoothing does), "
         "not over the V - 1 others."),
        (lambda lg, t, e, p: smoothed(lg, t, e, 0),
         "Compare the targets with pad_id, not with 0."),
        (lambda lg, t, e, p: smoothed(lg, t, e, p, divide_by_all=True),
         "Average over the rows that are not padding: the padding rows must not count in the number of rows."),
        (lambda lg, t, e, p: smoothed(lg, t, e, p, swap=True),
         "The weights are swapped: (1 - eps) goes on the target's term, eps on the uniform one."),
    ]
    return check_function(fn, reference=_label_smoothing_reference, cases=cases, exercise="ex-06-label-smoothing",
                          quiet=quiet, atol=1e-5, rtol=1e-4, mistakes=mistakes)


def _gnmt_rerank_reference(log_probs, lengths, alpha):
    # Wu et al. (2016), GNMT: score = log p / lp(Y), lp(Y) = ((5 + |Y|) / 6)^alpha; best first.
    lp = ((5.0 + lengths.to(log_probs.dtype)) / 6.0) ** alpha
    return torch.argsort(log_probs / lp, descending=True, stable=True)


def check_gnmt_rerank(fn, *, quiet: bool = False) -> CheckReport:
    """ex-06-gnmt-rerank: ``fn(log_probs (N,), lengths (N,), alpha) -> order (N,)`` int64, the
    hypotheses' indices best first under GNMT's length penalty ``((5 + |Y|) / 6)^alpha``
    (a variant of the chapter's ``|Y|^alpha`` normalisation)."""
    hint = ("Divide each total log-probability by ((5 + length) / 6) ** alpha, then sort descending "
            "(the largest, i.e. least negative, score first).")
    cases = [
        Case(args=(torch.tensor([-4.0, -6.0, -5.0]), torch.tensor([4, 8, 5]), 0.0),
             label="alpha = 0: the raw totals", hint="With alpha = 0 the penalty is 1: sort by log_probs."),
        Case(args=(torch.tensor([-4.0, -6.0, -5.0]), torch.tensor([4, 10, 5]), 1.0),
             label="alpha = 1: the long hypothesis wins", hint=hint),
        Case(args=(torch.tensor([-2.0, -9.0, -3.5, -7.0]), torch.tensor([2, 12, 3, 9]), 0.6),
             label="alpha = 0.6 (GNMT's value)", hint=hint),
        Case(args=(torch.tensor([-3.0, -8.0]), torch.tensor([1, 20]), 2.0), label="alpha = 2", hint=hint),
        Case(args=(torch.tensor([-1.0, -1.9]), torch.tensor([1, 2]), 1.0),
             label="short hypotheses, where |Y|^alpha and GNMT's penalty disagree", hint=hint),
    ]
    mistakes = [
        (lambda lp, n, a: torch.argsort(lp / n.to(lp.dtype) ** a, descending=True, stable=True),
         "That is the chapter's |Y|^alpha penalty: GNMT's is ((5 + |Y|) / 6)^alpha."),
        (lambda lp, n, a: torch.argsort(lp / ((5.0 + n.to(lp.dtype)) / 6.0) ** a, stable=True),
         "Best first means descending order: the largest (least negative) score first."),
        (lambda lp, n, a: torch.argsort(lp * ((5.0 + n.to(lp.dtype)) / 6.0) ** a, descending=True, stable=True),
         "Divide by the penalty (it is >= 1 and grows with length, so long hypotheses are penalised less)."),
    ]
    return check_function(fn, reference=_gnmt_rerank_reference, cases=cases, exercise="ex-06-gnmt-rerank",
                          quiet=quiet, mistakes=mistakes)
