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

import inspect
import warnings

import torch
from torch import Tensor, nn

from transformer_book import _checks

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

def _check_logits(logits: object, dim: int | None = None) -> Tensor:
    layout = "(B, V)" if dim == 2 else "(..., V)"
    logits = _checks.float_tensor("logits", logits, dim, min_dim=None if dim else 1, layout=layout)
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape {layout} with V >= 1, got shape {tuple(logits.shape)}")
    return logits


def _check_sampling(temperature: object, top_k: object, top_p: object) -> tuple[float, int | None, float | None]:
    """The three sampling settings, checked: ``temperature >= 0`` (0 = greedy), ``top_k >= 1``, ``top_p`` in (0, 1]."""
    temperature = _checks.number("temperature", temperature, low=0.0)
    top_k = None if top_k is None else _checks.positive_int("top_k", top_k)
    top_p = None if top_p is None else _checks.number("top_p", top_p, 0.0, 1.0, low_open=True)
    return temperature, top_k, top_p


# --------------------------------------------------------------------------- the filters

def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` ``(..., V)``; ``temperature`` must be > 0 (0 means greedy: no division)."""
    logits = _check_logits(logits)
    if _checks.number("temperature", temperature, low=0.0) == 0:
        raise ValueError("temperature=0 means greedy decoding (argmax), not a division by zero: "
                         "apply_temperature needs temperature > 0")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row ``(..., V)``, set the others to ``-inf``.

    Ties with the ``k``-th largest value are kept (so a row may keep more than ``k``), as in
    Hugging Face's ``TopKLogitsWarper``. ``k >= V`` keeps everything. Returns a new tensor.
    """
    return _top_k(_check_logits(logits), _checks.positive_int("k", k))


def _top_k(logits: Tensor, k: int) -> Tensor:
    if k >= logits.shape[-1]:
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
    return _top_p(_check_logits(logits), _checks.number("p", p, 0.0, 1.0, low_open=True))


def _top_p(logits: Tensor, p: float) -> Tensor:
    if p >= 1.0:
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
    logits = _check_logits(logits)
    temperature, top_k, top_p = _check_sampling(temperature, top_k, top_p)
    apply_temperature(logits, temperature)  # refuses temperature 0 with its own message
    return _filter(logits, temperature, top_k, top_p)


def _filter(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    logits = logits / temperature
    logits = logits if top_k is None else _top_k(logits, top_k)
    return logits if top_p is None else _top_p(logits, top_p)


def _is_greedy(temperature: float, dtype: torch.dtype) -> bool:
    """Whether sampling at ``temperature`` is greedy decoding for logits of ``dtype``: 0, or too
    small to divide by in that dtype (below its smallest normal number)."""
    return temperature < torch.finfo(dtype).tiny


def _probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """The sampling distribution of checked logits ``(..., V)``: one-hot on the argmax at temperature 0.

    Every row is first shifted so its largest logit is 0: softmax does not change, but a tiny
    temperature can no longer overflow ``logits / t``, and the result tends to greedy as t -> 0.
    A temperature too small for the logits' dtype to hold (below its smallest normal number)
    *is* greedy. A row whose logits are NaN, or all ``-inf``, has no distribution: ``ValueError``.
    """
    top = logits.amax(dim=-1, keepdim=True)  # (..., 1)
    if not bool(torch.isfinite(top).all()) or bool(torch.isnan(logits).any()):
        raise ValueError(f"logits of shape {tuple(logits.shape)} have a row with NaN, +inf or only -inf "
                         "values: no next-token distribution exists (is the model's output finite?)")
    if _is_greedy(temperature, logits.dtype):
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    return torch.softmax(_filter(logits - top, temperature, top_k, top_p), dim=-1)


def next_token_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> Tensor:
    """The distribution the next token is drawn from, ``(..., V)``, each row summing to 1.

    ``temperature=0`` is greedy: all the probability on the largest logit (the first one on a tie).
    """
    return _probs(_check_logits(logits), *_check_sampling(temperature, top_k, top_p))


def sample_next_token(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One token per row: logits ``(B, V)`` -> ids ``(B, 1)`` (greedy when ``temperature=0``)."""
    logits = _check_logits(logits, dim=2)
    settings = _check_sampling(temperature, top_k, top_p)
    return _sample(logits, *settings, _checks.generator("generator", generator))


def _sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> Tensor:
    probs = _probs(logits, temperature, top_k, top_p)  # (B, V)
    if _is_greedy(temperature, logits.dtype):
        return probs.argmax(dim=-1, keepdim=True)
    if generator is not None and generator.device != probs.device:
        # a CPU generator with a GPU model: draw on the CPU (same tokens on every device)
        return torch.multinomial(probs.cpu(), num_samples=1, generator=generator).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# --------------------------------------------------------------------------- the loop

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

    ``use_cache=True`` keeps every layer's keys and values, so each step runs the model on the
    one new token instead of the whole sequence; the tokens are the same as without the cache.
    A model whose ``forward`` takes ``cache=`` (the GPT) gets chapter 8's static, preallocated
    :class:`~transformer_book.kv_cache.KVCache`; others, chapter 7's ``past_key_values``.

    The context window (``model.block_size``): a prompt longer than the window is cropped to its
    last ``block_size`` tokens with a warning (the returned tensor still starts with the whole
    prompt). Generating past the window slides it: the model always sees the last
    ``block_size`` tokens. With learned absolute positions every token's position changes when
    the window slides, so cached keys go stale; from then on each step recomputes the window
    (cached and uncached generation stay identical).

    A model that returns NaN logits, or a row with nothing left to sample, raises ``ValueError``.
    The model is put in eval mode (no dropout) for the loop and restored afterwards.
    """
    _checks.instance("model", model, nn.Module, "torch.nn.Module")
    max_new_tokens = _checks.integer("max_new_tokens", max_new_tokens, low=0)
    settings = _check_sampling(temperature, top_k, top_p)
    _checks.boolean("use_cache", use_cache)
    _checks.generator("generator", generator)
    idx = _checks.token_ids("idx", idx, getattr(model, "vocab_size", None)).long()
    block_size = getattr(model, "block_size", None)
    if block_size is not None and idx.shape[1] > block_size:
        warnings.warn(f"the prompt has {idx.shape[1]} tokens, more than the model's context window "
                      f"block_size={block_size}: the model sees only the last {block_size}", stacklevel=2)
    static = use_cache and "cache" in inspect.signature(model.forward).parameters

    if static and max_new_tokens and hasattr(model, "decode_step") and (
            block_size is None or idx.shape[1] + max_new_tokens <= block_size):
        return _generate_static(model, idx, max_new_tokens, settings, generator)  # chapter 8's tight loop

    was_training = model.training
    model.eval()
    try:
        out = idx
        cache = past = None
        for _ in range(max_new_tokens):
            window = out if block_size is None else out[:, -block_size:]
            fits = block_size is None or out.shape[1] <= block_size
            if static:
                if cache is None or not fits:  # start, or the window slid: positions changed
                    cache = model.new_cache(out.shape[0], max_len=_cache_len(out, max_new_tokens, block_size))
                    result = model(window, cache=cache)
                else:
                    result = model(out[:, -1:], cache=cache)  # the cache holds everything before it
            elif use_cache and past is not None and fits:
                result = model(out[:, -1:], past_key_values=past, use_cache=True)
            else:
                result = model(window, use_cache=use_cache)
            past = result.past_key_values if use_cache and not static else None
            token = _sample(result.logits[:, -1, :], *settings, generator)
            out = torch.cat([out, token.to(out.device)], dim=1)
        return out
    finally:
        model.train(was_training)


def _generate_static(model: nn.Module, idx: Tensor, max_new_tokens: int, settings: tuple,
                     generator: torch.Generator | None) -> Tensor:
    """Chapter 8's decoding loop: one preallocated cache and output, the model's ``decode_step``
    (last-position logits only), and nothing else per token. Greedy, the tokens after the
    first come from the model's ``decode_greedy`` where it has one (chapter 8's C loop: all of
    them in one call). Same tokens as the general loop."""
    b, t = idx.shape
    out = torch.empty(b, t + max_new_tokens, dtype=idx.dtype, device=idx.device)
    out[:, :t] = idx
    cache = model.new_cache(b, max_len=t + max_new_tokens)
    logits = model.decode_step(idx, cache)  # prefill: the whole prompt in one pass, (B, V)
    out[:, t:t + 1] = _sample(logits, *settings, generator)
    if _is_greedy(settings[0], logits.dtype) and max_new_tokens > 1 and hasattr(model, "decode_greedy"):
        out[:, t + 1:] = model.decode_greedy(out[:, t:t + 1], cache, max_new_tokens - 1,
                                             check=False)  # the ids are ours, already valid
        return out
    for i in range(t + 1, t + max_new_tokens):  # decode: one token a step
        logits = model.decode_step(out[:, i - 1:i], cache, check=False)
        out[:, i:i + 1] = _sample(logits, *settings, generator)
    return out


def _cache_len(out: Tensor, max_new_tokens: int, block_size: int | None) -> int:
    """Positions a static cache needs: the rest of the generation, at most the context window."""
    n = out.shape[1] + max_new_tokens
    return n if block_size is None else min(n, block_size)
