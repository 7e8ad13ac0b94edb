"""Decoding an encoder-decoder (chapter 6): greedy search and beam search with length normalisation.

The model is trained to give ``p(y_t | y_<t, x)``; a translation is a whole sequence, and the
model's score for it is the sum of its tokens' log-probabilities,
``log p(y | x) = sum_t log p(y_t | y_<t, x)``.

* :func:`greedy_decode` takes the most likely token at every step. Cheap, but a choice that
  looked best at step ``t`` can lead to a worse sequence overall.
* :func:`beam_search` keeps the ``beam_size`` best prefixes at every step. Longer sequences
  collect more negative log-probabilities, so the finished ones are compared by a
  *length-normalised* score ``log p(y | x) / |y|^alpha`` (``alpha = 0``: the raw sum,
  ``alpha = 1``: the mean per token; Wu et al., 2016 use a similar penalty).

The model needs ``encode(src) -> (memory, src_mask)`` and
``decode(tgt_in, memory, src_mask) -> logits (B, T, V)`` and a ``config`` with ``bos_id``,
``eos_id`` and ``pad_id``: :class:`transformer_book.models.Transformer`. Each step runs the
decoder on the whole prefix again (no cache: the sequences here are short; chapter 8 adds one).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from transformer_book import _checks

__all__ = ["length_normalized_score", "sequence_log_prob", "greedy_decode", "beam_search", "strip_ids",
           "translate_batch", "exact_match_by"]


def _check_model(model: object) -> nn.Module:
    if not (isinstance(model, nn.Module) and hasattr(model, "encode") and hasattr(model, "decode")
            and hasattr(model, "config")):
        raise TypeError(f"model must be an encoder-decoder with encode/decode/config (a Transformer), got "
                        f"{type(model).__name__}")
    return model


def _check_alpha(alpha: object) -> float:
    return _checks.number("alpha", alpha, 0.0, 5.0)


def _check_src(src: object, model: nn.Module) -> Tensor:
    return _checks.token_ids("src", src, model.config.src_vocab_size, layout="(B, S)")


def length_normalized_score(log_prob: float | Tensor, length: int | Tensor, alpha: float = 1.0) -> float | Tensor:
    """``log_prob / length ** alpha``: the score beam search ranks finished hypotheses by.

    ``length`` counts the generated tokens, ``<eos>`` included (>= 1). ``alpha = 0`` keeps the
    raw log-probability (which favours short outputs), ``alpha = 1`` divides by the length.
    """
    alpha = _check_alpha(alpha)
    if isinstance(log_prob, Tensor):
        _checks.float_tensor("log_prob", log_prob)
    else:
        log_prob = log_prob if log_prob == float("-inf") else _checks.number("log_prob", log_prob)
    if isinstance(length, Tensor):
        if length.is_floating_point() or length.dtype == torch.bool:
            raise TypeError(f"length must be an int or an integer tensor, got dtype {length.dtype}")
        if bool((length < 1).any()):
            raise ValueError(f"length must be >= 1, got {length.min().item()}")
        return log_prob / length.to(torch.float64 if not isinstance(log_prob, Tensor) else log_prob.dtype) ** alpha
    return _normalized(log_prob, _checks.positive_int("length", length), alpha)


def _normalized(log_prob: float, length: int, alpha: float) -> float:
    return log_prob / length ** alpha


def _banned(model: nn.Module, log_p: Tensor) -> Tensor:
    """Never generate ``<pad>`` or ``<bos>``: they are not outputs."""
    c = model.config
    log_p[..., c.pad_id] = float("-inf")
    log_p[..., c.bos_id] = float("-inf")
    return log_p


@torch.no_grad()
def sequence_log_prob(model: nn.Module, src: Tensor, out: list[int]) -> float:
    """``log p(out | src)`` for one source ``src`` ``(1, S)`` and one output ``out`` (ids after ``<bos>``).

    The score beam search maximises (with ``<pad>``/``<bos>`` banned, as in the searches).
    """
    model = _check_model(model)
    src = _check_src(src, model)
    if src.shape[0] != 1:
        raise ValueError(f"src must be one source of shape (1, S), got shape {tuple(src.shape)}")
    _checks.instance("out", out, (list, tuple), "list of token ids")
    if not out:
        raise ValueError("out must hold at least one token id")
    for i, token in enumerate(out):
        _checks.integer(f"out[{i}]", token, 0, model.config.tgt_vocab_size - 1)
    was_training = model.training
    model.eval()
    try:
        memory, mask = model.encode(src)
        ids = torch.tensor([[model.config.bos_id] + list(out)], device=src.device)
        log_p = _banned(model, torch.log_softmax(model.decode(ids[:, :-1], memory, mask).double(), dim=-1))
    finally:
        model.train(was_training)
    return float(log_p[0].gather(1, ids[0, 1:, None]).sum())


@torch.no_grad()
def greedy_decode(model: nn.Module, src: Tensor, max_len: int = 32) -> Tensor:
    """Greedy decoding of a batch ``src`` ``(B, S)``: feed back the most likely token each step.

    Returns ids ``(B, T_out)`` after ``<bos>``: ``<eos>`` included, ``<pad>`` after it, at most
    ``max_len`` per row. Stops when every row has produced ``<eos>``.
    """
    model = _check_model(model)
    src = _check_src(src, model)
    return _greedy(model, src, _checks.positive_int("max_len", max_len))


def _greedy(model: nn.Module, src: Tensor, max_len: int) -> Tensor:
    c = model.config
    was_training = model.training
    model.eval()
    try:
        memory, mask = model.encode(src)
        b = src.shape[0]
        ys = torch.full((b, 1), c.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        for _ in range(min(max_len, c.max_len)):  # the prefix fed back is at most max_len long
            log_p = _banned(model, model.decode(ys, memory, mask)[:, -1].float())
            nxt = log_p.argmax(dim=-1).masked_fill(done, c.pad_id)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt == c.eos_id
            if bool(done.all()):
                break
    finally:
        model.train(was_training)
    return ys[:, 1:]


def strip_ids(ids: Tensor | list[int], eos_id: int, pad_id: int | None = None) -> list[int]:
    """The ids of one output before its first ``<eos>`` (and without ``<pad>``)."""
    if isinstance(ids, Tensor):
        _checks.token_ids("ids", ids, dim=1, layout="(T,)") if ids.numel() else _checks.tensor("ids", ids, 1)
    else:
        _checks.instance("ids", ids, (list, tuple), "list of ints or a 1-D tensor")
        for i, token in enumerate(ids):
            _checks.integer(f"ids[{i}]", token)
    _checks.integer("eos_id", eos_id)
    if pad_id is not None:
        _checks.integer("pad_id", pad_id)
    return _strip(ids, eos_id, pad_id)


def _strip(ids: Tensor | list[int], eos_id: int, pad_id: int | None) -> list[int]:
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    out = []
    for i in ids:
        if i == eos_id:
            break
        if i != pad_id:
            out.append(i)
    return out


@torch.no_grad()
def beam_search(model: nn.Module, src: Tensor, beam_size: int = 4, max_len: int = 32, alpha: float = 1.0,
                n_best: int = 1) -> list[list[tuple[list[int], float]]]:
    """Beam search for every source of the batch ``src`` ``(B, S)``, all beams batched together.

    At each step every live prefix is extended by every token; the ``beam_size`` best
    extensions (by total log-probability) of each source survive. An extension that ends in
    ``<eos>`` leaves the beam as a finished hypothesis, scored by
    :func:`length_normalized_score` with ``alpha``; prefixes still alive after ``max_len``
    tokens are finished as they are. ``beam_size=1`` is greedy decoding.

    Returns, per source, the ``n_best`` hypotheses ``(ids, score)``, best first; ``ids`` are the
    generated tokens without ``<bos>``, with the final ``<eos>`` when there is one.
    """
    model = _check_model(model)
    src = _check_src(src, model)
    beam_size = _checks.positive_int("beam_size", beam_size)
    max_len = _checks.positive_int("max_len", max_len)
    n_best = _checks.positive_int("n_best", n_best)
    alpha = _check_alpha(alpha)
    if n_best > beam_size:
        raise ValueError(f"n_best={n_best} must be <= beam_size={beam_size}")
    return _beam(model, src, beam_size, max_len, alpha, n_best)


@torch.no_grad()  # translate_batch calls it too: no graph, and float() of a score warns nothing
def _beam(model: nn.Module, src: Tensor, beam_size: int, max_len: int, alpha: float,
          n_best: int) -> list[list[tuple[list[int], float]]]:
    c = model.config
    was_training = model.training
    model.eval()
    try:
        memory, mask = model.encode(src)
        b, k = src.shape[0], beam_size
        memory, mask = memory.repeat_interleave(k, dim=0), mask.repeat_interleave(k, dim=0)
        seqs = torch.full((b * k, 1), c.bos_id, dtype=torch.long, device=src.device)
        scores = torch.full((b, k), float("-inf"), dtype=torch.float64, device=src.device)
        scores[:, 0] = 0.0  # all beams start as the same "<bos>": expand only one of them
        finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(b)]
        steps = min(max_len, c.max_len)
        for step in range(steps):
            log_p = _banned(model, torch.log_softmax(model.decode(seqs, memory, mask)[:, -1].double(), dim=-1))
            v = log_p.shape[-1]
            cand = (scores[:, :, None] + log_p.view(b, k, v)).view(b, k * v)  # (B, K*V)
            top, idx = cand.topk(k, dim=-1)  # (B, K)
            beam, token = idx // v, idx % v
            rows = (torch.arange(b, device=src.device)[:, None] * k + beam).view(-1)
            seqs = torch.cat([seqs[rows], token.view(-1, 1)], dim=1)
            scores = top.clone()
            ended = (token == c.eos_id) & torch.isfinite(top)
            last = step == steps - 1
            for i, j in (ended | (torch.isfinite(top) & last)).nonzero().tolist():
                raw = float(top[i, j])
                ids = seqs[i * k + j, 1:].tolist()
                finished[i].append((_normalized(raw, len(ids), alpha), raw, ids))
            scores[ended] = float("-inf")  # a finished hypothesis leaves the beam
            if not bool(torch.isfinite(scores).any()):
                break
    finally:
        model.train(was_training)
    results = []
    for hyps in finished:
        hyps.sort(key=lambda h: h[0], reverse=True)
        results.append([(ids, score) for score, _, ids in hyps[:n_best]])
    return results


def translate_batch(model: nn.Module, src: Tensor, beam_size: int = 1, max_len: int = 32, alpha: float = 1.0,
                    batch_size: int = 500) -> list[list[int]]:
    """Output ids (without ``<bos>``/``<eos>``) for every row of ``src`` ``(N, S)``, in chunks of ``batch_size``.

    ``beam_size=1`` decodes greedily, otherwise with :func:`beam_search`.
    """
    model = _check_model(model)
    src = _check_src(src, model)
    beam_size = _checks.positive_int("beam_size", beam_size)
    max_len = _checks.positive_int("max_len", max_len)
    alpha = _check_alpha(alpha)
    batch_size = _checks.positive_int("batch_size", batch_size)
    c = model.config
    out: list[list[int]] = []
    for start in range(0, src.shape[0], batch_size):
        chunk = src[start:start + batch_size]
        chunk = chunk[:, : max(1, int((chunk != c.pad_id).sum(1).max()))]
        if beam_size == 1:
            out += [_strip(row, c.eos_id, c.pad_id) for row in _greedy(model, chunk, max_len)]
        else:
            out += [_strip(h[0][0], c.eos_id, None) for h in _beam(model, chunk, beam_size, max_len, alpha, 1)]
    return out


def exact_match_by(predictions: list, references: list, keys: list) -> tuple[float, dict]:
    """Exact-match accuracy overall and by key: ``(accuracy, {key: (correct, total)})`` (keys sorted)."""
    for name, value in (("predictions", predictions), ("references", references), ("keys", keys)):
        _checks.instance(name, value, (list, tuple), "list")
    if not (len(predictions) == len(references) == len(keys)) or not predictions:
        raise ValueError(f"predictions, references and keys must be non-empty and of one length, got "
                         f"{len(predictions)}, {len(references)}, {len(keys)}")
    by: dict = {}
    for p, r, k in zip(predictions, references, keys):
        entry = by.setdefault(k, [0, 0])
        entry[0] += list(p) == list(r)
        entry[1] += 1
    correct = sum(c for c, _ in by.values())
    return correct / len(predictions), {k: tuple(by[k]) for k in sorted(by)}
