"""The Transformer (chapter 6): the encoder-decoder of Vaswani et al. (2017), from the book's parts.

::

    src ids (B, S) -> embed * sqrt(C) + positions -> N x EncoderLayer -> memory (B, S, C)
    tgt ids (B, T) -> embed * sqrt(C) + positions -> N x DecoderLayer(memory) -> (B, T, C)
                                                     -> output projection -> logits (B, T, V)

* positions: sinusoidal (default) or learned (:mod:`transformer_book.positional`);
* masks (:mod:`transformer_book.masks`, ``True`` = may attend): the source padding mask
  ``(B, 1, 1, S)`` in the encoder and in cross-attention, the causal mask ``(T, T)`` in the
  decoder's self-attention (plus the target padding mask, which only matters for the padded
  positions the loss ignores);
* the output projection shares its matrix with the target embedding (``tie_embeddings``),
  as in the paper (Press & Wolf, 2017).

:meth:`Transformer.encode` / :meth:`Transformer.decode` run the two halves on token ids;
:meth:`Transformer.encoder_stack` / :meth:`Transformer.decoder_stack` run the layer stacks
on vectors ``(B, T, C)``, which is what ``torch.nn.Transformer`` computes, and
:meth:`Transformer.load_torch_transformer` copies such a model's weights in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_book import _checks
from transformer_book.layers import ACTIVATIONS, NORMS, DecoderLayer, EncoderLayer, make_norm
from transformer_book.masks import causal_mask, combine_masks, padding_mask
from transformer_book.positional import LearnedPositionalEmbedding, sinusoidal_encoding

__all__ = ["TransformerConfig", "Transformer", "AttentionMaps"]

POSITIONS = ("sinusoidal", "learned")


@dataclass(frozen=True)
class TransformerConfig:
    """Everything that decides a :class:`Transformer`'s shape (stored with its checkpoints).

    ``final_norm=None`` means: a final norm after each stack when ``norm_first`` (pre-LN needs
    it: its stream is never normalised otherwise), none for post-LN (the last layer already
    ends in a norm). ``torch.nn.Transformer`` always has one; set ``final_norm=True`` to match it.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    activation: str = "relu"
    norm: str = "layernorm"
    norm_first: bool = False
    final_norm: bool | None = None
    positions: str = "sinusoidal"
    max_len: int = 64
    tie_embeddings: bool = True
    scale_embeddings: bool = True
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_encoder_layers",
                     "n_decoder_layers", "d_ff", "max_len"):
            _checks.positive_int(name, getattr(self, name))
        _checks.divides("n_heads", self.n_heads, "d_model", self.d_model, "each head gets d_model / n_heads")
        _checks.dropout("dropout", self.dropout)
        _checks.one_of("activation", self.activation, ACTIVATIONS)
        _checks.one_of("norm kind", self.norm, NORMS)
        _checks.one_of("positions", self.positions, POSITIONS)
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        for name in ("norm_first", "tie_embeddings", "scale_embeddings"):
            _checks.boolean(name, getattr(self, name))
        if self.final_norm is not None:
            _checks.boolean("final_norm", self.final_norm)
        for name in ("pad_id", "bos_id", "eos_id"):
            _checks.integer(name, getattr(self, name), 0, self.tgt_vocab_size - 1)
        if self.pad_id >= self.src_vocab_size:
            raise ValueError(f"pad_id must be in the source vocabulary too, [0, src_vocab_size={self.src_vocab_size}), "
                             f"got {self.pad_id}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)


class AttentionMaps(NamedTuple):
    """Attention weights of one forward pass, one tensor per layer.

    ``encoder``: ``(B, H, S, S)``; ``decoder`` (causal self-attention): ``(B, H, T, T)``;
    ``cross``: ``(B, H, T, S)``.
    """

    encoder: list[Tensor]
    decoder: list[Tensor]
    cross: list[Tensor]


class Transformer(nn.Module):
    """Encoder-decoder Transformer built from :class:`~transformer_book.layers.EncoderLayer` and
    :class:`~transformer_book.layers.DecoderLayer` (see the module docstring).

    ``model(src, tgt_in)`` -> logits ``(B, T, V_tgt)``; ``return_attention=True`` also returns
    the :class:`AttentionMaps`.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model)
        if c.positions == "sinusoidal":
            # A buffer, not a parameter: fixed, moves with .to(device), not saved in checkpoints.
            self.register_buffer("pos_table", sinusoidal_encoding(c.max_len, c.d_model), persistent=False)
            self.pos_embed = None
        else:
            self.pos_table = None
            self.pos_embed = LearnedPositionalEmbedding(c.max_len, c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        layer_args = dict(d_model=c.d_model, n_heads=c.n_heads, d_ff=c.d_ff, dropout=c.dropout,
                          activation=c.activation, norm_first=c.norm_first, norm=c.norm)
        self.encoder_layers = nn.ModuleList(EncoderLayer(**layer_args) for _ in range(c.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(**layer_args) for _ in range(c.n_decoder_layers))
        final = c.norm_first if c.final_norm is None else c.final_norm
        self.encoder_norm = make_norm(c.norm, c.d_model) if final else None
        self.decoder_norm = make_norm(c.norm, c.d_model) if final else None
        self.lm_head = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self._init_weights()
        if c.tie_embeddings:
            self.lm_head.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        # Xavier-uniform for every matrix, as nn.Transformer does; embeddings N(0, 1/C) so that
        # after the sqrt(C) scale they have unit variance, like the positional table.
        for name, p in self.named_parameters():
            if p.dim() > 1:
                if "embed" in name:
                    nn.init.normal_(p, std=self.config.d_model ** -0.5)
                else:
                    nn.init.xavier_uniform_(p)

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------- inputs
    def _check_tokens(self, name: str, tokens: object, vocab_size: int) -> Tensor:
        tokens = _checks.token_ids(name, tokens, vocab_size)
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"{name} has length {tokens.shape[1]} but the model's max_len is {self.config.max_len}")
        return tokens

    def _embed(self, embed: nn.Embedding, tokens: Tensor) -> Tensor:
        x = embed(tokens)
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.d_model)  # the paper's scale: tokens as loud as positions
        t = tokens.shape[1]
        if self.pos_table is not None:
            x = x + self.pos_table[:t].to(x.dtype)
        else:
            x = x + self.pos_embed(torch.arange(t, device=tokens.device))
        return self.dropout(x)

    def src_mask(self, src: Tensor) -> Tensor:
        """``(B, 1, 1, S)``: every query may read every real (non-pad) source token."""
        return padding_mask(src, self.config.pad_id)

    def tgt_mask(self, tgt: Tensor) -> Tensor:
        """``(B, 1, T, T)``: causal and not padding."""
        return combine_masks(causal_mask(tgt.shape[1], device=tgt.device), padding_mask(tgt, self.config.pad_id))

    # ----------------------------------------------------------------------- stacks on vectors
    def encoder_stack(self, x: Tensor, mask: Tensor | None = None, *, need_weights: bool = False
                      ) -> tuple[Tensor, list[Tensor]]:
        """The encoder's layers (and final norm) on vectors ``x`` ``(B, S, C)`` -> memory ``(B, S, C)``."""
        weights = []
        for layer in self.encoder_layers:
            x, w = layer(x, mask, need_weights=need_weights)
            weights.append(w)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x, weights

    def decoder_stack(self, y: Tensor, memory: Tensor, self_mask: Tensor | None = None,
                      memory_mask: Tensor | None = None, *, need_weights: bool = False
                      ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The decoder's layers (and final norm) on vectors ``y`` ``(B, T, C)`` reading ``memory`` ``(B, S, C)``."""
        self_w, cross_w = [], []
        for layer in self.decoder_layers:
            y, ws, wc = layer(y, memory, self_mask, memory_mask, need_weights=need_weights)
            self_w.append(ws)
            cross_w.append(wc)
        if self.decoder_norm is not None:
            y = self.decoder_norm(y)
        return y, self_w, cross_w

    # ----------------------------------------------------------------------- on token ids
    def encode(self, src: Tensor, *, need_weights: bool = False):
        """``src`` ``(B, S)`` ids -> ``(memory (B, S, C), src_mask (B, 1, 1, S))``, plus the
        encoder's attention list when ``need_weights``."""
        src = self._check_tokens("src", src, self.config.src_vocab_size)
        mask = self.src_mask(src)
        memory, weights = self.encoder_stack(self._embed(self.src_embed, src), mask, need_weights=need_weights)
        return (memory, mask, weights) if need_weights else (memory, mask)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor | None, *, need_weights: bool = False):
        """``tgt_in`` ``(B, T)`` ids (starting with ``<bos>``) + memory -> logits ``(B, T, V)``,
        plus the decoder's self- and cross-attention lists when ``need_weights``."""
        tgt_in = self._check_tokens("tgt_in", tgt_in, self.config.tgt_vocab_size)
        _checks.float_tensor("memory", memory, layout=f"(B={tgt_in.shape[0]}, S, C={self.config.d_model})")
        _checks.shape_is("memory", memory, (tgt_in.shape[0], None, self.config.d_model), "(B, S, C)")
        _checks.same_dtype(memory=memory, model=self.lm_head.weight)
        y, ws, wc = self.decoder_stack(self._embed(self.tgt_embed, tgt_in), memory, self.tgt_mask(tgt_in),
                                       src_mask, need_weights=need_weights)
        logits = self.lm_head(y)
        return (logits, ws, wc) if need_weights else logits

    def forward(self, src: Tensor, tgt_in: Tensor, *, return_attention: bool = False):
        """Teacher forcing: ``src`` ``(B, S)``, ``tgt_in`` ``(B, T)`` -> logits ``(B, T, V)``.

        With ``return_attention=True`` returns ``(logits, AttentionMaps)``.
        """
        _checks.boolean("return_attention", return_attention)
        if isinstance(src, Tensor) and isinstance(tgt_in, Tensor) and src.dim() == tgt_in.dim() == 2 \
                and src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src {tuple(src.shape)} and tgt_in {tuple(tgt_in.shape)} must have the same batch size B")
        if not return_attention:
            memory, mask = self.encode(src)
            return self.decode(tgt_in, memory, mask)
        memory, mask, enc_w = self.encode(src, need_weights=True)
        logits, dec_w, cross_w = self.decode(tgt_in, memory, mask, need_weights=True)
        return logits, AttentionMaps(enc_w, dec_w, cross_w)

    # ----------------------------------------------------------------------- torch.nn.Transformer
    @torch.no_grad()
    def load_torch_transformer(self, ref: nn.Transformer) -> Transformer:
        """Copy the layer weights of a ``torch.nn.Transformer`` into this model (returns ``self``).

        The two must agree on ``d_model``, heads, ``d_ff``, layer counts, ``norm_first``, the
        activation, the norms' ``eps`` and biases (in every layer); this model needs ``norm="layernorm"`` and ``final_norm=True`` (torch's
        model always ends each stack with a LayerNorm). Embeddings and the output projection are
        not part of ``nn.Transformer`` and stay as they are.
        """
        _checks.instance("ref", ref, nn.Transformer, "torch.nn.Transformer")
        c = self.config
        enc, dec = ref.encoder.layers, ref.decoder.layers
        theirs = dict(d_model=ref.d_model, n_heads=ref.nhead, d_ff=enc[0].linear1.out_features,
                      n_encoder_layers=len(enc), n_decoder_layers=len(dec), norm_first=enc[0].norm_first,
                      activation=_torch_activation(enc[0]), norm_eps=enc[0].norm1.eps,
                      bias=enc[0].linear1.bias is not None)
        ours = dict(d_model=c.d_model, n_heads=c.n_heads, d_ff=c.d_ff, n_encoder_layers=c.n_encoder_layers,
                    n_decoder_layers=c.n_decoder_layers, norm_first=c.norm_first, activation=c.activation,
                    norm_eps=getattr(self.encoder_layers[0].norm1, "eps", None), bias=True)
        diff = [f"{k}: ours {ours[k]!r}, torch {theirs[k]!r}" for k in ours if ours[k] != theirs[k]]
        # Every layer of torch's model must agree with its first (they can be built one by one).
        for i, layer in enumerate([*enc, *dec]):
            got = dict(norm_first=layer.norm_first, activation=_torch_activation(layer), norm_eps=layer.norm1.eps,
                       d_ff=layer.linear1.out_features, bias=layer.linear1.bias is not None)
            diff += [f"layer {i} {k}: ours {ours[k]!r}, torch {v!r}" for k, v in got.items() if v != ours[k]]
        for name, norm in (("encoder", ref.encoder.norm), ("decoder", ref.decoder.norm)):
            if norm is not None and norm.eps != ours["norm_eps"]:
                diff.append(f"{name} final norm_eps: ours {ours['norm_eps']!r}, torch {norm.eps!r}")
        if diff:
            raise ValueError("the models differ: " + "; ".join(diff))
        if c.norm != "layernorm" or self.encoder_norm is None or ref.encoder.norm is None or ref.decoder.norm is None:
            raise ValueError("load_torch_transformer needs norm='layernorm' and final_norm=True "
                             f"(got norm={c.norm!r}, final_norm={c.final_norm!r})")

        def copy(dst: nn.Module, src: nn.Module) -> None:
            dst.weight.copy_(src.weight)
            if dst.bias is not None:
                dst.bias.copy_(src.bias)

        for ours_l, ref_l in zip(self.encoder_layers, enc):
            ours_l.self_attn.load_torch_weights(ref_l.self_attn)
            for a, b in ((ours_l.ff.fc_in, ref_l.linear1), (ours_l.ff.fc_out, ref_l.linear2),
                         (ours_l.norm1, ref_l.norm1), (ours_l.norm2, ref_l.norm2)):
                copy(a, b)
        for ours_l, ref_l in zip(self.decoder_layers, dec):
            ours_l.self_attn.load_torch_weights(ref_l.self_attn)
            ours_l.cross_attn.load_torch_weights(ref_l.multihead_attn)
            for a, b in ((ours_l.ff.fc_in, ref_l.linear1), (ours_l.ff.fc_out, ref_l.linear2),
                         (ours_l.norm1, ref_l.norm1), (ours_l.norm2, ref_l.norm2), (ours_l.norm3, ref_l.norm3)):
                copy(a, b)
        copy(self.encoder_norm, ref.encoder.norm)
        copy(self.decoder_norm, ref.decoder.norm)
        return self


def _torch_activation(layer: nn.Module) -> str:
    """The name of a ``torch.nn.Transformer*Layer``'s activation, in this book's terms."""
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return "gelu_tanh"
    return f"<{getattr(act, '__name__', type(act).__name__)}>"
