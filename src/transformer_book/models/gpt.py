"""GPT (chapter 7): a decoder-only Transformer language model that can wear GPT-2's weights.

The architecture of GPT-2 (Radford et al., 2019), which is GPT (Radford et al., 2018) with the
normalisation moved in front of each sub-layer:

    x = wte[idx] + wpe[positions]                  token + learned position embeddings
    for each block:
        x = x + attn(ln_1(x))                       causal multi-head self-attention
        x = x + mlp(ln_2(x))                        feed-forward, GELU (tanh approximation)
    logits = ln_f(x) @ wte.T                        the LM head is the token embedding (tied)

Every position predicts the *next* token, so one forward pass over ``T`` tokens gives ``T``
training examples; the causal mask keeps position ``t`` from reading positions after ``t``.

For generation each block can return its keys and values (``use_cache=True``) and take them back
(``past_key_values``): then a step runs the model on the new tokens only, and their queries
attend over the cached keys plus their own. :meth:`GPT.from_hf_gpt2` copies the weights of a
Hugging Face ``GPT2LMHeadModel`` into this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_book.attention import MultiHeadAttention
from transformer_book.layers import FeedForward, LayerNorm, _dropout, _positive_int
from transformer_book.positional import LearnedPositionalEmbedding

__all__ = ["GPTConfig", "GPT", "GPTOutput", "Block", "KVCache"]

#: One ``(keys, values)`` pair per layer, each ``(B, n_head, T_past, head_dim)``.
KVCache = tuple[tuple[Tensor, Tensor], ...]


@dataclass(frozen=True)
class GPTConfig:
    """The sizes of a :class:`GPT`; the field names and defaults of GPT-2 small are Hugging Face's.

    ``block_size`` is the context window (GPT-2: ``n_positions = 1024``); ``bias`` switches the
    biases of every Linear and LayerNorm; ``dropout`` applies to the embeddings, the attention
    weights, the feed-forward hidden layer and each sub-layer's output.
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _positive_int(f"GPTConfig.{name}", getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                             f"(each head gets n_embd / n_head channels)")
        _dropout("GPTConfig.dropout", self.dropout)
        if not isinstance(self.bias, bool):
            raise TypeError(f"GPTConfig.bias must be a bool, got {type(self.bias).__name__} {self.bias!r}")
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
            raise ValueError(f"GPTConfig.layer_norm_epsilon must be a number in (0, 1), got {eps!r}")

    @property
    def n_positions(self) -> int:
        """GPT-2's name for ``block_size``."""
        return self.block_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        """A config from :meth:`to_dict`'s output; unknown keys are an error."""
        if not isinstance(values, dict):
            raise TypeError(f"values must be a dict, got {type(values).__name__}")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {sorted(unknown)}")
        return cls(**values)


class GPTOutput(NamedTuple):
    """What :meth:`GPT.forward` returns (a named tuple, so ``logits, loss, *_ = model(x, y)`` works).

    * ``logits`` ``(B, T, vocab_size)``;
    * ``loss``: mean cross-entropy against ``targets``, or ``None`` without targets;
    * ``past_key_values``: one ``(k, v)`` per layer covering all positions so far (with
      ``use_cache``), else ``None``;
    * ``attentions``: one ``(B, n_head, T, T_past + T)`` weight tensor per layer (with
      ``need_weights``), else ``None``.
    """

    logits: Tensor
    loss: Tensor | None = None
    past_key_values: KVCache | None = None
    attentions: tuple[Tensor, ...] | None = None


class Block(nn.Module):
    """One pre-LN decoder block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    ``x`` ``(B, T, C)``; ``mask`` boolean ``(T, T_past + T)`` (True = may attend);
    ``past`` ``(k, v)`` each ``(B, H, T_past, D)`` or ``None``.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        c = config
        self.ln_1 = LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.attn = MultiHeadAttention(c.n_embd, c.n_head, bias=c.bias, dropout=c.dropout, backend="torch")
        self.ln_2 = LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.mlp = FeedForward(c.n_embd, 4 * c.n_embd, activation="gelu_tanh", dropout=c.dropout, bias=c.bias)
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None,
                need_weights: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """Returns ``(x, (k, v), weights)``: the new stream, the keys/values of all positions so far."""
        h = self.ln_1(x)
        k, v = self.attn.project_kv(h)  # (B, H, T, D): this step's keys and values
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        a, weights = self.attn(h, mask=mask, kv=(k, v), need_weights=need_weights)
        x = x + self.resid_dropout(a)
        x = x + self.resid_dropout(self.mlp(self.ln_2(x)))
        return x, (k, v), weights


class GPT(nn.Module):
    """Decoder-only Transformer language model: ids ``(B, T)`` -> next-token logits ``(B, T, vocab_size)``.

    Submodules carry GPT-2's names: ``wte`` (token embedding), ``wpe`` (learned positions),
    ``h`` (the blocks), ``ln_f`` (final norm), ``lm_head`` (its weight *is* ``wte.weight``).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf, 2017): one matrix, two uses
        self.apply(self._init_weights)
        # GPT-2's trick: the projections that write into the residual stream start smaller, by
        # 1/sqrt(2 n_layer), so the stream's variance does not grow with depth at initialisation.
        for block in self.h:
            for proj in (block.attn.out_proj, block.mlp.fc_out):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied LM head counted once); ``non_embedding`` leaves out ``wte``, ``wpe``."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n

    # ---- forward -------------------------------------------------------------------------------
    def _check_idx(self, idx: object, past_len: int) -> Tensor:
        if not isinstance(idx, Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids (B, T), got {type(idx).__name__}")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if idx.dim() != 2 or idx.shape[0] < 1 or idx.shape[1] < 1:
            raise ValueError(f"idx must have shape (B, T) with B >= 1 and T >= 1, got shape {tuple(idx.shape)}")
        if int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size:
            raise ValueError(f"idx holds ids in [{int(idx.min())}, {int(idx.max())}], outside the vocabulary "
                             f"[0, vocab_size={self.config.vocab_size})")
        if past_len + idx.shape[1] > self.config.block_size:
            where = f"T={idx.shape[1]}" + (f" new tokens after {past_len} cached ones" if past_len else "")
            raise ValueError(f"sequence too long: {where} exceeds the context window block_size="
                             f"{self.config.block_size}; crop it to the last {self.config.block_size} tokens")
        return idx

    def _check_past(self, past: object, batch: int) -> int:
        """Validate ``past_key_values``; return the number of cached positions."""
        if past is None:
            return 0
        c = self.config
        if not isinstance(past, (tuple, list)) or len(past) != c.n_layer:
            raise ValueError(f"past_key_values must be a sequence of n_layer={c.n_layer} (k, v) pairs, got "
                             f"{type(past).__name__} of length {len(past) if hasattr(past, '__len__') else '?'}")
        k0 = past[0][0]
        expected = (batch, c.n_head, k0.shape[2] if isinstance(k0, Tensor) and k0.dim() == 4 else -1,
                    c.n_embd // c.n_head)
        for i, pair in enumerate(past):
            for j, t in enumerate(pair):
                if not isinstance(t, Tensor) or tuple(t.shape) != expected:
                    shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(f"past_key_values[{i}][{j}] must have shape (B={batch}, n_head={c.n_head}, "
                                     f"T_past={expected[2]}, head_dim={expected[3]}), got {shape}")
        return expected[2]

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        need_weights: bool = False,
    ) -> GPTOutput:
        """``idx`` ``(B, T)`` token ids -> :class:`GPTOutput` with ``logits`` ``(B, T, vocab_size)``.

        ``targets`` ``(B, T)``: the ids to predict at each position (``idx`` shifted left by one;
        ``-1`` = ignore); the loss is their mean cross-entropy. ``past_key_values`` (from an
        earlier call with ``use_cache=True``) holds the keys and values of the positions before
        ``idx``: ``idx`` then continues that sequence and its positions start after the cached ones.
        """
        past_len = self._check_past(past_key_values, idx.shape[0] if isinstance(idx, Tensor) and idx.dim() else -1)
        idx = self._check_idx(idx, past_len)
        b, t = idx.shape
        positions = torch.arange(past_len, past_len + t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        # query i (absolute position past_len + i) may read keys 0 .. past_len + i
        keys = torch.arange(past_len + t, device=idx.device)
        mask = keys[None, :] <= positions[:, None]  # (T, T_past + T)
        presents, attentions = [], []
        for i, block in enumerate(self.h):
            past = past_key_values[i] if past_key_values is not None else None
            x, kv, weights = block(x, mask, past, need_weights)
            presents.append(kv)
            attentions.append(weights)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            if not isinstance(targets, Tensor) or tuple(targets.shape) != (b, t):
                shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
                raise ValueError(f"targets must have the shape of idx (B={b}, T={t}), got {shape}")
            loss = F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(b * t).long(), ignore_index=-1)
        return GPTOutput(logits, loss, tuple(presents) if use_cache else None,
                         tuple(attentions) if need_weights else None)

    # ---- Hugging Face GPT-2 ------------------------------------------------------------------
    @staticmethod
    def config_from_hf(hf_config) -> GPTConfig:
        """The :class:`GPTConfig` of a ``transformers.GPT2Config``; refuses variants this model lacks."""
        checks = {
            "activation_function": (getattr(hf_config, "activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
            "n_inner": (getattr(hf_config, "n_inner", None), (None, 4 * hf_config.n_embd)),
            "scale_attn_weights": (getattr(hf_config, "scale_attn_weights", True), (True,)),
            "scale_attn_by_inverse_layer_idx": (getattr(hf_config, "scale_attn_by_inverse_layer_idx", False), (False,)),
            "add_cross_attention": (getattr(hf_config, "add_cross_attention", False), (False,)),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"GPT2Config.{name}={value!r} is not supported (expected one of {allowed})")
        return GPTConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
                         n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                         dropout=0.0, bias=True, layer_norm_epsilon=hf_config.layer_norm_epsilon)

    @torch.no_grad()
    def load_hf_gpt2_state_dict(self, state: dict[str, Tensor]) -> GPT:
        """Copy a Hugging Face GPT-2 state dict (``transformer.*`` names) into this model; returns ``self``.

        HF's GPT-2 computes its projections with ``Conv1D``, ``y = x @ W + b`` with ``W`` stored
        ``(in, out)``: the transpose of ``nn.Linear``'s ``(out, in)``. Its ``c_attn`` is q, k and v
        fused into one ``(C, 3C)`` matrix, cut here into three. Any shape that does not fit raises
        a ``ValueError`` naming the parameter and both shapes, before anything is copied.
        """
        prefix = "transformer." if any(k.startswith("transformer.") for k in state) else ""
        copies: list[tuple[str, Tensor, Tensor]] = []  # (hf name, our tensor, value to copy)

        def take(hf_name: str, ours: Tensor, transform=lambda w: w) -> None:
            key = prefix + hf_name
            if key not in state:
                raise ValueError(f"the Hugging Face state dict has no parameter {key!r}")
            value = transform(state[key])
            if tuple(value.shape) != tuple(ours.shape):
                stored = tuple(state[key].shape)
                converted = f" (transposed/cut for us: {tuple(value.shape)})" if tuple(value.shape) != stored else ""
                raise ValueError(f"parameter {key!r}: Hugging Face shape {stored}{converted} does not fit our "
                                 f"shape {tuple(ours.shape)}")
            copies.append((key, ours, value))

        c = self.config
        take("wte.weight", self.wte.weight)
        take("wpe.weight", self.wpe.weight)
        for i, block in enumerate(self.h):
            p = f"h.{i}."
            for ln_name, ln in (("ln_1", block.ln_1), ("ln_2", block.ln_2)):
                take(p + f"{ln_name}.weight", ln.weight)
                take(p + f"{ln_name}.bias", ln.bias)
            attn = block.attn
            for j, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
                cut = slice(j * c.n_embd, (j + 1) * c.n_embd)
                take(p + "attn.c_attn.weight", proj.weight, lambda w, cut=cut: w[:, cut].t() if w.dim() == 2 else w)
                take(p + "attn.c_attn.bias", proj.bias, lambda b, cut=cut: b[cut])
            take(p + "attn.c_proj.weight", attn.out_proj.weight, lambda w: w.t())
            take(p + "attn.c_proj.bias", attn.out_proj.bias)
            take(p + "mlp.c_fc.weight", block.mlp.fc_in.weight, lambda w: w.t())
            take(p + "mlp.c_fc.bias", block.mlp.fc_in.bias)
            take(p + "mlp.c_proj.weight", block.mlp.fc_out.weight, lambda w: w.t())
            take(p + "mlp.c_proj.bias", block.mlp.fc_out.bias)
        take("ln_f.weight", self.ln_f.weight)
        take("ln_f.bias", self.ln_f.bias)
        head = state.get("lm_head.weight")
        if head is not None and not torch.equal(head, state[prefix + "wte.weight"]):
            raise ValueError("the Hugging Face model's lm_head.weight differs from its wte.weight (untied "
                             "embeddings): this GPT always ties them")
        for _, ours, value in copies:
            ours.copy_(value)
        return self

    @classmethod
    def from_hf_gpt2(cls, hf_model) -> GPT:
        """A :class:`GPT` with the configuration and weights of a Hugging Face ``GPT2LMHeadModel``.

        The result is in eval mode, on the CPU in float32, whatever the HF model's device/dtype.
        """
        hf_config = getattr(hf_model, "config", None)
        if hf_config is None or getattr(hf_config, "model_type", None) != "gpt2":
            raise TypeError(f"hf_model must be a Hugging Face GPT-2 model (config.model_type 'gpt2'), got "
                            f"{type(hf_model).__name__}")
        model = cls(cls.config_from_hf(hf_config))
        state = {k: v.detach().float().cpu() for k, v in hf_model.state_dict().items()}
        return model.load_hf_gpt2_state_dict(state).eval()
