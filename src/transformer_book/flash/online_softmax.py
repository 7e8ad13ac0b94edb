r"""Online softmax: the max and the normaliser in one pass (Milakov & Gimelshein, 2018).

The safe softmax :math:`y_i = e^{x_i - m} / \sum_j e^{x_j - m}` with :math:`m = \max_j x_j`
reads the input three times: once for the max, once for the sum, once to normalise. The
online version keeps a running max :math:`m` and a running sum :math:`\ell` *relative to
that max*, and rescales the sum whenever the max grows:

.. math::

    m' = \max(m, \max_{j \in \text{block}} x_j), \qquad
    \ell' = \ell \, e^{m - m'} + \sum_{j \in \text{block}} e^{x_j - m'}.

After the last block :math:`\ell = \sum_j e^{x_j - m}` exactly, so one pass gives both
statistics. FlashAttention applies the same rescaling to its output accumulator.

Conventions: a row whose entries are all ``-inf`` has no probability mass to hand out. For it
``online_softmax`` returns a row of **zeros** (``torch.softmax`` returns NaN); its statistics are
``m = -inf`` and ``l = 0``. ``+inf`` or NaN entries give NaN, as in ``torch.softmax``.
"""

from __future__ import annotations

import torch

from transformer_book import _checks

__all__ = ["online_softmax", "online_softmax_update", "softmax_stats"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision statistics lose digits quickly; accumulate as the kernels do, in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_float_tensor(name: str, x) -> None:
    _checks.instance(name, x, torch.Tensor, "torch.Tensor")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")


def _safe_max(m: torch.Tensor) -> torch.Tensor:
    """``m`` with ``-inf`` replaced by 0, so that ``x - m`` never computes ``-inf - (-inf)``."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def online_softmax_update(m: torch.Tensor, l: torch.Tensor, x_block: torch.Tensor):
    r"""One step of the online softmax: fold a block of new scores into ``(m, l)``.

    Args:
        m: running maximum, shape ``(...)``; ``-inf`` before the first block.
        l: running sum :math:`\sum_j e^{x_j - m}` over the entries seen so far, shape ``(...)``.
        x_block: the new scores, shape ``(..., b)`` with ``b >= 1``.

    Returns:
        ``(m_new, l_new)``, both of shape ``(...)``:
        :math:`m' = \max(m, \max_j x_j)`, :math:`\ell' = \ell e^{m - m'} + \sum_j e^{x_j - m'}`.
    """
    for name, t in (("m", m), ("l", l), ("x_block", x_block)):
        _check_float_tensor(name, t)
    if x_block.dim() < 1 or x_block.shape[-1] == 0:
        raise ValueError(f"x_block must have shape (..., b) with b >= 1, got {tuple(x_block.shape)}")
    if m.shape != x_block.shape[:-1] or l.shape != m.shape:
        raise ValueError(
            f"m and l must have shape x_block.shape[:-1] = {tuple(x_block.shape[:-1])}, "
            f"got m {tuple(m.shape)}, l {tuple(l.shape)}"
        )
    return _update(m, l, x_block)


def _update(m: torch.Tensor, l: torch.Tensor, x_block: torch.Tensor):
    m_new = torch.maximum(m, x_block.amax(dim=-1))
    m_ref = _safe_max(m_new)
    # e^{m - m'} <= 1 rescales what was summed relative to the old max; when the max did not
    # change it is exactly 1. Every exponent below is <= 0: no overflow, whatever the scores.
    alpha = torch.exp(m - m_ref)
    l_new = l * alpha + torch.exp(x_block - m_ref.unsqueeze(-1)).sum(dim=-1)
    return m_new, l_new


def _check_dim(x: torch.Tensor, dim) -> int:
    _checks.integer("dim", dim)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension, got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be in [{-x.dim()}, {x.dim() - 1}] for x of shape {tuple(x.shape)}, got {dim}")
    return dim % x.dim()


def softmax_stats(x: torch.Tensor, dim: int = -1, block_size: int = 1):
    r"""The softmax statistics of ``x`` along ``dim`` in **one** pass over the data.

    Reads ``x`` ``block_size`` entries at a time (``block_size=1`` is the per-element
    recurrence of Milakov & Gimelshein) and returns ``(m, l)`` with ``m = max x`` and
    ``l = sum exp(x - m)``, each of shape ``x.shape`` without ``dim``, in float32 (float64 for
    float64 input). ``m + log(l)`` is ``logsumexp(x)``. An all ``-inf`` row gives ``(-inf, 0)``.
    """
    _check_float_tensor("x", x)
    dim = _check_dim(x, dim)
    _checks.positive_int("block_size", block_size)
    if x.shape[dim] == 0:
        raise ValueError(f"x must have at least one entry along dim={dim}, got shape {tuple(x.shape)}")
    xs = x.movedim(dim, -1).to(_compute_dtype(x.dtype))
    m = torch.full(xs.shape[:-1], float("-inf"), dtype=xs.dtype, device=xs.device)
    l = torch.zeros_like(m)
    for start in range(0, xs.shape[-1], block_size):
        m, l = _update(m, l, xs[..., start:start + block_size])
    return m, l


def online_softmax(x: torch.Tensor, dim: int = -1, block_size: int = 1) -> torch.Tensor:
    """Softmax of ``x`` along ``dim`` from the one-pass statistics of :func:`softmax_stats`.

    Equal to ``torch.softmax(x, dim)`` (same shape and dtype), except that a row of all
    ``-inf`` gives zeros instead of NaN (see the module docstring).
    """
    m, l = softmax_stats(x, dim=dim, block_size=block_size)
    dim = dim % x.dim()
    xs = x.movedim(dim, -1).to(m.dtype)
    m_ref = _safe_max(m).unsqueeze(-1)
    l = l.unsqueeze(-1)
    # The second (and last) pass: normalise. Rows with l == 0 had only -inf entries.
    # (NaN statistics, from +inf or NaN entries, stay NaN as in torch.softmax.)
    empty = l == 0
    y = torch.where(empty, torch.zeros_like(xs), torch.exp(xs - m_ref) / torch.where(empty, torch.ones_like(l), l))
    return y.to(x.dtype).movedim(-1, dim)
