"""Appendix A: W processes compute what one process computes, a killed job resumes exactly, bad input fails fast.

The multi-process tests start real ``torchrun`` jobs on the CPU (gloo, loopback only). Each job
is bounded by a timeout and runs in its own process group, which ``distributed.launch`` kills
before returning; every job writes only under ``tmp_path``. Together they take well under two
minutes on two cores (they share one module, so ``--dist loadscope`` runs them one after another).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from transformer_book import distributed as D
from transformer_book.models.gpt import GPT, GPTConfig

torch.set_num_threads(1)
SETTINGS = D.Settings(steps=20)  # the tiny run every multi-process test uses
#: The loss curve of 2 processes vs 1 after 20 AdamW steps: rounding differences of ~1e-7 per
#: gradient, carried through the optimizer; far below any real error (a sum instead of a mean
#: changes the first step's gradient by 100%).
CURVE_TOLERANCE = 1e-5


def _job(args, nproc=2, timeout=90, **kw) -> D.Launch:
    job = D.launch(args, nproc, timeout=timeout, **kw)
    assert len(job.pids) > nproc, f"launch saw only {job.pids}: torchrun and its workers expected"
    alive = [p for p in job.pids if D._alive(p)]
    assert alive == [], f"the job left processes {alive} behind"
    return job


def _ok(job: D.Launch) -> D.Launch:
    assert job.ok, f"exit {job.returncode}, timed out {job.timed_out}\n{job.stdout[-2000:]}\n{job.stderr[-4000:]}"
    return job


def _train_args(out, settings=SETTINGS, *extra):
    return ["train", "--out", str(out), "--steps", str(settings.steps), "--batch-size", str(settings.batch_size),
            "--checkpoint-every", "5", *extra]


# =========================================================================== in one process

def test_world_reads_torchrun_environment():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
           "TORCHELASTIC_RESTART_COUNT": "3"}
    world = D.World.from_env(env)
    assert (world.rank, world.world_size, world.local_rank, world.restart, world.launched) == (1, 2, 1, 3, True)
    enough_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= 2  # LOCAL_RANK 1: 2 local ranks
    assert (world.backend, world.device) == (("nccl", "cuda:1") if enough_gpus else ("gloo", "cpu"))
    one_gpu_each = D.World.from_env({**env, "LOCAL_WORLD_SIZE": "64"})
    assert one_gpu_each.backend == "gloo" or torch.cuda.device_count() >= 64  # not enough GPUs: CPU


def test_missing_rendezvous_is_refused_naming_the_variables():
    with pytest.raises(ValueError, match=r"missing rendezvous.*MASTER_ADDR, MASTER_PORT.*torchrun"):
        D.World.from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="RANK=3, WORLD_SIZE=2"):
        D.World.from_env({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        D.World.from_env({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"})


def test_script_without_torchrun_fails_at_once(monkeypatch, tmp_path):
    for name in D.RENDEZVOUS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="missing rendezvous: environment variable.*RANK"):
        D.main(["train", "--out", str(tmp_path)])
    assert not dist.is_initialized()


def test_batch_must_divide_among_ranks_and_micro_batches():
    assert D.check_batch(16, 2) == 8 and D.check_batch(16, 2, accum=2) == 4
    with pytest.raises(ValueError, match=r"batch_size=6 must be divisible by world_size=4 x accum=1 = 4"):
        D.check_batch(6, 4)
    with pytest.raises(ValueError, match=r"batch_size=8 must be divisible by world_size=2 x accum=3 = 6"):
        D.check_batch(8, 2, accum=3)


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_refuses_a_bad_batch_before_any_collective(rank, tmp_path):
    # Every rank runs the same check on the same numbers before joining: all fail, none waits.
    world = D.World(rank=rank, world_size=2, launched=True)
    with pytest.raises(ValueError, match=rf"rank {rank} of 2: batch_size=5 must be divisible by world_size=2"):
        D.run_training(D.Settings(steps=2, warmup=0, batch_size=5), tmp_path, world)
    assert not dist.is_initialized()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="mode must be .*'ddp'.*'hand'.*zero"):
        D.Settings(mode="zero")
    with pytest.raises(ValueError, match="steps must be .*got .*0"):
        D.Settings(steps=0)
    with pytest.raises(TypeError, match="lr must be a .*number.*0.1"):
        D.Settings(lr="0.1")


def test_rank_batches_together_are_the_single_process_batch():
    _, windows = D.token_windows(SETTINGS)
    n, batch = windows.shape[0], 12
    steps_per_epoch = n // batch
    for step in (0, 3, steps_per_epoch + 1):  # the last one is in the second epoch (a new shuffle)
        epoch, s = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch))  # DistributedSampler's rule
        expected = windows[perm[s * batch:(s + 1) * batch]]
        for world_size in (1, 2, 3, 4):
            shards = [D.rank_batch(windows, step, batch, r, world_size, seed=7) for r in range(world_size)]
            assert all(x.shape == (batch // world_size, SETTINGS.block_size) for x, _ in shards)
            got = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in shards])
            # the same rows (dealt round-robin: the order differs, and a mean does not care)
            assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))
            x0, y0 = shards[0]
            assert torch.equal(x0[:, 1:], y0[:, :-1])  # targets are the inputs one token later


def test_rank_batch_agrees_with_distributed_sampler_directly():
    _, windows = D.token_windows(SETTINGS)
    sampler = DistributedSampler(range(windows.shape[0]), num_replicas=2, rank=1, shuffle=True, seed=0, drop_last=True)
    sampler.set_epoch(0)
    first = list(sampler)[:8]
    x, _ = D.rank_batch(windows, 0, 16, 1, 2)
    assert torch.equal(x, windows[first][:, :-1])


def test_by_hand_average_is_the_full_batch_gradient_in_one_process():
    # The identity the whole appendix rests on, without any communication: the mean of the two
    # halves' gradients is the gradient of the whole batch.
    _, windows = D.token_windows(SETTINGS)
    config = SETTINGS.model_config(D.VOCAB_SIZE)
    x, y = D.rank_batch(windows, 0, 16, 0, 1)
    whole = D.build_model(config)
    whole(x, y).loss.backward()
    halves = []
    for part in (slice(0, 8), slice(8, 16)):
        m = D.build_model(config)
        m(x[part], y[part]).loss.backward()
        halves.append([p.grad for p in m.parameters()])
    for g_whole, g0, g1 in zip((p.grad for p in whole.parameters()), *halves):
        torch.testing.assert_close((g0 + g1) / 2, g_whole, atol=D.GRAD_TOLERANCE, rtol=0)


def test_training_bytes_against_the_tensors_of_one_process():
    model = GPT(GPTConfig(vocab_size=128, block_size=16, n_layer=1, n_head=2, n_embd=32))
    n = model.num_parameters()
    assert D.training_bytes(n) == {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n}
    assert D.training_bytes(10, world_size=4, sharded=True) == {"params": 12, "grads": 12, "optimizer": 24}
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert params == D.training_bytes(n)["params"]  # the tied head is one tensor, counted once
    with pytest.raises(ValueError, match="world_size must be .*got .*0"):
        D.training_bytes(n, world_size=0)


def test_state_digest_tells_identical_weights_apart():
    a = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8)).state_dict()
    b = {k: v.clone() for k, v in a.items()}
    assert D.state_digest(a) == D.state_digest(b)
    b["ln_f.bias"][0] += 1e-7
    assert D.state_digest(a) != D.state_digest(b)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One process, no process group: the reference run (checkpoints every 5 steps)."""
    out = tmp_path_factory.mktemp("single")
    return out, D.run_training(SETTINGS, out, checkpoint_every=5)


@pytest.mark.parametrize("rank", [0, 1])
def test_checkpoint_of_another_world_size_or_model_is_refused_on_every_rank(rank, single_run, tmp_path):
    out, _ = single_run
    world = D.World(rank=rank, world_size=2, launched=True)
    with pytest.raises(ValueError, match=rf"(?s)rank {rank} of 2: cannot resume.*world_size: checkpoint has 1, "
                                         rf"model config has 2"):
        D.run_training(SETTINGS, out, world)
    other = D.Settings(steps=SETTINGS.steps, n_embd=32)
    with pytest.raises(ValueError, match=r"(?s)model.n_embd: checkpoint has 64, model config has 32"):
        D.run_training(other, out, world)
    assert not dist.is_initialized()


def test_damaged_checkpoints_are_refused(single_run, tmp_path):
    out, _ = single_run
    state = torch.load(out / D.CHECKPOINT, weights_only=True)
    state["model"]["ln_f.weight"] = state["model"]["ln_f.weight"] + 1.0  # weights changed, digest kept
    torch.save(state, tmp_path / D.CHECKPOINT)
    with pytest.raises(ValueError, match="damaged|failed verification"):
        D.run_training(SETTINGS, tmp_path)
    (tmp_path / D.CHECKPOINT).write_bytes(b"half a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a checkpoint"):
        D.run_training(SETTINGS, tmp_path)


@pytest.mark.parametrize("mode", ["hand", "ddp"])
def test_one_rank_process_group_trains_like_no_process_group(mode, tmp_path, monkeypatch):
    # The script's own code path (join, DDP or the by-hand all_reduce, the logged-loss all_reduce)
    # with a real gloo group of one rank, in this process: the same losses as without a group.
    port = D.free_port()
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    settings = D.Settings(steps=4, warmup=0, mode=mode)
    grouped = D.run_training(settings, tmp_path / "group", D.World.from_env())
    assert not dist.is_initialized()  # the run left the process group
    alone = D.run_training(settings, tmp_path / "alone")
    assert grouped["losses"] == pytest.approx(alone["losses"], abs=1e-6)
    assert grouped["backend"] in ("gloo", "nccl") and (mode == "ddp") == (grouped["sync_seconds"] == [])


def test_torchrun_command_lines():
    one = D.torchrun_command(["train", "--out", "x"], 8, endpoint="node0:29500")
    assert one[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=8" in one
    assert "--rdzv-backend=c10d" in one and "--rdzv-endpoint=node0:29500" in one
    assert one[-5:] == ["-m", "transformer_book.distributed", "train", "--out", "x"]
    static = D.torchrun_command(["train"], 8, nnodes=4, node_rank=3, rdzv="static", endpoint="10.0.0.1:29500")
    assert {"--nnodes=4", "--node_rank=3", "--rdzv-backend=static", "--rdzv-endpoint=10.0.0.1:29500"} <= set(static)
    with pytest.raises(ValueError, match=r"node_rank must be an int in \[0, 3\], got .*4"):
        D.torchrun_command(["train"], 8, nnodes=4, node_rank=4)


# =========================================================================== real 2-process jobs

@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """An uninterrupted 2-process run of the same 20 steps (checkpoints every 5 steps)."""
    out = tmp_path_factory.mktemp("two")
    _ok(_job(_train_args(out)))
    return json.loads((out / D.RESULT).read_text()), torch.load(out / "final.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_parity_command_two_processes_equal_one(tmp_path):
    path = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, "-m", "transformer_book.distributed", "parity", "--nproc", "2",
                           "--json", str(path)], capture_output=True, text=True, timeout=140,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "largest gradient difference, 2 processes vs 1" in proc.stdout
    result = json.loads(path.read_text())
    diffs = result["max_abs_diff"]
    assert set(diffs) >= {"by hand (all_reduce / W)", "DDP", "DDP + no_sync, 2 micro-batches"}
    assert max(diffs.values()) <= D.GRAD_TOLERANCE, diffs
    assert result["reference_grad_max"] > 100 * D.GRAD_TOLERANCE  # the tolerance is not vacuous
    if result["fsdp"] == "ran":
        assert "FSDP (fully_shard)" in diffs
        # the known pitfall: a gradient reduced with SUM instead of AVG would come out W = 2 times too big
        assert result["fsdp_grad_scale"] == pytest.approx(1.0, abs=1e-5)
        for rank in result["per_rank"]:
            ddp, fsdp = rank["bytes_ddp"], rank["bytes_fsdp"]
            expected = D.training_bytes(result["n_params"])
            assert ddp == expected  # DDP: the full model, gradients and both Adam moments on every rank
            for kind in ("params", "grads", "optimizer"):  # FSDP: about half of each (padding aside)
                assert 0.45 * expected[kind] <= fsdp[kind] <= 0.55 * expected[kind], (kind, fsdp, expected)
    # each rank computed a different shard's gradient before averaging, the same one after
    norms = [(r["grad_norm_own_shard"], r["grad_norm_averaged"]) for r in result["per_rank"]]
    assert norms[0][0] != norms[1][0] and norms[0][1] == pytest.approx(norms[1][1], rel=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_processes_follow_the_single_process_loss_curve(two_process_run, single_run):
    two, two_weights = two_process_run
    _, one = single_run
    assert two["world_size"] == 2 and two["restarts"] == 0 and len(two["losses"]) == SETTINGS.steps
    gaps = [abs(a - b) for a, b in zip(two["losses"], one["losses"])]
    assert max(gaps) <= CURVE_TOLERANCE, gaps
    assert two["losses"][-1] < two["losses"][0] - 0.5  # it does learn
    one_weights = torch.load(single_run[0] / "final.pt", weights_only=True)
    # AdamW divides each gradient by its running RMS: where a gradient is nearly zero, rounding
    # can change an update by up to the learning rate, so the weights get a tenth of it.
    gap = max(float((two_weights[k] - one_weights[k]).abs().max()) for k in one_weights)
    assert gap <= SETTINGS.lr / 10, gap


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_killed_worker_restarts_from_checkpoint_to_identical_weights(two_process_run, tmp_path):
    two, _ = two_process_run
    job = _ok(_job(_train_args(tmp_path, SETTINGS, "--fail-at-step", "12"), max_restarts=1, timeout=120))
    restarted = json.loads((tmp_path / D.RESULT).read_text())
    assert restarted["restarts"] == 1 and restarted["resumed_from_step"] == 10
    assert "attempt 1" in job.stdout
    # one node: the rendezvous store bound a free port itself (no port chosen in advance to lose)
    assert "--rdzv-endpoint=127.0.0.1:0" in job.command
    assert restarted["losses"] == two["losses"]
    assert restarted["digest"] == two["digest"]  # bit for bit the weights of the run that never failed


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_job_with_an_indivisible_batch_fails_fast(tmp_path):
    job = _job(["train", "--out", str(tmp_path), "--batch-size", "5"], timeout=50)
    assert job.returncode != 0 and not job.timed_out
    assert "batch_size=5 must be divisible by world_size=2" in job.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_launch_kills_the_whole_job_on_timeout(tmp_path):
    job = _job(["train", "--out", str(tmp_path), "--steps", "100000", "--warmup", "0"], timeout=6)
    assert job.timed_out and not job.ok and "killed after timeout" in job.stderr
