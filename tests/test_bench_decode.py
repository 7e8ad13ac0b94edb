"""Chapter 8's decode benchmark: the CPU-side logic (settings, formulas, pairing, the record,
the CUDA-graph decoding loop run eagerly) on a tiny GPT-2 shape; the GPU run itself needs a GPU."""

import argparse
import json

import pytest
import torch

from transformer_book.bench import __main__ as cli
from transformer_book.bench import decode as bd
from transformer_book.generate import generate
from transformer_book.kv_cache import kv_cache_bytes

TINY = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=101, n_positions=64, prompt_len=8, new_tokens=6, batch=3,
            context=48, repeats=2, bandwidth_mib=4, gpu_new_tokens=12, gpu_compare_tokens=6)


@pytest.fixture(scope="module")
def record():
    return bd.run_cpu_benchmark(bd.DecodeSettings(**TINY), progress=lambda msg: None)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="device must be one of"):
        bd.DecodeSettings(device="tpu")
    with pytest.raises(ValueError, match="repeats must be a positive int, got 0"):
        bd.DecodeSettings(repeats=0)
    with pytest.raises(ValueError, match="context=2048 must be <= n_positions=1024"):
        bd.DecodeSettings(context=2048)
    with pytest.raises(ValueError, match="n_head=5 must divide n_embd=768"):
        bd.DecodeSettings(n_head=5)
    with pytest.raises(ValueError, match=r"new_tokens must be >= 3 \(the bound times"):
        bd.DecodeSettings(new_tokens=2)


def test_bytes_per_token_is_every_weight_once_plus_the_cache():
    hf, ours = bd.gpt2_pair(bd.DecodeSettings(**TINY))
    params = sum(p.numel() for p in ours.parameters())  # the tied head counted once
    expected = 4 * (params - (64 - 1) * 32) + kv_cache_bytes(2, 2, 16, 10, 3)
    assert bd.bytes_per_token(ours, 10, batch=3) == expected
    assert sum(p.numel() for p in hf.parameters()) == params


def test_gpt2_pair_share_weights_and_tokens():
    s = bd.DecodeSettings(**TINY)
    hf, ours = bd.gpt2_pair(s)
    prompt = torch.randint(101, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(ours, prompt, 10), bd._hf_generate(hf, prompt, 10))
    assert bd._hf_generate(hf, prompt, 10).shape == (2, 18)  # no end-of-text stops it early


def test_interleaved_rotates_the_order_and_median_ratio():
    calls = []
    times = bd.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"] and all(len(v) == 3 for v in times.values())
    assert bd.median_ratio([2.0, 9.0, 4.0], [1.0, 3.0, 1.0]) == 3.0
    with pytest.raises(ValueError, match="equally long"):
        bd.median_ratio([1.0], [])


def test_bandwidth_and_bound_pairs():
    assert bd.measure_bandwidth(4, 2) > 1e8  # bytes/s: any machine reads more than 100 MB/s
    with pytest.raises(ValueError, match="mib must be a positive int, got 0"):
        bd.measure_bandwidth(0)
    with pytest.raises(TypeError, match="repeats must be a positive int, got float"):
        bd.measure_bandwidth(4, 2.0)
    _, ours = bd.gpt2_pair(bd.DecodeSettings(**TINY))
    read, step = bd.bound_pairs(ours, torch.zeros(1, 4, dtype=torch.long), 5, 2)
    assert len(read) == len(step) == 2 * 3 and min(read + step) > 0  # 5 - 2 timed tokens a repetition
    read, step = bd.bound_pairs(ours, torch.zeros(1, 4, dtype=torch.long), 9, 2, chunk=3)
    assert len(read) == len(step) == 2 * 3 and min(read + step) > 0  # 7 tokens a repetition: 3 + 3 + 1
    with pytest.raises(ValueError, match="new_tokens must be an int >= 3, got 2"):
        bd.bound_pairs(ours, torch.zeros(1, 4, dtype=torch.long), 2, 2)
    with pytest.raises(ValueError, match="chunk must be a positive int, got 0"):
        bd.bound_pairs(ours, torch.zeros(1, 4, dtype=torch.long), 5, 2, chunk=0)


def test_cpu_record_has_every_target_side_by_side(record, tmp_path):
    assert record["schema"] == bd.SCHEMA and record["device"] == "cpu"
    assert set(record["targets"]) == {"batch1_vs_hf", "bandwidth_fraction", "cached_vs_uncached", "batch_vs_hf"}
    for row in record["targets"].values():
        assert row["met"] == (row["value"] >= row["target"])
    assert record["results"]["batch1"]["tokens_equal"] and record["results"]["batch"]["tokens_equal"]
    assert len(record["results"]["batch1"]["seconds"]["book"]) == 2
    assert set(record["results"]["bound"]) == {"float32", "bfloat16"}
    assert record["provenance"]["torch_threads"] == 2 and "loadavg_before" in record["provenance"]["machine"]
    assert "transparent_hugepage" in record["provenance"]["machine"]  # "always [madvise] never" on Linux
    path = bd.write_record(record, tmp_path / "sub" / "decode.json")
    assert bd.load_record(path) == json.loads(json.dumps(record))
    assert not list(tmp_path.glob("sub/*.tmp"))
    assert "batch1_vs_hf" in bd.summary(record)


def test_validate_record_names_the_problem(record, tmp_path):
    with pytest.raises(ValueError, match="schema"):
        bd.validate_record({**record, "schema": "other/1"})
    broken = json.loads(json.dumps(record))
    del broken["targets"]["bandwidth_fraction"]
    with pytest.raises(ValueError, match="'bandwidth_fraction'"):
        bd.validate_record(broken)
    with pytest.raises(ValueError, match=r"gpu'\]\['name'\]"):
        bd.validate_record({**record, "device": "cuda"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        bd.load_record(tmp_path / "bad.json")
    with pytest.raises(ValueError):
        bd.write_record(broken, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_graph_decoder_loop_equals_greedy_generate_when_run_eagerly():
    _, ours = bd.gpt2_pair(bd.DecodeSettings(**TINY))
    decoder = bd.CUDAGraphDecoder(ours, 2, 30, use_graph=False)
    prompt = torch.randint(101, (2, 5), generator=torch.Generator().manual_seed(3))
    for n in (1, 20, 25):  # the loop is re-entrant: the cache is reset each call
        assert torch.equal(decoder.generate(prompt, n), generate(ours, prompt, n))
    assert decoder.cache.length == 5 + 25 - 1  # the last token is returned, not fed back
    with pytest.raises(ValueError, match="exceeds the cache's max_len=30"):
        decoder.generate(prompt, 26)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_without_a_gpu_nothing_is_written(tmp_path, capsys):
    with pytest.raises(bd.NoGPUError):
        bd.CUDAGraphDecoder(bd.gpt2_pair(bd.DecodeSettings(**TINY))[1], 1, 8)
    with pytest.raises(bd.NoGPUError):
        bd.run_cuda_benchmark(bd.DecodeSettings(**TINY))
    out = tmp_path / "decode.json"
    assert cli.main(["decode", "--device", "cuda", "--out", str(out)]) == 2
    assert not out.exists() and "no file was written" in capsys.readouterr().err


def test_command_line_parses_decode():
    args = cli.build_parser().parse_args(["decode", "--device", "cpu", "--repeats", "3", "--new-tokens", "8"])
    assert (args.benchmark, args.device, args.repeats, args.new_tokens, args.threads) == ("decode", "cpu", 3, 8, 2)
    assert bd.run(argparse.Namespace(device="cpu", threads=2, repeats=0, new_tokens=8, context=64, out=None)) == 2


def test_bound_only_measures_the_float32_bound_and_writes_nothing(tmp_path, monkeypatch):
    bound = bd._bound_only(bd.DecodeSettings(**TINY))
    assert 0 < bound["fraction_of_ceiling"] and bound["tokens_per_s"] > 0 and bound["torch_threads"] == 2
    assert bound["ceiling_tokens_per_s"] == pytest.approx(bound["bandwidth_bytes_per_s"] / bound["bytes_per_token"])
    _, ours = bd.gpt2_pair(bd.DecodeSettings(**TINY))
    assert bound["bytes_per_token"] == bd.bytes_per_token(ours, TINY["prompt_len"] + TINY["new_tokens"] // 2)
    args = cli.build_parser().parse_args(["decode", "--bound-only"])
    assert args.bound_only and not cli.build_parser().parse_args(["decode"]).bound_only
    monkeypatch.chdir(tmp_path)
    assert bd.run(argparse.Namespace(device="cuda", threads=2, repeats=2, new_tokens=8, context=64, out=None,
                                     bound_only=True)) == 2
    assert not any(tmp_path.iterdir())
