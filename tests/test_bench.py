"""The benchmark harness's CPU-testable parts: FLOP formulas, settings, record schema,
provenance, replay helpers, and the refusal to run (or write anything) without a GPU.

Records built here are synthetic and live in pytest's tmp_path only; nothing is written to
book/data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

matplotlib.use("Agg")

from transformer_book.bench import (  # noqa: E402
    SCHEMA,
    BenchSettings,
    NoGPUError,
    attention_flops,
    build_record,
    collect_provenance,
    default_settings,
    load_recordings,
    run_flash_benchmark,
    validate_record,
    write_record,
)
from transformer_book.bench import __main__ as cli  # noqa: E402
from transformer_book.bench import provenance as prov_mod  # noqa: E402
from transformer_book.bench import report  # noqa: E402
from transformer_book.flash import naive_attention  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


# ------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------


def test_attention_flops_formula():
    b, h, n, d = 2, 16, 1024, 64
    fwd = 4 * b * h * n * n * d
    assert attention_flops(b, h, n, d) == fwd
    assert attention_flops(b, h, n, d, causal=True) == fwd / 2
    assert attention_flops(b, h, n, d, mode="bwd") == 2.5 * fwd
    assert attention_flops(b, h, n, d, mode="fwd_bwd") == 3.5 * fwd
    assert attention_flops(b, h, n, d, causal=True, mode="fwd_bwd") == 3.5 * fwd / 2
    # B * N = 32k tokens: the work per token grows linearly with N.
    assert attention_flops(32, 16, 1024, 64) * 2 == attention_flops(16, 16, 2048, 64)


def test_attention_flops_match_torch_flop_counter():
    """The forward count equals what torch counts for naive attention's two matmuls; naive
    backward does 4 matmuls (2x forward), FlashAttention's backward also recomputes QK^T
    (+0.5x): the 2.5x of the formula."""
    b, h, n, d = 1, 2, 64, 16
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        out = naive_attention(q, k, v)
    forward = counter.get_total_flops()
    assert forward == attention_flops(b, h, n, d)
    with FlopCounterMode(display=False) as counter:
        out.backward(torch.ones_like(out))
    assert counter.get_total_flops() + 0.5 * forward == attention_flops(b, h, n, d, mode="bwd")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(batch=0), ValueError, "batch must be a positive int, got 0"),
        (dict(seq_len=10.5), TypeError, "seq_len must be a positive int, got (float )?10.5"),
        (dict(causal=1), TypeError, "causal must be a bool"),
        (dict(mode="train"), ValueError, "mode must be one of .*'train'"),
    ],
)
def test_attention_flops_errors(kwargs, error, match):
    args = dict(batch=1, heads=1, seq_len=8, head_dim=16)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        attention_flops(**args)


# ------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------


def test_default_settings_match_the_chapter():
    full = default_settings()
    assert full.seq_lens == (1024, 2048, 4096, 8192, 16384) and full.tokens == 32768 and full.heads == 16
    assert full.head_dims == (64, 128) and set(full.dtypes) == {"float16", "bfloat16"} and full.causal == (False, True)
    assert set(full.providers) == {"naive", "sdpa_flash", "sdpa_cudnn", "ours"}
    assert full.fwd_bwd_seq_len == 4096 and max(full.memory_seq_lens) == 65536
    quick = default_settings(quick=True, sections=["forward", "memory"])
    assert quick.quick and quick.sections == ("forward", "memory")
    assert set(quick.seq_lens) < set(full.seq_lens)
    json.dumps(full.as_dict())  # JSON-ready


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sections=("forward", "speed")), "unknown.*speed"),
        (dict(seq_lens=(1000,)), "multiple of every seq_len, got 1000"),
        (dict(dtypes=("float8",)), "dtype names.*'float8'"),
        (dict(providers=("xformers",)), "providers must be in .*xformers"),
    ],
)
def test_settings_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchSettings(**kwargs)


# ------------------------------------------------------------------------------------
# the record
# ------------------------------------------------------------------------------------


def synthetic_record(quick=False, complete=True, date="2030-01-01T00:00:00+00:00") -> dict:
    """A made-up record (TEST ONLY) with every section, to exercise schema and plots."""
    prov = collect_provenance()
    prov.update(date_utc=date, gpu={"name": "TEST-ONLY synthetic GPU", "capability": "9.0",
                                    "total_memory_bytes": 80 * 2**30})
    prov["nvidia_smi"] = {"clocks.sm": "1980", "clocks.max.sm": "1980", "clocks.mem": "2619"}
    settings = default_settings(quick=quick)
    fwd = []
    for n in (1024, 2048):
        for provider, tflops in (("naive", 50.0), ("sdpa_flash", 300.0), ("sdpa_cudnn", 350.0), ("ours", 280.0)):
            for causal in (False, True):
                fwd.append(dict(provider=provider, dtype="float16", causal=causal, seq_len=n, head_dim=64,
                                batch=32768 // n, heads=16, status="ok", ms=1.0, tflops=tflops))
    fwd.append(dict(provider="sdpa_cudnn", dtype="float16", causal=False, seq_len=4096, head_dim=64, batch=8,
                    heads=16, status="unsupported", error="No available kernel"))
    results = {
        "correctness": [dict(dtype="float16", causal=c, seq_len=1000, head_dim=64, batch=2, heads=16,
                             ours_vs_float64={"out": 1e-3, "dq": 2e-3, "dk": 2e-3, "dv": 1e-3},
                             sdpa_vs_float64={"out": 1e-3, "dq": 2e-3, "dk": 2e-3, "dv": 1e-3}, passed=True)
                        for c in (False, True)],
        "forward": fwd,
        "forward_backward": [dict(fwd[i], seq_len=4096, batch=8) for i in range(8)],
        "ladder": [dict(step=i, name=f"rung {i}", config={}, dtype="float16", causal=False, seq_len=4096,
                        head_dim=64, batch=8, heads=16, status="ok", ms=1.0, tflops=100.0 + 20 * i) for i in range(7)],
        "memory": [dict(provider=p, dtype="float16", causal=False, seq_len=n, head_dim=64, batch=1, heads=16,
                        status="oom" if (p == "naive" and n == 65536) else "ok",
                        **({} if (p == "naive" and n == 65536) else {"peak_bytes": n * n * 2 * 16 if p == "naive" else n * 2048}))
                   for n in (1024, 65536) for p in ("naive", "ours")],
    }
    return build_record(prov, settings, results, complete=complete)


def test_synthetic_record_is_valid_and_json_ready():
    record = synthetic_record()
    assert record["schema"] == SCHEMA
    validate_record(json.loads(json.dumps(record)))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda r: r.update(schema="other/1"), "schema"),
        (lambda r: r["provenance"].update(gpu=None), "come from a GPU"),
        (lambda r: r["provenance"].pop("triton"), "lacks 'triton'"),
        (lambda r: r["results"].update(speed=[]), "unknown section 'speed'"),
        (lambda r: r["results"]["forward"][0].update(status="fast"), "status.*'fast'"),
        (lambda r: r["results"]["forward"][0].pop("tflops"), "'tflops'.*positive number, got None"),
        (lambda r: r["results"]["forward"][0].update(ms=float("nan")), "'ms'.*positive number"),
        (lambda r: r["results"]["ladder"][0].pop("config"), r"lacks \['config'\]"),
        (lambda r: r["results"]["memory"][0].update(peak_bytes=-1), "peak_bytes.*int >= 0"),
        (lambda r: r.update(complete="yes"), "'complete'.*bool"),
    ],
)
def test_validate_record_rejects(mutate, match):
    record = synthetic_record()
    mutate(record)
    with pytest.raises(ValueError, match=match):
        validate_record(record)


def test_write_and_load_recordings(tmp_path):
    write_record(synthetic_record(quick=True, date="2031-01-01T00:00:00+00:00"), tmp_path / "flash_bench_quick.json")
    write_record(synthetic_record(quick=False, date="2030-01-01T00:00:00+00:00"), tmp_path / "flash_bench.json")
    write_record(synthetic_record(quick=False, complete=False), tmp_path / "flash_bench_partial.json")
    (tmp_path / "flash_bench_broken.json").write_text("{not json")
    (tmp_path / "flash_bench_cpu.json").write_text(json.dumps({**synthetic_record(), "provenance": {"gpu": None}}))
    found = load_recordings(tmp_path)
    assert [p.name for p, _ in found] == ["flash_bench.json", "flash_bench_quick.json", "flash_bench_partial.json"]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError):
        write_record({"schema": SCHEMA}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    assert load_recordings(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------


def test_collect_provenance_on_this_machine():
    prov = collect_provenance()
    assert prov["torch"] == torch.__version__
    assert prov["date_utc"].endswith("+00:00")
    json.dumps(prov)
    if not torch.cuda.is_available():
        assert prov["gpu"] is None and prov["nvidia_smi"] is None
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["git"]["commit"] == head.stdout.strip()
        assert isinstance(prov["git"]["dirty"], bool)


def test_provenance_probes_are_guarded(tmp_path, monkeypatch):
    assert prov_mod.git_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository
    monkeypatch.setattr(prov_mod.shutil, "which", lambda name: None)  # no git, no nvidia-smi
    assert prov_mod.nvidia_smi_query() is None
    assert prov_mod.git_state() == {"commit": None, "dirty": None}
    assert collect_provenance()["git"]["commit"] is None


def test_nvidia_smi_parsing(monkeypatch):
    fields = prov_mod.NVIDIA_SMI_FIELDS
    line = ", ".join(["NVIDIA H100 80GB HBM3", "550.54", "P0", "35", "700.00", "1980", "1980", "2619", "2619"])
    monkeypatch.setattr(prov_mod, "_run", lambda cmd, **kw: line + "\n")
    assert prov_mod.nvidia_smi_query() == dict(zip(fields, line.split(", ")))
    monkeypatch.setattr(prov_mod, "_run", lambda cmd, **kw: "garbage")
    assert prov_mod.nvidia_smi_query() is None


# ------------------------------------------------------------------------------------
# no GPU: refuse, write nothing
# ------------------------------------------------------------------------------------


def test_cli_refuses_without_gpu_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "flash_bench.json"
    assert cli.main(["flash", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "no file was written" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(NoGPUError, match="no CUDA GPU"):
        run_flash_benchmark(default_settings(quick=True), out=out)
    assert not out.exists()


def test_cli_rejects_unknown_section(tmp_path, capsys):
    assert cli.main(["flash", "--sections", "forward,speed", "--out", str(tmp_path / "x.json")]) == 2
    assert "speed" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path of the real entry point")
def test_module_entry_point_without_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "flash.json"
    result = subprocess.run([sys.executable, "-m", "transformer_book.bench", "flash", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "CUDA GPU" in result.stderr and not out.exists()


# ------------------------------------------------------------------------------------
# replay: tables and figures from a record
# ------------------------------------------------------------------------------------


def test_report_tables_and_figures():
    record = synthetic_record()
    summary = report.provenance_summary(record)
    assert "TEST-ONLY synthetic GPU" in summary and "SM clock 1980 MHz" in summary
    table = report.throughput_table(record)
    assert "unsupported" in table and "350" in table and table.count("\n") == 5
    assert "1.0e-03" in report.correctness_table(record)
    for plot in (report.plot_forward, report.plot_forward_backward, report.plot_ladder, report.plot_memory):
        fig = plot(record)
        assert fig.axes and any(ax.has_data() for ax in fig.axes)
    assert report.plot_forward(record, dtype="bfloat16") is None  # no such rows: no figure, no crash
    empty = dict(record, results={})
    assert all(p(empty) is None for p in (report.plot_forward, report.plot_forward_backward,
                                          report.plot_ladder, report.plot_memory))
    import matplotlib.pyplot as plt

    plt.close("all")


# ------------------------------------------------------------------------------------
# the whole harness, dry-run on the CPU with the CUDA calls and the timer stubbed out
# ------------------------------------------------------------------------------------


@pytest.fixture
def cpu_dry_run(monkeypatch):
    """Make the harness run on CPU tensors: CUDA bookkeeping stubbed, a fake timer (1 ms),
    'ours' replaced by tiled_attention (the Triton kernel has its own tests), naive attention
    out of memory at N >= 64 in the memory section. Exercises loops, rows, records, files."""
    triton_testing = pytest.importorskip("triton.testing")
    import transformer_book.bench.flash as fb
    from transformer_book.flash import tiled_attention

    cpu_provenance = collect_provenance()  # before pretending there is a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 5096)

    def fake_inputs(b, h, n, d, dtype, requires_grad=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(b, h, n, d, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(4)]

    def fake_do_bench(fn, warmup, rep, grad_to_none=None, quantiles=None):
        fn()
        return [1.0, 0.9, 1.1]

    real_provider = fb._provider_fn

    def provider(name, causal, config=None):
        if name == "ours":
            return lambda q, k, v: tiled_attention(q, k, v, causal=causal, block_q=16, block_k=16)
        if name == "naive":
            def naive(q, k, v):
                if q.shape[2] >= 64 and not torch.is_grad_enabled():
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 GiB")
                return real_provider(name, causal)(q, k, v)
            return naive
        return real_provider(name, causal, config)

    def fake_provenance():
        prov = dict(cpu_provenance)
        prov["gpu"] = {"name": "TEST-ONLY dry run on CPU"}
        return prov

    monkeypatch.setattr(fb, "_inputs", fake_inputs)
    monkeypatch.setattr(fb, "_provider_fn", provider)
    monkeypatch.setattr(fb, "collect_provenance", fake_provenance)
    monkeypatch.setattr(triton_testing, "do_bench", fake_do_bench)
    return BenchSettings(
        tokens=64, heads=2, seq_lens=(16, 32), head_dims=(16,), dtypes=("float32",), fwd_bwd_seq_len=32,
        ladder_seq_len=32, ladder_head_dims=(16,), ladder_dtype="float32", memory_seq_lens=(16, 64),
        memory_heads=2, memory_head_dim=16, memory_dtype="float32", correctness_seq_len=20, correctness_batch=1,
    )


def test_harness_dry_run(cpu_dry_run, tmp_path):
    out = tmp_path / "flash_bench.json"
    messages = []
    record = run_flash_benchmark(cpu_dry_run, out=out, progress=messages.append)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["complete"] and record["settings"]["tokens"] == 64
    res = record["results"]
    assert set(res) == {"correctness", "forward", "forward_backward", "ladder", "memory"}
    assert all(r["passed"] for r in res["correctness"]) and len(res["correctness"]) == 2
    assert max(r["ours_vs_float64"]["dq"] for r in res["correctness"]) < 1e-4
    assert len(res["forward"]) == 2 * 2 * 4  # N x causal x providers
    for r in res["forward"]:
        if r["provider"] != "sdpa_cudnn":  # no cuDNN kernel on a CPU: recorded, not fatal
            assert r["status"] == "ok", r
            assert r["tflops"] == pytest.approx(attention_flops(64 // r["seq_len"], 2, r["seq_len"], 16, r["causal"]) / 1e-3 / 1e12)
        else:
            assert r["status"] == "unsupported" and r["error"]
    assert {r["seq_len"] for r in res["forward_backward"]} == {32}
    ladder = [r for r in res["ladder"] if not r["causal"]]
    assert [r["step"] for r in ladder] == list(range(7)) and all(r["config"] for r in ladder)
    memory = {(r["provider"], r["seq_len"]): r for r in res["memory"]}
    assert memory[("naive", 64)]["status"] == "oom" and memory[("ours", 64)]["peak_bytes"] == 4096
    assert any("ladder" in m for m in messages)
    assert load_recordings(tmp_path)[0][1] == record


def test_harness_keeps_finished_sections_when_a_later_one_crashes(cpu_dry_run, tmp_path, monkeypatch):
    import transformer_book.bench.flash as fb

    def boom(settings, progress):
        raise KeyboardInterrupt  # e.g. the run is stopped

    monkeypatch.setattr(fb, "_section_ladder", boom)
    out = tmp_path / "flash_bench.json"
    settings = BenchSettings(**{**cpu_dry_run.__dict__, "sections": ("correctness", "ladder")})
    with pytest.raises(KeyboardInterrupt):
        run_flash_benchmark(settings, out=out, progress=lambda m: None)
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and list(saved["results"]) == ["correctness"]


def test_harness_merges_runs_into_one_record(cpu_dry_run, tmp_path):
    out = tmp_path / "flash_bench.json"
    first = BenchSettings(**{**cpu_dry_run.__dict__, "sections": ("correctness", "memory")})
    rec1 = run_flash_benchmark(first, out=out, progress=lambda m: None)
    assert rec1["complete"] is False and rec1["settings"]["sections"] == ["correctness", "memory"]
    rest = BenchSettings(**{**cpu_dry_run.__dict__, "sections": ("forward", "forward_backward", "ladder")})
    rec2 = run_flash_benchmark(rest, out=out, progress=lambda m: None, merge=True)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(rec2)) and saved["complete"] is True
    assert saved["results"]["correctness"] == rec1["results"]["correctness"]  # kept from the first run
    assert set(saved["section_provenance"]) == set(saved["results"])
    assert "TEST-ONLY dry run on CPU" in report.provenance_summary(saved)
    # Without --merge the file is replaced by what this run measured.
    rec3 = run_flash_benchmark(first, out=out, progress=lambda m: None)
    assert set(json.loads(out.read_text())["results"]) == {"correctness", "memory"} == set(rec3["results"])


def test_harness_refuses_to_merge_mismatched_records(cpu_dry_run, tmp_path, capsys):
    import transformer_book.bench.flash as fb

    out = tmp_path / "flash_bench.json"
    only = BenchSettings(**{**cpu_dry_run.__dict__, "sections": ("memory",)})
    run_flash_benchmark(only, out=out, progress=lambda m: None)
    before = out.read_text()
    quick = BenchSettings(**{**only.__dict__, "quick": True})
    with pytest.raises(ValueError, match="holds a full run; this run is quick"):
        run_flash_benchmark(quick, out=out, progress=lambda m: None, merge=True)
    other_gpu = fb.collect_provenance()
    other_gpu["gpu"] = {"name": "another GPU"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fb, "collect_provenance", lambda: dict(other_gpu))
        with pytest.raises(ValueError, match="measured on 'TEST-ONLY dry run on CPU', this GPU is 'another GPU'"):
            run_flash_benchmark(only, out=out, progress=lambda m: None, merge=True)
    assert out.read_text() == before
    out.write_text("{broken")
    assert cli.main(["flash", "--sections", "memory", "--merge", "--out", str(out)]) == 2
    assert "not a valid benchmark record" in capsys.readouterr().err and out.read_text() == "{broken"
