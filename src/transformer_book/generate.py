"""Generation (chapter 7): turn a language model's next-token logits into text, one token at a time.

A language model gives, at every position, logits over the vocabulary for the *next* token.
Generating is a loop: run the model on the tokens so far, turn the last position's logits into
a probability distribution, pick a token, append it, repeat. How the token is picked decides
what the text looks like:

* **greedy** (``temperature=0``): always the most likely token. Deterministic, and prone to
  loops (``self.x = self.x = ...``);
* **temperature** ``t``: sample from ``softmax(logits / t)``. ``t < 1`` sharpens the
  distribution towards greedy, ``t > 1`` flattens it towards uniform;
* **top-k** (Fan et al., 2018): sample only among the ``k`` most likely tokens;
* **top-p / nucleus** (Holtzman et al., 2020): sample only among the smallest set of most likely
  tokens whose probabilities add up to at least ``p``; the set is small where the model is
  sure and large where it is not.

The filters run in the order temperature -> top-k -> top-p, the order of Hugging Face's
``generate`` (its ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``),
and a filtered-out token gets the logit ``-inf`` (probability exactly zero).

The model protocol :func:`generate` relies on: ``model(idx, past_key_values=past,
use_cache=True)`` returns an object with ``.logits`` ``(B, T, V)`` and ``.past_key_values``,
and ``model.block_size`` is the longest context it accepts (``None``: unlimited).
:class:`transformer_book.models.GPT` and :class:`transformer_book.bigram.BigramLM` follow it.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

__all__ = [
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "filter_logits",
    "next_token_probs",
    "sample_next_token",
    "generate",
]


# --------------------------------------------------------------------------- argument checks

def _check_logits(logits: object) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor (..., V), got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got shape {tuple(logits.shape)}")
    return logits


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number >= 0, got {type(temperature).__name__} {temperature!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    return float(temperature)


def _check_top_k(top_k: object) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int >= 1 or None, got {type(top_k).__name__} {top_k!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be an int >= 1 or None, got top_k={top_k}")
    return top_k


def _check_top_p(top_p: object) -> float | None:
    if top_p is None:
        return None
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
        raise TypeError(f"top_p must be a number in (0, 1] or None, got {type(top_p).__name__} {top_p!r}")
    if not 0.0 < top_p <= 1.0:  # also False for NaN
        raise ValueError(f"top_p must lie in (0, 1] (the probability mass to keep), got top_p={top_p!r}")
    return float(top_p)


# --------------------------------------------------------------------------- the filters

def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` ``(..., V)``; ``temperature`` must be > 0 (0 means greedy: no division)."""
    logits = _check_logits(logits)
    t = _check_temperature(temperature)
    if t == 0:
        raise ValueError("temperature=0 means greedy decoding (argmax), not a division by zero: "
                         "apply_temperature needs temperature > 0")
    return logits / t


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row ``(..., V)``, set the others to ``-inf``.

    Ties with the ``k``-th largest value are kept (so a row may keep more than ``k``), as in
    Hugging Face's ``TopKLogitsWarper``. ``k >= V`` keeps everything. Returns a new tensor.
    """
    logits = _check_logits(logits)
    k = _check_top_k(k)
    if k is None or k >= logits.shape[-1]:
        return logits.clone()
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability adds up to >= ``p``.

    ``logits`` ``(..., V)``. Sort each row's probabilities in decreasing order; a token is kept
    when the probability of the tokens *before* it is still below ``p``, so the most likely
    token is always kept and the token that crosses ``p`` is kept too. ``p = 1`` keeps every
    token. Returns a new tensor with ``-inf`` at the removed tokens.
    """
    logits = _check_logits(logits)
    p = _check_top_p(p)
    if p is None or p >= 1.0:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False  # never an empty set
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Temperature, then top-k, then top-p, on logits ``(..., V)``; ``temperature > 0``."""
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def next_token_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> Tensor:
    """The distribution the next token is drawn from, ``(..., V)``, each row summing to 1.

    ``temperature=0`` is greedy: all the probability on the largest logit (the first one on a tie).
    """
    logits = _check_logits(logits)
    temperature = _check_temperature(temperature)
    _check_top_k(top_k)
    _check_top_p(top_p)
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    return torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)


def sample_next_token(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One token per row: logits ``(B, V)`` -> ids ``(B, 1)`` (greedy when ``temperature=0``)."""
    logits = _check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got shape {tuple(logits.shape)}")
    if _check_temperature(temperature) == 0:
        _check_top_k(top_k)
        _check_top_p(top_p)
        return logits.argmax(dim=-1, keepdim=True)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    if generator is not None and generator.device != probs.device:
        # a CPU generator with a GPU model: draw on the CPU (same tokens on every device)
        return torch.multinomial(probs.cpu(), num_samples=1, generator=generator).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# --------------------------------------------------------------------------- the loop

def _check_idx(idx: object, vocab_size: int | None) -> Tensor:
    if not isinstance(idx, Tensor):
        raise TypeError(f"idx must be a torch.Tensor of token ids (B, T), got {type(idx).__name__}")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must have shape (B, T) with T >= 1 (a prompt of at least one token), "
                         f"got shape {tuple(idx.shape)}")
    if vocab_size is not None and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"idx holds ids in [{int(idx.min())}, {int(idx.max())}], outside the model's "
                         f"vocabulary [0, {vocab_size})")
    return idx.long()


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Extend the prompts ``idx`` ``(B, T)`` by ``max_new_tokens`` tokens; returns ``(B, T + max_new_tokens)``.

    ``temperature=0`` is greedy; otherwise each token is drawn from
    ``softmax(top_p(top_k(logits / temperature)))`` with ``generator`` (same seed -> same tokens).

    ``use_cache=True`` keeps every layer's keys and values (a KV cache), so each step runs the
    model on the one new token instead of the whole sequence; the tokens are the same as
    without the cache.

    The context window (``model.block_size``): a prompt longer than the window is cropped to its
    last ``block_size`` tokens with a warning (the returned tensor still starts with the whole
    prompt). Generating past the window slides it: the model always sees the last
    ``block_size`` tokens. With learned absolute positions every token's position changes when
    the window slides, so cached keys go stale; from then on each step recomputes the window
    (cached and uncached generation stay identical).

    The model is put in eval mode (no dropout) for the loop and restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int >= 0, got {type(max_new_tokens).__name__} {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got max_new_tokens={max_new_tokens}")
    temperature = _check_temperature(temperature)
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be a bool, got {type(use_cache).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    idx = _check_idx(idx, getattr(model, "vocab_size", None))
    block_size = getattr(model, "block_size", None)
    if block_size is not None and idx.shape[1] > block_size:
        warnings.warn(f"the prompt has {idx.shape[1]} tokens, more than the model's context window "
                      f"block_size={block_size}: the model sees only the last {block_size}", stacklevel=2)

    was_training = model.training
    model.eval()
    try:
        out, past = idx, None
        for _ in range(max_new_tokens):
            if use_cache and past is not None and (block_size is None or out.shape[1] <= block_size):
                step_input = out[:, -1:]  # the cache holds everything before the last token
            else:
                step_input = out if block_size is None else out[:, -block_size:]
                past = None  # (re)start: the first step, or the window slid and the cache is stale
            result = model(step_input, past_key_values=past, use_cache=use_cache)
            past = result.past_key_values if use_cache else None
            token = sample_next_token(result.logits[:, -1, :], temperature, top_k, top_p, generator)
            out = torch.cat([out, token.to(out.device)], dim=1)
        return out
    finally:
        model.train(was_training)
