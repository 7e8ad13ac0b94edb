"""Attention masks (chapter 5): which keys each query may look at.

The book's convention, used by every module that attends:

* a mask is a **boolean** tensor, ``True`` = *may attend* (the convention of
  :func:`torch.nn.functional.scaled_dot_product_attention`);
* it is broadcastable to the scores' shape ``(B, H, T_q, T_k)``: a causal mask is
  ``(T, T)``, a padding mask is ``(B, 1, 1, T_k)`` (one row for all queries and heads),
  and :func:`combine_masks` ANDs masks of different shapes together;
* a query row with **nothing** to attend to (a padded query under a padding mask, say) is
  not an error: :func:`transformer_book.attention.scaled_dot_product_attention` gives it
  all-zero weights and an all-zero output (as ``F.scaled_dot_product_attention`` does),
  never a NaN.

``torch.nn.MultiheadAttention`` uses the opposite convention for its boolean masks
(``True`` = *not* allowed); :func:`to_torch_mha_mask` and
:func:`to_torch_key_padding_mask` translate. :func:`to_additive_mask` turns a boolean
mask into the additive float form (``0`` where allowed, ``-inf`` where not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_book import _checks

__all__ = [
    "causal_mask",
    "padding_mask",
    "prefix_lm_mask",
    "combine_masks",
    "check_mask",
    "to_additive_mask",
    "to_torch_mha_mask",
    "to_torch_key_padding_mask",
]


def causal_mask(n: int, *, device: torch.device | str | None = None) -> Tensor:
    """Lower-triangular ``(n, n)`` boolean mask: query ``t`` may attend to keys ``0..t``.

    ``mask[t, s]`` is ``True`` iff ``s <= t``. Broadcasts against ``(B, H, n, n)`` scores.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    n = _checks.positive_int("n", n)
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """Key mask ``(B, 1, 1, T)`` that hides padding: ``True`` where ``tokens != pad_id``.

    ``tokens`` is ``(B, T)`` integer ids. The two singleton axes let the mask broadcast
    over heads and queries: every query may look at every real key of its own sequence.
    (Padded *queries* still produce rows; what they attend to does not matter, and their
    outputs are ignored by the loss.)
    """
    _checks.tensor("tokens", tokens, 2, layout="(B, T)")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
    _checks.integer("pad_id", pad_id)
    return (tokens != pad_id)[:, None, None, :]


def prefix_lm_mask(n: int, prefix_len: int | Tensor, *, device: torch.device | str | None = None) -> Tensor:
    """Prefix-LM mask: the first ``prefix_len`` positions see each other, the rest are causal.

    ``mask[t, s]`` is ``True`` iff ``s < prefix_len`` or ``s <= t``: every position may read
    the whole prefix (bidirectional there, as in an encoder) and the positions after it are
    generated left to right (as in a decoder). ``prefix_len = 0`` or ``1`` gives
    :func:`causal_mask`; ``prefix_len = n`` lets everything see everything.

    ``prefix_len`` is an int (returns ``(n, n)``) or an integer tensor ``(B,)`` with one
    prefix length per sequence (returns ``(B, 1, n, n)``, broadcastable over heads).
    """
    n = _checks.positive_int("n", n)
    if isinstance(prefix_len, Tensor):
        if prefix_len.dim() != 1 or prefix_len.is_floating_point() or prefix_len.dtype == torch.bool:
            raise ValueError(f"prefix_len as a tensor must be 1-D integer (B,), got shape "
                             f"{tuple(prefix_len.shape)} dtype {prefix_len.dtype}")
        if bool(((prefix_len < 0) | (prefix_len > n)).any()):
            raise ValueError(f"prefix_len must lie in [0, n={n}], got {prefix_len.tolist()}")
        device = prefix_len.device if device is None else device
        keys = torch.arange(n, device=device)
        in_prefix = keys[None, None, None, :] < prefix_len.to(device)[:, None, None, None]
        return causal_mask(n, device=device) | in_prefix
    prefix_len = _checks.integer("prefix_len", prefix_len, 0, n)
    mask = causal_mask(n, device=device)
    mask[:, :prefix_len] = True
    return mask


def _require_bool(name: str, mask: object) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a boolean torch.Tensor (True = may attend), got {_checks.describe(mask)}")
    if mask.dtype != torch.bool:
        hint = (" A float mask is additive (0 = attend, -inf = blocked): pass it as `bias=` instead,"
                " or turn it into a boolean mask with `mask == 0`."
                if mask.is_floating_point() else "")
        raise TypeError(f"{name} must have dtype torch.bool (True = may attend), got dtype {mask.dtype}.{hint}")
    return mask


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """AND boolean masks together, broadcasting their shapes; ``None`` entries are skipped.

    A position may be attended iff *every* mask allows it. For example
    ``combine_masks(causal_mask(T), padding_mask(tokens, pad))`` has shape ``(B, 1, T, T)``:
    causal *and* not padding. Returns ``None`` when every argument is ``None``
    (no masking at all).
    """
    present = [(i, _require_bool(f"masks[{i}]", m)) for i, m in enumerate(masks) if m is not None]
    if not present:
        return None
    try:
        shape = torch.broadcast_shapes(*(m.shape for _, m in present))
    except RuntimeError:
        shapes = ", ".join(f"masks[{i}] {tuple(m.shape)}" for i, m in present)
        raise ValueError(f"masks cannot be broadcast together: {shapes}; trailing dimensions must "
                         "be equal or 1 (the rule of torch broadcasting)") from None
    out = present[0][1].expand(shape)
    for _, m in present[1:]:
        out = out & m
    return out.clone() if len(present) == 1 else out


def check_mask(mask: Tensor, scores_shape: tuple[int, ...] | torch.Size, *, name: str = "mask") -> Tensor:
    """Validate a boolean mask against the scores' shape ``(..., T_q, T_k)`` and return it.

    Raises ``TypeError`` for a non-boolean mask and ``ValueError`` if it cannot broadcast
    to ``scores_shape`` (naming both shapes).
    """
    mask = _require_bool(name, mask)
    scores_shape = tuple(scores_shape)
    ok = mask.dim() <= len(scores_shape)
    if ok:
        try:
            ok = tuple(torch.broadcast_shapes(mask.shape, scores_shape)) == scores_shape
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(mask.shape)} cannot be broadcast to the attention "
                         f"scores' shape {scores_shape} (..., T_q, T_k): each of its trailing "
                         "dimensions must equal the scores' dimension or be 1")
    return mask


def to_additive_mask(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boolean mask -> additive float mask: ``0.0`` where allowed, ``-inf`` where blocked.

    Adding it to the scores before the softmax is the other common way to mask
    (``F.scaled_dot_product_attention`` accepts both). Note that a fully blocked row becomes
    all ``-inf``, and a plain softmax over it is NaN; our attention function handles that
    row, a bare ``torch.softmax`` does not.
    """
    mask = _require_bool("mask", mask)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def to_torch_mha_mask(mask: Tensor) -> Tensor:
    """Our ``attn_mask`` (``True`` = may attend) -> ``torch.nn.MultiheadAttention``'s (``True`` = blocked).

    ``nn.MultiheadAttention`` reads a boolean ``attn_mask`` of shape ``(T_q, T_k)`` or
    ``(B * H, T_q, T_k)`` the other way round from ours and from
    ``F.scaled_dot_product_attention``: ``True`` there means *not allowed*. The translation
    is a logical NOT; a ``(B, H, T_q, T_k)`` mask is also reshaped to ``(B * H, T_q, T_k)``.
    """
    mask = _require_bool("mask", mask)
    if mask.dim() == 4:
        mask = mask.reshape(-1, *mask.shape[-2:])
    elif mask.dim() not in (2, 3):
        raise ValueError(f"mask must have shape (T_q, T_k), (B*H, T_q, T_k) or (B, H, T_q, T_k), "
                         f"got shape {tuple(mask.shape)}")
    return ~mask


def to_torch_key_padding_mask(mask: Tensor) -> Tensor:
    """Our padding mask ``(B, 1, 1, T)`` (``True`` = real token) -> ``key_padding_mask`` ``(B, T)`` (``True`` = pad)."""
    mask = _require_bool("mask", mask)
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        mask = mask[:, 0, 0, :]
    if mask.dim() != 2:
        raise ValueError(f"mask must be a key padding mask of shape (B, 1, 1, T) or (B, T), got shape "
                         f"{tuple(mask.shape)}")
    return ~mask
