"""Chapter 10's benchmark: the measurement functions on the CPU with small models, the record's
schema and replay, and the refusal to run (or write anything) without a GPU. Records built here
live in pytest's tmp_path only; nothing is written to book/data."""

from __future__ import annotations

import json

import pytest
import torch

from transformer_book.bench import __main__ as cli
from transformer_book.bench import speculative as bench
from transformer_book.models import GPT, GPTConfig
from transformer_book.speculative import PromptLookupDraft, expected_speedup

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    target = GPT(GPTConfig(vocab_size=30, block_size=48, n_layer=3, n_head=2, n_embd=16)).eval()
    draft = GPT(GPTConfig(vocab_size=30, block_size=48, n_layer=1, n_head=2, n_embd=16)).eval()
    return target, draft


def test_measure_speedups_structure_and_exactness(models):
    target, draft = models
    prompts = [torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[4, 5, 6, 7]])]
    result = bench.measure_speedups(target, {"model": draft, "lookup": PromptLookupDraft()}, prompts, 10,
                                    {"model": [1, 3], "lookup": [2]}, repeats=2)
    assert len(result["baseline_s"]) == 2 and all(t > 0 for t in result["baseline_s"])
    assert set(result["runs"]) == {"model", "lookup"} and set(result["runs"]["model"]) == {"1", "3"}
    for by_k in result["runs"].values():
        for run in by_k.values():
            assert run["identical"] is True  # greedy: the target's own tokens
            assert len(run["speedups"]) == 2 and run["speedup"] > 0
            assert 1.0 <= run["tokens_per_pass"]
            # the last repetition's passes produced every prompt's 10 tokens
            assert sum(run["accepted_lengths"]) + len(run["accepted_lengths"]) == 2 * 10
            assert len(run["decode_speedups"]) == 2 and run["decode_speedup"] > 0
    # the prefill is timed in each repetition and is part of the target-alone time
    assert len(result["prefill_s"]) == 2 and all(0 < p < b for p, b in zip(result["prefill_s"], result["baseline_s"]))
    assert [len(each) for each in result["baseline_prompt_s"]] == [2, 2]
    assert [sum(each) for each in result["baseline_prompt_s"]] == pytest.approx(result["baseline_s"])


def test_predicted_speedup_combines_prompts_as_the_measurement_does():
    assert bench.predicted_speedup([0.8], 0.1, 4) == pytest.approx(expected_speedup(0.8, 0.1, 4))
    assert bench.predicted_speedup([0.8, 0.8], 0.1, 4, [1.0, 3.0]) == pytest.approx(expected_speedup(0.8, 0.1, 4))
    # two prompts of 1 s and 2 s alone: the set takes 1/S1 + 2/S2 seconds speculatively
    s1, s2 = expected_speedup(0.99, 0.05, 7), expected_speedup(0.5, 0.05, 7)
    assert bench.predicted_speedup([0.99, 0.5], 0.05, 7, [1.0, 2.0]) == pytest.approx(3.0 / (1.0 / s1 + 2.0 / s2))
    # a mixture predicts less than the theorem at its mean alpha (tokens per pass is convex in alpha)
    assert bench.predicted_speedup([0.99, 0.69], 0.05, 7) < expected_speedup(0.84, 0.05, 7)


@pytest.mark.parametrize("args, error, match", [
    (([], 0.1, 4), ValueError, "alphas"),
    ((0.8, 0.1, 4), TypeError, "alphas"),
    (([1.2], 0.1, 4), ValueError, r"alphas\[0\]"),
    (([0.8], -0.1, 4), ValueError, "c"),
    (([0.8, 0.7], 0.1, 4, [1.0]), ValueError, "weights"),
    (([0.8], 0.1, 4, [0.0]), ValueError, r"weights\[0\]"),
])
def test_predicted_speedup_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        bench.predicted_speedup(*args)


def test_measure_costs_structure(models):
    target, draft = models
    costs = bench.measure_costs(target, draft, torch.tensor([[1, 2, 3]]), ks=(1, 2), repeats=2, steps=2)
    assert costs["c"] > 0 and costs["target_step_s"] > 0 and costs["draft_step_s"] > 0
    assert set(costs["verify_cost"]) == {"1", "2"} and len(costs["c_all"]) == 2


def _record(gpu=True):
    return {
        "schema": bench.SCHEMA,
        "provenance": {"gpu": {"name": "Fake GPU"} if gpu else None, "date_utc": "2025-01-01T00:00:00+00:00"},
        "settings": {"ks": [1]},
        "results": {"alpha": 0.5, "costs": {"c": 0.1}, "predicted_speedup": {"1": 1.3}, "baseline_s": [1.0],
                    "runs": {"model": {"1": {"speedup": 1.2, "identical": True, "accepted_lengths": [1, 0],
                                             "tokens_per_pass": 1.5}}}},
    }


def test_validate_record():
    assert bench.validate_record(_record()) is not None
    with pytest.raises(ValueError, match="GPU"):
        bench.validate_record(_record(gpu=False))
    assert bench.validate_record(_record(gpu=False), require_gpu=False) is not None
    broken = _record()
    del broken["results"]["runs"]["model"]["1"]["identical"]
    with pytest.raises(ValueError, match="identical"):
        bench.validate_record(broken)
    with pytest.raises(ValueError, match="schema"):
        bench.validate_record({"schema": "other"})


def test_load_recording(tmp_path):
    assert bench.load_recording(tmp_path) is None
    (tmp_path / "speculative_bench.json").write_text(json.dumps(_record(gpu=False)))
    assert bench.load_recording(tmp_path) is None  # not measured on a GPU: not replayed
    (tmp_path / "speculative_bench.json").write_text(json.dumps(_record()))
    assert bench.load_recording(tmp_path)["results"]["alpha"] == 0.5
    (tmp_path / "speculative_bench.json").write_text("{not json")
    assert bench.load_recording(tmp_path) is None


def test_cli_without_gpu_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "rec.json"
    assert cli.main(["speculative", "--out", str(out)]) == 2
    assert not out.exists()
    assert "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        bench.run_speculative_benchmark(out)
    assert not out.exists()


def test_cli_bad_arguments(tmp_path, capsys):
    assert cli.main(["speculative", "--out", str(tmp_path / "r.json"), "--repeats", "0"]) == 2
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err


def test_the_full_benchmark_on_the_cpu_with_the_chapters_models(tmp_path):
    """The GPU path, run on the CPU at a tiny size: the record it writes validates (GPU aside)."""
    out = tmp_path / "rec.json"
    record = bench.run_speculative_benchmark(out, n_prompts=1, new_tokens=4, prompt_tokens=32, repeats=1,
                                             ks=(1, 2), progress=lambda msg: None, device="cpu")
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert bench.validate_record(record, require_gpu=False)["settings"]["device"] == "cpu"
    assert record["results"]["runs"]["model"]["2"]["identical"] is True
    assert set(record["results"]["predicted_speedup"]) == {"1", "2"}
    assert set(record["results"]["predicted_speedup_per_prompt"]) == {"1", "2"}
    assert len(record["results"]["alpha_per_prompt"]) == 1
