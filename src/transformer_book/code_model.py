"""Chapter 7's code model: a small GPT trained on the standard library, and how its code is judged.

* :data:`CHAPTER7_RECIPE` and :func:`chapter7_model`: the trained GPT and its BPE tokenizer,
  from the model cache (:mod:`transformer_book.model_cache`) or trained on the spot (about a
  minute on two CPU cores). Chapters 8 to 10 call :func:`chapter7_model` too.
* :func:`train_code_gpt`: the training itself (the cache's build function).
* The snippet protocol that measures whether generated code is Python: :func:`function_headers`
  (prompts), :func:`cut_snippet` (where a generated function ends) and :func:`parse_rate`.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from transformer_book import _checks
from transformer_book.data.code import stdlib_corpus
from transformer_book.generate import generate
from transformer_book.model_cache import cached_model
from transformer_book.models.gpt import GPT, GPTConfig
from transformer_book.tokenize import BPETokenizer
from transformer_book.train import History, lr_lambda, train_loop

__all__ = [
    "CHAPTER7_RECIPE",
    "CodeData",
    "prepare_data",
    "random_batch",
    "evaluate_loss",
    "train_code_gpt",
    "chapter7_model",
    "function_headers",
    "cut_snippet",
    "Snippet",
    "parse_rate",
]

#: Everything that decides chapter 7's weights. Bump ``version`` when the training code changes:
#: the cache then retrains instead of handing out a model the new code would not have made.
CHAPTER7_RECIPE = {
    "version": 1,
    "data": {"train_bytes": 2_000_000, "heldout_bytes": 150_000, "corpus_seed": 0},
    "tokenizer": {"kind": "BPETokenizer", "pattern": "gpt2", "vocab_size": 768, "train_bytes": 400_000},
    "model": {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0, "bias": True},
    "train": {"steps": 600, "batch_size": 32, "lr": 6e-3, "warmup": 50, "min_lr_ratio": 0.1,
              "weight_decay": 0.1, "clip": 1.0, "eval_every": 100, "eval_windows": 128},
}


@dataclass
class CodeData:
    """The token streams: ``train`` and ``heldout`` are 1-D int64 tensors of BPE ids."""

    tokenizer: BPETokenizer
    train: Tensor
    heldout: Tensor


_DATA_MEMO: dict[str, CodeData] = {}


def prepare_data(recipe: Mapping = CHAPTER7_RECIPE) -> CodeData:
    """Train the recipe's tokenizer on the start of the training corpus and encode both splits.

    Deterministic, and remembered for the session (a notebook that shows the data and then
    trains does the work once); treat the returned tensors as read-only.
    """
    _checks.instance("recipe", recipe, Mapping, "recipe dict")
    try:
        d, t = recipe["data"], recipe["tokenizer"]
        for key in ("train_bytes", "heldout_bytes", "corpus_seed"):
            d[key]
        for key in ("kind", "pattern", "vocab_size", "train_bytes"):
            t[key]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"recipe must hold data.train_bytes/heldout_bytes/corpus_seed and tokenizer.kind/pattern/"
                         f"vocab_size/train_bytes, like CHAPTER7_RECIPE; missing {exc}") from None
    memo_key = json.dumps([d, t], sort_keys=True)
    if memo_key not in _DATA_MEMO:
        _DATA_MEMO[memo_key] = _prepare_data(d, t)
    return _DATA_MEMO[memo_key]


def _prepare_data(d: Mapping, t: Mapping) -> CodeData:
    if t["kind"] != "BPETokenizer" or t["pattern"] != "gpt2":
        raise ValueError(f"unsupported tokenizer settings {t!r}: expected kind 'BPETokenizer', pattern 'gpt2'")
    text = stdlib_corpus(max_bytes=d["train_bytes"], seed=d["corpus_seed"], split="train")
    heldout = stdlib_corpus(max_bytes=d["heldout_bytes"], seed=d["corpus_seed"], split="heldout")
    tokenizer = BPETokenizer().train(text[: t["train_bytes"]], t["vocab_size"])
    as_tensor = lambda s: torch.tensor(tokenizer.encode(s), dtype=torch.long)  # noqa: E731
    return CodeData(tokenizer, as_tensor(text), as_tensor(heldout))


def random_batch(ids: Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``ids``: inputs ``(B, T)`` and targets ``(B, T)`` one token later."""
    _checks.token_ids("ids", ids, dim=1, layout="(N,)")
    batch_size = _checks.positive_int("batch_size", batch_size)
    block_size = _checks.positive_int("block_size", block_size)
    _checks.generator("generator", generator)
    if ids.numel() <= block_size:
        raise ValueError(f"ids must be 1-D and longer than block_size={block_size}, got shape {tuple(ids.shape)}")
    starts = torch.randint(0, ids.numel() - block_size, (batch_size,), generator=generator)
    window = starts[:, None] + torch.arange(block_size + 1)  # (B, T + 1)
    chunk = ids[window]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate_loss(model: nn.Module, ids: Tensor, block_size: int, max_windows: int | None = None,
                  batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per token) over consecutive windows of ``ids``."""
    _checks.instance("model", model, nn.Module, "nn.Module (a GPT)")
    _checks.token_ids("ids", ids, dim=1, layout="(N,)")
    block_size = _checks.positive_int("block_size", block_size)
    if max_windows is not None:
        max_windows = _checks.positive_int("max_windows", max_windows)
    batch_size = _checks.positive_int("batch_size", batch_size)
    n = (ids.numel() - 1) // block_size
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"ids ({ids.numel()} tokens) too short for one window of block_size={block_size}")
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, batch_size):
        total += float(model(x[i : i + batch_size], y[i : i + batch_size]).loss) * len(x[i : i + batch_size])
    model.train(was_training)
    return total / n


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Weight decay pulls matrices towards zero; norms' gains, biases and position vectors are
    # left alone (decaying a LayerNorm gain towards 0 would switch the layer off).
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("wpe") else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train_code_gpt(recipe: Mapping = CHAPTER7_RECIPE, seed: int = 0, progress: bool = True
                   ) -> tuple[GPT, dict]:
    """Tokenize, build and train the recipe's GPT; returns ``(model, info)`` (the cache's build function).

    ``info``: the tokenizer (``to_dict()``), the training :class:`~transformer_book.train.History`
    (``to_dict()``), the held-out loss, and the numbers of tokens.
    """
    torch.manual_seed(seed)
    seed, progress = _checks.integer("seed", seed), _checks.boolean("progress", progress)
    data = prepare_data(recipe)
    m, t = recipe["model"], recipe["train"]
    config = GPTConfig(vocab_size=data.tokenizer.vocab_size, **m)
    model = GPT(config)
    optimizer = torch.optim.AdamW(_decay_groups(model, t["weight_decay"]), lr=t["lr"], betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda("cosine", t["warmup"], t["steps"], t["min_lr_ratio"]))
    batches = torch.Generator().manual_seed(seed)

    def loss_fn(model: GPT, batch: tuple[Tensor, Tensor]) -> Tensor:
        return model(*batch).loss

    history = train_loop(
        model, lambda step: random_batch(data.train, t["batch_size"], config.block_size, batches), loss_fn,
        optimizer, steps=t["steps"], scheduler=schedule, clip=t["clip"],
        evaluate=lambda mdl: {"heldout": evaluate_loss(mdl, data.heldout, config.block_size, t["eval_windows"])},
        eval_every=t["eval_every"], progress=progress, desc="training the code GPT")
    info = {
        "tokenizer": data.tokenizer.to_dict(),
        "history": history.to_dict(),
        "heldout_loss": evaluate_loss(model, data.heldout, config.block_size),
        "train_tokens": int(data.train.numel()),
        "heldout_tokens": int(data.heldout.numel()),
        "tokens_seen": t["steps"] * t["batch_size"] * config.block_size,
    }
    return model.eval(), info


def chapter7_model(recipe: Mapping = CHAPTER7_RECIPE, seed: int = 0, *, root=None, rebuild: bool = False,
                   verbose: bool = True) -> tuple[GPT, BPETokenizer, dict]:
    """Chapter 7's trained code GPT, its tokenizer and its ``info`` (from the cache, or trained now).

    ``info["history"]`` is a :class:`~transformer_book.train.History`; ``info["heldout_loss"]``
    the mean cross-entropy on the held-out files (nats per token).
    """
    model, info = cached_model(
        recipe, seed, lambda r, s: train_code_gpt(r, s, progress=verbose),
        lambda c: GPT(GPTConfig.from_dict(c)), name="ch07-code-gpt", root=root, rebuild=rebuild, verbose=verbose)
    info = copy.copy(info)
    tokenizer = BPETokenizer.from_dict(info.pop("tokenizer"), source="model cache")
    info["history"] = History.from_dict(info["history"])
    return model, tokenizer, info


# --------------------------------------------------------------------------- is it Python?

_HEADER = re.compile(r"^def [A-Za-z_]\w*\(.*\)(?: -> [^:]+)?:[ \t]*$", re.MULTILINE)


def function_headers(n: int, seed: int = 0, max_bytes: int | None = None, max_chars: int = 70) -> list[str]:
    """``n`` one-line top-level ``def`` headers from the held-out files (never seen in training).

    Each ends with its colon, *without* the newline: in training, the colon of a ``def`` is
    followed by one token holding the newline and the next line's indentation (GPT-2's
    pre-tokenizer keeps a run of whitespace together), and a prompt ending in a bare ``"\\n"``
    would cut that token in two, a sequence the model has never seen. Headers are at most
    ``max_chars`` long, chosen at random (``seed``) among the distinct ones found.
    """
    import random

    n, seed = _checks.positive_int("n", n), _checks.integer("seed", seed)
    max_chars = _checks.positive_int("max_chars", max_chars)
    text = stdlib_corpus(max_bytes=max_bytes, seed=0, split="heldout")
    found = sorted({m.group(0).rstrip() for m in _HEADER.finditer(text) if len(m.group(0)) <= max_chars})
    if len(found) < n:
        raise ValueError(f"only {len(found)} distinct headers in the held-out code, asked for n={n}")
    return random.Random(seed).sample(found, n)


def cut_snippet(prompt: str, continuation: str) -> str:
    """The generated function: the header line and the complete, indented lines that follow it.

    Generation stops after a fixed number of tokens, usually in the middle of a line: that last,
    unfinished line is dropped. A non-blank line that starts at column 0 ends the function (the
    model has moved on to the next top-level statement): it and everything after it are dropped.
    If not even the header's line was finished, the snippet is the prompt alone (which does not
    parse: a ``def`` needs a body).
    """
    _checks.instance("prompt", prompt, str)
    _checks.instance("continuation", continuation, str)
    text = prompt + continuation
    if "\n" not in text:
        return prompt
    lines = text[: text.rfind("\n") + 1].splitlines(keepends=True)
    kept = lines[:1]
    for line in lines[1:]:
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    return "".join(kept)


def _parses(source: str) -> bool:
    with warnings.catch_warnings():  # e.g. "invalid escape sequence": a warning, not a syntax error
        warnings.simplefilter("ignore")
        try:
            ast.parse(source)
        except (SyntaxError, ValueError):  # ValueError: a null byte in the source
            return False
    return True


def _has_code(source: str) -> bool:
    """Whether a snippet that parses has a function body beyond its docstring."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    func = next((node for node in tree.body if isinstance(node, ast.FunctionDef)), None)
    if func is None:
        return False
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return bool(body)


@dataclass
class Snippet:
    """One generated function: ``text`` (prompt + kept body) is what ``ast.parse`` judged."""

    prompt: str
    text: str  # the cut snippet (prompt + body)
    raw: str  # everything generated after the prompt
    parses: bool
    has_code: bool = False  # parses, and the body has a statement besides a docstring


def parse_rate(model: nn.Module, tokenizer: BPETokenizer, prompts: Sequence[str], max_new_tokens: int = 48,
               temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None, seed: int = 0
               ) -> tuple[float, list[Snippet]]:
    """Generate a function body for each prompt, cut it (:func:`cut_snippet`) and ``ast.parse`` it.

    Returns the fraction that parses and the snippets (in the order of ``prompts``). Prompts with
    the same number of tokens are generated together as one batch (no padding needed). The same
    prompts, length, sampling settings and seed give every model the same test.
    """
    _checks.instance("model", model, nn.Module, "nn.Module (a GPT)")
    _checks.instance("tokenizer", tokenizer, BPETokenizer)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of str, got {_checks.describe(prompts)}")
    if not prompts:
        raise ValueError("prompts must not be empty")
    for i, p in enumerate(prompts):
        _checks.instance(f"prompts[{i}]", p, str)
    max_new_tokens, seed = _checks.positive_int("max_new_tokens", max_new_tokens), _checks.integer("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    encoded = [tokenizer.encode(p) for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    snippets: list[Snippet | None] = [None] * len(prompts)
    for length in sorted(by_length):
        group = by_length[length]
        idx = torch.tensor([encoded[i] for i in group])  # (B, length)
        out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       generator=generator)
        for row, i in enumerate(group):
            raw = tokenizer.decode(out[row, length:].tolist())
            text = cut_snippet(prompts[i], raw)
            ok = _parses(text)
            snippets[i] = Snippet(prompts[i], text, raw, ok, ok and _has_code(text))
    return sum(s.parses for s in snippets) / len(snippets), snippets
