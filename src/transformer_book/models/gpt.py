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

from transformer_book import _checks, cpu_kernels
from transformer_book.attention import MultiHeadAttention, affine, packed_weight
from transformer_book.kv_cache import KVCache
from transformer_book.layers import FeedForward, LayerNorm
from transformer_book.masks import to_additive_mask
from transformer_book.positional import LearnedPositionalEmbedding

__all__ = ["GPTConfig", "GPT", "GPTOutput", "Block", "PastKeyValues"]

#: Chapter 7's cache: one ``(keys, values)`` pair per layer, each ``(B, n_kv_head, T_past, head_dim)``.
PastKeyValues = tuple[tuple[Tensor, Tensor], ...]


@dataclass(frozen=True)
class GPTConfig:
    """The sizes of a :class:`GPT`; the field names and defaults of GPT-2 small are Hugging Face's.

    ``block_size`` is the context window (GPT-2: ``n_positions = 1024``); ``bias`` switches the
    biases of every Linear and LayerNorm; ``dropout`` applies to the embeddings, the attention
    weights, the feed-forward hidden layer and each sub-layer's output. ``n_kv_head`` key/value
    heads (``None`` = ``n_head``: multi-head attention; fewer: grouped-query; 1: multi-query).
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5
    n_kv_head: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _checks.positive_int(f"GPTConfig.{name}", getattr(self, name))
        _checks.divides("GPTConfig.n_head", self.n_head, "GPTConfig.n_embd", self.n_embd,
                        "each head gets n_embd / n_head channels")
        if self.n_kv_head is not None:
            _checks.positive_int("GPTConfig.n_kv_head", self.n_kv_head)
            _checks.divides("GPTConfig.n_kv_head", self.n_kv_head, "GPTConfig.n_head", self.n_head,
                            "each key/value head serves an equal group of query heads")
        _checks.dropout("GPTConfig.dropout", self.dropout)
        _checks.boolean("GPTConfig.bias", self.bias)
        _checks.number("GPTConfig.layer_norm_epsilon", self.layer_norm_epsilon, 0.0, 1.0, low_open=True,
                       high_open=True)

    @property
    def n_positions(self) -> int:
        """GPT-2's name for ``block_size``."""
        return self.block_size

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (``n_kv_head``, or ``n_head`` when that is ``None``)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        """A config from :meth:`to_dict`'s output; unknown keys are an error."""
        _checks.instance("values", values, dict)
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
    past_key_values: PastKeyValues | None = None
    attentions: tuple[Tensor, ...] | None = None


class _ConcatCache:
    """Chapter 7's cache behind :mod:`transformer_book.kv_cache`'s protocol: each step concatenates
    the new keys and values onto the old ones (a new, longer tensor every step)."""

    def __init__(self, past: PastKeyValues | None, n_layer: int) -> None:
        self.layers = list(past) if past is not None else [None] * n_layer
        self.length = 0 if past is None else past[0][0].shape[2]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.layers[layer] is not None:
            k, v = torch.cat([self.layers[layer][0], k], dim=2), torch.cat([self.layers[layer][1], v], dim=2)
        self.layers[layer] = (k, v)
        return k, v

    attention_mask = KVCache.attention_mask

    @property
    def device(self) -> torch.device:
        return self.layers[0][0].device if self.layers[0] is not None else torch.device("cpu")

    def advance(self, n_new: int) -> None:
        self.length += n_new


class Block(nn.Module):
    """One pre-LN decoder block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    ``x`` ``(B, T, C)``; ``mask`` boolean ``(T, T_k)`` or ``None``; ``cache`` follows
    :mod:`transformer_book.kv_cache`'s protocol (``None``: no cache, plain causal attention).
    """

    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        c, self.layer = config, layer
        self.ln_1 = LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.attn = MultiHeadAttention(c.n_embd, c.n_head, c.n_kv_head, bias=c.bias, dropout=c.dropout,
                                       backend="torch")
        self.ln_2 = LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.mlp = FeedForward(c.n_embd, 4 * c.n_embd, activation="gelu_tanh", dropout=c.dropout, bias=c.bias)
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache=None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Returns ``(x, weights)``: the new stream ``(B, T, C)`` and the attention weights (or ``None``)."""
        a, weights = self.attn.self_attend(self.ln_1(x), mask, cache, self.layer, need_weights)
        x = x + self.resid_dropout(a)  # mix across positions
        x = x + self.resid_dropout(self.mlp(self.ln_2(x)))  # transform each position
        return x, weights

    def decode(self, x: Tensor, mask: Tensor | None, cache, weights: tuple) -> Tensor:
        """The inference fast path of :meth:`forward` with a cache: the same math, without checks,
        dropout or attention weights, with ``F.layer_norm`` and ``weights`` (from
        :meth:`decode_weights`) stored for decoding. ``(B, T, C)`` -> ``(B, T, C)``."""
        qkv, out, fc_in, fc_out = weights
        x = x + self.attn.decode(_layer_norm(self.ln_1, x), mask, cache, self.layer, qkv, out)
        h = F.gelu(affine(_layer_norm(self.ln_2, x), *fc_in), approximate="tanh")
        return x + affine(h, *fc_out)

    def decode_weights(self) -> tuple:
        """This block's matrices in their decoding layout (:func:`~transformer_book.attention.packed_weight`):
        q, k and v side by side, the attention's output projection, the feed-forward's two layers."""
        a, mlp = self.attn, self.mlp
        return (packed_weight(a.q_proj, a.k_proj, a.v_proj), packed_weight(a.out_proj),
                packed_weight(mlp.fc_in), packed_weight(mlp.fc_out))


def _layer_norm(ln: LayerNorm, x: Tensor) -> Tensor:
    """``ln(x)`` in one fused call (PyTorch's kernel computes the book's :class:`LayerNorm` math)."""
    return F.layer_norm(x, (ln.d_model,), ln.weight, ln.bias, ln.eps)


class GPT(nn.Module):
    """Decoder-only Transformer language model: ids ``(B, T)`` -> next-token logits ``(B, T, vocab_size)``.

    Submodules carry GPT-2's names: ``wte`` (token embedding), ``wpe`` (learned positions),
    ``h`` (the blocks), ``ln_f`` (final norm), ``lm_head`` (its weight *is* ``wte.weight``).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = _checks.instance("config", config, GPTConfig)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
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

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A static :class:`~transformer_book.kv_cache.KVCache` for this model (its dtype and device)."""
        return KVCache.for_model(self, batch_size, max_len)

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        past_key_values: PastKeyValues | None = None,
        use_cache: bool = False,
        need_weights: bool = False,
    ) -> GPTOutput:
        """``idx`` ``(B, T)`` token ids -> :class:`GPTOutput` with ``logits`` ``(B, T, vocab_size)``.

        ``targets`` ``(B, T)``: the ids to predict at each position (``idx`` shifted left by one;
        ``-1`` = ignore); the loss is their mean cross-entropy (``0.0``, with a gradient, when
        every target is ignored). Two kinds of cache let ``idx`` continue an earlier sequence,
        its positions starting after the cached ones:

        * ``cache``: a static :class:`~transformer_book.kv_cache.KVCache` (chapter 8), written in
          place (``cache.length`` grows by ``T``);
        * ``past_key_values`` / ``use_cache`` (chapter 7): the keys and values of the positions so
          far come in as tensors and go out, longer by ``T``, in ``past_key_values``.
        """
        self._check_forward(idx, targets, cache, past_key_values, use_cache, need_weights)
        if use_cache or past_key_values is not None:
            cache = _ConcatCache(past_key_values, self.config.n_layer)
        b, t = idx.shape
        start = 0 if cache is None else cache.length
        pos = torch.arange(start, start + t, device=idx.device)  # (T,) absolute positions
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        mask = None if cache is None else cache.attention_mask(t)  # None: causal, or one new token
        attentions = []
        for block in self.h:
            x, weights = block(x, mask, cache, need_weights)
            attentions.append(weights)
        if cache is not None:
            cache.advance(t)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None if targets is None else _lm_loss(logits, targets)
        return GPTOutput(logits, loss, tuple(cache.layers) if use_cache else None,
                         tuple(attentions) if need_weights else None)

    @torch.inference_mode()
    def decode_step(self, idx: Tensor, cache, *, check: bool = True, last_only: bool = True) -> Tensor:
        """Inference fast path: feed ``idx`` ``(B, T)`` after the ``cache``'s positions and return the
        next-token logits of the *last* position only, ``(B, vocab_size)``; with
        ``last_only=False``, those of every new position, ``(B, T, vocab_size)`` (what a
        verification pass of speculative decoding needs, chapter 10).

        The numbers of ``forward(idx, cache=cache).logits[:, -1]`` (in eval mode), computed with
        fewer, larger calls: q/k/v in one product, every matrix stored the way a product with one
        vector streams it fastest (:func:`~transformer_book.attention.packed_weight`: a cached
        copy of the weights), ``F.layer_norm``, no dropout, the LM head on the last position
        only, under ``torch.inference_mode``. ``cache`` follows
        :mod:`transformer_book.kv_cache`'s protocol including ``positions`` (a
        :class:`~transformer_book.kv_cache.KVCache`, ``SlidingWindowCache`` or ``GraphKVCache``).
        ``check=False`` skips the input checks and the look at the weights
        (:meth:`prepare_decoding`), for a caller that did both already (a CUDA graph cannot contain
        the host synchronisation that checking token ids needs; a decoding loop checks once).
        """
        if check:
            _checks.boolean("last_only", last_only)
        weights = self._decoding_weights("decode_step", idx, cache, check)
        b, t = idx.shape
        if b == 1 and t == 1 and (step := self._token_step(cache, weights)) is not None:
            logits = step.from_token(idx, cache.length, check=False)  # (1, V): the embedding, every block, the head
            cache.advance(1)
            return logits if last_only else logits[:, None]
        x = self.wte.weight[idx] + self.wpe.weight[cache.positions(t)]  # (B, T, C)
        *blocks, head = weights
        mask = cache.attention_mask(t)  # None: one new token reads every cached key
        if mask is not None and mask.dtype == torch.bool:  # as the scores' additive -inf, once for all layers
            mask = to_additive_mask(mask, x.dtype)
        for block, weights in zip(self.h, blocks):
            x = block.decode(x, mask, cache, weights)
        cache.advance(t)
        x = x[:, -1] if last_only else x  # (B, C), or (B, T, C) for every new position
        return affine(_layer_norm(self.ln_f, x), *head)  # (B, [T,] V): the tied head

    def decode_greedy(self, idx: Tensor, cache, n: int, *, check: bool = True) -> Tensor:
        """Greedy decoding of ``n`` tokens after ``idx`` ``(B, T)``: feed ``idx``, take the
        largest logit of its last position (the first on a tie, as ``argmax``), feed that, and so
        on; returns the ``n`` chosen tokens ``(B, n)``. The ``cache`` ends holding ``idx`` and the
        first ``n - 1`` of them (the last is not fed, as :func:`~transformer_book.generate.generate`
        leaves it). One token at batch 1 over a plain :class:`KVCache` goes to chapter 8's C loop
        where :meth:`decode_step` would (:meth:`~transformer_book.cpu_kernels.TokenStep.greedy`:
        all ``n`` tokens in one call, no Python between them); otherwise :meth:`decode_step` and
        the maximum per token, the same tokens. ``ValueError`` if a step's logits hold a NaN or
        have no finite maximum (no next token; the cache is then as it was)."""
        weights = self._decoding_weights("decode_greedy", idx, cache, check)
        b, t = idx.shape
        if check:
            n = _checks.positive_int("n", n)
            cache.check_step(t + n - 1, b, self.wte.weight.dtype, self.wte.weight.device)  # room for every fed token
            if cache.length + t + n - 1 > self.config.block_size:
                raise ValueError(f"n={n} greedy tokens after {cache.length} cached and {t} new ones need "
                                 f"{cache.length + t + n - 1} positions, past block_size={self.config.block_size}")
        start = cache.length
        if b == 1 and t == 1 and (step := self._token_step(cache, weights)) is not None:
            tokens = step.greedy(idx, start, n, check=False)[None]  # (1, n): the whole loop in one C call
            cache.advance(n)
            return tokens
        tokens = idx.new_empty((b, n), dtype=torch.long)
        try:
            for i in range(n):
                logits = self.decode_step(idx if i == 0 else tokens[:, i - 1:i], cache, check=False)  # (B, V)
                top, tokens[:, i] = logits.max(dim=-1)  # the first maximum; a NaN is the maximum
                if not bool(torch.isfinite(top).all()):
                    raise _checks.no_next_token(cache.length - 1)
        except ValueError:
            cache.crop(start)
            raise
        return tokens

    def _decoding_weights(self, method: str, idx: Tensor, cache, check: bool) -> list:
        """:meth:`prepare_decoding`'s weights for a decoding call, after checking ``idx`` and
        ``cache`` (``check``); unchecked, the weights prepared last time."""
        if check:
            self._check_forward(idx, None, cache, None, False, False)
            if not callable(getattr(cache, "positions", None)):
                raise TypeError(f"{method} needs a cache with positions(n_new) (a KVCache), got "
                                f"{_checks.describe(cache)}")
        prepared = self.__dict__.get("_decode_cache")
        return self.prepare_decoding() if check or prepared is None else prepared[2]

    def _token_step(self, cache, weights: list) -> cpu_kernels.TokenStep | None:
        """Chapter 8's whole step in C (:class:`~transformer_book.cpu_kernels.TokenStep`, the token's
        embedding looked up there too) for this cache, or ``None`` where it does not apply: the
        kernel off or missing, a cache other than a plain :class:`KVCache`, or matrices the C loop
        does not take (``packed_weight`` keeps ``rows`` only for large float32 CPU matrices). The
        step reads a copy of its matrices in one block, in its reading order
        (:func:`~transformer_book.cpu_kernels.in_reading_order`), made once per set of weights; the
        step itself once per cache."""
        if type(cache) is not KVCache or not cpu_kernels.whole_step_enabled():
            return None
        seen, matrices, step = self.__dict__.get("_saved_token_step", (None, None, None))
        if seen is weights and (matrices is None or step.writes_to(cache.keys, cache.values)):
            return step  # None: these matrices are not the C loop's, asked once per set of weights
        *blocks, _ = weights
        if seen is not weights:
            rows = [rows for block in blocks for _, _, rows in block]  # qkv, out, fc, proj of every block
            usable = all(r is not None for r in rows)
            matrices = cpu_kernels.in_reading_order(rows + [self.wte.weight]) if usable else None
        if matrices is None:
            step = None
        else:  # each block's (W, b, rows) with the copy in place of its rows
            blocks = [[(w, b, rows) for (w, b, _), rows in zip(block, matrices[4 * i:4 * i + 4])]
                      for i, block in enumerate(blocks)]
            step = cpu_kernels.TokenStep(
                [cpu_kernels.BlockWeights(h.ln_1.weight, h.ln_1.bias, qkv[2], qkv[1], out[2], out[1],
                                          h.ln_2.weight, h.ln_2.bias, fc[2], fc[1], proj[2], proj[1])
                 for h, (qkv, out, fc, proj) in zip(self.h, blocks)],
                (self.ln_f.weight, self.ln_f.bias), matrices[-1], cache.keys, cache.values, self.config.n_head,
                self.ln_f.eps, embeddings=(self.wte.weight, self.wpe.weight))
        self.__dict__["_saved_token_step"] = (weights, matrices, step)
        return step

    def prepare_decoding(self) -> list:
        """Every block's :meth:`Block.decode_weights` and the LM head's, for :meth:`decode_step`: made
        once and remade only when a parameter has changed (replaced, moved by ``.to()``, or changed
        in place by a training step or ``load_state_dict``). ``decode_step`` calls it when it checks
        its inputs; a loop that calls ``decode_step(check=False)`` calls it (or a checked step) at
        its door: walking GPT-2 small's 148 parameters takes a few hundred microseconds."""
        seen = self.__dict__.get("_decode_cache")  # (parameters, their (address, version), weights)
        params = list(self.parameters())
        key = [(p.data_ptr(), p._version) for p in params]
        if seen is None or key != seen[1] or any(a is not b for a, b in zip(params, seen[0])):
            weights = [block.decode_weights() for block in self.h] + [packed_weight(self.lm_head)]
            self.__dict__["_decode_cache"] = seen = (params, key, weights)
        return seen[2]

    def _check_forward(self, idx, targets, cache, past_key_values, use_cache, need_weights) -> None:
        c = self.config
        _checks.token_ids("idx", idx, c.vocab_size)
        _checks.boolean("use_cache", use_cache)
        _checks.boolean("need_weights", need_weights)
        b, t = idx.shape
        if cache is not None and (use_cache or past_key_values is not None):
            raise ValueError("pass either cache= (chapter 8's static cache) or past_key_values/use_cache "
                             "(chapter 7's), not both")
        past_len = self._check_past(past_key_values, b)
        if cache is not None:
            if not all(hasattr(cache, n) for n in ("length", "check_step", "update", "attention_mask", "advance")):
                raise TypeError(f"cache must follow transformer_book.kv_cache's protocol (a KVCache), got "
                                f"{_checks.describe(cache)}")
            past_len = cache.length
            cache.check_step(t, b, self.wte.weight.dtype, self.wte.weight.device)
            if getattr(cache, "n_layer", c.n_layer) != c.n_layer or getattr(cache, "shape", (0, c.kv_heads))[1] != c.kv_heads:
                raise ValueError(f"the cache has {cache.n_layer} layers of {cache.shape[1]} key/value heads; the "
                                 f"model has n_layer={c.n_layer}, n_kv_head={c.kv_heads}")
        if past_len + t > c.block_size:
            where = f"T={t}" + (f" new tokens after {past_len} cached ones" if past_len else "")
            raise ValueError(f"idx is too long: {where} exceeds the context window block_size="
                             f"{c.block_size}; crop it to the last {c.block_size} tokens")
        if targets is not None:
            _checks.tensor("targets", targets, 2, layout="(B, T)")
            if targets.dtype not in _checks.ID_DTYPES:
                raise TypeError(f"targets must hold integer token ids (torch.int64 or torch.int32, -1 = ignore), "
                                f"got dtype {targets.dtype}")
            _checks.shape_is("targets", targets, (b, t), layout="(B, T) of idx")
            lo, hi = int(targets.min()), int(targets.max())
            if lo < -1 or hi >= c.vocab_size:
                raise ValueError(f"targets holds ids in [{lo}, {hi}]; expected ids in [0, vocab_size={c.vocab_size}) "
                                 f"or -1 (ignore)")

    def _check_past(self, past: object, batch: int) -> int:
        """Validate ``past_key_values``; return the number of cached positions."""
        if past is None:
            return 0
        c = self.config
        if not isinstance(past, (tuple, list)) or len(past) != c.n_layer:
            raise ValueError(f"past_key_values must be a sequence of n_layer={c.n_layer} (k, v) pairs, got "
                             f"{type(past).__name__} of length {len(past) if hasattr(past, '__len__') else '?'}")
        k0 = past[0][0] if isinstance(past[0], (tuple, list)) and past[0] else None
        expected = (batch, c.kv_heads, k0.shape[2] if isinstance(k0, Tensor) and k0.dim() == 4 else -1,
                    c.n_embd // c.n_head)
        for i, pair in enumerate(past):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"past_key_values[{i}] must be a (k, v) pair, got {_checks.describe(pair)}")
            for j, t in enumerate(pair):
                if not isinstance(t, Tensor) or tuple(t.shape) != expected:
                    shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(f"past_key_values[{i}][{j}] must have shape (B={batch}, n_kv_head={c.kv_heads}, "
                                     f"T_past={expected[2]}, head_dim={expected[3]}), got {shape}")
                _checks.same_dtype(**{f"past_key_values[{i}][{j}]": t, "the model's weights": self.wte.weight})
        return expected[2]

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


def _lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the targets that are not ``-1``; ``0.0`` (with a gradient) when all are.

    The same rule as :func:`transformer_book.train.label_smoothed_cross_entropy`: a batch with
    nothing to predict contributes nothing, instead of the ``0 / 0 = NaN`` of a plain mean.
    """
    v = logits.shape[-1]
    total = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1).long(), ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)
