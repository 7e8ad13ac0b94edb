r"""Benchmark chapter 9's FlashAttention kernel against naive attention and PyTorch's kernels.

Run it on a machine with a CUDA GPU::

    python -m transformer_book.bench flash            # full run -> book/data/flash_bench.json
    python -m transformer_book.bench flash --quick    # a few minutes -> book/data/flash_bench_quick.json

What it measures (all settings are written into the JSON):

* ``correctness``: ours and ``F.scaled_dot_product_attention`` (same dtype) against a float64
  reference, output and gradients, max absolute differences; measured before any timing.
* ``forward``: forward TFLOP/s of ``naive`` (``softmax(QK^T/sqrt(d))V`` in PyTorch),
  ``sdpa_flash`` / ``sdpa_cudnn`` (SDPA pinned to its FlashAttention / cuDNN backend) and
  ``ours``, for N in 1k..16k with B*N = 32k tokens, H = 16, D in {64, 128}, fp16 and bf16,
  causal and not.
* ``forward_backward``: the same at N = 4096, forward + backward.
* ``ladder``: forward TFLOP/s of each rung of :func:`~transformer_book.flash.performance_ladder`.
* ``memory``: peak extra GPU memory of one forward pass vs N up to 65,536, naive vs ours
  (vs SDPA's flash backend); an out-of-memory is recorded as ``"status": "oom"``.

FLOPs: a forward pass does two matmuls of :math:`2 N^2 D` each per head:
:math:`4 B H N^2 D` (halved when causal); backward counts 2.5x the forward (five matmuls
instead of two), forward + backward 3.5x. Times: median of ``triton.testing.do_bench``
(warm-up, then repeated runs timed with CUDA events).

Without a CUDA GPU nothing is measured and no file is written.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from transformer_book import _checks

from .provenance import collect_provenance

__all__ = [
    "SCHEMA",
    "PROVIDERS",
    "SECTIONS",
    "BenchSettings",
    "attention_flops",
    "default_settings",
    "build_record",
    "validate_record",
    "write_record",
    "load_recordings",
    "run_flash_benchmark",
    "NoGPUError",
]

SCHEMA = "transformer_book.bench.flash/1"
PROVIDERS = ("naive", "sdpa_flash", "sdpa_cudnn", "ours")
SECTIONS = ("correctness", "forward", "forward_backward", "ladder", "memory")
STATUSES = ("ok", "oom", "unsupported", "error")
_MODES = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class NoGPUError(RuntimeError):
    """Raised when a benchmark is asked to run without a CUDA GPU."""


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool = False,
                    mode: str = "fwd") -> float:
    """Floating-point operations of attention over ``(batch, heads, seq_len, head_dim)``.

    Forward: ``4 * batch * heads * seq_len**2 * head_dim`` (QK^T and PV, 2 flops per
    multiply-add), halved for causal attention; ``mode="bwd"`` is 2.5x that and
    ``"fwd_bwd"`` 3.5x.
    """
    for name, value in (("batch", batch), ("heads", heads), ("seq_len", seq_len), ("head_dim", head_dim)):
        _checks.positive_int(name, value)
    _checks.boolean("causal", causal)
    _checks.one_of("mode", mode, tuple(_MODES))
    forward = 4.0 * batch * heads * seq_len * seq_len * head_dim
    if causal:
        forward /= 2
    return forward * _MODES[mode]


@dataclass
class BenchSettings:
    """Everything that decides what is measured; stored verbatim in the record."""

    quick: bool = False
    sections: tuple = SECTIONS
    tokens: int = 32768  # B * N for the throughput sections
    heads: int = 16
    seq_lens: tuple = (1024, 2048, 4096, 8192, 16384)
    head_dims: tuple = (64, 128)
    dtypes: tuple = ("float16", "bfloat16")
    causal: tuple = (False, True)
    providers: tuple = PROVIDERS
    fwd_bwd_seq_len: int = 4096
    ladder_seq_len: int = 4096
    ladder_head_dims: tuple = (64, 128)
    ladder_dtype: str = "float16"
    memory_seq_lens: tuple = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
    memory_batch: int = 1
    memory_heads: int = 16
    memory_head_dim: int = 64
    memory_dtype: str = "float16"
    memory_providers: tuple = ("naive", "sdpa_flash", "ours")
    correctness_seq_len: int = 1000  # not a multiple of any tile: exercises the ragged tail
    correctness_batch: int = 2
    warmup_ms: int = 25
    rep_ms: int = 100
    statistic: str = "median"
    timer: str = "triton.testing.do_bench (CUDA events)"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"sections must be drawn from {SECTIONS}, got unknown {unknown}")
        for n in self.seq_lens:
            _checks.positive_int("seq_lens entry", n)
            if self.tokens % n:
                raise ValueError(f"tokens={self.tokens} must be a multiple of every seq_len, got {n}")
        if self.tokens % self.fwd_bwd_seq_len or self.tokens % self.ladder_seq_len:
            raise ValueError("tokens must be a multiple of fwd_bwd_seq_len and ladder_seq_len")
        for dt in (*self.dtypes, self.ladder_dtype, self.memory_dtype):
            if dt not in _DTYPES:
                raise ValueError(f"dtype names must be in {tuple(_DTYPES)}, got {dt!r}")
        bad = [p for p in (*self.providers, *self.memory_providers) if p not in PROVIDERS]
        if bad:
            raise ValueError(f"providers must be in {PROVIDERS}, got {bad}")

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def default_settings(quick: bool = False, sections=None) -> BenchSettings:
    """The full grid of the chapter, or (``quick``) a subset that runs in a few minutes."""
    quick = _checks.boolean("quick", quick)
    if sections is not None and (isinstance(sections, str) or not isinstance(sections, (list, tuple))):
        raise TypeError(f"sections must be a list of section names or None, got {_checks.describe(sections)}")
    sections = tuple(sections) if sections else SECTIONS
    if not quick:
        return BenchSettings(quick=False, sections=sections)
    return BenchSettings(
        quick=True, sections=sections, seq_lens=(1024, 4096), dtypes=("float16",),
        ladder_head_dims=(64,), memory_seq_lens=(1024, 4096, 16384), rep_ms=50,
    )


# ----------------------------------------------------------------------------------------
# The record: build, check, write, read
# ----------------------------------------------------------------------------------------

_ROW_KEYS = {
    "correctness": {"dtype", "causal", "seq_len", "head_dim", "batch", "heads", "ours_vs_float64",
                    "sdpa_vs_float64", "passed"},
    "forward": {"provider", "dtype", "causal", "seq_len", "head_dim", "batch", "heads", "status"},
    "forward_backward": {"provider", "dtype", "causal", "seq_len", "head_dim", "batch", "heads", "status"},
    "ladder": {"step", "name", "config", "dtype", "causal", "seq_len", "head_dim", "batch", "heads", "status"},
    "memory": {"provider", "dtype", "seq_len", "head_dim", "batch", "heads", "status"},
}


def build_record(provenance: dict, settings: BenchSettings, results: dict, complete: bool,
                 section_provenance: dict | None = None) -> dict:
    """Assemble (and check) the JSON-ready record.

    ``section_provenance`` maps each section to the date, commit and GPU of the run that
    measured it (sections can come from several runs, see ``merge`` in :func:`run_flash_benchmark`).
    """
    settings_dict = settings.as_dict()
    settings_dict["sections"] = [s for s in SECTIONS if s in results]
    record = {
        "schema": SCHEMA,
        "complete": bool(complete),
        "provenance": provenance,
        "settings": settings_dict,
        "results": results,
        "section_provenance": section_provenance or {s: _provenance_brief(provenance) for s in results},
    }
    validate_record(record)
    return record


def validate_record(record) -> None:
    """Raise ``ValueError`` naming the first problem if ``record`` is not a valid benchmark record.

    A record must come from a GPU (``provenance.gpu.name``): there are no CPU records.
    """
    if not isinstance(record, dict):
        raise ValueError(f"record must be a dict, got {type(record).__name__}")
    if record.get("schema") != SCHEMA:
        raise ValueError(f"record['schema'] must be {SCHEMA!r}, got {record.get('schema')!r}")
    for key, kind in (("complete", bool), ("provenance", dict), ("settings", dict), ("results", dict)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"record[{key!r}] must be a {kind.__name__}, got {record.get(key)!r:.80}")
    prov = record["provenance"]
    for key in ("date_utc", "torch", "triton", "cuda", "git", "gpu"):
        if key not in prov:
            raise ValueError(f"record['provenance'] lacks {key!r}")
    if not isinstance(prov["gpu"], dict) or not prov["gpu"].get("name"):
        raise ValueError("record['provenance']['gpu']['name'] is missing: benchmark records come from a GPU")
    sec_prov = record.get("section_provenance", {})
    if not isinstance(sec_prov, dict) or not set(sec_prov) <= set(SECTIONS):
        raise ValueError(f"record['section_provenance'] must map sections {SECTIONS} to provenance, got {sec_prov!r:.80}")
    for section, rows in record["results"].items():
        if section not in _ROW_KEYS:
            raise ValueError(f"record['results'] has unknown section {section!r}; expected {SECTIONS}")
        if not isinstance(rows, list):
            raise ValueError(f"record['results'][{section!r}] must be a list, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            missing = _ROW_KEYS[section] - set(row) if isinstance(row, dict) else _ROW_KEYS[section]
            if missing:
                raise ValueError(f"record['results'][{section!r}][{i}] lacks {sorted(missing)}")
            status = row.get("status", "ok")
            if status not in STATUSES:
                raise ValueError(f"record['results'][{section!r}][{i}]['status'] must be in {STATUSES}, got {status!r}")
            if status == "ok" and section in ("forward", "forward_backward", "ladder"):
                for key in ("ms", "tflops"):
                    value = row.get(key)
                    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                        raise ValueError(f"record['results'][{section!r}][{i}][{key!r}] must be a positive number, got {value!r}")
            if status == "ok" and section == "memory":
                value = row.get("peak_bytes")
                if not (isinstance(value, int) and value >= 0):
                    raise ValueError(f"record['results']['memory'][{i}]['peak_bytes'] must be an int >= 0, got {value!r}")


def write_record(record: dict, path) -> Path:
    """Validate, then write ``record`` to ``path`` atomically (a reader never sees half a file)."""
    validate_record(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_recordings(directory, pattern: str = "flash_bench*.json") -> list[tuple[Path, dict]]:
    """Valid records under ``directory`` as ``(path, record)``: complete full runs first, then
    by date, newest first. Files that do not validate are skipped."""
    directory = Path(directory)
    found = []
    for path in sorted(directory.glob(pattern)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            validate_record(record)
        except (OSError, ValueError):
            continue
        found.append((path, record))
    found.sort(key=lambda pr: pr[1]["provenance"]["date_utc"], reverse=True)
    found.sort(key=lambda pr: (not pr[1]["complete"], pr[1]["settings"].get("quick", True)))
    return found


# ----------------------------------------------------------------------------------------
# Measuring (CUDA only)
# ----------------------------------------------------------------------------------------


def _provider_fn(name: str, causal: bool, config=None):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..flash import flash_attention, naive_attention

    if name == "naive":
        return lambda q, k, v: naive_attention(q, k, v, causal=causal)
    if name in ("sdpa_flash", "sdpa_cudnn"):
        backend = SDPBackend.FLASH_ATTENTION if name == "sdpa_flash" else SDPBackend.CUDNN_ATTENTION

        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return run
    if name == "ours":
        return lambda q, k, v: flash_attention(q, k, v, causal=causal, config=config)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {name!r}")


def _inputs(batch, heads, seq_len, head_dim, dtype, requires_grad=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=dtype, generator=g)
            .requires_grad_(requires_grad) for _ in range(4)]


def _release():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _failure(err: Exception) -> dict:
    """Status and message for a case that raised: ``oom``, ``unsupported`` (e.g. a pinned SDPA
    backend that has no kernel for this shape / GPU: "No available kernel") or ``error``."""
    text = str(err).strip()
    low = text.lower()
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in low:
        status = "oom"
    elif isinstance(err, RuntimeError) and any(
            phrase in low for phrase in ("no available kernel", "no viable backend", "not supported")):
        status = "unsupported"
    else:
        status = "error"
    first = text.splitlines()[0][:300] if text else ""
    return {"status": status, "error": f"{type(err).__name__}: {first}"}


def _timed_row(row: dict, fn, flops: float, settings: BenchSettings, grad_to_none=None) -> dict:
    """Time ``fn``; fill ms (median, p20, p80) and TFLOP/s, or the failure status."""
    import triton.testing

    try:
        fn()  # first call: compiles / autotunes outside the timed region
        torch.cuda.synchronize()
        p50, p20, p80 = triton.testing.do_bench(
            fn, warmup=settings.warmup_ms, rep=settings.rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
        row.update(status="ok", ms=p50, ms_p20=p20, ms_p80=p80, tflops=flops / (p50 * 1e-3) / 1e12)
    except Exception as err:  # noqa: BLE001 - one failing case must not end a long run
        row.update(**_failure(err))
    _release()
    return row


def _compare_with_float64(b, h, n, d, dtype, causal) -> dict:
    """Max |difference| to a float64 reference of ours and of SDPA (same dtype): out, dq, dk, dv."""
    import torch.nn.functional as F

    q, k, v, do = _inputs(b, h, n, d, dtype, seed=1)

    def run(fn, cast=None):
        args = [t.detach().to(cast or t.dtype).requires_grad_() for t in (q, k, v)]  # fresh leaves
        out = fn(*args)
        out.backward(do.to(out.dtype))
        return [out.detach()] + [a.grad for a in args]

    exact = run(_provider_fn("naive", causal), cast=torch.float64)
    names = ("out", "dq", "dk", "dv")

    def errors(got):
        return {nm: (g.double() - e).abs().max().item() for nm, g, e in zip(names, got, exact)}

    ours = errors(run(_provider_fn("ours", causal)))
    sdpa = errors(run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)))
    return {"ours_vs_float64": ours, "sdpa_vs_float64": sdpa,
            "passed": all(ours[nm] <= 2 * sdpa[nm] + 1e-3 for nm in names)}


def _section_correctness(settings, progress):
    rows = []
    n, b, h = settings.correctness_seq_len, settings.correctness_batch, settings.heads
    for dtype_name in settings.dtypes:
        for d in settings.head_dims:
            for causal in settings.causal:
                row = dict(dtype=dtype_name, causal=causal, seq_len=n, head_dim=d, batch=b, heads=h,
                           rule="ours <= 2 * sdpa + 1e-3 for out, dq, dk, dv")
                try:
                    row.update(_compare_with_float64(b, h, n, d, _DTYPES[dtype_name], causal))
                except Exception as err:  # noqa: BLE001 - record it; the timings still run
                    row.update(ours_vs_float64=None, sdpa_vs_float64=None, passed=False, **_failure(err))
                rows.append(row)
                progress(f"correctness {dtype_name} D={d} causal={causal}: passed={row['passed']} "
                         f"ours {row['ours_vs_float64']} sdpa {row['sdpa_vs_float64']}")
                _release()
    return rows


def _section_throughput(settings, progress, mode):
    rows = []
    seq_lens = settings.seq_lens if mode == "fwd" else (settings.fwd_bwd_seq_len,)
    for dtype_name in settings.dtypes:
        for d in settings.head_dims:
            for causal in settings.causal:
                for n in seq_lens:
                    b = settings.tokens // n
                    q, k, v, do = _inputs(b, settings.heads, n, d, _DTYPES[dtype_name], requires_grad=(mode != "fwd"))
                    flops = attention_flops(b, settings.heads, n, d, causal, mode)
                    for provider in settings.providers:
                        f = _provider_fn(provider, causal)
                        if mode == "fwd":
                            def fn(f=f):
                                with torch.no_grad():
                                    return f(q, k, v)
                            grad_to_none = None
                        else:
                            def fn(f=f):
                                f(q, k, v).backward(do)
                            grad_to_none = [q, k, v]
                        row = dict(provider=provider, dtype=dtype_name, causal=causal, seq_len=n, head_dim=d,
                                   batch=b, heads=settings.heads, flops=flops)
                        rows.append(_timed_row(row, fn, flops, settings, grad_to_none))
                        progress(f"{mode} {provider:10s} {dtype_name} D={d} causal={causal!s:5} N={n:6d}: "
                                 f"{row['status']} {row.get('tflops', 0):.1f} TFLOP/s")
                    del q, k, v, do
                    _release()
    return rows


def _section_ladder(settings, progress):
    from ..flash import performance_ladder

    rows = []
    n = settings.ladder_seq_len
    b = settings.tokens // n
    for d in settings.ladder_head_dims:
        for causal in settings.causal:
            q, k, v, _ = _inputs(b, settings.heads, n, d, _DTYPES[settings.ladder_dtype])
            flops = attention_flops(b, settings.heads, n, d, causal, "fwd")
            for step, (name, config) in enumerate(performance_ladder()):
                f = _provider_fn("ours", causal, config)

                def fn(f=f):
                    with torch.no_grad():
                        return f(q, k, v)

                row = dict(step=step, name=name, config=config.as_dict(), dtype=settings.ladder_dtype, causal=causal,
                           seq_len=n, head_dim=d, batch=b, heads=settings.heads, flops=flops)
                rows.append(_timed_row(row, fn, flops, settings))
                progress(f"ladder D={d} causal={causal!s:5} {step}: {name:40s} {row['status']} "
                         f"{row.get('tflops', 0):.1f} TFLOP/s")
            del q, k, v
            _release()
    return rows


def _section_memory(settings, progress):
    rows = []
    b, h, d = settings.memory_batch, settings.memory_heads, settings.memory_head_dim
    dtype = _DTYPES[settings.memory_dtype]
    for n in settings.memory_seq_lens:
        for provider in settings.memory_providers:
            row = dict(provider=provider, dtype=settings.memory_dtype, causal=False, seq_len=n, head_dim=d,
                       batch=b, heads=h)
            q = k = v = out = None
            try:
                q, k, v, _ = _inputs(b, h, n, d, dtype)
                f = _provider_fn(provider, False)
                with torch.no_grad():
                    f(q, k, v)  # compile / autotune first, so that tuning buffers are not counted
                _release()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                with torch.no_grad():
                    out = f(q, k, v)
                torch.cuda.synchronize()
                row.update(status="ok", peak_bytes=int(torch.cuda.max_memory_allocated() - base),
                           input_bytes=int(3 * q.numel() * q.element_size()))
            except Exception as err:  # noqa: BLE001 - an OOM here is a result, not a crash
                row.update(**_failure(err))
            del q, k, v, out
            _release()
            rows.append(row)
            progress(f"memory {provider:10s} N={n:6d}: {row['status']} {row.get('peak_bytes', 0) / 2**20:.1f} MiB")
    return rows


def _provenance_brief(prov: dict) -> dict:
    return {"date_utc": prov["date_utc"], "git": prov.get("git"), "gpu": (prov.get("gpu") or {}).get("name"),
            "torch": prov.get("torch"), "triton": prov.get("triton")}


def _existing_results(out, settings: BenchSettings, gpu_name: str) -> tuple[dict, dict]:
    """(results, section_provenance) of the record at ``out``, to be extended by this run."""
    path = Path(out)
    if not path.exists():
        return {}, {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        validate_record(old)
    except (OSError, ValueError) as err:
        raise ValueError(f"--merge: {path} is not a valid benchmark record ({err}); move it away or drop --merge") from err
    if bool(old["settings"].get("quick")) != settings.quick:
        raise ValueError(f"--merge: {path} holds a {'quick' if old['settings'].get('quick') else 'full'} run; "
                         f"this run is {'quick' if settings.quick else 'full'}: not merging different grids")
    if old["provenance"]["gpu"]["name"] != gpu_name:
        raise ValueError(f"--merge: {path} was measured on {old['provenance']['gpu']['name']!r}, "
                         f"this GPU is {gpu_name!r}: not merging different GPUs")
    sections = old.get("section_provenance") or {s: _provenance_brief(old["provenance"]) for s in old["results"]}
    return dict(old["results"]), dict(sections)


def run_flash_benchmark(settings: BenchSettings | None = None, out=None, progress=print, merge: bool = False) -> dict:
    """Run the benchmark on the current CUDA GPU and return the record.

    With ``out`` the record is written after every section, so a run cut short still leaves
    what it measured. With ``merge=True`` the sections already in ``out`` (same GPU, same
    grid) are kept and this run's sections added or replaced, so that a long benchmark can be
    recorded in several shorter runs. ``"complete"`` is true once every section is present.
    Raises :class:`NoGPUError` without a CUDA GPU, ``ImportError`` without triton.
    """
    if settings is None:
        settings = default_settings()
    if not isinstance(settings, BenchSettings):
        raise TypeError(f"settings must be a BenchSettings, got {type(settings).__name__}")
    if not torch.cuda.is_available():
        raise NoGPUError("no CUDA GPU is available (torch.cuda.is_available() is False); nothing was measured")
    import triton  # noqa: F401 - fail early and clearly without it

    provenance = collect_provenance()
    results, section_provenance = ({}, {})
    if merge and out is not None:
        results, section_provenance = _existing_results(out, settings, provenance["gpu"]["name"])
    runners = {
        "correctness": lambda: _section_correctness(settings, progress),
        "forward": lambda: _section_throughput(settings, progress, "fwd"),
        "forward_backward": lambda: _section_throughput(settings, progress, "fwd_bwd"),
        "ladder": lambda: _section_ladder(settings, progress),
        "memory": lambda: _section_memory(settings, progress),
    }
    started = time.perf_counter()
    record = None
    for section in settings.sections:
        t0 = time.perf_counter()
        results[section] = runners[section]()
        section_provenance[section] = _provenance_brief(provenance)
        progress(f"== {section} done in {time.perf_counter() - t0:.0f} s")
        provenance["elapsed_s"] = round(time.perf_counter() - started, 1)
        record = build_record(provenance, settings, results, complete=set(results) == set(SECTIONS),
                              section_provenance=section_provenance)
        if out is not None:
            write_record(record, out)
    if record is None:
        record = build_record(provenance, settings, results, complete=set(results) == set(SECTIONS),
                              section_provenance=section_provenance)
    return record
