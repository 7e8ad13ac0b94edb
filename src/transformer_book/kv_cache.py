"""The KV cache (chapter 8): keep every layer's keys and values so a decoding step computes one token.

A decoder's token at position ``t`` attends over the keys and values of positions ``0..t``;
those of positions ``< t`` were already computed at earlier steps and never change (the mask
is causal). Keeping them turns each step from a forward pass over the whole sequence,
``O(T)`` tokens through every layer, into a pass over the one new token.

:class:`KVCache` is the *static* cache that inference engines use: one preallocated buffer
``(B, H_kv, T_max, D)`` per layer for keys and one for values. A step writes the new
positions in place and attends over the filled part ``[:length]``; nothing is concatenated,
nothing is reallocated, and every step has the same shapes (what a CUDA graph needs).
Chapter 7's cache, which concatenates the new keys onto the old ones, is the simple version
it grew from.

The protocol a model relies on (:class:`transformer_book.models.GPT` uses it; a cache of
another layout, e.g. a sliding window, implements the same five names):

* ``length``: positions already filled, which is also the position of the next token;
* ``check_step(n_new, batch, dtype, device)``: raise before anything is written if a step of
  ``n_new`` tokens does not fit;
* ``update(layer, k, v)``: write the new keys/values ``(B, H_kv, T_new, D)`` of one layer and
  return what the new queries attend over, ``(B, H_kv, T_k, D)`` each;
* ``attention_mask(n_new)``: boolean ``(T_new, T_k)`` mask for the new queries (``True`` = may
  attend), or ``None`` when every returned key may be read;
* ``advance(n_new)``: called once the last layer has written: the step is complete.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_book import _checks

__all__ = ["KVCache", "kv_cache_bytes"]


def kv_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, n_tokens: int, batch: int = 1,
                   dtype: torch.dtype = torch.float32) -> int:
    """Bytes a KV cache holds for ``n_tokens`` positions of ``batch`` sequences.

    ``2 (keys and values) x n_layer x n_kv_head x head_dim x bytes per element`` per token.
    """
    for name, value in (("n_layer", n_layer), ("n_kv_head", n_kv_head), ("head_dim", head_dim),
                        ("batch", batch)):
        _checks.positive_int(name, value)
    n_tokens = _checks.integer("n_tokens", n_tokens, low=0)
    _checks.instance("dtype", dtype, torch.dtype)
    per_token = 2 * n_layer * n_kv_head * head_dim * dtype.itemsize
    return per_token * n_tokens * batch


class KVCache:
    """A static, preallocated key/value cache: ``n_layer`` pairs of ``(B, H_kv, T_max, D)`` buffers.

    ``length`` positions are filled; :meth:`crop` rolls back (speculative decoding rejects a
    draft), :meth:`reorder` permutes the batch (beam search keeps the best beams),
    :meth:`reset` empties it. Build one for a model with :meth:`for_model`.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, head_dim: int, max_len: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("n_kv_head", n_kv_head),
                            ("head_dim", head_dim), ("max_len", max_len)):
            _checks.positive_int(name, value)
        _checks.instance("dtype", dtype, torch.dtype)
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        shape = (batch_size, n_kv_head, max_len, head_dim)  # (B, H_kv, T_max, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length = 0

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """A cache shaped for ``model`` (read by duck typing from ``model.config``: ``n_layer``,
        ``n_head``, ``n_kv_head``, ``n_embd``, ``block_size``); dtype and device default to the
        model's parameters', ``max_len`` to its context window."""
        config = getattr(model, "config", None)
        if config is None or not all(hasattr(config, n) for n in ("n_layer", "n_head", "n_embd", "block_size")):
            raise TypeError(f"model must have a GPT-like config (n_layer, n_head, n_embd, block_size), got "
                            f"{type(model).__name__}")
        n_kv_head = getattr(config, "n_kv_head", None) or config.n_head
        max_len = config.block_size if max_len is None else _checks.integer("max_len", max_len, 1, config.block_size)
        weight = next(model.parameters())
        return cls(config.n_layer, batch_size, n_kv_head, config.n_embd // config.n_head, max_len,
                   dtype=weight.dtype if dtype is None else dtype, device=weight.device if device is None else device)

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def n_layer(self) -> int:
        return len(self.keys)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """One buffer's shape ``(B, H_kv, T_max, D)``."""
        return tuple(self.keys[0].shape)

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    @property
    def max_len(self) -> int:
        return self.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def nbytes(self) -> int:
        """Bytes of all the buffers (full capacity, filled or not)."""
        return sum(t.nbytes for t in self.keys + self.values)

    def __repr__(self) -> str:
        b, h, t, d = self.shape
        return (f"KVCache(n_layer={self.n_layer}, batch_size={b}, n_kv_head={h}, head_dim={d}, max_len={t}, "
                f"length={self.length}, dtype={self.dtype}, nbytes={self.nbytes:,})")

    # ---- the protocol a model uses ---------------------------------------------------------------
    def check_step(self, n_new: int, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        """Raise ``ValueError``/``TypeError`` naming both sides if a step does not fit this cache."""
        if self.length + n_new > self.max_len:
            raise ValueError(f"the step writes {n_new} new position(s) after the {self.length} filled ones, past "
                             f"the cache's max_len={self.max_len}")
        if batch != self.batch_size:
            raise ValueError(f"the input has batch size {batch} but the cache was built for batch_size="
                             f"{self.batch_size}")
        if dtype != self.dtype:
            raise TypeError(f"the model computes in {dtype} but the cache holds {self.dtype}")
        if torch.device(device) != self.device:
            raise ValueError(f"the model is on {device} but the cache is on {self.device}")

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer ``layer``'s new keys and values ``(B, H_kv, T_new, D)`` at positions
        ``length .. length + T_new``; return the filled part ``(B, H_kv, length + T_new, D)``."""
        start, end = self.length, self.length + k.shape[2]
        expected = (self.batch_size, self.shape[1], k.shape[2], self.shape[3])
        if tuple(k.shape) != expected or tuple(v.shape) != expected or end > self.max_len:
            raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} must have shape "
                             f"(B, H_kv, T_new, D) = {expected} with length + T_new = {end} <= max_len="
                             f"{self.max_len}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def attention_mask(self, n_new: int) -> Tensor | None:
        """``(n_new, length + n_new)`` boolean mask: new query ``i`` (position ``length + i``) reads
        keys ``0 .. length + i``; ``None`` for a single new token (it may read every key)."""
        if n_new == 1:
            return None
        keys = torch.arange(self.length + n_new, device=self.device)
        queries = torch.arange(self.length, self.length + n_new, device=self.device)
        return keys[None, :] <= queries[:, None]  # causal, aligned to the bottom right

    def advance(self, n_new: int) -> None:
        """Mark ``n_new`` more positions as filled (the model calls this after its last layer)."""
        self.length += n_new

    # ---- what decoding algorithms do with it ---------------------------------------------------------
    def crop(self, n: int) -> KVCache:
        """Keep only the first ``n`` positions (roll back a rejected draft); returns ``self``.

        Nothing is erased: the positions after ``n`` are simply overwritten by the next write.
        """
        self.length = _checks.integer("n", n, 0, self.length)
        return self

    def reorder(self, beam_idx: Tensor) -> KVCache:
        """Row ``i`` of the batch becomes old row ``beam_idx[i]`` in every buffer (beam search keeps
        and duplicates its best beams); ``beam_idx`` ``(B,)`` integer. Returns ``self``."""
        _checks.token_ids("beam_idx", beam_idx, self.batch_size, dim=1, layout="(B,)")
        if beam_idx.shape[0] != self.batch_size:
            raise ValueError(f"beam_idx must have shape (B={self.batch_size},), got shape {tuple(beam_idx.shape)}")
        beam_idx = beam_idx.to(self.device)
        for buffers in (self.keys, self.values):
            for t in buffers:
                t.copy_(t.index_select(0, beam_idx))  # index_select copies, so the in-place write is safe
        return self

    def reset(self) -> KVCache:
        """Empty the cache (``length = 0``) without freeing its buffers; returns ``self``."""
        self.length = 0
        return self
