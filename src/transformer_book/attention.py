"""Attention (chapter 4): scaled dot-product attention and multi-head attention, from scratch.

.. math::

    \\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}\\!\\left(\\frac{Q K^\\top}{\\sqrt{d_k}}\\right) V

(Vaswani et al., 2017). :class:`MultiHeadAttention` runs ``n_heads`` of these side by side on
learned projections; with ``n_kv_heads < n_heads`` several query heads share one key/value
head: grouped-query attention (Ainslie et al., 2023), and multi-query attention when
``n_kv_heads == 1`` (Shazeer, 2019).

Masks follow :mod:`transformer_book.masks`: boolean, ``True`` = may attend, broadcastable to
``(B, H, T_q, T_k)``. An additive float mask (ALiBi, relative-position biases, or a mask in
``0/-inf`` form) goes into the separate ``bias=`` argument; passing a float tensor as ``mask``
is a ``TypeError``, so the two kinds can never be confused. A query whose row is entirely
masked gets all-zero weights and an all-zero output (finite gradients), the same result as
``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_book import _checks, cpu_kernels
from transformer_book.masks import causal_mask, check_mask

__all__ = [
    "scaled_dot_product_attention",
    "repeat_kv",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
    "attention_param_count",
    "attention_flops",
    "attention_flops_breakdown",
    "packed_weight",
    "affine",
]


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Attention of queries ``q`` over keys ``k`` and values ``v``; returns ``(output, weights)``.

    Shapes (any number of leading batch dimensions, written ``(B, H)`` here):

    * ``q``: ``(B, H, T_q, D)``, ``k``: ``(B, H, T_k, D)``, ``v``: ``(B, H, T_k, D_v)``;
    * ``mask``: boolean, ``True`` = may attend, broadcastable to ``(B, H, T_q, T_k)``;
    * ``bias``: float, added to the scaled scores, broadcastable to ``(B, H, T_q, T_k)``
      (``-inf`` entries block, as in an additive mask);
    * returns ``output`` ``(B, H, T_q, D_v)`` and ``weights`` ``(B, H, T_q, T_k)`` (each row sums
      to 1, or is all zero when the mask and bias leave the row nothing to attend to).

    ``scale`` (a number > 0) defaults to ``1 / sqrt(D)``. ``dropout_p`` drops attention weights (during
    training); the returned ``weights`` are the probabilities *before* dropout. A NaN in the
    inputs gives NaN in the rows it reaches (it is reported, never mistaken for a masked row).
    """
    _check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else _checks.number("scale", scale, 0.0, low_open=True)
    dropout_p = _checks.dropout("dropout_p", dropout_p)
    scores_shape = (*q.shape[:-1], k.shape[-2])
    bias = None if bias is None else _check_bias(bias, scores_shape)
    mask = None if mask is None else check_mask(mask, scores_shape, name="mask")
    return _attention(q, k, v, mask, bias, scale, dropout_p)


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None,
               scale: float, dropout_p: float) -> tuple[Tensor, Tensor]:
    """The math of :func:`scaled_dot_product_attention`, on checked inputs."""
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T_q, T_k)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if mask is None and bias is None:
        weights = torch.softmax(scores, dim=-1)
    else:
        # Which keys each query may read comes from the mask and the bias, never from the
        # scores: a NaN score must stay visible, not pass for a blocked key.
        allowed = torch.ones_like(scores, dtype=torch.bool)
        allowed = allowed & mask if mask is not None else allowed
        allowed = allowed & (bias != float("-inf")) if bias is not None else allowed
        # A row with nothing to attend to would be softmax(all -inf) = 0/0 = NaN: give it
        # finite scores, then zero its weights (finite gradients, as F.sdpa does).
        empty = ~allowed.any(dim=-1, keepdim=True)
        scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0)
        weights = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
    dropped = F.dropout(weights, p=dropout_p, training=True) if dropout_p > 0 else weights
    return dropped @ v, weights  # (B, H, T_q, D_v), (B, H, T_q, T_k)


def _check_qkv(q: object, k: object, v: object) -> None:
    q, k, v = (_checks.float_tensor(n, t, min_dim=2, layout="(..., T, D)") for n, t in zip("qkv", (q, k, v)))
    _checks.same_dtype(q=q, k=k, v=v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head size D (last dimension): got q "
                         f"{tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys T_k (dimension -2): got k "
                         f"{tuple(k.shape)} and v {tuple(v.shape)}")
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(f"q, k, v must have the same leading (batch, head) dimensions: got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "(for grouped-query attention, expand k and v with repeat_kv first)")


def _check_bias(bias: object, scores_shape: tuple[int, ...]) -> Tensor:
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        raise TypeError(f"bias must be a floating-point tensor (an additive mask), got {_checks.describe(bias)}; "
                        "a boolean mask (True = may attend) goes into `mask=`")
    try:
        ok = bias.dim() <= len(scores_shape) and tuple(torch.broadcast_shapes(bias.shape, scores_shape)) == scores_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"bias of shape {tuple(bias.shape)} cannot be broadcast to the attention "
                         f"scores' shape {scores_shape} (..., T_q, T_k)")
    return bias


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat each key/value head ``n_rep`` times: ``(B, H_kv, T, D)`` -> ``(B, H_kv * n_rep, T, D)``.

    Query head ``h`` of grouped-query attention reads key/value head ``h // n_rep``, so the
    copies of one head sit next to each other (``repeat_interleave``, not ``repeat``).
    """
    _checks.tensor("x", x, 4, layout="(B, H_kv, T, D)")
    return _repeat_kv(x, _checks.positive_int("n_rep", n_rep))


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    # expand makes a view; the reshape copies once.
    return x[:, :, None, :, :].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """``(B, T, H * D)`` -> ``(B, H, T, D)``: cut the channels into ``n_heads`` groups of ``D``."""
    _checks.tensor("x", x, 3, layout="(B, T, C)")
    n_heads = _checks.positive_int("n_heads", n_heads)
    if x.shape[-1] % n_heads:
        raise ValueError(f"the channel count C={x.shape[-1]} of x {tuple(x.shape)} must be divisible by "
                         f"n_heads={n_heads}")
    return _split_heads(x, n_heads)


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    b, t, c = x.shape
    return x.view(b, t, n_heads, c // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, T, D)`` -> ``(B, T, H * D)``: the inverse of :func:`split_heads`."""
    return _merge_heads(_checks.tensor("x", x, 4, layout="(B, H, T, D)"))


def _merge_heads(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # first linear -> (key, packed)

# Matrices of at least this many weights are handed to oneDNN, prepacked (below). Measured on the
# book's 2-core CPU: a 512 x 512 matrix times 9 rows takes 97 us through addmm and 28 us through
# oneDNN; times one row 14 us and 20 us (oneDNN's fixed cost per call shows on tiny matrices).
ONEDNN_MIN_WEIGHTS = 1 << 18


def _onednn_ok(w: Tensor) -> bool:
    return (w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16)
            and w.numel() >= ONEDNN_MIN_WEIGHTS and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def packed_weight(*linears: nn.Linear) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The weights of ``linears`` (one input size) side by side, for :func:`affine`:
    ``(W, b (out,) or None, rows (out, in) or None)``, where ``out`` sums the linears' outputs, so
    that ``affine(x, *packed_weight(*linears))`` equals ``torch.cat([lin(x) for lin in linears], dim=-1)``.

    For decoding (chapter 8). A token multiplies one vector by every matrix, reading each weight
    once, so the speed is how fast memory streams the matrices: one product instead of three
    (q, k, v) makes fewer, longer passes, and each matrix is stored the way a product streams it
    fastest (measured in the chapter):

    * one row (batch 1): ``rows``, ``nn.Linear``'s own ``(out, in)`` layout, for the book's C
      kernel (:mod:`transformer_book.cpu_kernels`), which reads it at close to the memory's speed
      (used where the kernel is available); ``None`` for small, non-float32 or GPU matrices;
    * several rows: on a CPU with oneDNN (PyTorch's x86 builds) a large float32 or bfloat16
      matrix is *prepacked* into oneDNN's blocked layout, which its kernels read fast for 2 to
      32 rows, where the generic ``addmm`` falls to a half or a third of it (what
      ``torch.compile`` does for CPU inference too); any other matrix is stored ``(in, out)``
      for ``addmm`` (``nn.Linear`` stores ``(out, in)``).

    The copies are cached per model and remade whenever one of the tensors changes (its
    address, dtype, device or in-place version: a training step, ``load_state_dict``, ``.to()``).
    """
    tensors = [t for lin in linears for t in (lin.weight, lin.bias) if t is not None]
    key = (len(linears), *((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors))
    cached = _PACKED.get(linears[0])
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, usable anywhere
            rows = torch.cat([lin.weight for lin in linears]) if len(linears) > 1 else linears[0].weight.contiguous()
            big = _onednn_ok(rows)
            # oneDNN's layout is tuned for the batch size it is told; 8 serves 2 to 32 rows well
            w = torch.ops.mkldnn._reorder_linear_weight(rows, 8) if big else rows.t().contiguous()
            has_bias = all(lin.bias is not None for lin in linears)
            bias = torch.cat([lin.bias for lin in linears]) if has_bias else None
            # kept whether or not the C kernel is available now: affine asks at each call
            for_gemv = big and rows.dtype == torch.float32 and rows.device.type == "cpu"
            cached = _PACKED[linears[0]] = (key, (w, bias, rows.detach() if for_gemv else None))
    return cached[1]


def affine(x: Tensor, w: Tensor, bias: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """``x @ W + b`` for ``x`` ``(..., in)`` and a weight from :func:`packed_weight`: ``(in, out)``,
    or oneDNN's prepacked layout (a ``torch._mkldnn`` tensor of shape ``(out, in)``); a single
    row goes to the C kernel when ``rows`` (``W`` as ``(out, in)``) is given."""
    flat = x.reshape(-1, x.shape[-1])  # (M, in)
    if rows is not None and flat.shape[0] == 1 and cpu_kernels.available():
        return cpu_kernels.gemv(flat.contiguous(), rows, bias, check=False).view(*x.shape[:-1], rows.shape[0])
    if w.is_mkldnn:
        y = torch.ops.mkldnn._linear_pointwise(flat, w, bias, "none", [], "")
        return y.view(*x.shape[:-1], w.shape[0])
    y = flat @ w if bias is None else torch.addmm(bias, flat, w)
    return y.view(*x.shape[:-1], w.shape[1])


def _check_head_counts(d_model: object, n_heads: object, n_kv_heads: object) -> int:
    """Check the sizes of a multi-head attention; return ``n_kv_heads`` (``None`` -> ``n_heads``)."""
    d_model, n_heads = _checks.positive_int("d_model", d_model), _checks.positive_int("n_heads", n_heads)
    _checks.divides("n_heads", n_heads, "d_model", d_model, "each head gets d_model / n_heads channels")
    if n_kv_heads is None:
        return n_heads
    n_kv_heads = _checks.positive_int("n_kv_heads", n_kv_heads)
    _checks.divides("n_kv_heads", n_kv_heads, "n_heads", n_heads,
                    "each key/value head serves an equal group of query heads")
    return n_kv_heads


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional grouped-query / multi-query key-value heads.

    ``n_heads`` query heads of size ``D = d_model // n_heads``; ``n_kv_heads`` key/value heads
    (default ``n_heads``: ordinary multi-head attention; ``1``: multi-query attention; in
    between: grouped-query attention). Projections ``q_proj``, ``k_proj``, ``v_proj`` and
    ``out_proj`` are ``nn.Linear`` layers with ``bias`` on or off.

    ``backend="book"`` computes attention with :func:`scaled_dot_product_attention` (the
    chapter's code). ``backend="torch"`` calls ``F.scaled_dot_product_attention`` whenever the
    weights are not requested (``need_weights=False``) and there is no ``bias``: same numbers
    (same mask convention, same all-zero rows), faster; later chapters train with it.

    Hooks for later chapters: :meth:`project_q` and :meth:`project_kv` expose the projections
    in head layout, and ``forward(..., kv=(k, v))`` attends over keys/values computed elsewhere
    (a KV cache appends new ``project_kv`` results and passes the whole cache).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        backend: Literal["book", "torch"] = "book",
    ) -> None:
        super().__init__()
        n_kv_heads = _check_head_counts(d_model, n_heads, n_kv_heads)
        dropout = _checks.dropout("dropout", dropout)
        bias, backend = _checks.boolean("bias", bias), _checks.one_of("backend", backend, ("book", "torch"))
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.dropout, self.backend = dropout, backend
        kv_dim = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, dropout={self.dropout}, backend={self.backend!r}")

    # ---- checks (the public doors) ---------------------------------------------------------
    def _check_stream(self, name: str, x: object) -> Tensor:
        x = _checks.float_tensor(name, x, 3, layout=f"(B, T, d_model={self.d_model})")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"{name} must have shape (B, T, d_model={self.d_model}), got shape {tuple(x.shape)}")
        _checks.same_dtype(**{name: x, "the module's weights": self.q_proj.weight})
        return x

    def _check_kv(self, kv: object, batch: int) -> tuple[Tensor, Tensor]:
        if not (isinstance(kv, (tuple, list)) and len(kv) == 2):
            raise TypeError(f"kv must be a pair (k, v), got {_checks.describe(kv)}")
        k, v = (_checks.float_tensor(n, t, 4, layout="(B, n_kv_heads, T_k, D)") for n, t in zip(("kv[0]", "kv[1]"), kv))
        expected = (batch, self.n_kv_heads, k.shape[2], self.head_dim)
        for name, t in (("kv[0]", k), ("kv[1]", v)):
            _checks.shape_is(name, t, expected, layout="(B, n_kv_heads, T_k, D)")
        return k, v

    # ---- projections ------------------------------------------------------------------------
    def project_q(self, x: Tensor) -> Tensor:
        """Queries in head layout: ``(B, T, d_model)`` -> ``(B, n_heads, T, D)``."""
        return _split_heads(self.q_proj(self._check_stream("x", x)), self.n_heads)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values in head layout: ``(B, T, d_model)`` -> two ``(B, n_kv_heads, T, D)``."""
        return self._project_kv(self._check_stream("x", x))

    def _project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _split_heads(self.k_proj(x), self.n_kv_heads), _split_heads(self.v_proj(x), self.n_kv_heads)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        bias: Tensor | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
        need_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``x_q`` ``(B, T_q, d_model)`` to ``x_kv`` ``(B, T_k, d_model)``.

        ``x_kv=None`` is self-attention (``x_kv = x_q``); a different ``x_kv`` is
        cross-attention (``T_q`` and ``T_k`` may differ). Instead of ``x_kv`` one may pass
        ``kv=(k, v)``, already projected, each ``(B, n_kv_heads, T_k, D)``.
        ``mask`` (boolean, ``True`` = may attend) and ``bias`` (additive float) broadcast to
        ``(B, n_heads, T_q, T_k)``.

        Returns ``(output, weights)``: ``output`` ``(B, T_q, d_model)`` and ``weights``
        ``(B, n_heads, T_q, T_k)``, or ``None`` when ``need_weights=False``.
        """
        self._check_forward(x_q, x_kv, mask, bias, kv, need_weights)
        q = _split_heads(self.q_proj(x_q), self.n_heads)  # (B, H, T_q, D)
        k, v = kv if kv is not None else self._project_kv(x_q if x_kv is None else x_kv)  # (B, H_kv, T_k, D)
        return self.attend(q, k, v, mask, bias, need_weights)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
               need_weights: bool = False, is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Unchecked core of :meth:`forward`, for callers that checked their inputs at their own door
        (a model's blocks): ``q`` ``(B, H, T_q, D)``, ``k``/``v`` ``(B, H_kv, T_k, D)`` ->
        ``(output (B, T_q, d_model), weights (B, H, T_q, T_k) or None)``. ``is_causal``: a square
        causal mask (``T_q == T_k``), used only when ``mask`` is ``None``."""
        dropout_p = self.dropout if self.training else 0.0
        n_rep = self.n_heads // self.n_kv_heads  # each key/value head serves n_rep query heads
        if self.backend == "torch" and not need_weights and bias is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                 is_causal=is_causal and mask is None, enable_gqa=n_rep > 1)
            return self.out_proj(_merge_heads(out)), None
        if is_causal and mask is None:
            mask = causal_mask(q.shape[2], device=q.device)  # (T, T): is_causal means T_q == T_k
        k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)  # (B, H, T_k, D)
        out, weights = _attention(q, k, v, mask, bias, 1.0 / math.sqrt(self.head_dim), dropout_p)
        return self.out_proj(_merge_heads(out)), (weights if need_weights else None)

    def self_attend(self, x: Tensor, mask: Tensor | None = None, cache=None, layer: int = 0,
                    need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Causal self-attention of a decoder (unchecked: the model checks at its door).

        ``x`` ``(B, T, d_model)``: the new positions. Without a ``cache`` they are the whole
        sequence and attend causally; with one (:mod:`transformer_book.kv_cache`'s protocol)
        their keys and values are written into layer ``layer`` of the cache and the queries
        attend over everything it holds, under ``mask`` (``None``: every key).
        """
        q = _split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, D)
        k, v = self._project_kv(x)  # (B, H_kv, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, T_past + T, D)
        return self.attend(q, k, v, mask, need_weights=need_weights, is_causal=cache is None)

    # ---- inference fast path (chapter 8) -------------------------------------------------------
    def decode(self, x: Tensor, mask: Tensor | None, cache, layer: int, qkv: tuple | None = None,
               out: tuple | None = None) -> Tensor:
        """The inference fast path of :meth:`self_attend` with a cache: the same math, with q, k and v
        from one product, no checks and no weights. ``qkv`` and ``out``: the projections as
        :func:`packed_weight` stores them (made here when not given).
        ``x`` ``(B, T, d_model)`` -> ``(B, T, d_model)``."""
        qkv = qkv or packed_weight(self.q_proj, self.k_proj, self.v_proj)
        kv_dim = self.n_kv_heads * self.head_dim
        q, k, v = affine(x, *qkv).split([self.d_model, kv_dim, kv_dim], dim=-1)
        q = _split_heads(q, self.n_heads)  # (B, H, T, D)
        k, v = cache.update(layer, _split_heads(k, self.n_kv_heads), _split_heads(v, self.n_kv_heads))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_heads > self.n_kv_heads)
        return affine(_merge_heads(y), *(out or packed_weight(self.out_proj)))

    def _check_forward(self, x_q, x_kv, mask, bias, kv, need_weights) -> None:
        x_q = self._check_stream("x_q", x_q)
        _checks.boolean("need_weights", need_weights)
        if kv is not None and x_kv is not None:
            raise ValueError("pass either x_kv (to be projected) or kv=(k, v) (already projected), not both")
        if kv is not None:
            t_k = self._check_kv(kv, x_q.shape[0])[0].shape[2]
        else:
            x_kv = x_q if x_kv is None else self._check_stream("x_kv", x_kv)
            if x_kv.shape[0] != x_q.shape[0]:
                raise ValueError(f"x_q {tuple(x_q.shape)} and x_kv {tuple(x_kv.shape)} must have the same batch size B")
            t_k = x_kv.shape[1]
        scores_shape = (x_q.shape[0], self.n_heads, x_q.shape[1], t_k)
        if mask is not None:
            check_mask(mask, scores_shape)
        if bias is not None:
            _check_bias(bias, scores_shape)

    @torch.no_grad()
    def load_torch_weights(self, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` into this module (returns ``self``).

        PyTorch packs the three input projections into one ``in_proj_weight`` ``(3C, C)``
        (rows: queries, keys, values); we keep three ``nn.Linear`` layers. Only the standard
        configuration maps: same ``embed_dim``/``num_heads``, ``kdim = vdim = embed_dim``, no
        ``add_bias_kv``, no ``add_zero_attn``, biases on both or off on both, and this module
        with ``n_kv_heads == n_heads``.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if (mha.embed_dim, mha.num_heads) != (self.d_model, self.n_heads):
            raise ValueError(f"mha has embed_dim={mha.embed_dim}, num_heads={mha.num_heads}; this module has "
                             f"d_model={self.d_model}, n_heads={self.n_heads}: they must match")
        if self.n_kv_heads != self.n_heads:
            raise ValueError(f"nn.MultiheadAttention has no grouped key/value heads; this module has "
                             f"n_kv_heads={self.n_kv_heads} != n_heads={self.n_heads}")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only nn.MultiheadAttention with kdim = vdim = embed_dim, add_bias_kv=False and "
                             "add_zero_attn=False maps onto this module")
        has_bias = mha.in_proj_bias is not None
        if has_bias != (self.q_proj.bias is not None):
            raise ValueError(f"mha has bias={has_bias} but this module has bias={self.q_proj.bias is not None}")
        for proj, w in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_weight.chunk(3, dim=0)):
            proj.weight.copy_(w)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        if has_bias:
            for proj, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.chunk(3, dim=0)):
                proj.bias.copy_(b)
            self.out_proj.bias.copy_(mha.out_proj.bias)
        return self

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """A :class:`MultiHeadAttention` with the weights (and dropout) of ``mha``.

        Ours always takes batch-first input ``(B, T, C)``, whatever ``mha.batch_first`` says.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        ours = cls(mha.embed_dim, mha.num_heads, bias=mha.in_proj_bias is not None, dropout=mha.dropout)
        ours = ours.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        return ours.load_torch_weights(mha)


def attention_param_count(d_model: int, n_heads: int, n_kv_heads: int | None = None, *, bias: bool = True) -> int:
    """Number of parameters of ``MultiHeadAttention(d_model, n_heads, n_kv_heads, bias=bias)``.

    Queries and output: ``d_model x d_model`` each; keys and values: ``d_model x (n_kv_heads * D)``
    each, ``D = d_model / n_heads``; plus one bias per output channel when ``bias``.
    Independent of the sequence length.
    """
    n_kv_heads = _check_head_counts(d_model, n_heads, n_kv_heads)
    bias = _checks.boolean("bias", bias)
    kv_dim = n_kv_heads * (d_model // n_heads)
    weights = 2 * d_model * d_model + 2 * d_model * kv_dim
    biases = (2 * d_model + 2 * kv_dim) if bias else 0
    return weights + biases


def attention_flops_breakdown(
    d_model: int, n_heads: int, n_kv_heads: int | None = None, *, t_q: int, t_k: int | None = None, batch: int = 1
) -> dict[str, int]:
    """Floating-point operations of one forward pass, by matrix product.

    Counts ``2 * m * n * k`` for every ``(m x k) @ (k x n)`` product (a multiply and an add per
    term), the convention of ``torch.utils.flop_counter``; the softmax, scaling, masking and
    bias additions are ``O(T_q T_k)`` or ``O(T d)`` and left out. Self-attention: ``t_k = t_q``.
    """
    n_kv_heads = _check_head_counts(d_model, n_heads, n_kv_heads)
    t_q = _checks.positive_int("t_q", t_q)
    t_k = t_q if t_k is None else _checks.positive_int("t_k", t_k)
    batch = _checks.positive_int("batch", batch)
    d = d_model // n_heads
    return {
        "q_proj": 2 * batch * t_q * d_model * d_model,
        "kv_proj": 2 * 2 * batch * t_k * d_model * n_kv_heads * d,
        "scores": 2 * batch * n_heads * t_q * t_k * d,  # Q K^T
        "weighted_sum": 2 * batch * n_heads * t_q * t_k * d,  # weights @ V
        "out_proj": 2 * batch * t_q * d_model * d_model,
    }


def attention_flops(
    d_model: int, n_heads: int, n_kv_heads: int | None = None, *, t_q: int, t_k: int | None = None, batch: int = 1
) -> int:
    """Total of :func:`attention_flops_breakdown`: ``4 T d^2 (1 + H_kv/H) + 4 H T_q T_k D`` for self-attention."""
    return sum(attention_flops_breakdown(d_model, n_heads, n_kv_heads, t_q=t_q, t_k=t_k, batch=batch).values())
