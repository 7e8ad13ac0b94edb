"""Speculative decoding (chapter 10): a cheap draft guesses, the target checks all its guesses at once.

Decoding one token costs one forward pass of the target model, and on small batches that pass
is bound by overhead and memory traffic, not arithmetic: scoring ``k + 1`` tokens costs about
as much as scoring one. Speculative decoding (Leviathan et al., 2023; Chen et al., 2023) spends
that slack. Each *pass*:

1. a cheap **draft** proposes ``k`` tokens ``x_1 .. x_k`` (a small model, one step each, or a
   lookup in the context that costs next to nothing);
2. the **target** scores the last token and the ``k`` proposals in *one* forward pass, which
   gives its next-token distributions ``p_1 .. p_{k+1}``;
3. the proposals are **accepted** from the left until the first one the target disagrees with,
   which is replaced by a token of the target's; when all ``k`` are accepted the target's
   ``p_{k+1}`` gives one more (the *bonus* token). A pass therefore adds 1 to ``k + 1`` tokens.

Greedy (``temperature=0``): ``x_i`` is accepted when it is the target's argmax; the first
mismatch is replaced by the argmax. The output is *identical* to the target's own greedy decoding.

Sampling: ``x_i``, drawn from the draft's ``q_i``, is accepted with probability
``min(1, p_i(x_i) / q_i(x_i))``; the first rejected one is replaced by a sample of the residual
``norm(max(0, p_i - q_i))``. Every output token is then distributed *exactly* as the target's
``p`` (temperature, top-k and top-p applied to both models as :func:`~transformer_book.generate.generate`
applies them), whatever the draft: a bad draft costs time, never quality.

With acceptance rate ``alpha`` (the expected ``sum_x min(p(x), q(x))``) and cost ratio ``c``
(one draft step / one target step), Leviathan et al.'s Theorem 3.8: a pass yields
``(1 - alpha**(k+1)) / (1 - alpha)`` tokens on average, and the walltime speedup is that divided
by ``k * c + 1`` (:func:`expected_tokens_per_pass`, :func:`expected_speedup`).

Both KV caches (chapter 8's :class:`~transformer_book.kv_cache.KVCache`) are rolled back with
``crop`` after a rejection: the positions of the rejected tokens are simply overwritten later.

Batches: every row is an independent sequence, decoded exactly as it would be alone. Rows of
the same length share one pass; after it they split by how many tokens each kept, and rows that
reach the same length merge again (their caches are stacked). Batch 1 is the fast case; larger
batches are for drawing many independent samples at once (the chapter's distribution check).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from transformer_book import _checks
from transformer_book.generate import next_token_probs
from transformer_book.kv_cache import KVCache

__all__ = [
    "expected_tokens_per_pass",
    "expected_speedup",
    "best_k",
    "PromptLookupDraft",
    "greedy_verify",
    "verify_draft",
    "SpeculativeStats",
    "speculative_generate",
    "acceptance_rate",
    "decode_step_seconds",
    "load_chapter10_models",
    "completion_prompts",
]


# --------------------------------------------------------------------------- the theory

def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """Tokens one pass yields on average, ``(1 - alpha**(k+1)) / (1 - alpha)`` (``k + 1`` at ``alpha = 1``).

    Leviathan et al. (2023), their equation (1): the accepted length is a geometric variable
    capped at ``k`` (each proposal accepted with probability ``alpha``, independently), plus the
    one token the target always adds.
    """
    alpha = _checks.probability("alpha", alpha)
    k = _checks.integer("k", k, low=0)
    return _tokens(alpha, k)


def _tokens(alpha: float, k: int) -> float:
    return float(k + 1) if alpha == 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, c: float, k: int) -> float:
    """Leviathan et al.'s Theorem 3.8: walltime speedup ``(1 - alpha**(k+1)) / ((1 - alpha) (k c + 1))``.

    ``c`` is the cost of one draft step in units of one target step; a pass costs ``k`` draft
    steps and one target pass (assumed to cost one target step, whatever ``k``).
    """
    alpha = _checks.probability("alpha", alpha)
    c = _checks.number("c", c, low=0.0)
    k = _checks.integer("k", k, low=0)
    return _tokens(alpha, k) / (k * c + 1.0)


def best_k(alpha: float, c: float, k_max: int = 16) -> int:
    """The ``k`` in ``1 .. k_max`` with the largest :func:`expected_speedup` (the smallest on a tie)."""
    alpha = _checks.probability("alpha", alpha)
    c = _checks.number("c", c, low=0.0)
    k_max = _checks.positive_int("k_max", k_max)
    return max(range(1, k_max + 1), key=lambda k: (_tokens(alpha, k) / (k * c + 1.0), -k))


# --------------------------------------------------------------------------- prompt lookup

class PromptLookupDraft:
    """A draft with no model: continue the most recent earlier occurrence of the context's last n-gram.

    Saxena (2023)'s *prompt lookup decoding*. Code, and text that quotes its prompt, repeat
    themselves: after ``self.`` the tokens that followed ``self.`` last time are a good guess.
    For ``n`` from ``max_ngram`` down to ``min_ngram``, take the last ``n`` tokens, find their
    most recent earlier occurrence, and propose the (up to ``k``) tokens that followed it; the
    longest n-gram that matches wins. No match: no proposal (the pass is a plain target step).
    A match that overlaps the end of the context is copied as an overlapping copy (LZ77's rule):
    inside a repeating run (a column of blank lines, ``= = =``) it proposes ``k`` more of it.

    Its proposals are deterministic, so to the acceptance rule its ``q`` is one-hot on the
    proposed token: accepted with probability ``p(x)``, else resampled from ``p`` without ``x``.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram = _checks.positive_int("max_ngram", max_ngram)
        self.min_ngram = _checks.integer("min_ngram", min_ngram, 1, self.max_ngram)

    def __repr__(self) -> str:
        return f"PromptLookupDraft(max_ngram={self.max_ngram}, min_ngram={self.min_ngram})"

    def lookup(self, context: Tensor, k: int) -> list[int]:
        """Up to ``k`` proposed ids continuing the 1-D ``context`` (``(T,)`` ids); ``[]`` when nothing matches."""
        context = _checks.token_ids("context", context, dim=1, layout="(T,)")
        return self._lookup(context, _checks.positive_int("k", k))

    def _lookup(self, context: Tensor, k: int) -> list[int]:
        t = context.shape[0]
        for n in range(min(self.max_ngram, t - 1), self.min_ngram - 1, -1):
            suffix = context[t - n:]
            # windows starting at 0 .. t-n-1: every earlier occurrence, not the suffix itself
            windows = context[: t - 1].unfold(0, n, 1)  # (t - n, n)
            hits = (windows == suffix).all(dim=1).nonzero()
            if len(hits):
                start = int(hits[-1]) + n  # the most recent match; what followed it
                # Copy k tokens from there. A match that overlaps the suffix runs into the end
                # of the context: the copy then continues from what it has just copied (an
                # overlapping copy, as in LZ77), so "a b a b a b" proposes "a b a b ...".
                found = context.tolist()
                for j in range(k):
                    found.append(found[start + j])
                return found[t:]
        return []

    def propose(self, tokens: Tensor, k: int) -> Tensor:
        """Proposals for every row of ``tokens`` ``(B, T)``: ids ``(B, k)``, ``-1`` where a row proposes no more."""
        tokens = _checks.token_ids("tokens", tokens)
        k = _checks.positive_int("k", k)
        out = torch.full((tokens.shape[0], k), -1, dtype=torch.long)
        for row, context in enumerate(tokens.cpu()):
            found = self._lookup(context, k)
            out[row, : len(found)] = torch.tensor(found, dtype=torch.long)
        return out.to(tokens.device)


# --------------------------------------------------------------------------- the acceptance rules

def greedy_verify(target_logits: Tensor, draft: Tensor, n_drafted: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Greedy acceptance: keep the proposals that are the target's argmax, up to the first that is not.

    ``target_logits`` ``(B, k + 1, V)``: the target's logits after the last token and after each
    proposal; ``draft`` ``(B, k)`` the proposed ids; ``n_drafted`` ``(B,)`` how many of each row's
    ``k`` are real proposals (default all). Returns ``(n_accepted (B,), next_token (B,))``: the
    target's argmax after the accepted ones (the correction, or the bonus token when all ``k``
    were accepted).
    """
    target_logits = _checks.float_tensor("target_logits", target_logits, 3, layout="(B, k + 1, V)")
    draft, n_drafted = _check_draft("draft", draft, n_drafted, target_logits.shape)
    return _greedy_verify(target_logits, draft, n_drafted)


def _greedy_verify(target_logits: Tensor, draft: Tensor, n_drafted: Tensor) -> tuple[Tensor, Tensor]:
    b, k = draft.shape
    choice = target_logits.argmax(dim=-1)  # (B, k + 1) the target's own greedy tokens
    ok = (draft == choice[:, :k]) & (torch.arange(k, device=draft.device) < n_drafted[:, None])
    n_accepted = ok.long().cumprod(dim=1).sum(dim=1)  # (B,) the leading run of matches
    return n_accepted, choice.gather(1, n_accepted[:, None]).squeeze(1)


def verify_draft(p: Tensor, q: Tensor, draft: Tensor, n_drafted: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Speculative sampling's acceptance rule (Leviathan et al., 2023, Algorithm 1; Chen et al., 2023).

    ``p`` ``(B, k + 1, V)``: the target's next-token distributions after the last token and after
    each proposal; ``q`` ``(B, k, V)``: the draft's, from which ``draft`` ``(B, k)`` was drawn;
    ``n_drafted`` ``(B,)``: how many of each row's ``k`` are real proposals (default all).

    Proposal ``i`` is accepted with probability ``min(1, p_i(x_i) / q_i(x_i))`` (drawn as
    ``u * q < p`` with ``u ~ U[0, 1)``: no division); at the first rejection the next token is
    drawn from the residual ``norm(max(0, p_i - q_i))``, and when every proposal is accepted
    from ``p_{k+1}`` (the bonus token: there ``q`` counts as 0). Returns
    ``(n_accepted (B,), next_token (B,))``.
    """
    p = _checks.float_tensor("p", p, 3, layout="(B, k + 1, V)")
    q = _checks.float_tensor("q", q, 3, layout="(B, k, V)")
    _checks.shape_is("q", q, (p.shape[0], p.shape[1] - 1, p.shape[2]), layout="(B, k, V)")
    draft, n_drafted = _check_draft("draft", draft, n_drafted, p.shape)
    return _verify_draft(p, q, draft, n_drafted, _checks.generator("generator", generator))


def _verify_draft(p: Tensor, q: Tensor, draft: Tensor, n_drafted: Tensor,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    b, k = draft.shape
    real = torch.arange(k, device=draft.device) < n_drafted[:, None]  # (B, k)
    x = draft.clamp(min=0)[..., None]  # padding (-1) gathers id 0, then is masked out by `real`
    p_x = p[:, :k].gather(-1, x).squeeze(-1)  # (B, k) p_i(x_i)
    q_x = q.gather(-1, x).squeeze(-1)  # (B, k) q_i(x_i)
    u = _uniform((b, k), generator, p.device)
    accepted = (u * q_x < p_x) & real  # u < p/q: probability min(1, p/q)
    n_accepted = accepted.long().cumprod(dim=1).sum(dim=1)  # (B,)
    rows = torch.arange(b, device=p.device)
    q_pad = torch.cat([q * real[..., None], torch.zeros_like(p[:, :1])], dim=1)  # (B, k+1, V): q = 0 where no proposal
    p_next, q_next = p[rows, n_accepted], q_pad[rows, n_accepted]  # (B, V) at the first rejection / the bonus
    residual = (p_next - q_next).clamp(min=0)
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q exactly leaves no residual; a rejection there had probability 0 and only rounding
    # gets here: draw from p (the residual's limit) instead of dividing by zero.
    residual = torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(p.dtype).tiny), p_next)
    return n_accepted, _multinomial(residual, generator)


def _check_draft(name: str, draft: object, n_drafted: object, p_shape: torch.Size) -> tuple[Tensor, Tensor]:
    b, k_plus_1, v = p_shape
    draft = _checks.tensor(name, draft, 2, layout="(B, k)")
    if draft.dtype not in _checks.ID_DTYPES:
        raise TypeError(f"{name} must hold integer token ids, got dtype {draft.dtype}")
    _checks.shape_is(name, draft, (b, k_plus_1 - 1), layout="(B, k)")
    if n_drafted is None:
        n_drafted = torch.full((b,), k_plus_1 - 1, dtype=torch.long, device=draft.device)
    n_drafted = _checks.tensor("n_drafted", n_drafted, 1, layout="(B,)")
    _checks.shape_is("n_drafted", n_drafted, (b,), layout="(B,)")
    real = torch.arange(k_plus_1 - 1, device=draft.device) < n_drafted[:, None]
    if draft.numel() and (bool((draft[real] < 0).any()) or bool((draft[real] >= v).any())):
        raise ValueError(f"{name} holds ids outside the vocabulary [0, V={v}) among its proposals")
    return draft.long(), n_drafted.long()


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _multinomial(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One id per row of ``probs`` ``(B, V)``, drawn on the generator's device (same ids everywhere)."""
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------- the drafts, as the loop sees them

class _ModelDraft:
    """A draft GPT with its own KV cache: proposes ``k`` tokens one step at a time."""

    def __init__(self, model: nn.Module, batch: int, max_len: int, settings: tuple) -> None:
        self.model, self.settings = model, settings
        self.cache = KVCache.for_model(model, batch, max_len)

    def propose(self, out: Tensor, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(draft (B, k), q (B, k, V))``: each token drawn from the draft's own ``q``; greedy: the
        argmax, and ``q`` is ``None``."""
        temperature = self.settings[0]
        x = out[:, self.cache.length:]  # what the draft has not seen yet (at least the last token)
        tokens, dists = [], []
        for i in range(k):
            logits = _step(self.model, x, self.cache).float()  # (B, V)
            if temperature == 0:  # greedy: the argmax; the acceptance rule needs no q
                x = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                q = next_token_probs(logits, *self.settings)  # (B, V), filtered as generate filters
                x = _multinomial(q, generator)[:, None]
                dists.append(q)
            tokens.append(x)
        return torch.cat(tokens, dim=1), (torch.stack(dists, dim=1) if dists else None)

    def rollback(self, length: int) -> None:
        self.cache.crop(min(self.cache.length, length))

    def select(self, keep: Tensor) -> _ModelDraft:
        return self._with_cache(_stack_caches([self.cache], [keep]))

    def merge(self, drafts: list[_ModelDraft]) -> _ModelDraft:
        return self._with_cache(_stack_caches([d.cache for d in drafts]))  # shortest length: refeeds the rest

    def _with_cache(self, cache: KVCache) -> _ModelDraft:
        new = object.__new__(_ModelDraft)
        new.model, new.settings, new.cache = self.model, self.settings, cache
        return new


class _LookupDraft:
    """Any object with ``propose(tokens (B, T), k) -> (B, k)`` ids (``-1`` = no more): a one-hot ``q``."""

    def __init__(self, drafter, vocab_size: int, settings: tuple) -> None:
        self.drafter, self.vocab_size, self.settings = drafter, vocab_size, settings

    def propose(self, out: Tensor, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        draft = self.drafter.propose(out, k)
        if not isinstance(draft, Tensor) or tuple(draft.shape) != (out.shape[0], k) or draft.is_floating_point():
            raise ValueError(f"the draft's propose(tokens, k={k}) must return integer ids of shape "
                             f"(B={out.shape[0]}, k={k}), got {_checks.describe(draft)}")
        draft = draft.to(out.device).long()
        if bool((draft >= self.vocab_size).any()) or bool((draft < -1).any()):
            raise ValueError(f"the draft proposed ids in [{int(draft.min())}, {int(draft.max())}], outside the "
                             f"target's vocabulary [0, vocab_size={self.vocab_size}) (or -1 for none)")
        if self.settings[0] == 0:
            return draft, None  # greedy: the acceptance rule needs no q
        q = torch.zeros(*draft.shape, self.vocab_size, device=out.device)
        q.scatter_(-1, draft.clamp(min=0)[..., None], 1.0)  # (B, k, V) one-hot; masked where draft == -1
        return draft, q

    def rollback(self, length: int) -> None:
        pass

    def select(self, keep: Tensor) -> _LookupDraft:
        return self

    def merge(self, drafts: list[_LookupDraft]) -> _LookupDraft:
        return self


# --------------------------------------------------------------------------- the loop

@dataclass
class SpeculativeStats:
    """What :func:`speculative_generate` did.

    * ``target_passes``: forward passes of the target (each verifies the proposals of one pass;
      with a batch, one pass serves every row of the same length);
    * ``drafted``, ``accepted``: proposals made and proposals kept, summed over rows and passes;
    * ``drafted_lengths``, ``accepted_lengths``: the same for each pass of each row;
    * ``new_tokens``: tokens generated per row;
    * ``draft_seconds``, ``target_seconds``: wall-clock seconds of each pass's drafting and of its
      target pass with the acceptance rule (the first target pass also prefills the prompt). They
      are host clocks: on a GPU, work still queued is counted where the host waits for it.
    """

    target_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0
    drafted_lengths: list[int] = field(default_factory=list)
    accepted_lengths: list[int] = field(default_factory=list)
    draft_seconds: list[float] = field(default_factory=list)
    target_seconds: list[float] = field(default_factory=list)

    @property
    def tokens_per_pass(self) -> float:
        """Tokens a row gains per pass, the mean accepted length + 1 (1 = no gain; at most ``k + 1``)."""
        n = len(self.accepted_lengths)
        return (sum(self.accepted_lengths) + n) / n if n else 0.0

    @property
    def alpha(self) -> float:
        """The acceptance rate estimated from the passes: accepted / (accepted + rejections).

        A pass that stops at a rejection judged its accepted proposals and one more; those after
        the rejection were never judged. This is the maximum-likelihood ``alpha`` of the theorem's
        model (each proposal accepted independently with probability ``alpha``).
        """
        rejections = sum(1 for d, a in zip(self.drafted_lengths, self.accepted_lengths) if a < d)
        return self.accepted / max(self.accepted + rejections, 1)

    def to_dict(self) -> dict:
        return dict(asdict(self), tokens_per_pass=self.tokens_per_pass, alpha=self.alpha)


def _is_model_draft(draft: object) -> bool:
    return isinstance(draft, nn.Module)


@torch.no_grad()
def speculative_generate(
    target: nn.Module,
    draft: nn.Module | PromptLookupDraft,
    idx: Tensor,
    max_new_tokens: int,
    k: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, SpeculativeStats]:
    """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` tokens of ``target``, ``k`` drafted per pass.

    Returns ``(tokens (B, T + max_new_tokens), stats)``. ``draft`` is a GPT with the target's
    vocabulary (its own KV cache is kept and rolled back), a :class:`PromptLookupDraft`, or any
    object with ``propose(tokens (B, T), k) -> ids (B, k)`` (``-1`` = no more proposals).

    ``temperature=0``: greedy, the same tokens as ``generate(target, idx, max_new_tokens)``.
    Otherwise the tokens are distributed exactly as ``generate``'s with the same ``temperature``,
    ``top_k`` and ``top_p`` (which filter the draft's distribution too); random numbers come from
    ``generator``. The whole sequence must fit the context window of the target (and of a model
    draft): this function does not slide the window as ``generate`` does.
    """
    _checks.instance("target", target, nn.Module, "torch.nn.Module (a GPT)")
    if not hasattr(target, "config") or not hasattr(target.config, "vocab_size"):
        raise TypeError(f"target must be a GPT-like model with a config, got {type(target).__name__}")
    vocab = target.config.vocab_size
    device = next(target.parameters()).device
    model_draft = _is_model_draft(draft)
    if model_draft:
        if not hasattr(draft, "config") or not hasattr(draft.config, "vocab_size"):
            raise TypeError(f"draft must be a GPT-like model or a PromptLookupDraft, got {type(draft).__name__}")
        if draft.config.vocab_size != vocab:
            raise ValueError(f"the draft's vocabulary (vocab_size={draft.config.vocab_size}) differs from the "
                             f"target's (vocab_size={vocab}): they must share one tokenizer")
        draft_device = next(draft.parameters()).device
        if draft_device != device:
            raise ValueError(f"target and draft must be on one device, got target on {device}, draft on "
                             f"{draft_device}")
    elif not callable(getattr(draft, "propose", None)):
        raise TypeError(f"draft must be a GPT-like model, a PromptLookupDraft or an object with "
                        f"propose(tokens, k), got {_checks.describe(draft)}")
    idx = _checks.token_ids("idx", idx, vocab)
    if idx.device != device:
        raise ValueError(f"idx and target must be on one device, got idx on {idx.device}, target on {device}")
    max_new_tokens = _checks.integer("max_new_tokens", max_new_tokens, low=0)
    k = _checks.positive_int("k", k)
    temperature = _checks.number("temperature", temperature, low=0.0)
    top_k = None if top_k is None else _checks.positive_int("top_k", top_k)
    top_p = None if top_p is None else _checks.number("top_p", top_p, 0.0, 1.0, low_open=True)
    generator = _checks.generator("generator", generator)
    total = idx.shape[1] + max_new_tokens
    for name, model in (("target", target), ("draft", draft)):
        window = getattr(getattr(model, "config", None), "block_size", None) if isinstance(model, nn.Module) else None
        if window is not None and total > window:
            raise ValueError(f"the prompt ({idx.shape[1]} tokens) plus max_new_tokens={max_new_tokens} is {total} "
                             f"tokens, more than the {name}'s context window block_size={window}")

    _prepare([target] + ([draft] if model_draft else []))
    # decode_step has no dropout whatever the mode (and generate's fast loop leaves the mode
    # alone too); only a model run through its forward is put in eval mode for the loop.
    models = [m for m in [target] + ([draft] if model_draft else []) if not hasattr(m, "decode_step")]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        return _speculative_loop(target, draft, idx.long(), max_new_tokens, k, (temperature, top_k, top_p),
                                 generator, model_draft)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _speculative_loop(target, draft, idx, max_new_tokens, k, settings, generator, model_draft):
    """Passes until every row has ``max_new_tokens`` new tokens; rows are grouped by length.

    One row (the usual case) is one group throughout. With a batch, the rows of a group share
    one cache length; after a pass they split by how many tokens each kept, and the groups that
    reach the same length merge again (their caches stacked), so no row discards tokens it won.
    """
    b, total = idx.shape[0], idx.shape[1] + max_new_tokens
    stats = SpeculativeStats(new_tokens=max_new_tokens)
    if b == 1:
        return _one_sequence(target, draft, idx, total, k, settings, generator, model_draft, stats)
    rows = torch.arange(b, device=idx.device)
    if model_draft:
        drafter = _ModelDraft(draft, b, max(total, 1), settings)
    else:
        drafter = _LookupDraft(draft, target.config.vocab_size, settings)
    groups = [_Group(rows, idx, KVCache.for_model(target, b, max(total, 1)), drafter)]
    done: list[_Group] = []
    while groups:
        by_length: dict[int, list[_Group]] = {}
        for group in groups:
            if group.out.shape[1] >= total:
                done.append(group)
                continue
            for part in _one_pass(target, group, total, k, settings, generator, stats):
                by_length.setdefault(part.out.shape[1], []).append(part)
        groups = [_Group.merge(parts) for parts in by_length.values()]
    out = torch.empty((b, total), dtype=torch.long, device=idx.device)
    for group in done:
        out[group.rows] = group.out
    return out, stats


def _prepare(models: list) -> None:
    """The loops call ``decode_step(check=False)``, which trusts the weights it prepared last time:
    look at them once here (a model trained since is re-prepared)."""
    for model in models:
        if hasattr(model, "prepare_decoding"):
            model.prepare_decoding()


def _step(model: nn.Module, x: Tensor, cache: KVCache, last_only: bool = True) -> Tensor:
    """One cached pass of ``model`` over ``x`` ``(B, T)``: the logits of the last position ``(B, V)``,
    or of every position ``(B, T, V)``. A GPT takes chapter 8's fast path (``decode_step``,
    unchecked: :func:`speculative_generate` checked everything at its door); any other model
    with ``forward(idx, cache=...)`` its forward."""
    if hasattr(model, "decode_step"):
        return model.decode_step(x, cache, check=False, last_only=last_only)
    logits = model(x, cache=cache).logits
    return logits[:, -1] if last_only else logits


def _one_sequence(target, draft, idx, total, k, settings, generator, model_draft, stats):
    """One row (batch 1), as lean as ``generate``'s own loop: proposals are written straight into
    the preallocated output, where the accepted ones stay and the rejected ones are overwritten
    by the next pass; one host synchronisation per pass (the accepted length), none per
    drafted token when decoding greedily.

    The invariant at the top of every pass: ``out[:, :n]`` is final; the target's cache holds
    positions ``0 .. n - 2`` (the last token ``out[:, n - 1]`` is fed by the pass), the draft's
    at most those (it may lag behind by the tokens it has not seen yet).
    """
    t = idx.shape[1]
    greedy = settings[0] == 0
    out = idx.new_empty((1, total))
    out[:, :t] = idx
    cache = KVCache.for_model(target, 1, total)
    draft_cache = KVCache.for_model(draft, 1, total) if model_draft else None
    n = t
    while n < total:
        started = time.perf_counter()
        k_now = min(k, total - n - 1)  # a pass adds at most k_now + 1 tokens
        # 1. The draft writes its proposals into out[:, n : n + width].
        q = None  # greedy needs no q
        if k_now == 0:
            width = 0
        elif model_draft:
            x, qs = out[:, draft_cache.length: n], []  # what the draft has not seen (at least the last token)
            for i in range(k_now):
                logits = _step(draft, x, draft_cache)  # (1, V)
                if greedy:
                    x = logits.argmax(dim=-1, keepdim=True)  # (1, 1), stays a tensor: no sync
                else:
                    qs.append(next_token_probs(logits.float(), *settings))  # (1, V) filtered as generate filters
                    x = _multinomial(qs[-1], generator)[:, None]
                out[:, n + i: n + i + 1] = x
            width = k_now
            q = None if greedy else torch.stack(qs, dim=1)  # (1, k, V)
        else:
            proposal = _lookup_proposal(draft, out[:, :n], k_now, target.config.vocab_size)
            width = len(proposal)
            out[0, n: n + width] = torch.tensor(proposal, dtype=out.dtype, device=out.device)
            if not greedy:  # a deterministic proposal: q is one-hot on it
                q = torch.zeros(1, width, target.config.vocab_size, device=out.device)
                q[0, torch.arange(width), out[0, n: n + width]] = 1.0
        drafted = time.perf_counter()
        # 2. One target pass over what its cache lacks (the last token; the whole prompt on the
        # first pass) and the proposals; its last width + 1 positions give p_1 .. p_{width+1}.
        logits = _step(target, out[:, cache.length: n + width], cache, last_only=False)
        logits = logits[:, -(width + 1):].float()  # (1, width + 1, V)
        proposal = out[:, n: n + width]  # (1, width)
        # 3. Accept, and write the target's own token after the accepted ones.
        if greedy:
            choice = logits[0].argmax(dim=-1)  # (width + 1,) the target's greedy tokens
            accepted = int((proposal[0] == choice[:width]).long().cumprod(dim=0).sum())  # the pass's one sync
            nxt = choice[accepted]
        else:
            if q is None:
                q = logits.new_zeros((1, 0, logits.shape[-1]))
            n_drafted = torch.full((1,), width, dtype=torch.long, device=out.device)
            n_accepted, nxt = verify_draft(next_token_probs(logits, *settings), q, proposal, n_drafted, generator)
            accepted, nxt = int(n_accepted[0]), nxt[0]
        out[0, n + accepted] = nxt
        n += accepted + 1
        stats.draft_seconds.append(drafted - started)
        stats.target_seconds.append(time.perf_counter() - drafted)
        stats.target_passes += 1
        stats.drafted += width
        stats.accepted += accepted
        stats.drafted_lengths.append(width)
        stats.accepted_lengths.append(accepted)
        # 4. Roll both caches back to the accepted tokens: all but the last, which the next pass feeds.
        cache.crop(n - 1)
        if model_draft:
            draft_cache.crop(min(draft_cache.length, n - 1))
    return out, stats


def _lookup_proposal(draft, tokens: Tensor, k: int, vocab_size: int) -> list[int]:
    """The real proposals (``-1`` padding dropped) of a prompt-lookup or custom draft for one row."""
    if isinstance(draft, PromptLookupDraft):
        return draft._lookup(tokens[0], k)  # ours: ids from the context, no checks needed
    proposal, _ = _LookupDraft(draft, vocab_size, (0.0, None, None)).propose(tokens, k, None)  # checked
    found = proposal[0].tolist()
    return found[: found.index(-1)] if -1 in found else found


def _one_pass(target, group, total, k, settings, generator, stats) -> list[_Group]:
    """Draft, verify and accept once for every row of ``group``; returns the group split by new length."""
    out, cache, drafter = group.out, group.cache, group.drafter
    b = out.shape[0]
    k_now = min(k, total - out.shape[1] - 1)  # a pass adds at most k_now + 1 tokens
    started = time.perf_counter()
    proposal, q = out.new_zeros((b, 0)), None
    if k_now > 0:
        proposal, q = drafter.propose(out, k_now, generator)  # (B, k), (B, k, V) or None if greedy
    drafted = time.perf_counter()
    n_drafted = (proposal >= 0).long().cumprod(dim=1).sum(dim=1)  # (B,) real proposals per row
    width = int(n_drafted.max()) if b and proposal.shape[1] else 0  # no need to score padding
    proposal = proposal[:, :width]
    # One target pass over what its cache lacks (the last token; the prompt on the first pass)
    # and the proposals: its logits at the last width + 1 positions are p_1 .. p_{k+1}.
    x = torch.cat([out[:, cache.length:], proposal.clamp(min=0)], dim=1)
    logits = _step(target, x, cache, last_only=False)[:, -(width + 1):].float()  # (B, width + 1, V)
    if settings[0] == 0:
        n_accepted, nxt = _greedy_verify(logits, proposal, n_drafted)
    else:
        q = torch.zeros(b, 0, logits.shape[-1], device=logits.device) if q is None else q[:, :width]
        n_accepted, nxt = verify_draft(next_token_probs(logits, *settings), q, proposal, n_drafted, generator)
    stats.draft_seconds.append(drafted - started)
    stats.target_seconds.append(time.perf_counter() - drafted)
    stats.target_passes += 1
    stats.drafted += int(n_drafted.sum())
    stats.accepted += int(n_accepted.sum())
    stats.drafted_lengths += n_drafted.tolist()
    stats.accepted_lengths += n_accepted.tolist()
    # Each row's new tokens: its accepted proposals, then the target's token nxt.
    new = torch.cat([proposal.clamp(min=0), proposal.new_zeros((b, 1))], dim=1)  # (B, width + 1)
    new.scatter_(1, n_accepted[:, None], nxt[:, None])
    parts = []
    for n in sorted(set(n_accepted.tolist())):
        keep = n_accepted == n
        part = group if bool(keep.all()) else group.select(keep)
        part.out = torch.cat([out[keep], new[keep, : n + 1]], dim=1)
        # Roll both caches back to the accepted tokens: all but the last, which the next pass feeds.
        part.cache.crop(part.out.shape[1] - 1)
        part.drafter.rollback(part.out.shape[1] - 1)
        parts.append(part)
    return parts


@dataclass
class _Group:
    """Rows of the batch (``rows`` into the caller's batch) that share one length, with their caches."""

    rows: Tensor
    out: Tensor
    cache: KVCache
    drafter: object

    def select(self, keep: Tensor) -> _Group:
        return _Group(self.rows[keep], self.out[keep], _stack_caches([self.cache], [keep]),
                      self.drafter.select(keep))

    @staticmethod
    def merge(groups: list[_Group]) -> _Group:
        if len(groups) == 1:
            return groups[0]
        return _Group(torch.cat([g.rows for g in groups]), torch.cat([g.out for g in groups]),
                      _stack_caches([g.cache for g in groups]), groups[0].drafter.merge([g.drafter for g in groups]))


def _stack_caches(caches: list[KVCache], keeps: list[Tensor] | None = None) -> KVCache:
    """A new cache holding the chosen rows of ``caches``, stacked; its length is the shortest one's."""
    keeps = keeps or [None] * len(caches)
    length = min(c.length for c in caches)
    first = caches[0]
    n = sum(c.batch_size if keep is None else int(keep.sum()) for c, keep in zip(caches, keeps))
    new = KVCache(first.n_layer, n, first.shape[1], first.shape[3], first.max_len, dtype=first.dtype,
                  device=first.device)
    for layer in range(first.n_layer):
        for mine, theirs in ((new.keys, "keys"), (new.values, "values")):
            parts = [getattr(c, theirs)[layer][:, :, :length] for c in caches]
            parts = [t if keep is None else t[keep] for t, keep in zip(parts, keeps)]
            mine[layer][:, :, :length] = torch.cat(parts)
    new.length = length
    return new


# --------------------------------------------------------------------------- measuring alpha and c

@torch.no_grad()
def acceptance_rate(target: nn.Module, draft: nn.Module, tokens: Tensor, start: int, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None) -> float:
    """The measured ``alpha``: the mean of ``beta = sum_x min(p(x), q(x))`` over positions ``start ..``.

    ``tokens`` ``(B, T)``: prompts followed by continuations (e.g. the target's own output);
    ``p`` and ``q`` are the target's and the draft's filtered next-token distributions for
    predicting ``tokens[:, start:]`` from everything before. Greedy: ``beta`` is 1 where the two
    argmaxes agree and 0 elsewhere. ``beta`` is the probability that speculative sampling accepts
    the draft's token there (Leviathan et al., 2023, Definition 3.1).
    """
    _checks.instance("target", target, nn.Module, "torch.nn.Module (a GPT)")
    _checks.instance("draft", draft, nn.Module, "torch.nn.Module (a GPT)")
    tokens = _checks.token_ids("tokens", tokens, target.config.vocab_size)
    start = _checks.integer("start", start, 1, tokens.shape[1] - 1)
    settings = (_checks.number("temperature", temperature, low=0.0),
                None if top_k is None else _checks.positive_int("top_k", top_k),
                None if top_p is None else _checks.number("top_p", top_p, 0.0, 1.0, low_open=True))
    x = tokens[:, :-1]
    p = next_token_probs(target(x).logits[:, start - 1:].float(), *settings)
    q = next_token_probs(draft(x).logits[:, start - 1:].float(), *settings)
    return float(torch.minimum(p, q).sum(dim=-1).mean())


@torch.no_grad()
def decode_step_seconds(model: nn.Module, idx: Tensor, n_new: int = 1, steps: int = 16) -> float:
    """Median wall-clock seconds of one cached decoding step that feeds ``n_new`` tokens after ``idx``.

    ``idx`` ``(B, T)`` is prefilled into a fresh cache; each timed step feeds ``n_new`` tokens
    through the path the decoding loops use (a GPT's ``decode_step``, else its forward) and
    picks the argmax (what a decoding loop does: of the last position for ``n_new = 1``, of
    every position for a verification pass), then the cache is cropped back, so every step
    sees the same context length. ``n_new = 1`` is one decoding step; ``n_new = k + 1`` is one
    verification pass.
    """
    _checks.instance("model", model, nn.Module, "torch.nn.Module (a GPT)")
    idx = _checks.token_ids("idx", idx, model.config.vocab_size)
    n_new = _checks.positive_int("n_new", n_new)
    steps = _checks.positive_int("steps", steps)
    if idx.shape[1] + n_new > model.config.block_size:
        raise ValueError(f"idx ({idx.shape[1]} tokens) plus n_new={n_new} exceeds block_size={model.config.block_size}")
    was_training = model.training
    model.eval()
    _prepare([model])
    try:
        cache = KVCache.for_model(model, idx.shape[0], idx.shape[1] + n_new)
        _step(model, idx, cache)
        step = idx[:, -n_new:] if idx.shape[1] >= n_new else idx[:, :1].repeat(1, n_new)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            _step(model, step, cache, last_only=n_new == 1).argmax(-1).tolist()
            times.append(time.perf_counter() - t0)
            cache.crop(idx.shape[1])
        return sorted(times)[len(times) // 2]
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- chapter 10's models and task

def _data_folder(folder: str | Path | None) -> Path:
    if folder is not None:
        return Path(folder)
    candidates = [Path("../book/data"), Path("book/data"), Path(__file__).resolve().parents[2] / "book" / "data"]
    return next((c for c in candidates if (c / "ch10_target.pt").is_file()), candidates[-1])


def load_chapter10_models(folder: str | Path | None = None):
    """Chapter 10's target and draft GPTs (float32, eval mode) and their BPE tokenizer.

    Read from ``ch10_target.pt`` and ``ch10_draft.pt`` in ``folder`` (default: ``book/data`` of
    the book, found from the working directory or this package's checkout), written by
    ``book/data/ch10_recipe.py``. Returns ``(target, draft, tokenizer, info)``; ``info`` holds
    each checkpoint's recipe, held-out loss and training seconds. Both files must carry the
    same tokenizer. A missing or damaged file raises ``transformer_book.train.CheckpointError``.
    """
    from transformer_book.models.gpt import GPT, GPTConfig
    from transformer_book.tokenize import BPETokenizer
    from transformer_book.train import CheckpointError, load_checkpoint, read_checkpoint

    folder = _data_folder(folder)
    models, info, tokenizers = {}, {}, {}
    for name in ("target", "draft"):
        path = folder / f"ch10_{name}.pt"
        config = read_checkpoint(path)["config"]
        model = GPT(GPTConfig.from_dict(config))
        state = load_checkpoint(path, model, config)
        models[name] = model.float().eval()
        tokenizers[name] = state["tokenizer"]
        info[name] = {key: state.get(key) for key in ("recipe", "heldout_loss", "train_seconds")}
        info[name]["path"] = str(path)
    if tokenizers["target"] != tokenizers["draft"]:
        raise CheckpointError(f"{folder}: the target's and the draft's checkpoints hold different tokenizers")
    tokenizer = BPETokenizer.from_dict(tokenizers["target"], source=str(folder / "ch10_target.pt"))
    return models["target"], models["draft"], tokenizer, info


_DEF = re.compile(r"^def [A-Za-z_]\w*\(.*\)(?: -> [^:]+)?:[ \t]*$", re.MULTILINE)


def completion_prompts(tokenizer, n: int, prompt_tokens: int = 160, seed: int = 0,
                       max_bytes: int | None = 150_000) -> list[tuple[str, list[int]]]:
    """``n`` code-completion prompts from the held-out standard-library files (never trained on).

    Each is a top-level function whose ``def`` line fits on one line: the prompt is the source
    that precedes it *and* its header line (without the newline, as
    :func:`transformer_book.code_model.function_headers` explains), cut to its last
    ``prompt_tokens`` tokens. Returns ``(function name, prompt ids)`` pairs, chosen at random
    (``seed``) among the functions with enough source before them.
    """
    import random

    from transformer_book.data.code import stdlib_corpus

    n = _checks.positive_int("n", n)
    prompt_tokens = _checks.positive_int("prompt_tokens", prompt_tokens)
    text = stdlib_corpus(max_bytes=max_bytes, seed=0, split="heldout")
    ends = [m.end() for m in _DEF.finditer(text) if m.start() > 8 * prompt_tokens]
    if len(ends) < n:
        raise ValueError(f"only {len(ends)} functions in the held-out code have enough source before them, "
                         f"asked for n={n}")
    chosen = sorted(random.Random(seed).sample(ends, n))
    prompts = []
    for end in chosen:
        end = len(text[:end].rstrip())  # the header's colon
        ids = tokenizer.encode(text[max(0, end - 8 * prompt_tokens): end])  # BPE ids are >= 1 byte each
        header = text[text.rfind("\n", 0, end) + 1: end]
        prompts.append((header[4: header.index("(")], ids[-prompt_tokens:]))
    return prompts
