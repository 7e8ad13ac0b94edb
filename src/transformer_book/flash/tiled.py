r"""Tiled attention in plain PyTorch: FlashAttention's algorithm without a custom kernel.

Queries are cut into blocks of ``block_q`` rows, keys and values into blocks of ``block_k``
rows. For one query block we walk over the key blocks and keep, per query row, the online
softmax statistics (running max :math:`m`, running sum :math:`\ell`) and an *unnormalised*
output accumulator :math:`A`. A new key block with scores :math:`S` (``block_q x block_k``) and
values :math:`V_b` updates them as

.. math::

    m' = \max(m, \mathrm{rowmax}\, S), \quad
    P = e^{S - m'}, \quad
    \ell' = e^{m - m'} \ell + \mathrm{rowsum}\, P, \quad
    A' = e^{m - m'} A + P V_b,

and at the end :math:`O = A / \ell`. The largest tensor alive is one ``(B, H, block_q,
block_k)`` tile: the ``N_q x N_k`` matrix is never built.
"""

from __future__ import annotations

import torch

from transformer_book import _checks

from ._validate import check_causal, check_qkv, resolve_scale

__all__ = ["tiled_attention", "merge_block"]


def merge_block(m, l, acc, scores, v_block):
    r"""Fold one key block into a query block's running state ``(m, l, acc)``.

    Args:
        m, l: ``(..., block_q)`` running max and running sum (``-inf`` and 0 at the start).
        acc: ``(..., block_q, D)`` unnormalised output accumulator (0 at the start).
        scores: ``(..., block_q, block_k)`` scaled scores of this block, ``-inf`` where masked.
        v_block: ``(..., block_k, D)`` the block's values.

    Returns:
        ``(m_new, l_new, acc_new)`` with the shapes of ``(m, l, acc)``.

    An inner step of :func:`tiled_attention`, which checks its inputs once: this trusts its caller.
    """
    m_new = torch.maximum(m, scores.amax(dim=-1))
    # A row that has seen only masked scores keeps m = -inf; measure it against 0 instead so
    # that no -inf - (-inf) = NaN appears (its p and alpha are then exactly 0).
    m_ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - m_ref)  # how much the old max overestimated; 1 if unchanged
    p = torch.exp(scores - m_ref.unsqueeze(-1))
    l_new = alpha * l + p.sum(dim=-1)
    acc_new = alpha.unsqueeze(-1) * acc + p @ v_block
    return m_new, l_new, acc_new


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    *,
    block_q: int = 64,
    block_k: int = 64,
    scale=None,
    return_lse: bool = False,
):
    r"""Attention computed block by block with the online softmax; never builds ``N_q x N_k``.

    Args:
        q: ``(B, H, N_q, D)``; k, v: ``(B, H, N_k, D)``; any float dtype, one device.
        causal: query ``i`` attends to keys ``j <= i`` (top-left aligned, as ``is_causal`` in
            ``F.scaled_dot_product_attention``). Key blocks entirely after a query block are
            skipped; only blocks that straddle the diagonal are masked.
        block_q, block_k: tile sizes (any positive ints; the last tile may be shorter).
        scale: defaults to ``1 / sqrt(D)``.
        return_lse: also return the row log-sum-exp of the scaled scores.

    Returns:
        ``O`` of shape ``(B, H, N_q, D)`` in ``q``'s dtype, and with ``return_lse`` also
        ``lse`` of shape ``(B, H, N_q)`` in float32 (float64 for float64 inputs). The running
        state is kept in float32 for half-precision inputs. Differentiable through autograd.
    """
    check_qkv(q, k, v)
    check_causal(causal)
    _checks.positive_int("block_q", block_q)
    _checks.positive_int("block_k", block_k)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {return_lse!r}")
    scale = resolve_scale(scale, q.shape[-1])
    cdtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, H, n_q, D = q.shape
    n_k = k.shape[2]

    outputs, lses = [], []
    for q_start in range(0, n_q, block_q):
        q_stop = min(q_start + block_q, n_q)
        q_block = q[:, :, q_start:q_stop].to(cdtype) * scale
        rows = q_stop - q_start
        m = torch.full((B, H, rows), float("-inf"), dtype=cdtype, device=q.device)
        l = torch.zeros((B, H, rows), dtype=cdtype, device=q.device)
        acc = torch.zeros((B, H, rows, D), dtype=cdtype, device=q.device)
        # Causal: the last query of this block is q_stop - 1, so keys >= q_stop are invisible
        # to every row of the block; those key blocks are never touched.
        k_stop = min(n_k, q_stop) if causal else n_k
        for k_start in range(0, k_stop, block_k):
            k_end = min(k_start + block_k, k_stop)
            scores = q_block @ k[:, :, k_start:k_end].to(cdtype).transpose(-2, -1)  # (B, H, rows, cols)
            if causal and k_end - 1 > q_start:  # the block straddles the diagonal: mask it
                qi = torch.arange(q_start, q_stop, device=q.device).unsqueeze(-1)
                kj = torch.arange(k_start, k_end, device=q.device)
                scores = scores.masked_fill(kj > qi, float("-inf"))
            m, l, acc = merge_block(m, l, acc, scores, v[:, :, k_start:k_end].to(cdtype))
        # Deferred normalisation: divide once, at the end. (Causal rows always see key 0,
        # so l > 0 here; the guard keeps a zero row, never NaN, should that ever change.)
        empty = l == 0
        safe_l = torch.where(empty, torch.ones_like(l), l)
        outputs.append((acc / safe_l.unsqueeze(-1)).masked_fill(empty.unsqueeze(-1), 0.0))
        lses.append(torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(safe_l)))
    out = torch.cat(outputs, dim=2).to(q.dtype)
    if return_lse:
        return out, torch.cat(lses, dim=2)
    return out
