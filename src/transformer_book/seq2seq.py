"""Chapter 1: a GRU encoder-decoder, without attention and with additive or dot-product attention.

One skeleton, three models::

    source ids (B, S) --Encoder--> memory (B, S, C) + summary (B, C)
                                                    |
    target ids (B, T) --Decoder GRU (starts from the summary)--> states (B, T, C)
                                                    |
                         attention(states, memory) -> context (B, T, C), weights (B, T, S)
                                                    |
                         tanh(W_c [state; context]) -> logits (B, T, V)

* ``attention="none"``: the decoder sees the source only through the summary vector, the
  fixed-size *bottleneck* of Sutskever et al. (2014) and Cho et al. (2014).
* ``attention="additive"``: Bahdanau et al. (2015)'s score ``v . tanh(W_q q + W_k k_j)``.
* ``attention="dot"``: Luong et al. (2015)'s score ``q . k_j``.

The attention sits *after* the decoder's GRU step, as in Luong et al. (2015): the decoder
state that just read the previous output token is the query. (Bahdanau et al. query with the
previous state and feed the context into the GRU; Luong et al. compare both score functions
in this arrangement, which also lets training run the whole target through the GRU at once.)

Shapes: ``B`` batch, ``S`` source length, ``T`` target length, ``C`` model width
(``hidden_dim``), ``V`` vocabulary size. Masks are boolean with ``True`` = may attend.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from transformer_book import _checks
from transformer_book.data.numbers import Vocab, english_words, join_german, parse_number

__all__ = [
    "ATTENTIONS",
    "additive_scores",
    "dot_scores",
    "masked_softmax",
    "AdditiveAttention",
    "DotProductAttention",
    "Encoder",
    "Decoder",
    "Seq2Seq",
    "greedy_decode",
    "Translation",
    "source_words",
    "translate",
    "train_model",
    "Evaluation",
    "evaluate",
]

ATTENTIONS = ("none", "additive", "dot")


# --------------------------------------------------------------------------- input checks

def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_tokens(name: str, tokens: object, vocab_size: int) -> torch.Tensor:
    """A (B, L) long tensor of ids in [0, vocab_size), else an error naming what is wrong."""
    _checks.instance(name, tokens, torch.Tensor, "torch.Tensor of token ids")
    if tokens.dtype != torch.long:
        raise TypeError(f"{name} must have dtype torch.long (token ids), got {tokens.dtype}")
    if tokens.dim() != 2 or tokens.size(0) == 0 or tokens.size(1) == 0:
        raise ValueError(f"{name} must have shape (B, L) with B, L >= 1, got shape {_shape(tokens)}")
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bad.any():
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} has id {int(tokens[b, t])} at position ({b}, {t}), outside the vocabulary "
            f"[0, {vocab_size - 1}]"
        )
    return tokens


# --------------------------------------------------------------------------- attention, functional

def additive_scores(
    query: torch.Tensor,
    keys: torch.Tensor,
    w_query: torch.Tensor,
    w_key: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """Additive (Bahdanau) scores ``e[b, i, j] = v . tanh(W_q q_i + W_k k_j)``.

    Args:
        query: ``(B, T, C_q)`` one query per target position.
        keys: ``(B, S, C_k)`` one key per source position.
        w_query: ``(A, C_q)`` and ``w_key``: ``(A, C_k)``, laid out like ``nn.Linear.weight``.
        v: ``(A,)``.

    Returns:
        ``(B, T, S)`` scores (before the softmax).
    """
    _checks.float_tensor("query", query, 3, layout="(B, T, C_q)")
    _checks.float_tensor("keys", keys, 3, layout="(B, S, C_k)")
    _checks.float_tensor("w_query", w_query, 2, layout="(A, C_q)")
    _checks.float_tensor("w_key", w_key, 2, layout="(A, C_k)")
    _checks.float_tensor("v", v, 1, layout="(A,)")
    _checks.same_dtype(query=query, keys=keys, w_query=w_query, w_key=w_key, v=v)
    if keys.size(0) != query.size(0):
        raise ValueError(f"query and keys must share the batch size B, got {_shape(query)} and {_shape(keys)}")
    if w_query.shape != (v.size(0), query.size(-1)):
        raise ValueError(f"w_query must have shape (A, C_q) = ({v.size(0)}, {query.size(-1)}), got {_shape(w_query)}")
    if w_key.shape != (v.size(0), keys.size(-1)):
        raise ValueError(f"w_key must have shape (A, C_k) = ({v.size(0)}, {keys.size(-1)}), got {_shape(w_key)}")
    return _additive(query, keys, w_query, w_key, v)


def _additive(query: torch.Tensor, keys: torch.Tensor, w_query: torch.Tensor, w_key: torch.Tensor,
              v: torch.Tensor) -> torch.Tensor:
    q = query @ w_query.T  # (B, T, A)
    k = keys @ w_key.T  # (B, S, A)
    # Broadcast to every (query, key) pair: (B, T, 1, A) + (B, 1, S, A) -> (B, T, S, A).
    return torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)) @ v


def dot_scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Dot-product (Luong) scores ``e[b, i, j] = q_i . k_j``: ``(B, T, C), (B, S, C) -> (B, T, S)``."""
    _checks.float_tensor("query", query, 3, layout="(B, T, C)")
    _checks.float_tensor("keys", keys, 3, layout="(B, S, C)")
    _checks.same_dtype(query=query, keys=keys)
    if keys.size(0) != query.size(0) or keys.size(-1) != query.size(-1):
        raise ValueError(
            f"query (B, T, C) and keys (B, S, C) must share B and C, got {_shape(query)} and {_shape(keys)}"
        )
    return query @ keys.transpose(1, 2)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis in which masked-out positions get weight exactly 0.

    Args:
        scores: ``(..., S)``.
        mask: boolean, broadcastable to ``scores``; ``True`` = may attend. ``None``: no mask.

    A row with nothing to attend to gets all-zero weights (not NaN).
    """
    _checks.float_tensor("scores", scores, min_dim=1, layout="(..., S)")
    if mask is None:
        return scores.softmax(dim=-1)
    _checks.tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != scores.shape:
        raise ValueError(f"mask of shape {_shape(mask)} does not broadcast to scores of shape {_shape(scores)}")
    return _masked_softmax(scores, mask)


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # exp(-inf) = 0 exactly; a fully masked row would be 0/0 = NaN, so zero it afterwards.
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return weights.masked_fill(~mask, 0.0)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. (2015): ``score(q, k) = v . tanh(W_q q + W_k k)`` with a hidden size ``A``."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            _checks.positive_int(name, value)
        self.w_query = nn.Linear(query_dim, attn_dim, bias=False)
        self.w_key = nn.Linear(key_dim, attn_dim, bias=False)
        self.v = nn.Parameter(torch.empty(attn_dim).uniform_(-1, 1) / math.sqrt(attn_dim))

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``(B, T, C_q), (B, S, C_k) -> (B, T, S)``."""
        return _additive(query, keys, self.w_query.weight, self.w_key.weight, self.v)

    def forward(self, query, keys, mask=None):
        """Context ``(B, T, C_k)`` and weights ``(B, T, S)``; ``mask`` broadcastable to ``(B, T, S)``."""
        scores = self.score(query, keys)
        weights = scores.softmax(dim=-1) if mask is None else _masked_softmax(scores, mask.expand_as(scores))
        return weights @ keys, weights


class DotProductAttention(nn.Module):
    """Luong et al. (2015): ``score(q, k) = q . k``; no parameters, query and keys share ``C``."""

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``(B, T, C), (B, S, C) -> (B, T, S)``."""
        return query @ keys.transpose(1, 2)

    def forward(self, query, keys, mask=None):
        """Context ``(B, T, C)`` and weights ``(B, T, S)``; ``mask`` broadcastable to ``(B, T, S)``."""
        scores = self.score(query, keys)
        weights = scores.softmax(dim=-1) if mask is None else _masked_softmax(scores, mask.expand_as(scores))
        return weights @ keys, weights


# --------------------------------------------------------------------------- encoder, decoder

class Encoder(nn.Module):
    """Embedding + bidirectional GRU. Each direction has ``hidden_dim // 2`` units, so a source
    position's state (both directions concatenated) has width ``hidden_dim``."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, pad_id: int = 0):
        super().__init__()
        vocab_size, emb_dim = _checks.positive_int("vocab_size", vocab_size), _checks.positive_int("emb_dim", emb_dim)
        if _checks.positive_int("hidden_dim", hidden_dim) % 2:
            raise ValueError(f"hidden_dim must be even (two directions of hidden_dim // 2), got {hidden_dim}")
        _checks.integer("pad_id", pad_id, 0, vocab_size - 1)
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.gru = nn.GRU(emb_dim, hidden_dim // 2, batch_first=True, bidirectional=True)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``src (B, S)``, ``lengths (B,)`` -> memory ``(B, S, C)`` (zeros at padding), summary ``(B, C)``.

        The sequences are *packed*, so the backward direction starts at each sequence's last
        real token, not at its padding: every row gets exactly what ``nn.GRU`` gives on that
        row alone.
        """
        packed = pack_padded_sequence(self.embed(src), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.gru(packed)  # h_n: (2, B, C/2), forward's last step and backward's first
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        return memory, torch.cat([h_n[0], h_n[1]], dim=-1)


class Decoder(nn.Module):
    """Embedding + GRU + optional attention + output layer (Luong et al.'s arrangement)."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, attention: nn.Module | None, pad_id: int = 0):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("emb_dim", emb_dim), ("hidden_dim", hidden_dim)):
            _checks.positive_int(name, value)
        _checks.integer("pad_id", pad_id, 0, vocab_size - 1)
        if attention is not None:
            _checks.instance("attention", attention, nn.Module, "nn.Module (AdditiveAttention, DotProductAttention) or None")
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.gru = nn.GRU(emb_dim, hidden_dim, batch_first=True)
        self.attention = attention
        self.combine = nn.Linear(2 * hidden_dim if attention is not None else hidden_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def forward(self, tgt_in, hidden, memory, src_mask):
        """One or many steps.

        Args:
            tgt_in: ``(B, T)`` previous tokens (``<bos>`` first).
            hidden: ``(1, B, C)`` GRU state before the first of them.
            memory: ``(B, S, C)`` encoder states; src_mask: ``(B, S)`` bool, True = real token.

        Returns:
            logits ``(B, T, V)``, the new hidden ``(1, B, C)``, weights ``(B, T, S)`` or None.
        """
        states, hidden = self.gru(self.embed(tgt_in), hidden)  # (B, T, C)
        if self.attention is None:
            return self.out(torch.tanh(self.combine(states))), hidden, None
        context, weights = self.attention(states, memory, src_mask.unsqueeze(1))  # mask (B, 1, S)
        return self.out(torch.tanh(self.combine(torch.cat([states, context], dim=-1)))), hidden, weights


class Seq2Seq(nn.Module):
    """GRU encoder-decoder with ``attention`` in ``"none"``, ``"additive"``, ``"dot"``.

    Args:
        src_vocab, tgt_vocab: :class:`~transformer_book.data.numbers.Vocab` (pad id 0).
        attention: which attention, see the module docstring.
        emb_dim: embedding width; hidden_dim: ``C``, the GRU width (even).
        attn_dim: ``A``, the hidden size of the additive score (default ``hidden_dim``).
    """

    def __init__(
        self,
        src_vocab: Vocab,
        tgt_vocab: Vocab,
        attention: str = "additive",
        emb_dim: int = 64,
        hidden_dim: int = 128,
        attn_dim: int | None = None,
    ):
        super().__init__()
        for name, vocab in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab)):
            _checks.instance(name, vocab, Vocab)
        _checks.one_of("attention", attention, ATTENTIONS)
        for name, value in (("emb_dim", emb_dim), ("hidden_dim", hidden_dim)):
            _checks.positive_int(name, value)
        if attn_dim is not None:
            _checks.positive_int("attn_dim", attn_dim)
        self.src_vocab, self.tgt_vocab, self.kind = src_vocab, tgt_vocab, attention
        if attention == "additive":
            attn = AdditiveAttention(hidden_dim, hidden_dim, attn_dim or hidden_dim)
        elif attention == "dot":
            attn = DotProductAttention()
        else:
            attn = None
        self.encoder = Encoder(len(src_vocab), emb_dim, hidden_dim, src_vocab.pad_id)
        self.bridge = nn.Linear(hidden_dim, hidden_dim)  # encoder summary -> decoder's first state
        self.decoder = Decoder(len(tgt_vocab), emb_dim, hidden_dim, attn, tgt_vocab.pad_id)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``src (B, S)`` right-padded ids -> memory ``(B, S, C)``, hidden ``(1, B, C)``, mask ``(B, S)``."""
        _check_tokens("src", src, len(self.src_vocab))
        mask = src != self.src_vocab.pad_id
        lengths = mask.sum(dim=1)
        if (lengths == 0).any():
            b = int((lengths == 0).nonzero()[0])
            raise ValueError(f"src row {b} is all padding; every source needs at least one token")
        positions = torch.arange(src.size(1), device=src.device)
        if not torch.equal(mask, positions < lengths.unsqueeze(1)):
            b = int((mask != (positions < lengths.unsqueeze(1))).any(dim=1).nonzero()[0])
            raise ValueError(f"src row {b} has padding before a real token; pad on the right only")
        memory, summary = self.encoder(src, lengths)
        hidden = torch.tanh(self.bridge(summary)).unsqueeze(0)
        return memory, hidden, mask

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: ``src (B, S)``, ``tgt_in (B, T)`` -> logits ``(B, T, V)``, weights ``(B, T, S)`` or None."""
        memory, hidden, mask = self.encode(src)
        _check_tokens("tgt_in", tgt_in, len(self.tgt_vocab))
        if tgt_in.size(0) != src.size(0):
            raise ValueError(f"src and tgt_in must have the same batch size, got {_shape(src)} and {_shape(tgt_in)}")
        logits, _, weights = self.decoder(tgt_in, hidden, memory, mask)
        return logits, weights


# --------------------------------------------------------------------------- decoding

@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: torch.Tensor, max_len: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy decoding of a batch: at each step feed back the most likely token.

    Args:
        model: a :class:`Seq2Seq`; src: ``(B, S)`` right-padded source ids.
        max_len: most tokens to produce per row (``<eos>`` included).

    Returns:
        tokens ``(B, T_out)`` (``<eos>`` included, ``<pad>`` after it) and the attention
        weights ``(B, T_out, S)`` (None without attention). Stops when every row has ended.
    """
    _checks.instance("model", model, Seq2Seq)
    max_len = _checks.positive_int("max_len", max_len)
    was_training = model.training
    model.eval()
    try:
        memory, hidden, mask = model.encode(src)
        vocab = model.tgt_vocab
        token = torch.full((src.size(0), 1), vocab.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        tokens, weights = [], []
        for _ in range(max_len):
            logits, hidden, w = model.decoder(token, hidden, memory, mask)
            token = logits.argmax(dim=-1)  # (B, 1)
            token = token.masked_fill(done.unsqueeze(1), vocab.pad_id)
            tokens.append(token)
            if w is not None:
                weights.append(w.masked_fill(done.view(-1, 1, 1), 0.0))
            done |= token.squeeze(1) == vocab.eos_id
            if done.all():
                break
    finally:
        model.train(was_training)
    return torch.cat(tokens, dim=1), (torch.cat(weights, dim=1) if weights else None)


class Translation(NamedTuple):
    """What :func:`translate` returns."""

    source: list[str]  # the English words the model read
    target: list[str]  # the German morphemes it wrote (no <eos>)
    weights: torch.Tensor | None  # (len(target), len(source)) attention, None without attention
    text: str  # the German word, morphemes joined


def source_words(text: str | int, vocab: Vocab) -> list[str]:
    """English words for ``text``: a number in digits (``"1,024"``, ``1024``) or in words.

    Words are lower-cased, hyphens split, commas and "and" dropped, like the training data.
    Unknown words raise a ValueError that names them.
    """
    _checks.instance("text", text, (str, int), "str or an int")
    _checks.instance("vocab", vocab, Vocab)
    if isinstance(text, int):
        try:
            return english_words(_checks.integer("text", text))
        except ValueError as exc:
            raise ValueError(f"text: {exc}") from None
    value = parse_number(text)
    if value is not None:
        try:
            return english_words(value)
        except ValueError as exc:
            raise ValueError(f"text: {exc}") from None
    words = [w for w in re.split(r"[\s,\-]+", text.lower()) if w and w != "and"]
    if not words:
        raise ValueError(f"text {text!r} has no words to translate")
    unknown = vocab.unknown(words)
    if unknown:
        raise ValueError(
            f"text has unknown words {unknown} in {text!r}; the model knows only these words: "
            f"{', '.join(vocab.itos[3:])} (or type the number in digits)"
        )
    return words


def translate(model: Seq2Seq, text: str | int, max_len: int = 32) -> Translation:
    """Translate one English number (words or digits) with greedy decoding.

    >>> t = translate(model, "twenty four")       # doctest: +SKIP
    >>> t.target, t.text, t.weights.shape          # doctest: +SKIP
    (['vier', 'und', 'zwanzig'], 'vierundzwanzig', torch.Size([3, 2]))
    """
    _checks.instance("model", model, Seq2Seq)
    max_len = _checks.positive_int("max_len", max_len)
    words = source_words(text, model.src_vocab)
    device = next(model.parameters()).device
    src = model.src_vocab.encode_batch([words]).to(device)
    tokens, weights = greedy_decode(model, src, max_len=max_len)
    ids = tokens[0].tolist()
    n = ids.index(model.tgt_vocab.eos_id) if model.tgt_vocab.eos_id in ids else len(ids)
    target = model.tgt_vocab.decode(ids[:n])
    w = weights[0, :n].cpu() if weights is not None else None
    return Translation(words, target, w, join_german(target))


# --------------------------------------------------------------------------- training and evaluation

def _batches(vocab_src: Vocab, vocab_tgt: Vocab, pairs):
    src = vocab_src.encode_batch([s for s, _ in pairs])
    tgt = vocab_tgt.encode_batch([t for _, t in pairs], add_bos=True, add_eos=True)
    return src, tgt


def _check_pairs(name: str, pairs: object) -> None:
    if not isinstance(pairs, Sequence) or isinstance(pairs, str):
        raise TypeError(f"{name} must be a non-empty list of (source words, target words), got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError(f"{name} must be a non-empty list of (source words, target words), got an empty one")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{name}[{i}] must be a pair (source words, target words), got {pair!r}")


def train_model(
    model: Seq2Seq,
    pairs: Sequence[tuple[Sequence[str], Sequence[str]]],
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 3e-3,
    clip: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    desc: str | None = None,
) -> list[float]:
    """Train with teacher forcing, Adam and a one-cycle learning-rate schedule.

    Each step takes a batch of pairs, predicts every next target token from the true previous
    ones (teacher forcing), and minimises the cross-entropy over real tokens (padding is
    ignored). Gradients are clipped to norm ``clip``. The learning rate warms up to ``lr`` and
    then anneals to almost zero (``torch.optim.lr_scheduler.OneCycleLR``), which lets a short
    run end in a good minimum.

    Returns:
        the training loss of every step (a list of floats).
    """
    from tqdm.auto import tqdm

    _checks.instance("model", model, Seq2Seq)
    _check_pairs("pairs", pairs)
    epochs, batch_size = _checks.positive_int("epochs", epochs), _checks.positive_int("batch_size", batch_size)
    lr = _checks.number("lr", lr, low=0.0, low_open=True)
    clip = _checks.number("clip", clip, low=0.0, low_open=True)
    seed, progress = _checks.integer("seed", seed), _checks.boolean("progress", progress)
    device = next(model.parameters()).device
    src_all, tgt_all = _batches(model.src_vocab, model.tgt_vocab, pairs)
    src_all, tgt_all = src_all.to(device), tgt_all.to(device)
    pad = model.tgt_vocab.pad_id
    n = len(pairs)
    steps_per_epoch = math.ceil(n / batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    # progress=False hides the bar; otherwise tqdm decides, so TQDM_DISABLE=1 is honoured
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc or f"training ({model.kind})",
               **({} if progress else {"disable": True}))
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            src, tgt = src_all[idx], tgt_all[idx]
            # Trim the columns that are padding in the whole batch.
            src = src[:, : int((src != model.src_vocab.pad_id).sum(1).max())]
            tgt = tgt[:, : int((tgt != pad).sum(1).max())]
            logits, _ = model(src, tgt[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1), ignore_index=pad)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    bar.close()
    model.eval()
    return losses


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns."""

    accuracy: float  # exact match over all pairs
    by_length: dict[int, tuple[int, int]]  # source length -> (correct, total)
    predictions: list[list[str]]  # the model's target tokens, in the order of the pairs

    def accuracy_at(self, length: int) -> float:
        """Exact match on the sources of ``length`` words."""
        if length not in self.by_length:
            raise ValueError(f"no source of length {length}; lengths are {sorted(self.by_length)}")
        correct, total = self.by_length[length]
        return correct / total


def evaluate(
    model: Seq2Seq,
    pairs: Sequence[tuple[Sequence[str], Sequence[str]]],
    batch_size: int = 1000,
    max_len: int | None = None,
) -> Evaluation:
    """Exact-match accuracy of greedy decoding: a prediction counts only if every token is right.

    Also broken down by source length (number of English words), to see where a model fails.
    ``max_len`` (tokens per prediction, ``<eos>`` included) defaults to twice the longest
    target plus 2: enough for any right answer, and a model that never stops is cut there.
    """
    _checks.instance("model", model, Seq2Seq)
    _check_pairs("pairs", pairs)
    batch_size = _checks.positive_int("batch_size", batch_size)
    if max_len is not None:
        max_len = _checks.positive_int("max_len", max_len)
    if max_len is None:
        max_len = 2 * max(len(t) for _, t in pairs) + 2
    device = next(model.parameters()).device
    predictions: list[list[str]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        src = model.src_vocab.encode_batch([s for s, _ in chunk]).to(device)
        tokens, _ = greedy_decode(model, src, max_len=max_len)
        predictions.extend(model.tgt_vocab.decode_batch(tokens.cpu()))
    by_length: dict[int, list[int]] = {}
    for (src_words, tgt_words), pred in zip(pairs, predictions):
        entry = by_length.setdefault(len(src_words), [0, 0])
        entry[0] += pred == list(tgt_words)
        entry[1] += 1
    correct = sum(c for c, _ in by_length.values())
    return Evaluation(
        correct / len(pairs),
        {k: (c, t) for k, (c, t) in sorted(by_length.items())},
        predictions,
    )
