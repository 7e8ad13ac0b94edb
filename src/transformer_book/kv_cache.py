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

and, for the GPT's inference fast path (:meth:`transformer_book.models.GPT.decode_step`), a sixth:

* ``positions(n_new)``: the absolute positions ``(T_new,)`` of the new tokens (``length ..``).

Three layouts follow it:

* :class:`KVCache`: every position, up to ``max_len``; the read is the filled part
  ``[:length]``, so the step's shapes grow by one each token;
* :class:`SlidingWindowCache`: a ring buffer of the last ``window`` positions (Mistral-style
  sliding-window attention, Beltagy et al., 2020): memory stays ``O(window)`` however long the
  sequence, and a query attends to the ``window`` most recent positions only;
* :class:`GraphKVCache`: a :class:`KVCache` whose every step has *the same shapes* (it reads
  all ``max_len`` slots under a mask, and its position lives in a tensor on the device), so
  one decoding step can be recorded once as a CUDA graph and replayed for every token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_book import _checks

__all__ = ["KVCache", "SlidingWindowCache", "GraphKVCache", "kv_cache_bytes"]


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
        self._check_room(n_new)
        self._check_compatible(batch, dtype, device)

    def _check_room(self, n_new: int) -> None:
        if self.length + n_new > self.max_len:
            raise ValueError(f"the step writes {n_new} new position(s) after the {self.length} filled ones, past "
                             f"the cache's max_len={self.max_len}")

    def _check_compatible(self, batch: int, dtype: torch.dtype, device: torch.device) -> None:
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

    def positions(self, n_new: int) -> Tensor:
        """The absolute positions ``(n_new,)`` of the next ``n_new`` tokens: ``length .. length + n_new``."""
        return torch.arange(self.length, self.length + n_new, device=self.device)

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


class SlidingWindowCache(KVCache):
    """A ring buffer of the last ``window`` positions: ``n_layer`` pairs of ``(B, H_kv, W, D)`` buffers.

    Sliding-window attention lets the query at position ``t`` read the keys at positions
    ``t - W + 1 .. t`` only (Beltagy et al., 2020; Mistral, Jiang et al., 2023). Older keys are
    never read again, so the cache keeps ``W`` slots and writes position ``p`` into slot
    ``p % W``, over the position ``p - W`` that just left the window. Memory is ``O(W)``
    however long the sequence; ``length`` still counts every position seen.

    A one-token step reads the whole ring: it holds exactly the ``W`` most recent positions,
    and their order in the buffer does not matter (attention is a weighted *sum* over keys;
    positions were already encoded into the keys or the input). A step of several tokens (the
    prompt) reads the cached window in position order followed by its own keys, under a mask
    that is causal *and* at most ``W`` wide; then its last ``W`` keys go into the ring.

    :meth:`crop` can only roll back to a state the ring still holds: once the ring has wrapped,
    by one position (the position before the newest was overwritten when the newest arrived).
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, head_dim: int, window: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__(n_layer, batch_size, n_kv_head, head_dim, window, dtype=dtype, device=device)

    @classmethod
    def for_model(cls, model, batch_size: int, window: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> SlidingWindowCache:
        """A ring of ``window`` positions shaped for ``model`` (see :meth:`KVCache.for_model`)."""
        _checks.positive_int("window", window)
        probe = KVCache.for_model(model, 1, 1, dtype=dtype, device=device)  # reads and checks the config
        b, h, _, d = probe.shape
        return cls(probe.n_layer, batch_size, h, d, window, dtype=probe.dtype, device=probe.device)

    @property
    def window(self) -> int:
        """``W``: how many of the most recent positions a query reads (the ring's size)."""
        return self.max_len

    def __repr__(self) -> str:
        b, h, w, d = self.shape
        return (f"SlidingWindowCache(n_layer={self.n_layer}, batch_size={b}, n_kv_head={h}, head_dim={d}, "
                f"window={w}, length={self.length}, dtype={self.dtype}, nbytes={self.nbytes:,})")

    def _check_room(self, n_new: int) -> None:
        """Any number of new positions fits: the ring overwrites the ones that left the window."""

    def _held(self) -> Tensor:
        """Slots of the positions ``max(0, length - W + 1) .. length - 1``, oldest first: the keys
        the next query may still read, ``(n_held,)`` (at most ``W - 1`` of them)."""
        first = max(0, self.length - self.max_len + 1)
        return torch.arange(first, self.length, device=self.device) % self.max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new keys and values ``(B, H_kv, T_new, D)`` into the ring; return what the new
        queries read: the whole ring ``(B, H_kv, min(length + 1, W), D)`` for one new token, else
        the held window then the new keys ``(B, H_kv, n_held + T_new, D)``."""
        n = k.shape[2]
        expected = (self.batch_size, self.shape[1], n, self.shape[3])
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} must have shape "
                             f"(B, H_kv, T_new, D) = {expected}")
        keys, values = self.keys[layer], self.values[layer]
        if n == 1:
            slot = self.length % self.max_len
            keys[:, :, slot:slot + 1] = k
            values[:, :, slot:slot + 1] = v
            filled = min(self.length + 1, self.max_len)
            return keys[:, :, :filled], values[:, :, :filled]
        held = self._held()
        k_read = torch.cat([keys.index_select(2, held), k], dim=2)  # read before the ring is overwritten
        v_read = torch.cat([values.index_select(2, held), v], dim=2)
        last = min(n, self.max_len)  # only the last W new positions stay in the window
        slots = torch.arange(self.length + n - last, self.length + n, device=self.device) % self.max_len
        keys.index_copy_(2, slots, k[:, :, n - last:])
        values.index_copy_(2, slots, v[:, :, n - last:])
        return k_read, v_read

    def attention_mask(self, n_new: int) -> Tensor | None:
        """``None`` for one new token (the ring is exactly its window); otherwise the boolean
        ``(n_new, n_held + n_new)`` mask: query at position ``q`` reads key position ``p`` iff
        ``q - W < p <= q``."""
        if n_new == 1:
            return None
        first = max(0, self.length - self.max_len + 1)
        keys = torch.arange(first, self.length + n_new, device=self.device)  # positions of what update returns
        queries = torch.arange(self.length, self.length + n_new, device=self.device)
        return (keys[None, :] <= queries[:, None]) & (keys[None, :] > queries[:, None] - self.max_len)

    def crop(self, n: int) -> SlidingWindowCache:
        """Roll back to ``n`` positions, if the ring still holds the window that position ``n`` reads
        (always before the ring wraps; after, only ``n >= length - 1``). Returns ``self``."""
        n = _checks.integer("n", n, 0, self.length)
        low = 0 if self.length <= self.max_len else self.length - 1
        if n < low:
            raise ValueError(f"n={n}: a sliding-window cache of window={self.max_len} holding {self.length} "
                             f"positions can roll back only to n in [{low}, {self.length}] (the older "
                             f"positions were overwritten in the ring)")
        self.length = n
        return self


class GraphKVCache(KVCache):
    """A :class:`KVCache` whose every decoding step has the same shapes: a CUDA graph can replay it.

    A CUDA graph records a sequence of kernels with fixed shapes and fixed memory addresses
    and replays it for the price of one launch. :class:`KVCache` reads ``[:length]``, a shape
    that grows each token, and computes positions from a Python int: both would be frozen
    into the graph. Here the step reads *all* ``max_len`` slots under a mask, and the position
    of the next token lives in a device tensor :attr:`position` that :meth:`advance` increments
    in place, so the same kernels are correct at every step. ``length`` (a Python int) mirrors
    it for the checks; a graph replay advances :attr:`position` only, and whoever replays keeps
    ``length`` in step (:meth:`sync_length`).

    Reading every slot costs attention over ``max_len`` keys instead of ``length``: small next
    to the weights at GPT-2's sizes, and the price of launching one graph instead of hundreds
    of kernels.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, head_dim: int, max_len: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__(n_layer, batch_size, n_kv_head, head_dim, max_len, dtype=dtype, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=self.device)  # next token's position
        self._slots = torch.arange(max_len, device=self.device)  # (T_max,) key positions

    def positions(self, n_new: int) -> Tensor:
        return self.position + self._slots[:n_new]  # (n_new,), computed on the device

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``(B, H_kv, T_new, D)`` at :attr:`position` ``..``; return the whole buffers
        ``(B, H_kv, max_len, D)`` (the mask hides the unfilled slots)."""
        n = k.shape[2]
        expected = (self.batch_size, self.shape[1], n, self.shape[3])
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} must have shape "
                             f"(B, H_kv, T_new, D) = {expected}")
        slots = self.positions(n)
        self.keys[layer].index_copy_(2, slots, k)
        self.values[layer].index_copy_(2, slots, v)
        return self.keys[layer], self.values[layer]

    def attention_mask(self, n_new: int) -> Tensor:
        """Boolean ``(n_new, max_len)``: the query at position ``q`` reads slots ``0 .. q``."""
        return self._slots[None, :] <= self.positions(n_new)[:, None]

    def advance(self, n_new: int) -> None:
        self.length += n_new
        self.position.add_(n_new)  # in place: a replayed graph advances it too

    def sync_length(self) -> int:
        """Set ``length`` from :attr:`position` (after graph replays); returns it (a host sync)."""
        self.length = int(self.position)
        return self.length

    def crop(self, n: int) -> GraphKVCache:
        super().crop(n)
        self.position.fill_(self.length)
        return self

    def reset(self) -> GraphKVCache:
        super().reset()
        self.position.zero_()
        return self
