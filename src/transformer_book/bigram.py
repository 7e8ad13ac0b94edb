"""A bigram language model (chapter 7's baseline): the next token depends on the current one only.

Count how often token ``b`` follows token ``a`` in the training ids, add ``alpha`` to every
count (so that no continuation has probability zero), and normalise each row:

    P(b | a) = (count(a, b) + alpha) / (count(a, .) + alpha * V)

No context beyond one token, no training loop, no parameters to learn by gradient: whatever a
Transformer does better than this, it does by reading further back. :class:`BigramLM` has the
interface of :class:`transformer_book.models.GPT` that :func:`transformer_book.generate.generate`
uses, so both models generate through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_book import _checks

from transformer_book.models.gpt import GPTOutput

__all__ = ["bigram_counts", "BigramLM"]


def bigram_counts(ids: Sequence[int] | Tensor, vocab_size: int) -> Tensor:
    """``counts[a, b]`` = how many times id ``b`` directly follows id ``a`` in ``ids``; ``(V, V)`` int64."""
    vocab_size = _checks.positive_int("vocab_size", vocab_size)
    return _counts(_check_ids("ids", ids, vocab_size), vocab_size)


def _check_ids(name: str, ids: object, vocab_size: int) -> Tensor:
    if not isinstance(ids, (Tensor, list, tuple)):
        raise TypeError(f"{name} must be a 1-D sequence of integer ids, got {_checks.describe(ids)}")
    if isinstance(ids, (list, tuple)):
        for i, x in enumerate(ids):
            _checks.integer(f"{name}[{i}]", x)
    ids = torch.as_tensor(ids, dtype=torch.long) if not isinstance(ids, Tensor) else ids
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D sequence of integer ids, got shape {tuple(ids.shape)} dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids hold values in [{int(ids.min())}, {int(ids.max())}], outside [0, vocab_size={vocab_size})")
    return ids.long()


def _counts(ids: Tensor, vocab_size: int) -> Tensor:
    pairs = ids[:-1] * vocab_size + ids[1:]  # one integer per (a, b) pair
    return torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


class BigramLM(nn.Module):
    """Count-based bigram model: ``log P(next | current)`` looked up in a ``(V, V)`` table.

    ``forward(idx)`` ``(B, T)`` -> :class:`~transformer_book.models.gpt.GPTOutput` whose
    ``logits`` ``(B, T, V)`` are the log-probabilities of the token after each position.
    """

    block_size = None  # it only ever reads the current token: no context window to exceed

    def __init__(self, vocab_size: int, alpha: float = 0.1) -> None:
        super().__init__()
        vocab_size = _checks.positive_int("vocab_size", vocab_size)
        alpha = _checks.number("alpha", alpha, low=0.0, low_open=True)  # add-alpha smoothing
        self.vocab_size, self.alpha = vocab_size, float(alpha)
        self.register_buffer("counts", torch.zeros(vocab_size, vocab_size, dtype=torch.long))
        self.register_buffer("log_probs", torch.full((vocab_size, vocab_size), -math.log(vocab_size)))

    def fit(self, ids: Sequence[int] | Tensor) -> BigramLM:
        """Count the pairs of ``ids`` (added to earlier counts) and refresh the table; returns ``self``."""
        self.counts += _counts(_check_ids("ids", ids, self.vocab_size), self.vocab_size)
        smoothed = self.counts.double() + self.alpha
        self.log_probs = (smoothed / smoothed.sum(-1, keepdim=True)).log().float()
        return self

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, past_key_values=None,
                use_cache: bool = False, need_weights: bool = False) -> GPTOutput:
        """Same signature as :meth:`GPT.forward`; the "cache" is empty (one token is all it needs)."""
        _checks.token_ids("idx", idx, self.vocab_size)
        logits = self.log_probs[idx]  # (B, T, V)
        loss = None
        if targets is not None:
            _checks.tensor("targets", targets)
            if targets.dtype not in _checks.ID_DTYPES:
                raise TypeError(f"targets must hold integer ids (torch.int64 or torch.int32), got dtype {targets.dtype}")
            _checks.shape_is("targets", targets, tuple(idx.shape), "(B, T)")
            keep = targets != -1
            if not bool(keep.any()):
                loss = logits.sum() * 0.0  # every target ignored: 0.0, the rule of label_smoothed_cross_entropy
            else:
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten().long(), ignore_index=-1)
        return GPTOutput(logits, loss, () if use_cache else None, None)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, alpha={self.alpha}"
