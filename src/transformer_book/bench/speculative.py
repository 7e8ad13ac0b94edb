"""Chapter 10's measurement: speculative decoding against the target decoding alone, side by side.

``python -m transformer_book.bench speculative [--out PATH] [--prompts N] [--new-tokens N]``
runs on a CUDA GPU: chapter 10's target and draft (``book/data/ch10_*.pt``) on the GPU, the same
code-completion prompts as the chapter, and for the model draft and the prompt-lookup draft and
every ``k``: the wall-clock speedup over ``generate(target, ..., use_cache=True)`` (chapter 8's
static cache), whether the greedy tokens are identical, the accepted lengths, and the measured
``alpha`` and ``c`` with Theorem 3.8's prediction. It writes ``book/data/speculative_bench.json``
(schema :data:`SCHEMA`, provenance from :mod:`transformer_book.bench.provenance`). Without a
CUDA GPU it says so and exits with status 2, writing nothing.

The chapter calls :func:`measure_speedups` and :func:`measure_costs` itself on the CPU: one
function measures both, so the GPU record and the CPU run are the same experiment.

Every timing is a ratio taken side by side: in each repetition, each prompt is decoded by the
target alone and by every configuration, one after the other, and a configuration's speedup is
the median over repetitions of (target-alone seconds / its seconds) for that repetition.

Theorem 3.8 describes the decoding only; both methods also run the target over the prompt
first (the prefill), a shared cost that dilutes every speedup the fewer tokens are generated.
So each repetition also times that prefill alone, and every run reports, next to the
end-to-end ``speedup``, the ``decode_speedup``: both times minus the prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from transformer_book import _checks
from transformer_book.generate import generate
from transformer_book.speculative import (
    PromptLookupDraft,
    acceptance_rate,
    best_k,
    completion_prompts,
    decode_step_seconds,
    expected_speedup,
    load_chapter10_models,
    speculative_generate,
)

from .provenance import collect_provenance

__all__ = ["SCHEMA", "DEFAULT_OUT", "measure_costs", "measure_speedups", "predicted_speedup", "validate_record",
           "load_recording", "add_parser", "run"]

SCHEMA = "transformer_book.bench.speculative/1"
DEFAULT_OUT = "book/data/speculative_bench.json"


def _no_sync() -> None:
    pass


def _cuda_sync() -> None:
    torch.cuda.synchronize()


@torch.no_grad()
def measure_costs(target: nn.Module, draft: nn.Module, idx: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8),
                  repeats: int = 5, steps: int = 8) -> dict:
    """Decoding-step costs, interleaved: ``c`` = one draft step / one target step (medians of ratios).

    Also the cost of a verification pass of ``k + 1`` tokens in target steps, for each ``k``
    (the theorem counts it as 1). ``idx`` ``(1, T)``: the context the steps follow.
    """
    ratios, verify = [], {k: [] for k in ks}
    target_s, draft_s = [], []
    for _ in range(repeats):
        t = decode_step_seconds(target, idx, 1, steps)
        d = decode_step_seconds(draft, idx, 1, steps)
        target_s.append(t)
        draft_s.append(d)
        ratios.append(d / t)
        for k in ks:
            verify[k].append(decode_step_seconds(target, idx, k + 1, steps) / decode_step_seconds(target, idx, 1, steps))
    return {"c": statistics.median(ratios), "target_step_s": statistics.median(target_s),
            "draft_step_s": statistics.median(draft_s), "c_all": ratios,
            "verify_cost": {str(k): statistics.median(v) for k, v in verify.items()}}


@torch.no_grad()
def measure_speedups(target: nn.Module, drafts: Mapping[str, object], prompts: Sequence[torch.Tensor],
                     new_tokens: int, ks: Mapping[str, Sequence[int]], repeats: int = 3,
                     sync: Callable[[], None] = _no_sync, progress: Callable[[str], None] | None = None) -> dict:
    """Greedy speculative decoding of every prompt by every ``(draft, k)``, against ``generate`` alone.

    ``drafts``: name -> draft (a GPT or a :class:`PromptLookupDraft`); ``ks``: name -> the ``k``s to
    run; ``prompts``: ``(1, T)`` id tensors on the target's device. Returns
    ``{"baseline_s": [per repetition], "baseline_prompt_s": [per repetition, per prompt],
    "prefill_s": [per repetition], "runs": {name: {k: {...}}}}`` where each run holds the
    per-repetition seconds and speedups, the median speedup, the same for the decoding alone
    (``decode_speedups``, ``decode_speedup``: both times minus the target's prefill of the
    prompts, timed in the same repetition), whether every output was identical to the target's
    own greedy tokens, the accepted length of every pass (last repetition) and the tokens per
    pass.
    """
    baseline, baseline_prompt, prefill = [], [], []
    runs = {name: {str(k): {"seconds": [], "speedups": [], "decode_speedups": [], "identical": True,
                            "accepted_lengths": [], "drafted_lengths": []} for k in ks[name]} for name in drafts}
    for rep in range(repeats):
        base_each, prefill_total = [], 0.0
        spec_total = {name: {str(k): 0.0 for k in ks[name]} for name in drafts}
        for i, idx in enumerate(prompts):
            prefill_total += _prefill_seconds(target, idx, sync)
            sync()
            t0 = time.perf_counter()
            reference = generate(target, idx, new_tokens, use_cache=True)
            sync()
            base_each.append(time.perf_counter() - t0)
            for name, draft in drafts.items():
                for k in ks[name]:
                    sync()
                    t0 = time.perf_counter()
                    out, stats = speculative_generate(target, draft, idx, new_tokens, k=k)
                    sync()
                    spec_total[name][str(k)] += time.perf_counter() - t0
                    run = runs[name][str(k)]
                    run["identical"] = run["identical"] and torch.equal(out, reference)
                    if rep == repeats - 1:
                        run["accepted_lengths"] += stats.accepted_lengths
                        run["drafted_lengths"] += stats.drafted_lengths
            if progress is not None:
                progress(f"repetition {rep + 1}/{repeats}, prompt {i + 1}/{len(prompts)}")
        base_total = sum(base_each)
        baseline.append(base_total)
        baseline_prompt.append(base_each)
        prefill.append(prefill_total)
        for name in drafts:
            for k in ks[name]:
                run = runs[name][str(k)]
                run["seconds"].append(spec_total[name][str(k)])
                run["speedups"].append(base_total / spec_total[name][str(k)])
                # The decoding alone: both pay the same prefill (speculative decoding also its
                # draft's, which stays in its time). Clamped: on a noisy machine a run can come
                # out no slower than the prefill timed separately.
                run["decode_speedups"].append((base_total - prefill_total)
                                              / max(spec_total[name][str(k)] - prefill_total, 1e-9))
    for name in drafts:
        for run in runs[name].values():
            run["speedup"] = statistics.median(run["speedups"])
            run["decode_speedup"] = statistics.median(run["decode_speedups"])
            n = len(run["accepted_lengths"])
            run["tokens_per_pass"] = (sum(run["accepted_lengths"]) + n) / n if n else 0.0
    return {"baseline_s": baseline, "baseline_prompt_s": baseline_prompt, "prefill_s": prefill, "runs": runs}


@torch.no_grad()
def _prefill_seconds(target: nn.Module, idx: torch.Tensor, sync: Callable[[], None]) -> float:
    """Seconds of ``generate``'s first step alone: the prompt through a fresh cache, then the argmax."""
    cache = target.new_cache(idx.shape[0], max_len=idx.shape[1])
    sync()
    t0 = time.perf_counter()
    target.decode_step(idx, cache).argmax(dim=-1).tolist()  # tolist: the host waits, as generate's loop does
    sync()
    return time.perf_counter() - t0


def predicted_speedup(alphas: Sequence[float], c: float, k: int, weights: Sequence[float] | None = None) -> float:
    """Theorem 3.8 for a set of prompts, each with its own measured ``alpha``, combined as
    :func:`measure_speedups` combines the measurement: a ratio of summed times.

    Prompt ``i`` takes ``w_i`` seconds alone (``weights``, e.g. ``baseline_prompt_s``; default
    equal) and, by the theorem, ``w_i / S(alpha_i)`` speculatively, so the set's speedup is
    ``sum(w) / sum(w_i / S(alpha_i))``. With one ``alpha`` for all prompts it is
    :func:`~transformer_book.speculative.expected_speedup`. Prompts differ (code that repeats
    itself, code that does not), and a prompt's speculative time is proportional to its passes
    per token, ``(1 - alpha) / (1 - alpha**(k+1))``, which is convex in ``alpha``: averaged over
    the prompts it exceeds its value at the mean ``alpha`` (Jensen), so the theorem at the mean
    ``alpha`` overestimates a mixture; the slow, low-``alpha`` prompts dominate the summed time.
    """
    _checks.instance("alphas", alphas, Sequence, "a sequence of acceptance rates (one per prompt)")
    if not alphas:
        raise ValueError("alphas must hold one acceptance rate per prompt, got an empty sequence")
    alphas = [_checks.probability(f"alphas[{i}]", a) for i, a in enumerate(alphas)]
    c = _checks.number("c", c, low=0.0)
    k = _checks.integer("k", k, low=0)
    if weights is None:
        weights = [1.0] * len(alphas)
    _checks.instance("weights", weights, Sequence, "a sequence of seconds (one per prompt)")
    if len(weights) != len(alphas):
        raise ValueError(f"weights must hold one number per alpha ({len(alphas)}), got {len(weights)}")
    weights = [_checks.number(f"weights[{i}]", w, low=0.0, low_open=True) for i, w in enumerate(weights)]
    return sum(weights) / sum(w / expected_speedup(a, c, k) for w, a in zip(weights, alphas))


def _alphas(target, draft, prompts, new_tokens) -> list[float]:
    """Each prompt's ``alpha`` on the target's own greedy continuation (teacher-forced: one pass of each model)."""
    values = []
    for idx in prompts:
        tokens = generate(target, idx, new_tokens)
        values.append(acceptance_rate(target, draft, tokens, start=idx.shape[1]))
    return values


def run_speculative_benchmark(out: str | os.PathLike = DEFAULT_OUT, n_prompts: int = 8, new_tokens: int = 64,
                              prompt_tokens: int = 160, repeats: int = 5, ks: Sequence[int] = tuple(range(1, 9)),
                              folder=None, progress: Callable[[str], None] = print,
                              device: str = "cuda") -> dict:
    """Measure on ``device`` (the GPU; ``"cpu"`` for tests) and write the record to ``out`` (atomically)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU is available (torch.cuda.is_available() is False); nothing was measured")
    start = time.perf_counter()
    target, draft, tokenizer, info = load_chapter10_models(folder)
    target, draft = target.to(device), draft.to(device)
    prompts = [torch.tensor([ids], device=device)
               for _, ids in completion_prompts(tokenizer, n_prompts, prompt_tokens, seed=0)]
    for idx in prompts[:2]:  # warm-up: kernels compiled, allocator settled
        speculative_generate(target, draft, idx, 8, k=2)
        generate(target, idx, 8)
    costs = measure_costs(target, draft, prompts[0], ks=tuple(ks))
    alphas = _alphas(target, draft, prompts, new_tokens)
    alpha = sum(alphas) / len(alphas)
    drafts = {"model": draft, "prompt_lookup": PromptLookupDraft(max_ngram=3)}
    measured = measure_speedups(target, drafts, prompts, new_tokens, {"model": ks, "prompt_lookup": ks},
                                repeats=repeats, sync=_cuda_sync if device.type == "cuda" else _no_sync,
                                progress=progress)
    predicted = {str(k): expected_speedup(alpha, costs["c"], k) for k in ks}
    weights = [statistics.median(col) for col in zip(*measured["baseline_prompt_s"])]  # seconds per prompt
    per_prompt = {str(k): predicted_speedup(alphas, costs["c"], k, weights) for k in ks}
    record = {
        "schema": SCHEMA,
        "provenance": dict(collect_provenance(), elapsed_s=time.perf_counter() - start),
        "settings": {"n_prompts": n_prompts, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
                     "repeats": repeats, "ks": list(ks), "dtype": "float32", "device": device.type,
                     "models": {name: info[name]["recipe"]["model"] for name in ("target", "draft")}},
        "results": {"alpha": alpha, "alpha_per_prompt": alphas, "costs": costs, "predicted_speedup": predicted,
                    "predicted_speedup_per_prompt": per_prompt,
                    "best_k_predicted": best_k(alpha, costs["c"], max(ks)), **measured},
    }
    validate_record(record, require_gpu=device.type == "cuda")
    _write_json(out, record)
    return record


def _write_json(path, record: dict) -> None:
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def validate_record(record: object, require_gpu: bool = True) -> dict:
    """Raise ``ValueError`` naming what is missing or malformed in a speculative benchmark record.

    ``require_gpu``: the provenance must name a GPU (what the chapter replays was measured on one).
    """
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} record (schema {record.get('schema') if isinstance(record, dict) else None!r})")
    for key in ("provenance", "settings", "results"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"the record has no {key!r} dict")
    gpu = record["provenance"].get("gpu")
    if require_gpu and not gpu:
        raise ValueError("the record's provenance names no GPU: it was not measured on one")
    results = record["results"]
    for key in ("alpha", "costs", "predicted_speedup", "baseline_s", "runs"):
        if key not in results:
            raise ValueError(f"the record's results lack {key!r}")
    for name, by_k in results["runs"].items():
        for k, run in by_k.items():
            for key in ("speedup", "identical", "accepted_lengths", "tokens_per_pass"):
                if key not in run:
                    raise ValueError(f"results.runs.{name}.{k} lacks {key!r}")
    return record


def load_recording(folder=None, name: str = "speculative_bench.json") -> dict | None:
    """The GPU record in ``folder`` (default: the book's ``book/data``) if one exists and validates, else ``None``."""
    candidates = [Path(folder)] if folder is not None else [Path("../book/data"), Path("book/data"),
                                                             Path(__file__).resolve().parents[3] / "book" / "data"]
    for base in candidates:
        path = base / name
        if path.is_file():
            try:
                return validate_record(json.loads(path.read_text()))
            except (ValueError, json.JSONDecodeError):
                return None
    return None


# --------------------------------------------------------------------------- command line

def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("speculative", help="chapter 10: speculative decoding vs the target alone")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where to write the JSON (default {DEFAULT_OUT})")
    parser.add_argument("--prompts", type=int, default=8, help="code-completion prompts (default 8)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument("--max-k", type=int, default=8, help="k = 1 .. max-k (default 8)")
    return parser


def run(args) -> int:
    for name in ("prompts", "new_tokens", "repeats", "max_k"):
        if getattr(args, name) < 1:
            print(f"transformer_book.bench speculative: --{name.replace('_', '-')} must be >= 1, got "
                  f"{getattr(args, name)}", file=sys.stderr)
            return 2
    if not torch.cuda.is_available():
        print(f"transformer_book.bench speculative: no CUDA GPU is available (torch.cuda.is_available() is "
              f"False). This benchmark needs one; no file was written ({args.out} is untouched).", file=sys.stderr)
        return 2
    record = run_speculative_benchmark(args.out, n_prompts=args.prompts, new_tokens=args.new_tokens,
                                       repeats=args.repeats, ks=tuple(range(1, args.max_k + 1)),
                                       progress=lambda msg: print(msg, flush=True))
    best = max(record["results"]["runs"]["model"].items(), key=lambda kv: kv[1]["speedup"])
    print(f"wrote {args.out}: alpha {record['results']['alpha']:.3f}, c {record['results']['costs']['c']:.3f}, "
          f"best model-draft k={best[0]} speedup {best[1]['speedup']:.2f}x")
    return 0
