"""Input checks shared by ``tiled_attention``, ``naive_attention`` and ``flash_attention``.

Every message names the argument, what it received and what was expected (CONTRIBUTING.md).
"""

from __future__ import annotations

import math

import torch

from transformer_book import _checks

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qkv(q, k, v, *, dtypes=_FLOAT_DTYPES) -> None:
    """Check ``q (B, H, N_q, D)``, ``k, v (B, H, N_k, D)``: tensors, same dtype and device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.instance(name, t, torch.Tensor, "torch.Tensor of shape (B, H, N, D)")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions (B, H, N, D), got shape {tuple(t.shape)} ({t.dim()} dimensions)"
            )
        if t.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise TypeError(f"{name} must have a floating dtype in ({names}), got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, H, N_k, D), got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            "q (B, H, N_q, D) and k (B, H, N_k, D) must agree on B, H and D, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if q.shape[2] == 0 or k.shape[2] == 0 or q.shape[3] == 0:
        raise ValueError(
            f"sequence lengths and head size must be positive, got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )


def check_causal(causal) -> None:
    _checks.boolean("causal", causal)


def resolve_scale(scale, head_dim: int) -> float:
    """``scale`` if given (a positive finite number), else ``1 / sqrt(head_dim)``."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return _checks.number("scale", scale, low=0.0, low_open=True)

