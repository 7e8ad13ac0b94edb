r"""Naive attention: the :math:`N \times N` score matrix written out in full.

This is the baseline FlashAttention removes: it stores :math:`S = QK^\top / \sqrt{d}` and
:math:`P = \mathrm{softmax}(S)`, two tensors of shape ``(B, H, N_q, N_k)``, in memory.
"""

from __future__ import annotations

import torch

from ._validate import check_causal, check_qkv, resolve_scale

__all__ = ["naive_attention"]


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale=None) -> torch.Tensor:
    r""":math:`\mathrm{softmax}(QK^\top \cdot \mathrm{scale}) V` with the full score matrix in memory.

    Args:
        q: ``(B, H, N_q, D)``; k, v: ``(B, H, N_k, D)``.
        causal: query ``i`` attends to keys ``j <= i`` (top-left aligned, as ``is_causal`` in
            ``torch.nn.functional.scaled_dot_product_attention``).
        scale: defaults to ``1 / sqrt(D)``.

    Returns:
        ``(B, H, N_q, D)``, same dtype as ``q``.
    """
    check_qkv(q, k, v)
    check_causal(causal)
    scale = resolve_scale(scale, q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, N_q, N_k): the N x N matrix
    if causal:
        n_q, n_k = q.shape[2], k.shape[2]
        visible = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, N_q, N_k) again, in q's dtype
    return weights @ v
