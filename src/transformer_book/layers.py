"""Layers (chapter 6): normalisation, the feed-forward block, and the encoder / decoder layers.

Every Transformer layer is the same two moves repeated: *mix* information across positions
(attention) and *transform* each position on its own (the feed-forward block), each wrapped
in a residual connection and a normalisation. Where the normalisation sits is the
``norm_first`` switch:

* post-LN (``norm_first=False``, Vaswani et al., 2017)::

      x = norm(x + sublayer(x))

* pre-LN (``norm_first=True``, Xiong et al., 2020; GPT-2 and most models since)::

      x = x + sublayer(norm(x))

The pre-LN stream ``x`` is a plain sum of every sub-layer's output, so the gradient reaches
the first layer unchanged through the identity path; post-LN normalises the stream after
every addition, which needs a learning-rate warm-up to train stably.

Shapes: the model stream is ``(B, T, C)`` (``C = d_model``). Masks are boolean,
``True`` = may attend (:mod:`transformer_book.masks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_book import _checks
from transformer_book.attention import MultiHeadAttention

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "LayerNorm",
    "RMSNorm",
    "make_norm",
    "FeedForward",
    "EncoderLayer",
    "DecoderLayer",
]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")
NORMS = ("layernorm", "rmsnorm")


# --------------------------------------------------------------------------- checks

def _check_stream(name: str, x: object, d_model: int) -> Tensor:
    x = _checks.float_tensor(name, x, min_dim=1, layout=f"(..., C={d_model})")
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} must have last dimension d_model={d_model} (..., C), got shape {tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------- normalisation

class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al., 2016): each position's ``C`` features to mean 0, variance 1.

    ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias``, mean and (biased) variance over
    the last dimension. ``x``: ``(..., C)`` -> same shape. ``bias=False`` drops the shift
    (``self.bias`` is then ``None``), as some GPT variants do.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.d_model = _checks.positive_int("d_model", d_model)
        self.eps = _checks.number("eps", eps, 0.0, low_open=True)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if _checks.boolean("bias", bias) else None

    def forward(self, x: Tensor) -> Tensor:
        _check_stream("x", x, self.d_model)
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # biased, like the paper and nn.LayerNorm
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich, 2019): LayerNorm without the centring.

    ``y = x / sqrt(mean(x^2) + eps) * weight``. One reduction instead of two and no bias: about
    as good as LayerNorm in practice and a little cheaper (LLaMA, T5 use it).
    ``x``: ``(..., C)`` -> same shape.
    """

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.d_model = _checks.positive_int("d_model", d_model)
        self.eps = _checks.number("eps", eps, 0.0, low_open=True)
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        _check_stream("x", x, self.d_model)
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


def make_norm(kind: str, d_model: int, eps: float | None = None, bias: bool = True) -> nn.Module:
    """A normalisation layer by name: ``"layernorm"`` (:class:`LayerNorm`) or ``"rmsnorm"`` (:class:`RMSNorm`).

    ``eps`` defaults to each class's own default; ``bias`` applies to LayerNorm only.
    """
    _checks.one_of("norm kind", kind, NORMS)
    if kind == "layernorm":
        return LayerNorm(d_model, eps=1e-5 if eps is None else eps, bias=bias)
    return RMSNorm(d_model, eps=1e-6 if eps is None else eps)


# --------------------------------------------------------------------------- feed-forward

class FeedForward(nn.Module):
    """The position-wise feed-forward block: widen to ``d_ff``, a non-linearity, back to ``d_model``.

    * ``"relu"``: ``fc_out(relu(fc_in(x)))`` (Vaswani et al., 2017);
    * ``"gelu"``: exact GELU (Hendrycks & Gimpel, 2016), as in BERT;
    * ``"gelu_tanh"``: GELU's tanh approximation, as in GPT-2;
    * ``"swiglu"``: ``fc_out(silu(fc_gate(x)) * fc_in(x))`` (Shazeer, 2020): a learned gate
      multiplies the hidden features; it has a third matrix ``fc_gate``.

    Each position is transformed on its own: ``x`` ``(B, T, C)`` -> ``(B, T, C)``.
    ``dropout`` acts on the hidden features ``(B, T, d_ff)``, as in ``nn.TransformerEncoderLayer``.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        self.d_model, self.d_ff = _checks.positive_int("d_model", d_model), _checks.positive_int("d_ff", d_ff)
        self.activation = _checks.one_of("activation", activation, ACTIVATIONS)
        bias = _checks.boolean("bias", bias)
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_gate = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(_checks.dropout("dropout", dropout))

    def _hidden(self, x: Tensor) -> Tensor:
        h = self.fc_in(x)
        if self.activation == "relu":
            return F.relu(h)
        if self.activation == "gelu":
            return F.gelu(h)
        if self.activation == "gelu_tanh":
            return F.gelu(h, approximate="tanh")
        return F.silu(self.fc_gate(x)) * h  # swiglu

    def forward(self, x: Tensor) -> Tensor:
        _check_stream("x", x, self.d_model)
        return self.fc_out(self.dropout(self._hidden(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


# --------------------------------------------------------------------------- encoder / decoder layers

class _Residual(nn.Module):
    """One sub-layer's residual wrapper, post-LN or pre-LN (see the module docstring)."""

    def __init__(self, d_model: int, norm: str, norm_first: bool, dropout: float, eps: float | None) -> None:
        super().__init__()
        self.norm = make_norm(norm, d_model, eps)
        self.norm_first = norm_first
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer) -> tuple[Tensor, object]:
        """``sublayer(h) -> (out, extra)``; returns the new stream and ``extra`` (attention weights)."""
        if self.norm_first:
            out, extra = sublayer(self.norm(x))
            return x + self.dropout(out), extra
        out, extra = sublayer(x)
        return self.norm(x + self.dropout(out)), extra


def _check_layer_args(d_model, n_heads, d_ff, dropout, norm, norm_first, norm_eps) -> None:
    d_model, n_heads = _checks.positive_int("d_model", d_model), _checks.positive_int("n_heads", n_heads)
    _checks.divides("n_heads", n_heads, "d_model", d_model, "each head gets d_model / n_heads channels")
    _checks.positive_int("d_ff", d_ff)
    _checks.dropout("dropout", dropout)
    _checks.one_of("norm kind", norm, NORMS)
    _checks.boolean("norm_first", norm_first)
    if norm_eps is not None:
        _checks.number("norm_eps", norm_eps, 0.0, low_open=True)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each with a residual and a norm (post-LN or pre-LN).

    Submodules: ``self_attn`` (:class:`~transformer_book.attention.MultiHeadAttention`),
    ``ff`` (:class:`FeedForward`), ``norm1``/``norm2`` (the norms of the two sub-layers).
    ``dropout`` is applied to the attention weights, inside the feed-forward block and to each
    sub-layer's output before the residual addition, as in ``nn.TransformerEncoderLayer``.

    With a causal mask this is also a decoder-only (GPT) block.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = False, norm: str = "layernorm", bias: bool = True,
                 norm_eps: float | None = None) -> None:
        super().__init__()
        _check_layer_args(d_model, n_heads, d_ff, dropout, norm, norm_first, norm_eps)
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout, backend="torch")
        self.ff = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.res1 = _Residual(d_model, norm, norm_first, dropout, norm_eps)
        self.res2 = _Residual(d_model, norm, norm_first, dropout, norm_eps)

    @property
    def norm1(self) -> nn.Module:
        return self.res1.norm

    @property
    def norm2(self) -> nn.Module:
        return self.res2.norm

    def forward(self, x: Tensor, mask: Tensor | None = None, *, need_weights: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, T, C)``, ``mask`` broadcastable to ``(B, H, T, T)`` -> ``(x, weights)``.

        ``weights`` ``(B, H, T, T)`` are the self-attention probabilities, or ``None`` unless
        ``need_weights``.
        """
        _check_stream("x", x, self.d_model)
        x, w = self.res1(x, lambda h: self.self_attn(h, mask=mask, need_weights=need_weights))
        x, _ = self.res2(x, lambda h: (self.ff(h), None))
        return x, w


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder's memory, feed-forward; residuals + norms.

    Submodules: ``self_attn``, ``cross_attn`` (both
    :class:`~transformer_book.attention.MultiHeadAttention`), ``ff``, and ``norm1``, ``norm2``,
    ``norm3`` for the three sub-layers.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = False, norm: str = "layernorm", bias: bool = True,
                 norm_eps: float | None = None) -> None:
        super().__init__()
        _check_layer_args(d_model, n_heads, d_ff, dropout, norm, norm_first, norm_eps)
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout, backend="torch")
        self.cross_attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout, backend="torch")
        self.ff = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.res1 = _Residual(d_model, norm, norm_first, dropout, norm_eps)
        self.res2 = _Residual(d_model, norm, norm_first, dropout, norm_eps)
        self.res3 = _Residual(d_model, norm, norm_first, dropout, norm_eps)

    @property
    def norm1(self) -> nn.Module:
        return self.res1.norm

    @property
    def norm2(self) -> nn.Module:
        return self.res2.norm

    @property
    def norm3(self) -> nn.Module:
        return self.res3.norm

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, *, need_weights: bool = False
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``x`` ``(B, T, C)`` attends to itself (``self_mask`` ``(.., T, T)``, usually causal) and
        to ``memory`` ``(B, S, C)`` (``memory_mask`` ``(.., T, S)``, usually the source padding).

        Returns ``(x, self_weights (B, H, T, T), cross_weights (B, H, T, S))``; the weights are
        ``None`` unless ``need_weights``.
        """
        _check_stream("x", x, self.d_model)
        _check_stream("memory", memory, self.d_model)
        _checks.same_dtype(memory=memory, x=x)
        if memory.dim() != 3 or x.dim() != 3 or memory.shape[0] != x.shape[0]:
            raise ValueError(f"x (B, T, C) and memory (B, S, C) must be 3-D with the same batch size, got "
                             f"x {tuple(x.shape)} and memory {tuple(memory.shape)}")
        x, w_self = self.res1(x, lambda h: self.self_attn(h, mask=self_mask, need_weights=need_weights))
        x, w_cross = self.res2(x, lambda h: self.cross_attn(h, memory, mask=memory_mask, need_weights=need_weights))
        x, _ = self.res3(x, lambda h: (self.ff(h), None))
        return x, w_self, w_cross

