"""Call the package's public functions with bad and edge input and count what comes back.

Usage::

    python tools/bad_input_sweep.py            # the package importable from sys.path
    PYTHONPATH=/tmp/before/src python tools/bad_input_sweep.py --list-unclear

Every case runs in a forked child (so a hang is cut off after ``--timeout`` seconds and a
memory blow-up cannot take the sweep down) and is put in one of these buckets:

* ``clear``: a ``TypeError``/``ValueError`` (or a subclass) whose message names the argument;
* ``defined``: an edge input that gave a result, and the result passed the case's check
  (finite, right value) -- a documented result;
* ``unclear``: any other exception type, or a ``TypeError``/``ValueError`` whose message does
  not name the argument;
* ``silent``: a bad input that gave a result instead of an error, or an edge input whose
  result is detectably wrong;
* ``nan``: a result holding NaN (from finite input, or from bad input that should have been
  refused);
* ``hang``: still running after the time limit, or using more than ``--max-mb`` of memory;
* ``n/a``: the function does not exist in this version of the package (not counted as a call).

The table :data:`CASES` is shared with ``tests/test_bad_input.py``, which asserts that every
case ends as ``clear`` or ``defined``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import resource
import select
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# --------------------------------------------------------------------------- the table


@dataclass
class SweepCase:
    """One call: ``call()`` runs it; ``arg`` is the argument the message must name.

    ``expect``: ``"error"`` (must raise a clear TypeError/ValueError), ``"ok"`` (must return a
    result that passes ``check``), ``"either"`` (a clear error or a checked result).
    ``check(result) -> bool`` (default: no NaN anywhere in the result).
    """

    label: str
    call: Callable[[], Any]
    arg: str = ""
    expect: str = "error"
    check: Callable[[Any], bool] | None = None
    errors: tuple = (TypeError, ValueError)


CASES: list[SweepCase] = []


def case(label: str, call: Callable[[], Any], arg: str = "", expect: str = "error",
         check: Callable[[Any], bool] | None = None) -> None:
    CASES.append(SweepCase(label, call, arg, expect, check))


def sweep(label: str, fn: Callable[..., Any], base: Callable[[], dict], bad: dict[str, list],
          expect_base: str = "ok", check: Callable[[Any], bool] | None = None) -> None:
    """The valid call ``fn(**base())`` and, for each ``arg``, one call per bad value of it."""
    case(f"{label}(valid)", lambda: fn(**base()), "", expect_base, check)
    for arg, values in bad.items():
        for v in values:
            def call(arg=arg, v=v):
                kw = base()
                kw[arg] = v() if isinstance(v, Lazy) else v
                return fn(**kw)
            case(f"{label}({arg}={_short(v)})", call, arg, "error")


class Lazy:
    """A bad value built when the case runs (tensors, models), shown by its label."""

    def __init__(self, label: str, make: Callable[[], Any]) -> None:
        self.label, self.make = label, make

    def __call__(self) -> Any:
        return self.make()

    def __repr__(self) -> str:
        return self.label


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 30 else text[:27] + "..."


def t(*shape: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def ids(*shape: int, high: int = 10, dtype=torch.int64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, high, shape, generator=g).to(dtype)


def L(label: str, make: Callable[[], Any]) -> Lazy:
    return Lazy(label, make)


# Bad values reused across the table.
BAD_POS_INT = [4.0, True, "4", None, 0, -1]
BAD_NONNEG_INT = [2.5, False, "2", -1]
BAD_FLOAT = [float("nan"), float("inf"), "0.1", True, None]
BAD_PROB = [float("nan"), -0.1, 1.5, "0.5", True]
BAD_DROPOUT = [float("nan"), -0.1, 1.0, "0.1", True]
BAD_BOOL = [1, 0, "yes", None]
NOT_TENSOR = L("list", lambda: [[1.0, 2.0]])
INT_TENSOR = L("int tensor", lambda: torch.ones(2, 3, 8, dtype=torch.int64))
FLOAT64 = L("float64 tensor", lambda: t(2, 3, 8, dtype=torch.float64))


def no_nan(x: Any) -> bool:
    """True unless a tensor or float inside ``x`` is NaN."""
    if isinstance(x, torch.Tensor):
        return not (x.is_floating_point() and bool(torch.isnan(x).any()))
    if isinstance(x, float):
        return not math.isnan(x)
    if isinstance(x, (list, tuple)):
        return all(no_nan(e) for e in x)
    if isinstance(x, dict):
        return all(no_nan(e) for e in x.values())
    for name in ("logits", "loss"):
        if hasattr(x, name) and not no_nan(getattr(x, name)):
            return False
    return True


def _build_table() -> None:  # noqa: C901 - one long table, read top to bottom
    from importlib import import_module

    def mod(name: str):
        return import_module(f"transformer_book.{name}")

    def fn(module: str, attr: str) -> Callable[..., Any]:
        def call(*a, **kw):
            return getattr(mod(module), attr)(*a, **kw)
        return call

    # ------------------------------------------------------------------ _checks itself? no: public modules
    # ---- masks
    sweep("masks.causal_mask", fn("masks", "causal_mask"), lambda: dict(n=4), {"n": BAD_POS_INT})
    sweep("masks.padding_mask", fn("masks", "padding_mask"), lambda: dict(tokens=ids(2, 5), pad_id=0),
          {"tokens": [NOT_TENSOR, L("float tensor", lambda: t(2, 5)), L("1-d", lambda: ids(5))],
           "pad_id": [1.0, True, "0", None]})
    sweep("masks.prefix_lm_mask", fn("masks", "prefix_lm_mask"), lambda: dict(n=5, prefix_len=2),
          {"n": BAD_POS_INT, "prefix_len": [2.0, True, -1, 6, "2"]})
    case("masks.combine_masks(float)", lambda: mod("masks").combine_masks(torch.ones(2, 2), torch.ones(2, 2)),
         "mask")
    case("masks.combine_masks(shapes)", lambda: mod("masks").combine_masks(
        torch.ones(2, 3, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool)), "mask")
    case("masks.to_additive_mask(float)", lambda: mod("masks").to_additive_mask(torch.ones(2, 2)), "mask")
    case("masks.to_additive_mask(dtype=int)", lambda: mod("masks").to_additive_mask(
        torch.ones(2, 2, dtype=torch.bool), dtype=torch.int64), "dtype")
    case("masks.to_torch_mha_mask(list)", lambda: mod("masks").to_torch_mha_mask([[True]]), "mask")
    case("masks.to_torch_key_padding_mask(float)", lambda: mod("masks").to_torch_key_padding_mask(
        torch.ones(2, 1, 1, 3)), "mask")

    # ---- cpu_kernels: chapter 8's C loop (its own door checks, then C trusts them)
    sweep("cpu_kernels.gemv", fn("cpu_kernels", "gemv"), lambda: dict(x=t(1, 8), w=t(4, 8, seed=1), bias=t(4, seed=2)),
          {"x": [NOT_TENSOR, INT_TENSOR, L("wrong in", lambda: t(1, 7)), L("17 rows", lambda: t(17, 8)),
                 L("float64", lambda: t(1, 8, dtype=torch.float64))],
           "w": [NOT_TENSOR, L("1-d", lambda: t(8))],
           "bias": [L("wrong out", lambda: t(5)), NOT_TENSOR, L("2-d", lambda: t(1, 4))]})
    case("cpu_kernels.enabled(on=1)", lambda: mod("cpu_kernels").enabled(1).__enter__(), "on")
    case("cpu_kernels.whole_step(on=1)", lambda: mod("cpu_kernels").whole_step(1).__enter__(), "on")
    sweep("cpu_kernels.in_reading_order", fn("cpu_kernels", "in_reading_order"), lambda: dict(tensors=[t(2, 3), t(4)]),
          {"tensors": [NOT_TENSOR, L("empty", lambda: []), L("a float64", lambda: [t(3), t(2, dtype=torch.float64)]),
                       L("an int tensor", lambda: [torch.ones(3, dtype=torch.int64)]), L("a tensor", lambda: t(3))]})

    def token_step(**changes):  # one block of width 8 (2 heads of 4), F = 16, V = 5, a 4-slot cache
        k = mod("cpu_kernels")
        block = k.BlockWeights(t(8), t(8, seed=1), t(24, 8), None, t(8, 8, seed=2), None, t(8, seed=3), None,
                               t(16, 8, seed=4), t(16, seed=5), t(8, 16, seed=6), None)
        args = dict(blocks=[block], ln_f=(t(8, seed=7), None), head=t(5, 8, seed=8),
                    keys=[torch.zeros(1, 2, 4, 4)], values=[torch.zeros(1, 2, 4, 4)], n_head=2, eps=1e-5)
        return k.TokenStep(**{**args, **changes})
    sweep("cpu_kernels.TokenStep", token_step, lambda: {},
          {"n_head": [L("0", lambda: 0), L("3 (does not divide 8)", lambda: 3)],
           "head": [L("float64", lambda: t(5, 8, dtype=torch.float64)), L("wrong width", lambda: t(5, 7))],
           "keys": [L("batch 2", lambda: [torch.zeros(2, 2, 4, 4)]), L("two layers", lambda: [torch.zeros(1, 2, 4, 4)] * 2)],
           "eps": [L("0", lambda: 0.0)]})
    case("cpu_kernels.TokenStep()(position=4)", lambda: token_step()(t(8), 4), "position")
    case("cpu_kernels.TokenStep()(x=wrong width)", lambda: token_step()(t(9), 0), "x")
    case("cpu_kernels.TokenStep()(x=float64)", lambda: token_step()(t(8, dtype=torch.float64), 0), "x")
    case("cpu_kernels.TokenStep()(valid)", lambda: token_step()(t(8), 0), expect="ok")

    # ---- attention
    def sdpa_base():
        return dict(q=t(2, 2, 4, 8), k=t(2, 2, 5, 8, seed=1), v=t(2, 2, 5, 8, seed=2))
    sweep("attention.scaled_dot_product_attention", fn("attention", "scaled_dot_product_attention"), sdpa_base,
          {"q": [NOT_TENSOR, INT_TENSOR, L("2-d", lambda: t(4, 8))],
           "k": [L("wrong D", lambda: t(2, 2, 5, 7)), L("float64", lambda: t(2, 2, 5, 8, dtype=torch.float64))],
           "v": [L("wrong T", lambda: t(2, 2, 6, 8)), NOT_TENSOR],
           "mask": [L("float mask", lambda: torch.ones(4, 5)), L("wrong shape", lambda: torch.ones(3, 3, dtype=torch.bool))],
           "scale": [float("nan"), -1.0, "1", True],
           "dropout_p": BAD_DROPOUT})
    case("attention.sdpa(NaN scores, masked)", lambda: mod("attention").scaled_dot_product_attention(
        torch.full((1, 1, 2, 4), float("nan")), t(1, 1, 3, 4), t(1, 1, 3, 4),
        torch.ones(2, 3, dtype=torch.bool).tril()), "q", "either",
        check=lambda r: bool(torch.isnan(r[0]).all()))  # NaN in, NaN out: never a clean zero row
    case("attention.sdpa(NaN bias, masked)", lambda: mod("attention").scaled_dot_product_attention(
        t(1, 1, 2, 4), t(1, 1, 3, 4), t(1, 1, 3, 4), torch.tensor([[True, False, False], [True, True, False]]),
        bias=torch.full((2, 3), float("nan"))), "bias", "either",
        check=lambda r: bool(torch.isnan(r[0]).all()))
    case("attention.sdpa(fully masked row)", lambda: mod("attention").scaled_dot_product_attention(
        t(1, 1, 2, 4), t(1, 1, 3, 4), t(1, 1, 3, 4), torch.tensor([[False, False, False], [True, True, False]])),
        "mask", "either")
    for name, args in (("repeat_kv", dict(x=t(2, 2, 3, 4), n_rep=2)), ("split_heads", dict(x=t(2, 3, 8), n_heads=2))):
        sweep(f"attention.{name}", fn("attention", name), lambda args=args: dict(args),
              {"x": [NOT_TENSOR, L("1-d", lambda: t(8))],
               list(args)[1]: BAD_POS_INT})
    case("attention.split_heads(indivisible)", lambda: mod("attention").split_heads(t(2, 3, 8), 3), "n_heads")
    sweep("attention.merge_heads", fn("attention", "merge_heads"), lambda: dict(x=t(2, 2, 3, 4)),
          {"x": [NOT_TENSOR, L("3-d", lambda: t(2, 3, 4))]})
    sweep("attention.MultiHeadAttention", fn("attention", "MultiHeadAttention"), lambda: dict(d_model=16, n_heads=4),
          {"d_model": BAD_POS_INT, "n_heads": [4.0, True, 0, -2, 5], "n_kv_heads": [2.0, 3, 0, True],
           "bias": BAD_BOOL[:3], "dropout": BAD_DROPOUT, "backend": ["flash", 1]},
          check=lambda m: isinstance(m, torch.nn.Module))

    def mha():
        torch.manual_seed(0)
        return mod("attention").MultiHeadAttention(16, 4).eval()
    case("MultiHeadAttention.forward(valid)", lambda: mha()(t(2, 3, 16)), "", "ok")
    for label, x, arg in (("list", [[0.0] * 16], "x"), ("2-d", t(3, 16), "x"), ("wrong C", t(2, 3, 15), "x"),
                          ("int", torch.ones(2, 3, 16, dtype=torch.int64), "x"),
                          ("float64", t(2, 3, 16, dtype=torch.float64), "x")):
        case(f"MultiHeadAttention.forward(x={label})", lambda x=x: mha()(x), arg)
    case("MultiHeadAttention.forward(mask float)", lambda: mha()(t(2, 3, 16), mask=torch.ones(3, 3)), "mask")
    for name in ("attention_param_count",):
        sweep(f"attention.{name}", fn("attention", name), lambda: dict(d_model=16, n_heads=4),
              {"d_model": BAD_POS_INT, "n_heads": [4.0, 0, 5], "n_kv_heads": [3, 2.0], "bias": [1]},
              check=lambda r: isinstance(r, int) and r > 0)
    for name in ("attention_flops", "attention_flops_breakdown"):
        sweep(f"attention.{name}", fn("attention", name), lambda: dict(d_model=16, n_heads=4, t_q=8),
              {"d_model": [16.0, 0], "n_heads": [5, True], "t_q": BAD_POS_INT, "t_k": [0, 2.0], "batch": [0, 1.5]})

    # ---- positional
    sweep("positional.sinusoidal_encoding", fn("positional", "sinusoidal_encoding"),
          lambda: dict(n_positions=8, d_model=16),
          {"n_positions": BAD_POS_INT, "d_model": [15, 16.0, 0, True], "base": [0.0, -1.0, float("nan"), "1e4", 1.0],
           "dtype": [torch.int64, torch.bool, "float32", None]})
    sweep("positional.sinusoidal_shift_matrix", fn("positional", "sinusoidal_shift_matrix"),
          lambda: dict(k=3, d_model=8), {"k": [float("nan"), "3", True, None], "d_model": [7, 0, 8.0],
                                          "base": [float("inf"), 0.0]})
    sweep("positional.LearnedPositionalEmbedding", fn("positional", "LearnedPositionalEmbedding"),
          lambda: dict(max_positions=8, d_model=4),
          {"max_positions": BAD_POS_INT, "d_model": [0, 4.0], "init_std": [float("nan"), -0.1, "0.02", True, float("inf")]},
          check=lambda m: isinstance(m, torch.nn.Module))

    def lpe():
        torch.manual_seed(0)
        return mod("positional").LearnedPositionalEmbedding(8, 4)
    case("LearnedPositionalEmbedding.forward(valid)", lambda: lpe()(torch.arange(5)), "", "ok")
    for label, p in (("float", torch.arange(5.0)), ("out of range", torch.arange(9)), ("negative", torch.tensor([-1])),
                     ("list", [0, 1])):
        case(f"LearnedPositionalEmbedding.forward(positions={label})", lambda p=p: lpe()(p), "positions")
    sweep("positional.rope_angles", fn("positional", "rope_angles"), lambda: dict(positions=torch.arange(4), d_head=8),
          {"positions": [NOT_TENSOR, L("bool", lambda: torch.ones(4, dtype=torch.bool))], "d_head": [7, 0, 8.0],
           "base": [0.0, float("nan")]})
    sweep("positional.apply_rope", fn("positional", "apply_rope"), lambda: dict(x=t(2, 2, 4, 8), positions=torch.arange(4)),
          {"x": [NOT_TENSOR, L("odd D", lambda: t(2, 2, 4, 7)), INT_TENSOR],
           "positions": [L("wrong T", lambda: torch.arange(5)), NOT_TENSOR, L("bool", lambda: torch.ones(4, dtype=torch.bool))],
           "base": [0.0, float("nan"), "1e4"], "pairing": ["halves", 1, None]})
    sweep("positional.alibi_slopes", fn("positional", "alibi_slopes"), lambda: dict(n_heads=6), {"n_heads": BAD_POS_INT})
    sweep("positional.alibi_bias", fn("positional", "alibi_bias"), lambda: dict(n_heads=4, n_queries=3, n_keys=5),
          {"n_heads": [0, 4.0], "n_queries": BAD_POS_INT, "n_keys": [0, True, 2.0],
           "dtype": [torch.int64, torch.bool, "float32"]})

    # ---- layers
    sweep("layers.LayerNorm", fn("layers", "LayerNorm"), lambda: dict(d_model=8),
          {"d_model": BAD_POS_INT, "eps": [0.0, -1e-5, float("nan"), "1e-5", True], "bias": [1, None]},
          check=lambda m: isinstance(m, torch.nn.Module))
    sweep("layers.RMSNorm", fn("layers", "RMSNorm"), lambda: dict(d_model=8),
          {"d_model": BAD_POS_INT, "eps": [0.0, float("nan"), "1e-6"]}, check=lambda m: isinstance(m, torch.nn.Module))
    for cls in ("LayerNorm", "RMSNorm"):
        case(f"layers.{cls}.forward(valid)", lambda cls=cls: getattr(mod("layers"), cls)(8)(t(2, 3, 8)), "", "ok")
        case(f"layers.{cls}.forward(constant row)", lambda cls=cls: getattr(mod("layers"), cls)(8)(torch.ones(2, 8)),
             "", "ok")
        case(f"layers.{cls}.forward(wrong C)", lambda cls=cls: getattr(mod("layers"), cls)(8)(t(2, 3, 7)), "x")
        case(f"layers.{cls}.forward(int)", lambda cls=cls: getattr(mod("layers"), cls)(8)(
            torch.ones(2, 8, dtype=torch.int64)), "x")
        case(f"layers.{cls}.forward(list)", lambda cls=cls: getattr(mod("layers"), cls)(8)([[1.0] * 8]), "x")
    sweep("layers.make_norm", fn("layers", "make_norm"), lambda: dict(kind="layernorm", d_model=8),
          {"kind": ["batchnorm", 1, None], "d_model": [0, 8.0], "eps": [-1.0, "x"], "bias": [1]},
          check=lambda m: isinstance(m, torch.nn.Module))
    sweep("layers.FeedForward", fn("layers", "FeedForward"), lambda: dict(d_model=8, d_ff=16),
          {"d_model": BAD_POS_INT, "d_ff": [0, 16.0], "activation": ["tanh", 1, None], "dropout": BAD_DROPOUT,
           "bias": [1]}, check=lambda m: isinstance(m, torch.nn.Module))
    case("layers.FeedForward.forward(wrong C)", lambda: mod("layers").FeedForward(8, 16)(t(2, 3, 7)), "x")
    for cls in ("EncoderLayer", "DecoderLayer"):
        sweep(f"layers.{cls}", fn("layers", cls), lambda: dict(d_model=8, n_heads=2, d_ff=16),
              {"d_model": [0, 8.0], "n_heads": [3, 0, 2.0], "d_ff": [0, True], "dropout": [1.0, float("nan")],
               "activation": ["tanh"], "norm_first": [1, "no"], "norm": ["batch"], "bias": [0],
               "norm_eps": [0.0, "x", float("nan")]}, check=lambda m: isinstance(m, torch.nn.Module))
    case("layers.EncoderLayer.forward(valid)", lambda: mod("layers").EncoderLayer(8, 2, 16).eval()(t(2, 3, 8)), "",
         "ok")
    case("layers.EncoderLayer.forward(wrong C)", lambda: mod("layers").EncoderLayer(8, 2, 16)(t(2, 3, 6)), "x")
    case("layers.DecoderLayer.forward(memory wrong C)", lambda: mod("layers").DecoderLayer(8, 2, 16)(
        t(2, 3, 8), t(2, 4, 6)), "memory")
    case("layers.DecoderLayer.forward(memory float64)", lambda: mod("layers").DecoderLayer(8, 2, 16)(
        t(2, 3, 8), t(2, 4, 8, dtype=torch.float64)), "memory")

    # ---- models.gpt
    def gcfg(**kw):
        base = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
        base.update(kw)
        return mod("models.gpt").GPTConfig(**base)
    for arg, vals in (("vocab_size", BAD_POS_INT), ("block_size", [0, 8.0]), ("n_layer", [0, True]),
                      ("n_head", [3, 0, 2.0]), ("n_embd", [0, "8"]), ("dropout", BAD_DROPOUT), ("bias", [1, "yes"]),
                      ("layer_norm_epsilon", [0.0, -1.0, float("nan"), "x"])):
        for v in vals:
            case(f"models.GPTConfig({arg}={_short(v)})", lambda arg=arg, v=v: gcfg(**{arg: v}), arg)

    def gpt(**kw):
        torch.manual_seed(0)
        return mod("models.gpt").GPT(gcfg(**kw)).eval()
    case("models.GPT(config=dict)", lambda: mod("models.gpt").GPT(dict(vocab_size=11)), "config")
    case("GPT.forward(valid)", lambda: gpt()(ids(2, 5, high=11)), "", "ok")
    case("GPT.forward(targets valid)", lambda: gpt()(ids(2, 5, high=11), targets=ids(2, 5, high=11)), "", "ok")
    for label, idx in (("list", [[1, 2]]), ("float", torch.ones(2, 3)), ("uint8", torch.ones(2, 3, dtype=torch.uint8)),
                       ("1-d", ids(5, high=11)), ("empty", torch.zeros(2, 0, dtype=torch.long)),
                       ("too long", ids(1, 9, high=11)), ("out of vocab", torch.tensor([[11]])),
                       ("negative", torch.tensor([[-1]])), ("bool", torch.ones(1, 2, dtype=torch.bool))):
        case(f"GPT.forward(idx={label})", lambda idx=idx: gpt()(idx), "idx")
    for label, tg in (("float", torch.full((2, 5), 1.7)), ("wrong shape", ids(2, 4, high=11)),
                      ("out of range", torch.full((2, 5), 11)), ("uint8", torch.ones(2, 5, dtype=torch.uint8)),
                      ("list", [[1] * 5] * 2)):
        case(f"GPT.forward(targets={label})", lambda tg=tg: gpt()(ids(2, 5, high=11), targets=tg), "targets")
    case("GPT.forward(targets all ignored)", lambda: gpt()(ids(2, 5, high=11), targets=torch.full((2, 5), -1)),
         "targets", "either",
         check=lambda out: float(getattr(out, "loss", out[1] if isinstance(out, tuple) else out)) == 0.0)

    # ---- generate
    def logits():
        return t(2, 11)
    for name, extra, bad in (
            ("apply_temperature", dict(temperature=0.7), {"temperature": [0.0, -1.0, float("nan"), "1", True]}),
            ("top_k_filter", dict(k=3), {"k": BAD_POS_INT}),
            ("top_p_filter", dict(p=0.9), {"p": [0.0, 1.5, float("nan"), "0.9", True]}),
            ("filter_logits", dict(), {"temperature": [-1.0, float("nan")], "top_k": [0, 2.0], "top_p": [0.0, 2.0]}),
            ("next_token_probs", dict(), {"temperature": [-1.0, "1"], "top_k": [0, True], "top_p": [-0.5]}),
            ("sample_next_token", dict(), {"temperature": [float("inf")], "top_k": [-3], "top_p": [1.1],
                                           "generator": ["seed", 0]})):
        b = {"logits": [NOT_TENSOR, L("int", lambda: torch.ones(2, 11, dtype=torch.int64)), L("0-d", lambda: t(1)[0])]}
        b.update(bad)
        sweep(f"generate.{name}", fn("generate", name), lambda extra=extra: dict(logits=logits(), **extra), b)
    case("generate.next_token_probs(tiny temperature)", lambda: mod("generate").next_token_probs(
        t(2, 11) * 10, temperature=1e-40), "temperature", "either", check=lambda p: bool(torch.isfinite(p).all()))
    case("generate.sample_next_token(all -inf row)", lambda: mod("generate").sample_next_token(
        torch.full((1, 11), float("-inf")), temperature=1.0), "logits", "either")
    case("generate.next_token_probs(NaN logits)", lambda: mod("generate").next_token_probs(
        torch.full((1, 11), float("nan"))), "logits", "either", check=lambda p: bool(torch.isfinite(p).all()))

    def gen_base():
        return dict(model=gpt(), idx=ids(1, 3, high=11), max_new_tokens=3)
    sweep("generate.generate", fn("generate", "generate"), gen_base,
          {"model": [None, "gpt"], "idx": [NOT_TENSOR, L("float", lambda: torch.ones(1, 3)), L("1-d", lambda: ids(3, high=11)),
                                             L("out of vocab", lambda: torch.tensor([[11]]))],
           "max_new_tokens": [-1, 2.0, True, "3"], "temperature": [-1.0, float("nan"), "0"],
           "top_k": [0, 2.5], "top_p": [0.0, 1.5], "use_cache": [1, "yes"], "generator": [0, "g"]})

    def nan_model():
        model = gpt()
        with torch.no_grad():
            model.lm_head.weight.fill_(float("nan"))
        return model
    case("generate.generate(model gives NaN)", lambda: mod("generate").generate(
        nan_model(), ids(1, 3, high=11), 2, temperature=1.0), "logits", "error")

    # ---- kv_cache (new in the rewrite)
    case("kv_cache.kv_cache_bytes(valid)", lambda: mod("kv_cache").kv_cache_bytes(2, 2, 4, 8), "", "ok")
    for arg, v in (("n_layer", 0), ("n_kv_head", 2.0), ("head_dim", -1), ("n_tokens", True), ("batch", 0),
                   ("dtype", "float32")):
        kw = dict(n_layer=2, n_kv_head=2, head_dim=4, n_tokens=8)
        kw[arg] = v
        case(f"kv_cache.kv_cache_bytes({arg}={v!r})", lambda kw=kw: mod("kv_cache").kv_cache_bytes(**kw), arg)
    for arg, v in (("batch_size", 0), ("max_len", 2.0), ("max_len", 0), ("model", None), ("dtype", torch.int64)):
        kw = dict(batch_size=1, max_len=8)
        kw[arg] = v

        def call(kw=kw):
            kw = dict(kw)
            model = kw.pop("model", "gpt")
            return mod("kv_cache").KVCache.for_model(gpt() if model == "gpt" else model, **kw)
        case(f"kv_cache.KVCache.for_model({arg}={v!r})", call, arg)

    # ---- models.transformer
    def tcfg(**kw):
        base = dict(src_vocab_size=12, tgt_vocab_size=13, d_model=8, n_heads=2, n_encoder_layers=1,
                    n_decoder_layers=1, d_ff=16, dropout=0.0, max_len=10)
        base.update(kw)
        return mod("models.transformer").TransformerConfig(**base)
    for arg, vals in (("src_vocab_size", BAD_POS_INT), ("d_model", [7, 0, 8.0]), ("n_heads", [3, True]),
                      ("dropout", BAD_DROPOUT), ("activation", ["tanh", 1]), ("norm", ["batch"]),
                      ("norm_first", [1, "yes"]), ("final_norm", [1, "no"]), ("positions", ["rope", None]),
                      ("max_len", [0, 10.0]), ("tie_embeddings", [0]), ("scale_embeddings", ["x"]),
                      ("pad_id", [-1, 1.0, 12]), ("bos_id", [13, True]), ("eos_id", [None, 2.0])):
        for v in vals:
            case(f"models.TransformerConfig({arg}={_short(v)})", lambda arg=arg, v=v: tcfg(**{arg: v}), arg)

    def tmodel(**kw):
        torch.manual_seed(0)
        return mod("models.transformer").Transformer(tcfg(**kw)).eval()
    case("models.Transformer(config=dict)", lambda: mod("models.transformer").Transformer({}), "config")
    case("Transformer.forward(valid)", lambda: tmodel()(ids(2, 4, high=12), ids(2, 3, high=13)), "", "ok")
    for label, s, tg, arg in (("src list", [[1, 2]], ids(2, 3), "src"), ("src float", torch.ones(2, 4), ids(2, 3), "src"),
                              ("src too long", ids(2, 11), ids(2, 3), "src"), ("src oov", torch.tensor([[12]]),
                                                                                ids(1, 3), "src"),
                              ("tgt oov", ids(2, 4), torch.full((2, 3), 13), "tgt_in"),
                              ("batch mismatch", ids(2, 4), ids(3, 3), "tgt_in"),
                              ("tgt 1-d", ids(2, 4), ids(3), "tgt_in")):
        case(f"Transformer.forward({label})", lambda s=s, tg=tg: tmodel()(s, tg), arg)
    case("Transformer.decode(memory float64)", lambda: tmodel().decode(ids(2, 3), t(2, 4, 8, dtype=torch.float64),
                                                                       None), "memory")
    case("Transformer.decode(memory wrong C)", lambda: tmodel().decode(ids(2, 3), t(2, 4, 6), None), "memory")
    case("Transformer.decode(memory list)", lambda: tmodel().decode(ids(2, 3), [[0.0]], None), "memory")

    def torch_tf(**kw):
        base = dict(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16,
                    dropout=0.0, batch_first=True)
        base.update(kw)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.nn.Transformer(**base)
    case("Transformer.load_torch_transformer(valid)", lambda: tmodel(final_norm=True).load_torch_transformer(torch_tf()),
         "", "ok", check=lambda m: isinstance(m, torch.nn.Module))
    case("Transformer.load_torch_transformer(gelu)", lambda: tmodel(final_norm=True).load_torch_transformer(
        torch_tf(activation="gelu")), "activation")
    case("Transformer.load_torch_transformer(layer_norm_eps)", lambda: tmodel(final_norm=True).load_torch_transformer(
        torch_tf(layer_norm_eps=1e-3)), "eps")
    case("Transformer.load_torch_transformer(bias=False)", lambda: tmodel(final_norm=True).load_torch_transformer(
        torch_tf(bias=False)), "bias")
    case("Transformer.load_torch_transformer(ref=None)", lambda: tmodel().load_torch_transformer(None), "ref")

    # ---- train
    sweep("train.warmup_inverse_sqrt", fn("train", "warmup_inverse_sqrt"), lambda: dict(step=3, warmup=4),
          {"step": [-1, 1.0, True, "3"], "warmup": [-1, 4.0]})
    sweep("train.warmup_cosine", fn("train", "warmup_cosine"), lambda: dict(step=3, warmup=4, total=10),
          {"step": [-1, 1.5], "warmup": [11, -2], "total": [0, 10.0], "min_ratio": [-0.1, 1.5, float("nan"), "0"]})
    sweep("train.lr_lambda", fn("train", "lr_lambda"), lambda: dict(kind="cosine", warmup=2, total=10),
          {"kind": ["linear", 1, None], "warmup": [-1, 2.0], "total": [None, 0, 1.5], "min_ratio": [2.0, "x"]},
          check=callable)

    def lsce_base():
        return dict(logits=t(2, 3, 5), targets=ids(2, 3, high=5))
    sweep("train.label_smoothed_cross_entropy", fn("train", "label_smoothed_cross_entropy"), lsce_base,
          {"logits": [NOT_TENSOR, L("int", lambda: torch.ones(2, 3, 5, dtype=torch.int64)), L("1-d", lambda: t(5))],
           "targets": [L("float", lambda: torch.ones(2, 3)), L("wrong shape", lambda: ids(2, 2)),
                       L("out of range", lambda: torch.full((2, 3), 5)), L("bool", lambda: torch.ones(2, 3, dtype=torch.bool)),
                       NOT_TENSOR],
           "smoothing": [1.0, -0.1, float("nan"), "0.1", True], "ignore_index": [1.5, "0", True]})

    def all_ignored_zero_with_grad(loss):
        return float(loss) == 0.0 and loss.grad_fn is not None
    case("train.label_smoothed_cross_entropy(all ignored)", lambda: mod("train").label_smoothed_cross_entropy(
        t(2, 3, 5).requires_grad_(), torch.full((2, 3), -100), ignore_index=-100), "", "ok",
        check=all_ignored_zero_with_grad)
    sweep("train.clip_gradients", fn("train", "clip_gradients"),
          lambda: dict(parameters=torch.nn.Linear(2, 2), max_norm=1.0),
          {"parameters": [None, 3, "w"], "max_norm": [0.0, -1.0, float("nan"), "1", True]})

    def ckpt_path():
        d = tempfile.mkdtemp()
        return os.path.join(d, "c.pt")

    def saved(extra=None, mutate=None):
        path = ckpt_path()
        model = torch.nn.Linear(2, 2)
        mod("train").save_checkpoint(path, model, {"d": 2}, **(extra or {}))
        if mutate is not None:
            state = torch.load(path, weights_only=True)
            mutate(state)
            state.pop("checksum", None)  # an old-style file: only the structure checks can tell
            torch.save(state, path)
        return path
    sweep("train.save_checkpoint", fn("train", "save_checkpoint"),
          lambda: dict(path=ckpt_path(), model=torch.nn.Linear(2, 2), config={"d": 2}),
          {"path": [None, 3], "model": [None, "m"], "config": [None, 3, [1, 2]], "optimizer": ["adam", 1]})
    case("train.save_checkpoint(extra key 'model')", lambda: mod("train").save_checkpoint(
        ckpt_path(), torch.nn.Linear(2, 2), {"d": 2}, format="x"), "format")

    def load(path, model=None, config=None, optimizer=None):
        model = model if model is not None else torch.nn.Linear(2, 2)
        return mod("train").load_checkpoint(path, model, {"d": 2} if config is None else config, optimizer)
    case("train.load_checkpoint(valid)", lambda: load(saved()), "", "ok", check=lambda s: isinstance(s, dict))
    case("train.load_checkpoint(missing file)", lambda: load(ckpt_path()), "path")
    case("train.load_checkpoint(model=None)", lambda: mod("train").load_checkpoint(saved(), None, {"d": 2}), "model")
    case("train.load_checkpoint(optimizer='adam')", lambda: load(saved(), optimizer="adam"), "optimizer")
    case("train.load_checkpoint(config differs)", lambda: load(saved(), config={"d": 3}), "config")

    def del_key(k):
        return lambda s: s.pop(k)
    for label, mutate, arg in (("no config", del_key("config"), "config"), ("no model", del_key("model"), "model"),
                               ("config a list", lambda s: s.__setitem__("config", [1]), "config"),
                               ("model a list", lambda s: s.__setitem__("model", [1]), "model"),
                               ("weights NaN", lambda s: s["model"]["weight"].fill_(float("nan")), "non-finite"),
                               ("weight not a tensor", lambda s: s["model"].__setitem__("weight", 3), "weight"),
                               ("weight int", lambda s: s["model"].__setitem__("weight", torch.ones(2, 2, dtype=torch.long)),
                                "weight")):
        case(f"train.load_checkpoint({label})", lambda mutate=mutate: load(saved(mutate=mutate)), arg)

    def flipped():
        path = saved()
        state = torch.load(path, weights_only=True)
        w = state["model"]["weight"]
        w.view(torch.int32)[0, 0] ^= 1 << 3  # one flipped bit in one weight
        torch.save(state, path)
        return load(path)
    case("train.load_checkpoint(flipped bit)", flipped, "checksum")

    def edited_keeping_checksum():
        path = saved()
        state = torch.load(path, weights_only=True)
        state["config"] = {"d": 3}
        torch.save(state, path)
        return load(path, config={"d": 3})
    case("train.load_checkpoint(config edited, checksum kept)", edited_keeping_checksum, "checksum")

    def bad_optimizer_state():
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        path = ckpt_path()
        mod("train").save_checkpoint(path, model, {"d": 2}, optimizer=opt)
        state = torch.load(path, weights_only=True)
        state["optimizer"] = {"state": {}, "param_groups": "broken"}
        state.pop("checksum", None)
        torch.save(state, path)
        fresh = torch.nn.Linear(2, 2)
        before = fresh.weight.detach().clone()
        try:
            return load(path, model=fresh, optimizer=torch.optim.SGD(fresh.parameters(), lr=0.1))
        finally:
            if not torch.equal(fresh.weight, before):
                raise AssertionError("the model was changed before the optimizer state was refused")
    case("train.load_checkpoint(broken optimizer state)", bad_optimizer_state, "optimizer")

    def train_loop_base():
        model = torch.nn.Linear(2, 1)
        return dict(model=model, batches=[torch.ones(4, 2)], loss_fn=lambda m, b: m(b).pow(2).mean(),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1), steps=2, progress=False)
    sweep("train.train_loop", fn("train", "train_loop"), train_loop_base,
          {"model": [None], "batches": [None, 3, L("empty", lambda: [])], "loss_fn": [None, "mse"],
           "optimizer": [None, "sgd"], "steps": BAD_POS_INT, "clip": [0.0, -1.0, float("nan"), "1"],
           "eval_every": [-1, 1.5], "history": ["h"], "evaluate": ["e"], "progress": [1]},
          check=lambda h: hasattr(h, "loss"))

    def inf_grad():
        model = torch.nn.Linear(2, 1)
        before = model.weight.detach().clone()

        def loss_fn(m, b):  # a finite loss whose gradient is infinite
            m.weight.register_hook(lambda g: g * float("inf"))
            return m(b).mean()
        try:
            return mod("train").train_loop(model, [torch.ones(4, 2)], loss_fn,
                                           torch.optim.SGD(model.parameters(), lr=0.1), steps=1, clip=None,
                                           progress=False)
        finally:
            if not torch.equal(model.weight, before):
                raise AssertionError("the weights changed although the gradient was not finite")
    case("train.train_loop(non-finite gradient)", inf_grad, "grad", "error", )
    CASES[-1].errors = (TypeError, ValueError, FloatingPointError, ArithmeticError)
    sweep("train.History.smoothed", lambda window: mod("train").History(loss=[1.0, 2.0]).smoothed(window),
          lambda: dict(window=2), {"window": [0, 1.5, True, "2"]})
    case("train.History.from_dict(no steps)", lambda: mod("train").History.from_dict({}), "steps")
    case("train.History.from_dict(list)", lambda: mod("train").History.from_dict([1]), "d")
    case("train.plot_histories(empty)", lambda: mod("train").plot_histories([]), "histories")
    case("train.plot_histories(smooth=0)", lambda: mod("train").plot_histories([mod("train").History(
        steps=[0], loss=[1.0])], smooth=0), "smooth")

    # ---- model_cache
    sweep("model_cache.recipe_key", fn("model_cache", "recipe_key"), lambda: dict(recipe={"a": 1}, seed=0),
          {"recipe": [None, [1], L("set inside", lambda: {"a": {1, 2}})], "seed": [1.0, True, "0", None]},
          check=lambda k: isinstance(k, str))
    sweep("model_cache.entry_path", fn("model_cache", "entry_path"),
          lambda: dict(name="m", recipe={"a": 1}, seed=0, root=tempfile.mkdtemp()),
          {"name": ["", "../x", ".hidden", 3, None], "root": [3]}, check=lambda p: p is not None)

    def cm_base():
        def build(recipe, seed):
            torch.manual_seed(seed)
            model = mod("models.gpt").GPT(gcfg())
            return model, {"note": "x"}
        return dict(recipe={"a": 1}, seed=0, build_fn=build,
                    make_model=lambda c: mod("models.gpt").GPT(mod("models.gpt").GPTConfig(**c)),
                    root=tempfile.mkdtemp(), verbose=False)
    sweep("model_cache.cached_model", fn("model_cache", "cached_model"), cm_base,
          {"build_fn": [None, 3], "make_model": [None], "name": ["", "a/b"], "seed": [1.5, True],
           "recipe": [None], "rebuild": [1, "yes"], "verbose": [1]}, check=lambda r: isinstance(r[0], torch.nn.Module))

    def corrupt_entry(mutate):
        kw = cm_base()
        model, _ = mod("model_cache").cached_model(**kw)  # builds and saves
        path = mod("model_cache").entry_path("model", kw["recipe"], kw["seed"], kw["root"])
        state = torch.load(path, weights_only=True)
        mutate(state)
        torch.save(state, path)
        again, info = mod("model_cache").cached_model(**kw)
        sd = again.state_dict()
        return not info["from_cache"] and all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())

    def flip(state):
        state["model"]["lm_head.weight"].view(torch.int32)[0, 0] ^= 1 << 2
    for label, mutate in (("missing model key", lambda s: s.pop("model")),
                          ("config wrong types", lambda s: s.__setitem__("config", {"vocab_size": "11"})),
                          ("absurd config", lambda s: s["config"].__setitem__("n_layer", 10 ** 6)),
                          ("config not a dict", lambda s: s.__setitem__("config", [1])),
                          ("NaN weights", lambda s: s["model"]["lm_head.weight"].fill_(float("nan"))),
                          ("flipped bit", flip),
                          ("info not a dict", lambda s: s.__setitem__("info", [1]))):
        case(f"model_cache.cached_model(corrupt entry: {label})", lambda mutate=mutate: corrupt_entry(mutate), "", "ok",
             check=lambda r: r is True)

    def failed_save():
        kw = cm_base()
        import transformer_book.train as train_mod
        cache_mod = mod("model_cache")
        original = getattr(cache_mod, "save_checkpoint", None) or train_mod.save_checkpoint

        def broken(path, *a, **k):
            with open(str(path) + ".tmp", "wb") as f:
                f.write(b"half")
            raise RuntimeError("disk vanished")
        cache_mod.save_checkpoint = broken
        train_mod_save = train_mod.save_checkpoint
        train_mod.save_checkpoint = broken
        try:
            model, info = cache_mod.cached_model(**kw)
        finally:
            cache_mod.save_checkpoint = original
            train_mod.save_checkpoint = train_mod_save
        left = os.listdir(kw["root"])
        return isinstance(model, torch.nn.Module) and not left
    case("model_cache.cached_model(save fails after training)", failed_save, "", "ok", check=lambda r: r is True)

    # ---- tokenize
    def bpe():
        return mod("tokenize").BPETokenizer().train("hello world hello there " * 20, 270)
    sweep("tokenize.BPETokenizer", fn("tokenize", "BPETokenizer"), lambda: dict(),
          {"pattern": [3, "(unclosed", b"\\w+"], "special_tokens": ["<eos>", [3], ["a", "a"], [""], ["\ud800"]]},
          check=lambda tk: tk is not None)
    case("tokenize.BPETokenizer.train(valid)", bpe, "", "ok", check=lambda tk: tk.vocab_size == 270)
    for label, text, vs, arg in (("text=bytes", b"abc", 260, "text"), ("text=None", None, 260, "text"),
                                 ("vocab_size=100", "abc", 100, "vocab_size"), ("vocab_size=260.0", "abc", 260.0, "vocab_size"),
                                 ("vocab_size=True", "abc", True, "vocab_size")):
        case(f"tokenize.BPETokenizer.train({label})", lambda text=text, vs=vs: mod("tokenize").BPETokenizer().train(text, vs),
             arg)
    case("tokenize.BPETokenizer.encode(valid)", lambda: bpe().encode("hello \ud800 there"), "", "ok")
    for label, text in (("None", None), ("bytes", b"x"), ("list", ["a"])):
        case(f"tokenize.BPETokenizer.encode({label})", lambda text=text: bpe().encode(text), "text")
    case("tokenize.BPETokenizer.encode(allowed_special=1)", lambda: bpe().encode("x", allowed_special=1),
         "allowed_special")
    for label, v in (("id too big", [100000]), ("negative", [-1]), ("float", [1.5]), ("str", "abc"),
                     ("bool", [True]), ("None", None), ("tensor 2-d", torch.ones(2, 2, dtype=torch.long))):
        case(f"tokenize.BPETokenizer.decode({label})", lambda v=v: bpe().decode(v), "ids")
    case("tokenize.BPETokenizer.id_to_token(-1)", lambda: bpe().id_to_token(-1), "token_id")
    case("tokenize.BPETokenizer.id_to_token(1.0)", lambda: bpe().id_to_token(1.0), "token_id")
    case("tokenize.BPETokenizer.save(dir)", lambda: bpe().save(tempfile.mkdtemp()), "path")
    case("tokenize.BPETokenizer.save(None)", lambda: bpe().save(None), "path")

    def save_fails_keeps_old():
        d = tempfile.mkdtemp()
        path = os.path.join(d, "tok.json")
        tk = bpe()
        tk.save(path)
        before = open(path, "rb").read()
        import json as json_mod
        real = json_mod.dump

        def boom(*a, **k):
            raise OSError("disk full")
        json_mod.dump = boom
        real_dumps = json_mod.dumps
        json_mod.dumps = boom
        try:
            tk.save(path)
        except OSError:
            pass
        finally:
            json_mod.dump, json_mod.dumps = real, real_dumps
        return open(path, "rb").read() == before and os.listdir(d) == ["tok.json"]
    case("tokenize.BPETokenizer.save(fails midway)", save_fails_keeps_old, "", "ok", check=lambda r: r is True)

    def load_json(payload: str):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "tok.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(payload)
        return mod("tokenize").BPETokenizer.load(path)
    case("tokenize.BPETokenizer.load(missing)", lambda: mod("tokenize").BPETokenizer.load("/nonexistent/x.json"), "path")
    case("tokenize.BPETokenizer.load(not json)", lambda: load_json("{"), "path")
    case("tokenize.BPETokenizer.load(deep nesting)", lambda: load_json("[" * 100000 + "]" * 100000), "path")
    case("tokenize.BPETokenizer.load(a list)", lambda: load_json("[1, 2]"), "path")

    def crafted_merges():
        # A chain: each merge joins the previous token with a byte, so every token is long.
        n = 12000
        merges = [[256 + i - 1 if i else 97, 98, 256 + i] for i in range(n)]
        state = {"format": "transformer_book.BPETokenizer", "version": 1, "pattern": None,
                 "special_tokens": [], "vocab_size": 256 + n, "merges": [m[:2] for m in merges]}
        return load_json(json.dumps(state))
    case("tokenize.BPETokenizer.load(crafted chain of merges)", crafted_merges, "merges")
    for label, state, arg in (("merges not a list", {"merges": 3}, "merges"),
                              ("merge ids bad", {"merges": [[1, 2, 9]]}, "merges"),
                              ("bad pattern", {"pattern": "(", "merges": []}, "pattern"),
                              ("special tokens not a list", {"special_tokens": {"<e>": 5}, "merges": []}, "special"),
                              ("version", {"version": 99, "merges": []}, "version")):
        full = {"format": "transformer_book.BPETokenizer", "version": 1, "pattern": None, "special_tokens": [],
                "vocab_size": 256}
        full.update(state)
        case(f"tokenize.BPETokenizer.from_dict({label})", lambda full=full: mod("tokenize").BPETokenizer.from_dict(full),
             arg)
    for cls in ("CharTokenizer", "WordTokenizer"):
        sweep(f"tokenize.{cls}", fn("tokenize", cls), lambda: dict(tokens=["a", "b"]),
              {"tokens": [None, 3, "ab", [1, 2], ["a", "a"]], "unk_token": [None, 3, ""]},
              check=lambda tk: tk is not None)
        case(f"tokenize.{cls}.decode(out of range)", lambda cls=cls: getattr(mod("tokenize"), cls)(["a", "b"]).decode([9]),
             "ids")
        case(f"tokenize.{cls}.encode(None)", lambda cls=cls: getattr(mod("tokenize"), cls)(["a", "b"]).encode(None),
             "text")
    sweep("tokenize.count_pairs", fn("tokenize", "count_pairs"), lambda: dict(ids=[1, 2, 3]),
          {"ids": [None, "abc", [1.5, 2]], "counts": [3, [1]], "weight": [0, 1.5, True]})
    sweep("tokenize.merge_pair", fn("tokenize", "merge_pair"), lambda: dict(ids=[1, 2, 3], pair=(1, 2), new_id=4),
          {"ids": [None, [1.0]], "pair": [(1,), (1, 2, 3), "ab", None], "new_id": [-1, 1.5, True]})
    sweep("tokenize.learn_merges", fn("tokenize", "learn_merges"), lambda: dict(word_counts={b"ab": 2}, vocab_size=257),
          {"word_counts": [None, {"ab": 2}, {b"ab": -1}, {b"ab": 1.5}], "vocab_size": [100, 257.0, True]})
    sweep("tokenize.learn_merges_naive", fn("tokenize", "learn_merges_naive"),
          lambda: dict(chunks=[b"ab"], vocab_size=257), {"chunks": [None, ["ab"]], "vocab_size": [0, "257"]})

    # ---- bigram
    sweep("bigram.bigram_counts", fn("bigram", "bigram_counts"), lambda: dict(ids=[1, 2, 3], vocab_size=4),
          {"ids": [None, [1.5, 2], [5], [-1], L("float tensor", lambda: torch.ones(3))], "vocab_size": BAD_POS_INT})
    sweep("bigram.BigramLM", fn("bigram", "BigramLM"), lambda: dict(vocab_size=4),
          {"vocab_size": BAD_POS_INT, "alpha": [-1.0, float("nan"), "0.1", True]},
          check=lambda m: isinstance(m, torch.nn.Module))
    case("bigram.BigramLM.fit(oov)", lambda: mod("bigram").BigramLM(4).fit([1, 9]), "ids")
    case("bigram.BigramLM.forward(oov)", lambda: mod("bigram").BigramLM(4)(torch.tensor([[9]])), "idx")
    case("bigram.BigramLM.forward(float)", lambda: mod("bigram").BigramLM(4)(torch.ones(1, 2)), "idx")
    case("bigram.BigramLM.forward(alpha=0, unseen)", lambda: mod("bigram").BigramLM(4, alpha=0.0).fit([1, 2])(
        torch.tensor([[3]]), targets=torch.tensor([[0]])), "", "either")

    # ---- seq2seq
    sweep("seq2seq.dot_scores", fn("seq2seq", "dot_scores"), lambda: dict(query=t(2, 3, 4), keys=t(2, 5, 4)),
          {"query": [NOT_TENSOR, L("wrong C", lambda: t(2, 3, 3)), L("int", lambda: torch.ones(2, 3, 4, dtype=torch.long)),
                     L("float64", lambda: t(2, 3, 4, dtype=torch.float64))],
           "keys": [L("2-d", lambda: t(5, 4)), L("wrong B", lambda: t(3, 5, 4))]})
    sweep("seq2seq.additive_scores", fn("seq2seq", "additive_scores"),
          lambda: dict(query=t(2, 3, 4), keys=t(2, 5, 3), w_query=t(6, 4), w_key=t(6, 3), v=t(6)),
          {"query": [NOT_TENSOR, L("wrong", lambda: t(2, 3, 5))], "w_key": [L("wrong", lambda: t(6, 4))],
           "v": [L("wrong", lambda: t(5)), L("float64", lambda: t(6, dtype=torch.float64))]})
    sweep("seq2seq.masked_softmax", fn("seq2seq", "masked_softmax"),
          lambda: dict(scores=t(2, 5), mask=torch.ones(2, 5, dtype=torch.bool)),
          {"scores": [NOT_TENSOR, L("int", lambda: torch.ones(2, 5, dtype=torch.long))],
           "mask": [L("float", lambda: torch.ones(2, 5)), L("wrong shape", lambda: torch.ones(2, 4, dtype=torch.bool))]})
    case("seq2seq.masked_softmax(all masked)", lambda: mod("seq2seq").masked_softmax(
        t(2, 5), torch.zeros(2, 5, dtype=torch.bool)), "mask", "either")
    for cls, kw in (("AdditiveAttention", dict(query_dim=4, key_dim=3, attn_dim=6)),):
        sweep(f"seq2seq.{cls}", fn("seq2seq", cls), lambda kw=kw: dict(kw),
              {k: [0, 2.0, True] for k in kw}, check=lambda m: isinstance(m, torch.nn.Module))
    sweep("seq2seq.Encoder", fn("seq2seq", "Encoder"), lambda: dict(vocab_size=10, emb_dim=4, hidden_dim=6),
          {"vocab_size": BAD_POS_INT, "emb_dim": [0, 4.0], "hidden_dim": [0], "pad_id": [10, -1, 1.0]},
          check=lambda m: isinstance(m, torch.nn.Module))
    sweep("seq2seq.Decoder", fn("seq2seq", "Decoder"), lambda: dict(vocab_size=10, emb_dim=4, hidden_dim=6, attention=None),
          {"vocab_size": [0], "attention": ["additive", 3], "pad_id": [10]}, check=lambda m: isinstance(m, torch.nn.Module))

    def s2s(attention="additive"):
        numbers = mod("data.numbers")
        torch.manual_seed(0)
        return mod("seq2seq").Seq2Seq(numbers.english_vocab(), numbers.german_vocab(), attention=attention,
                                      emb_dim=8, hidden_dim=8)
    case("seq2seq.Seq2Seq(attention=bad)", lambda: s2s("luong"), "attention")
    case("seq2seq.Seq2Seq(src_vocab=list)", lambda: mod("seq2seq").Seq2Seq(["a"], mod("data.numbers").german_vocab()),
         "src_vocab")
    case("seq2seq.translate(valid)", lambda: mod("seq2seq").translate(s2s(), "twenty one", max_len=5), "", "ok")
    case("seq2seq.translate(unknown word)", lambda: mod("seq2seq").translate(s2s(), "twenty blorp"), "text")
    case("seq2seq.translate(max_len=0)", lambda: mod("seq2seq").translate(s2s(), 21, max_len=0), "max_len")
    case("seq2seq.translate(text=None)", lambda: mod("seq2seq").translate(s2s(), None), "text")
    case("seq2seq.translate(text=-5)", lambda: mod("seq2seq").translate(s2s(), -5), "text")
    case("seq2seq.greedy_decode(src float)", lambda: mod("seq2seq").greedy_decode(s2s(), torch.ones(1, 3)), "src")
    case("seq2seq.greedy_decode(src oov)", lambda: mod("seq2seq").greedy_decode(s2s(), torch.tensor([[999]])), "src")
    case("seq2seq.greedy_decode(model=None)", lambda: mod("seq2seq").greedy_decode(None, torch.ones(1, 3, dtype=torch.long)),
         "model")
    case("seq2seq.source_words(None)", lambda: mod("seq2seq").source_words(None, mod("data.numbers").english_vocab()),
         "text")
    for arg, v in (("epochs", 0), ("epochs", 1.5), ("batch_size", 0), ("lr", -1.0), ("lr", float("nan")),
                   ("clip", 0.0), ("seed", "0"), ("progress", 1)):
        case(f"seq2seq.train_model({arg}={v!r})", lambda arg=arg, v=v: mod("seq2seq").train_model(
            s2s(), mod("data.numbers").number_pairs(4), **{arg: v}), arg)
    case("seq2seq.train_model(pairs=[])", lambda: mod("seq2seq").train_model(s2s(), [], progress=False), "pairs")
    case("seq2seq.train_model(pairs=bad)", lambda: mod("seq2seq").train_model(s2s(), [("a", "b", "c")], progress=False),
         "pairs")
    case("seq2seq.evaluate(pairs=[])", lambda: mod("seq2seq").evaluate(s2s(), []), "pairs")
    case("seq2seq.evaluate(batch_size=0)", lambda: mod("seq2seq").evaluate(s2s(), mod("data.numbers").number_pairs(2),
                                                                           batch_size=0), "batch_size")

    # ---- decoding
    def dmodel():
        return tmodel()
    sweep("decoding.length_normalized_score", fn("decoding", "length_normalized_score"),
          lambda: dict(log_prob=-3.0, length=4), {"log_prob": [float("nan"), "x", None], "length": [0, -1, 2.5, True],
                                                   "alpha": [-1.0, float("nan"), "1"]})
    case("decoding.sequence_log_prob(valid)", lambda: mod("decoding").sequence_log_prob(dmodel(), ids(1, 4, high=12), [3, 4, 2]),
         "", "ok")
    for label, src, out, arg in (("src 1-d", ids(4, high=12), [3], "src"), ("src 2 rows", ids(2, 4, high=12), [3], "src"),
                                 ("out oov", ids(1, 4, high=12), [99], "out"), ("out str", ids(1, 4, high=12), "ab", "out"),
                                 ("out floats", ids(1, 4, high=12), [1.5], "out")):
        case(f"decoding.sequence_log_prob({label})", lambda src=src, out=out: mod("decoding").sequence_log_prob(
            dmodel(), src, out), arg)
    sweep("decoding.greedy_decode", fn("decoding", "greedy_decode"), lambda: dict(model=dmodel(), src=ids(2, 4, high=12),
                                                                                    max_len=5),
          {"model": [None, "m"], "src": [NOT_TENSOR, L("float", lambda: torch.ones(2, 4)), L("oov", lambda: torch.tensor([[99]]))],
           "max_len": BAD_POS_INT})
    case("decoding.greedy_decode(max_len > model max_len)", lambda: mod("decoding").greedy_decode(
        dmodel(), ids(1, 4, high=12), max_len=50), "max_len", "either")
    sweep("decoding.beam_search", fn("decoding", "beam_search"), lambda: dict(model=dmodel(), src=ids(2, 4, high=12),
                                                                                max_len=4, beam_size=2),
          {"beam_size": BAD_POS_INT, "max_len": [0, 2.0], "alpha": [-0.5, float("nan"), "1"], "n_best": [0, 3, 1.0],
           "src": [L("float", lambda: torch.ones(1, 3))]})
    sweep("decoding.strip_ids", fn("decoding", "strip_ids"), lambda: dict(ids=[3, 4, 2, 0], eos_id=2, pad_id=0),
          {"ids": [None, "abc", [1.5], L("2-d", lambda: torch.ones(2, 2, dtype=torch.long))], "eos_id": [None, 2.0, True],
           "pad_id": [1.5, "0"]})
    sweep("decoding.translate_batch", fn("decoding", "translate_batch"),
          lambda: dict(model=dmodel(), src=ids(3, 4, high=12), max_len=4),
          {"beam_size": [0, 1.5], "max_len": [0], "alpha": [float("nan")], "batch_size": [0, True],
           "src": [L("list", lambda: [[1, 2]])]})
    sweep("decoding.exact_match_by", fn("decoding", "exact_match_by"),
          lambda: dict(predictions=[[1], [2]], references=[[1], [3]], keys=[1, 2]),
          {"predictions": [None, [[1]]], "references": [3], "keys": [[1]]},
          check=lambda r: r[0] == 0.5)
    case("decoding.exact_match_by(empty)", lambda: mod("decoding").exact_match_by([], [], []), "predictions", "either",
         check=lambda r: no_nan(r))

    # ---- data
    for name in ("english_words", "german_word", "german_morphemes"):
        sweep(f"data.numbers.{name}", fn("data.numbers", name), lambda: dict(value=42),
              {"value": [-1, 1.5, True, "42", None, 10 ** 7]})
    for name in ("english_words_big", "french_text", "french_words"):
        sweep(f"data.numbers_fr.{name}", fn("data.numbers_fr", name), lambda: dict(value=42),
              {"value": [-1, 1.5, True, "42", 10 ** 10]})
    sweep("data.numbers.split_german", fn("data.numbers", "split_german"), lambda: dict(word="einundzwanzig"),
          {"word": [None, 3, "", "blorp"]})
    sweep("data.numbers.join_german", fn("data.numbers", "join_german"), lambda: dict(morphemes=["ein", "und", "zwanzig"]),
          {"morphemes": [None, "ein", [3]]})  # documented: it glues any str pieces
    sweep("data.numbers_fr.join_french", fn("data.numbers_fr", "join_french"), lambda: dict(tokens=["vingt", "et", "un"]),
          {"tokens": [None, "vingt", [3]]})
    sweep("data.numbers.sample_numbers", fn("data.numbers", "sample_numbers"), lambda: dict(n=5),
          {"n": [-1, 2.5, True, None], "max_value": [-5, 1.5, 10 ** 7], "seed": ["0", 1.5]})
    case("data.numbers.sample_numbers(n=5, max_value=0)", lambda: mod("data.numbers").sample_numbers(5, 0),
         "n|max_value")
    sweep("data.numbers.number_pairs", fn("data.numbers", "number_pairs"), lambda: dict(n=5),
          {"n": [-1, 2.5], "lang": ["xx", 3], "max_value": [-1, 1.5], "seed": [None]})
    sweep("data.numbers.number_splits", fn("data.numbers", "number_splits"), lambda: dict(n_train=5, n_valid=3, n_test=3),
          {"n_train": [-1, 1.5], "n_valid": [True], "n_test": ["3"], "max_value": [-50], "train_below": [1.5, -3],
           "lang": ["xx"]})
    sweep("data.numbers_fr.sample_numbers_big", fn("data.numbers_fr", "sample_numbers_big"), lambda: dict(n=5),
          {"n": [-1, 2.5, True], "max_value": [-1, 10 ** 12], "seed": [None]})
    sweep("data.numbers_fr.french_pairs", fn("data.numbers_fr", "french_pairs"), lambda: dict(numbers=[1, 2]),
          {"numbers": [None, 3, [1.5], [-1], "12"]})
    sweep("data.numbers_fr.french_splits", fn("data.numbers_fr", "french_splits"),
          lambda: dict(n_train=5, n_valid=3, n_test=3), {"n_train": [-1, 2.5], "train_below": [-1], "max_value": [-5]})
    sweep("data.numbers.Vocab", fn("data.numbers", "Vocab"), lambda: dict(tokens=["a", "b"]),
          {"tokens": [None, 3, [1, 2]]}, check=lambda v: v is not None)
    for toks in (["a", "a"], ["<pad>"]):  # documented: repeated tokens and the specials are merged
        case(f"data.numbers.Vocab(tokens={toks!r})", lambda toks=toks: mod("data.numbers").Vocab(toks), "tokens",
             "either", check=lambda v, toks=toks: len(v) == 3 + len(set(toks) - {"<pad>"}))
    case("data.numbers.Vocab.encode(unknown)", lambda: mod("data.numbers").english_vocab().encode(["blorp"]), "tokens",
         "either")
    case("data.numbers.Vocab.decode(oov)", lambda: mod("data.numbers").english_vocab().decode([9999]), "ids")
    sweep("data.numbers.parse_number", fn("data.numbers", "parse_number"), lambda: dict(text="42"),
          {"text": [None, 42, b"42"]})
    sweep("data.numbers.parse_english", fn("data.numbers", "parse_english"), lambda: dict(words=["forty", "two"]),
          {"words": [None, "forty two", ["blorp"], [3]]})
    case("data.numbers_fr.encode_pairs(bad)", lambda: mod("data.numbers_fr").encode_pairs(
        [(["one"], ["un"])], None, mod("data.numbers_fr").french_vocab()), "src_vocab")
    case("data.numbers_fr.batches(batch_size=0)", lambda: next(iter(mod("data.numbers_fr").batches(
        torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), 0))), "batch_size")
    case("data.numbers_fr.batches(src list)", lambda: next(iter(mod("data.numbers_fr").batches([[1]], [[1]], 2))),
         "src")
    sweep("data.code.stdlib_corpus", fn("data.code", "stdlib_corpus"), lambda: dict(max_bytes=2000),
          {"max_bytes": [0, -1, 1.5, True, "100"], "seed": [1.5, None], "split": ["dev", 3], "root": [3, "/nonexistent"]},
          check=lambda s: isinstance(s, str) and 0 < len(s.encode()) <= 2000)
    sweep("data.code.stdlib_files", fn("data.code", "stdlib_files"), lambda: dict(),
          {"split": ["dev", None], "root": [3, "/nonexistent"]}, check=lambda f: len(f) > 0)

    # ---- code_model
    sweep("code_model.random_batch", fn("code_model", "random_batch"),
          lambda: dict(ids=torch.arange(100), batch_size=2, block_size=8),
          {"ids": [NOT_TENSOR, L("float", lambda: torch.ones(100)), L("too short", lambda: torch.arange(5)),
                   L("2-d", lambda: torch.ones(2, 50, dtype=torch.long))],
           "batch_size": BAD_POS_INT, "block_size": [0, 8.0, True], "generator": [0, "g"]})
    sweep("code_model.evaluate_loss", fn("code_model", "evaluate_loss"),
          lambda: dict(model=gpt(), ids=ids(100, high=11), block_size=8, max_windows=3),
          {"model": [None], "ids": [L("too short", lambda: ids(5, high=11)), L("float", lambda: torch.ones(100))],
           "block_size": [0, 9, 8.0], "max_windows": [0, 1.5], "batch_size": [0, True]})
    sweep("code_model.function_headers", fn("code_model", "function_headers"), lambda: dict(n=2, max_bytes=200000),
          {"n": [0, -1, 1.5, True], "seed": ["0"], "max_bytes": [0, 1.5], "max_chars": [0, 5.5]},
          check=lambda h: len(h) == 2)
    sweep("code_model.cut_snippet", fn("code_model", "cut_snippet"), lambda: dict(prompt="def f(", continuation="x):\n  pass"),
          {"prompt": [None, 3], "continuation": [None, b"x"]}, check=lambda s: isinstance(s, str))
    sweep("code_model.parse_rate", fn("code_model", "parse_rate"),
          lambda: dict(model=gpt(vocab_size=256), tokenizer=mod("tokenize").BPETokenizer(), prompts=["de"],
                       max_new_tokens=2),
          {"model": [None], "tokenizer": [None, "bpe"], "prompts": [None, "def f(", [3], []],
           "max_new_tokens": [0, 1.5], "temperature": [-1.0, float("nan")], "top_k": [0], "top_p": [0.0], "seed": ["0"]})
    case("code_model.prepare_data(recipe=None)", lambda: mod("code_model").prepare_data(None), "recipe")
    case("code_model.prepare_data(recipe missing keys)", lambda: mod("code_model").prepare_data({"version": 1}), "recipe")
    case("code_model.train_code_gpt(seed=1.5)", lambda: mod("code_model").train_code_gpt(seed=1.5, progress=False), "seed")

    # ---- flash
    def qkv():
        return dict(q=t(1, 2, 8, 4), k=t(1, 2, 8, 4, seed=1), v=t(1, 2, 8, 4, seed=2))
    sweep("flash.online_softmax", fn("flash", "online_softmax"), lambda: dict(x=t(3, 8), block_size=3),
          {"x": [NOT_TENSOR, L("int", lambda: torch.ones(3, 8, dtype=torch.long)), L("empty", lambda: t(3, 0))],
           "dim": [2, 1.0, "x", True], "block_size": BAD_POS_INT})
    case("flash.online_softmax(row all -inf)", lambda: mod("flash").online_softmax(torch.full((1, 4), float("-inf"))),
         "x", "either")
    sweep("flash.softmax_stats", fn("flash", "softmax_stats"), lambda: dict(x=t(3, 8), block_size=2),
          {"x": [NOT_TENSOR], "dim": [5], "block_size": [0, 2.0]})
    sweep("flash.online_softmax_update", fn("flash", "online_softmax_update"),
          lambda: dict(m=torch.zeros(3), l=torch.ones(3), x_block=t(3, 4)),
          {"m": [NOT_TENSOR, L("wrong shape", lambda: torch.zeros(4))], "l": [L("int", lambda: torch.ones(3, dtype=torch.long))],
           "x_block": [L("wrong rows", lambda: t(2, 4))]})  # float16 blocks into float32 statistics are the kernels' way
    sweep("flash.naive_attention", fn("flash", "naive_attention"), qkv,
          {"q": [NOT_TENSOR, L("3-d", lambda: t(2, 8, 4)), INT_TENSOR], "k": [L("wrong D", lambda: t(1, 2, 8, 5))],
           "v": [L("float64", lambda: t(1, 2, 8, 4, dtype=torch.float64))], "causal": [1, "yes"],
           "scale": [0.0, float("nan"), "1", True]})
    sweep("flash.tiled_attention", fn("flash", "tiled_attention"), qkv,
          {"q": [NOT_TENSOR, L("3-d", lambda: t(2, 8, 4))], "k": [L("wrong T vs v", lambda: t(1, 2, 7, 4))],
           "causal": [1], "block_q": BAD_POS_INT, "block_k": [0, 2.5], "scale": [-1.0, float("inf")],
           "return_lse": [1, "x"]})
    case("flash.tiled_attention(causal, T_q > T_k)", lambda: mod("flash").tiled_attention(
        t(1, 1, 6, 4), t(1, 1, 3, 4), t(1, 1, 3, 4), causal=True), "causal", "either")
    sweep("flash.merge_block", fn("flash", "merge_block"),
          lambda: dict(m=torch.full((2,), float("-inf")), l=torch.zeros(2), acc=torch.zeros(2, 4), scores=t(2, 3),
                       v_block=t(3, 4)),
          {"scores": [NOT_TENSOR, L("wrong rows", lambda: t(3, 3))], "v_block": [L("wrong", lambda: t(2, 4))]})
    sweep("flash.flash_attention", fn("flash", "flash_attention"),
          lambda: dict(q=t(1, 2, 8, 16), k=t(1, 2, 8, 16, seed=1), v=t(1, 2, 8, 16, seed=2)),
          {"q": [NOT_TENSOR, L("3-d", lambda: t(2, 8, 4))], "causal": [1], "scale": [0.0], "config": ["fast", 3]},
          expect_base="either")
    sweep("flash.FlashConfig", fn("flash", "FlashConfig"), lambda: dict(),
          {"block_m": [0, 48, 64.0, True], "block_n": [-1], "num_warps": [3, 0], "num_stages": [0, "3"],
           "grid_order": ["random", 1], "use_exp2": [1, "yes"], "autotune": ["no"], "allow_tf32": [0]},
          check=lambda c: c is not None)
    case("flash.measure_peak_memory(fn=None)", lambda: mod("flash").measure_peak_memory(None), "fn")

    # ---- bench
    sweep("bench.flash.attention_flops", fn("bench.flash", "attention_flops"),
          lambda: dict(batch=1, heads=2, seq_len=8, head_dim=4),
          {"batch": [0, 1.5, True], "heads": [-1], "seq_len": [0, "8"], "head_dim": [0], "causal": [1],
           "mode": ["both", None]}, check=lambda f: f > 0)
    sweep("bench.flash.default_settings", fn("bench.flash", "default_settings"), lambda: dict(),
          {"quick": [1, "yes"], "sections": ["forward", ["warp"], 3]}, check=lambda s: s is not None)
    case("bench.flash.validate_record(None)", lambda: mod("bench.flash").validate_record(None), "record")
    case("bench.flash.validate_record({})", lambda: mod("bench.flash").validate_record({}), "record")
    case("bench.flash.write_record(None)", lambda: mod("bench.flash").write_record(None, tempfile.mkdtemp() + "/x.json"),
         "record")
    case("bench.flash.load_recordings(missing)", lambda: mod("bench.flash").load_recordings("/nonexistent"), "directory",
         "either", check=lambda r: r == [])
    for name in ("provenance_summary", "correctness_table", "throughput_table"):
        case(f"bench.report.{name}(None)", lambda name=name: getattr(mod("bench.report"), name)(None), "record")
        case(f"bench.report.{name}({{}})", lambda name=name: getattr(mod("bench.report"), name)({}), "record", "either")
    case("bench.report.throughput_table(section=bad)", lambda: mod("bench.report").throughput_table(
        {"results": {}}, section="warp"), "section")
    case("bench.provenance.nvidia_smi_query(index=-1)", lambda: mod("bench.provenance").nvidia_smi_query(-1), "index",
         "either")
    case("bench.provenance.git_state(path=3)", lambda: mod("bench.provenance").git_state(3), "path")

    # ---- exercises.core
    core = "exercises.core"
    sweep("exercises.core.compare_values", fn(core, "compare_values"), lambda: dict(expected=torch.ones(2), received=torch.ones(2)),
          {"atol": [-1.0, float("nan"), "x"], "rtol": [-1.0], "check_dtype": [1], "where": [None, 3]},
          check=lambda r: r is None)
    case("exercises.core.compare_values(always-equal tensor subclass)", lambda: mod(core).compare_values(
        torch.ones(2), _always_equal_tensor()), "", "ok", check=lambda r: r is not None)
    case("exercises.core.compare_values(always-equal int subclass)", lambda: mod(core).compare_values(
        3, _AlwaysEqualInt(4)), "", "ok", check=lambda r: r is not None)
    sweep("exercises.core.summarize", fn(core, "summarize"), lambda: dict(x=torch.ones(3)),
          {"width": [0, -5, 1.5, True, "80"]}, check=lambda s: isinstance(s, str))

    def cf_base():
        return dict(fn=lambda x: x * 2, reference=lambda x: x * 2, cases=[mod(core).Case(args=(torch.ones(2),))],
                    exercise="ex-00-x", quiet=True)
    sweep("exercises.core.check_function", fn(core, "check_function"), cf_base,
          {"reference": [3], "cases": [None, 3, [1]], "exercise": [None, 3, ""], "atol": [-1.0, "x"],
           "rtol": [float("nan")], "timeout_s": [0.0, -1.0, "5"], "compare": [3], "check_dtype": [1],
           "allow_mutation": ["no"], "max_details": [-1, 1.5], "name": [3], "quiet": [1]},
          check=lambda r: r is not None)

    case("exercises.core.check_function(fn=3)", lambda: mod(core).check_function(
        3, lambda x: x, [mod(core).Case(args=(1,))], exercise="ex-00-x", quiet=True), "", "ok",
        check=lambda r: not r.passed and "expected a function" in r.error)  # the learner's slip: a verdict

    def learner_breaks_softmax():
        def learner(x):
            torch.softmax = None
            return x
        real = torch.softmax
        try:
            report = mod(core).check_function(learner, lambda x: torch.softmax(x, -1),
                                              [mod(core).Case(args=(torch.ones(3),))], exercise="ex-00-x", quiet=True,
                                              timeout_s=2.0)
        finally:
            broken = torch.softmax is None
            torch.softmax = real
        again = mod(core).check_function(lambda x: torch.softmax(x, -1), lambda x: torch.softmax(x, -1),
                                         [mod(core).Case(args=(torch.ones(3),))], exercise="ex-00-x", quiet=True)
        return report is not None and not broken and getattr(again, "passed", None) is True
    case("exercises.core.check_function(learner sets torch.softmax=None)", learner_breaks_softmax, "", "ok",
         check=lambda r: r is True)

    def learner_hanging_repr():
        report = mod(core).check_function(lambda x: _HangingRepr(), lambda x: x,
                                          [mod(core).Case(args=(torch.ones(3),))], exercise="ex-00-x", quiet=False,
                                          timeout_s=1.0)
        return getattr(report, "passed", None) is False
    case("exercises.core.check_function(result with hanging __repr__)", learner_hanging_repr, "", "ok",
         check=lambda r: r is True)

    def learner_changes_state():
        dtype, grad, threads = torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads()

        def learner(x):
            torch.set_default_dtype(torch.float64)
            torch.set_grad_enabled(False)
            torch.set_num_threads(1 if threads != 1 else 2)
            return x
        mod(core).check_function(learner, lambda x: x, [mod(core).Case(args=(torch.ones(3),))], exercise="ex-00-x",
                                 quiet=True)
        ok = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads()) == (dtype, grad, threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        return ok
    case("exercises.core.check_function(learner changes torch state)", learner_changes_state, "", "ok",
         check=lambda r: r is True)

    def cheat_tensor():
        report = mod(core).check_function(lambda x: _always_equal_tensor(), lambda x: x * 2,
                                          [mod(core).Case(args=(torch.ones(2),))], exercise="ex-00-x", quiet=True)
        return getattr(report, "passed", None) is False
    case("exercises.core.check_function(always-equal tensor subclass)", cheat_tensor, "", "ok", check=lambda r: r is True)

    def cheat_int():
        report = mod(core).check_function(lambda x: _AlwaysEqualInt(0), lambda x: x + 1,
                                          [mod(core).Case(args=(3,))], exercise="ex-00-x", quiet=True)
        return getattr(report, "passed", None) is False
    case("exercises.core.check_function(always-equal int subclass)", cheat_int, "", "ok", check=lambda r: r is True)

    # ---- classroom
    case("classroom.parse_exercises(None)", lambda: mod("classroom").parse_exercises(None), "notebook")
    case("classroom.parse_exercises({})", lambda: mod("classroom").parse_exercises({}), "notebook")
    case("classroom.stub_solution(None)", lambda: mod("classroom").stub_solution(None, "ex-01-a"), "source")
    case("classroom.student_notebook(None)", lambda: mod("classroom").student_notebook(None), "notebook")
    case("classroom.write_edition(kind=bad)", lambda: mod("classroom").write_edition("teacher", tempfile.mkdtemp(), []),
         "kind")
    case("classroom.grade_notebook(missing)", lambda: mod("classroom").grade_notebook("/nonexistent.ipynb"), "path")
    case("classroom.grade_notebook(timeout=0)", lambda: mod("classroom").grade_notebook("/nonexistent.ipynb", timeout=0),
         "timeout")

    # ---- seed
    sweep("transformer_book.seed_everything", lambda seed: import_module("transformer_book").seed_everything(seed),
          lambda: dict(seed=0), {"seed": [-1, 1.5, True, "0", None, 2 ** 70]}, check=lambda r: r is None)


class _AlwaysEqualInt(int):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = int.__hash__


def _always_equal_tensor():
    class AlwaysEqual(torch.Tensor):
        def __eq__(self, other):
            return True

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (torch.allclose, torch.equal, torch.Tensor.equal):
                return True
            if func in (torch.isclose, torch.eq, torch.Tensor.eq, torch.Tensor.__eq__):
                return torch.ones(torch.broadcast_shapes(*(a.shape for a in args if isinstance(a, torch.Tensor))),
                                  dtype=torch.bool)
            return super().__torch_function__(func, types, args, kwargs)
    return torch.zeros(2).as_subclass(AlwaysEqual)


class _HangingRepr:
    def __repr__(self):
        while True:
            time.sleep(0.01)

    __str__ = __repr__


_build_table()

# --------------------------------------------------------------------------- classifying


def classify(c: SweepCase, outcome: str, value: Any = None, exc: BaseException | None = None) -> tuple[str, str]:
    """``(bucket, detail)`` of a case that returned ``value`` or raised ``exc``."""
    if exc is not None:
        if isinstance(exc, (ModuleNotFoundError, AttributeError)) and _missing_api(exc):
            return "n/a", f"{type(exc).__name__}: {exc}"
        text = f"{type(exc).__name__}: {str(exc)[:300]}"
        if c.expect == "ok":
            return "unclear", "valid input raised " + text
        if isinstance(exc, c.errors):
            names = {n for a in c.arg.lower().split("|") for n in (a, a.replace("_", " "))}
            if not c.arg or any(n in str(exc).lower() for n in names):
                return "clear", text
            return "unclear", f"message does not name {c.arg!r}: " + text
        return "unclear", text
    if c.check is None and not no_nan(value):
        return "nan", "result holds NaN"
    if c.expect == "error":
        return "silent", f"returned {_summary(value)} instead of an error"
    check = c.check or no_nan
    try:
        good = bool(check(value))
    except Exception as e:  # a check that cannot run on this result: the result is wrong
        good, value = False, f"check failed: {type(e).__name__}: {e}"
    return ("defined", "") if good else ("silent", f"result failed the check: {_summary(value)}")


def _missing_api(exc: BaseException) -> bool:
    text = str(exc)
    return "transformer_book" in text and ("No module named" in text or "has no attribute" in text)


def _summary(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {value.dtype}"
    try:
        text = repr(value)
    except Exception:
        text = type(value).__name__
    return text[:100]


def run_case(c: SweepCase) -> tuple[str, str]:
    """Run one case in this process (no time limit)."""
    try:
        value = c.call()
    except BaseException as exc:  # noqa: BLE001 - every exception is data here
        if isinstance(exc, KeyboardInterrupt):
            raise
        return classify(c, "raised", exc=exc)
    return classify(c, "returned", value=value)


def run_forked(c: SweepCase, timeout: float, max_mb: float) -> tuple[str, str, float]:
    """Run one case in a forked child; ``(bucket, detail, seconds)``."""
    r, w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (int(max_mb * 2**20) + _base_vm(), resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
        try:
            bucket, detail = run_case(c)
        except MemoryError:
            bucket, detail = "hang", "MemoryError (over the memory limit)"
        except BaseException as exc:  # noqa: BLE001
            bucket, detail = "unclear", f"sweep error {type(exc).__name__}: {exc}"
        with os.fdopen(w, "wb") as f:
            pickle.dump((bucket, detail), f)
        os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        return "hang", f"no answer after {timeout} s", time.perf_counter() - start
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    try:
        bucket, detail = pickle.loads(data)
    except Exception:
        bucket, detail = "hang", "the child died (memory limit or crash)"
    return bucket, detail, time.perf_counter() - start


def _base_vm() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per call")
    parser.add_argument("--max-mb", type=float, default=400.0, help="memory per call beyond the parent's")
    parser.add_argument("--list", default="unclear,silent,nan,hang",
                        help="buckets whose cases are listed (comma-separated, or 'none')")
    parser.add_argument("--filter", default="", help="only cases whose label contains this")
    parser.add_argument("--json", default="", help="write every case's outcome to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import transformer_book  # noqa: F401 - fail early if the package is not importable
    print(f"package: {os.path.dirname(transformer_book.__file__)}")
    counts: Counter = Counter()
    rows = []
    for c in CASES:
        if args.filter and args.filter not in c.label:
            continue
        bucket, detail, seconds = run_forked(c, args.timeout, args.max_mb)
        counts[bucket] += 1
        rows.append({"label": c.label, "bucket": bucket, "detail": detail, "seconds": round(seconds, 3)})
    show = set() if args.list == "none" else set(args.list.split(","))
    for row in rows:
        if row["bucket"] in show:
            print(f"  [{row['bucket']}] {row['label']}: {row['detail'][:200]}")
    calls = sum(v for k, v in counts.items() if k != "n/a")
    print(f"calls {calls}: clear errors {counts['clear']}, defined results {counts['defined']}, "
          f"unclear errors {counts['unclear']}, silently wrong {counts['silent']}, NaN results {counts['nan']}, "
          f"hangs {counts['hang']} (not in this version: {counts['n/a']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": dict(counts), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
