"""Appendix A checkers: right solutions pass, typical wrong ones fail with a useful message."""

from __future__ import annotations

import math

import torch

from transformer_book.exercises import chA1

from exercise_helpers import first_failure as _first_failure, run as _run

torch.set_num_threads(1)


def test_not_done_is_reported():
    def stub(*args):
        raise NotImplementedError("Exercise ex-a1-...: write it")

    for checker in (chA1.check_average_gradients, chA1.check_shard_indices, chA1.check_batch_plan,
                    chA1.check_bytes_per_rank):
        assert _run(checker, stub).not_done, checker.__name__


# ---------------------------------------------------------------- averaging
def test_average_gradients_right_and_wrong():
    def right(grads, counts):
        total = sum(counts)
        return sum(g * (c / total) for g, c in zip(grads, counts))

    assert _run(chA1.check_average_gradients, right).passed

    def summed(grads, counts):  # all_reduce without the division: the FSDP/gloo pitfall
        return sum(grads)

    def plain_mean(grads, counts):  # right for equal shares only
        return sum(grads) / len(grads)

    def float32_weights(grads, counts):  # right values, loses float64
        w = torch.tensor(counts, dtype=torch.float32) / sum(counts)
        return sum(g.float() * w[i] for i, g in enumerate(grads))

    report = _run(chA1.check_average_gradients, summed)
    assert not report.passed and "SUM" in _first_failure(report).hint
    report = _run(chA1.check_average_gradients, plain_mean)
    assert not report.passed and _first_failure(report).label == "2 ranks, 12 and 4 examples"
    assert "counts[r]" in _first_failure(report).hint
    report = _run(chA1.check_average_gradients, float32_weights)
    assert not report.passed and "dtype" in _first_failure(report).reason


# ---------------------------------------------------------------- sharding
def test_shard_indices_right_and_wrong():
    def right(n, world_size, rank):
        per_rank = math.ceil(n / world_size)
        indices = list(range(n))
        while len(indices) < per_rank * world_size:
            indices += indices[: per_rank * world_size - len(indices)]
        return indices[rank::world_size]

    assert _run(chA1.check_shard_indices, right).passed

    def blocks(n, world_size, rank):  # contiguous slices, not dealt
        per_rank = math.ceil(n / world_size)
        return list(range(n))[rank * per_rank:(rank + 1) * per_rank]

    def no_padding(n, world_size, rank):
        return list(range(n))[rank::world_size]

    def pad_once(n, world_size, rank):  # pads from the start, but only one pass (wrong when W > n)
        total = math.ceil(n / world_size) * world_size
        indices = list(range(n)) + list(range(n))[: total - n]
        return indices[rank::world_size]

    report = _run(chA1.check_shard_indices, blocks)
    assert not report.passed and "cards" in _first_failure(report).hint
    report = _run(chA1.check_shard_indices, no_padding)
    assert not report.passed and _first_failure(report).label.startswith("n=10, W=3")
    report = _run(chA1.check_shard_indices, pad_once)
    assert not report.passed and _first_failure(report).label.startswith("n=3, W=8")


# ---------------------------------------------------------------- batch plan
def test_batch_plan_right_and_wrong():
    def right(global_batch, world_size, micro_batch, base_lr, base_batch):
        return global_batch // (world_size * micro_batch), base_lr * global_batch / base_batch

    assert _run(chA1.check_batch_plan, right).passed

    def lr_per_gpu(global_batch, world_size, micro_batch, base_lr, base_batch):
        return global_batch // (world_size * micro_batch), base_lr * world_size

    def forgot_world(global_batch, world_size, micro_batch, base_lr, base_batch):
        return global_batch // micro_batch, base_lr * global_batch / base_batch

    def unscaled_lr(global_batch, world_size, micro_batch, base_lr, base_batch):
        return global_batch // (world_size * micro_batch), base_lr

    for wrong in (lr_per_gpu, forgot_world, unscaled_lr):
        report = _run(chA1.check_batch_plan, wrong)
        assert not report.passed, wrong.__name__
        assert "linear scaling rule" in _first_failure(report).hint
    assert "output[1]" in _first_failure(_run(chA1.check_batch_plan, lr_per_gpu)).reason
    assert "output[0]" in _first_failure(_run(chA1.check_batch_plan, forgot_world)).reason


# ---------------------------------------------------------------- memory
def test_bytes_per_rank_right_and_wrong():
    def right(n_params, world_size, sharded):
        local = math.ceil(n_params / world_size) if sharded else n_params
        return {"params": 4 * local, "grads": 4 * local, "optimizer": 8 * local}

    assert _run(chA1.check_bytes_per_rank, right).passed

    def one_moment(n_params, world_size, sharded):  # forgot exp_avg_sq
        local = math.ceil(n_params / world_size) if sharded else n_params
        return {"params": 4 * local, "grads": 4 * local, "optimizer": 4 * local}

    def floor_division(n_params, world_size, sharded):
        local = n_params // world_size if sharded else n_params
        return {"params": 4 * local, "grads": 4 * local, "optimizer": 8 * local}

    def ddp_also_shards(n_params, world_size, sharded):
        local = math.ceil(n_params / world_size)
        return {"params": 4 * local, "grads": 4 * local, "optimizer": 8 * local}

    assert not _run(chA1.check_bytes_per_rank, one_moment).passed
    report = _run(chA1.check_bytes_per_rank, floor_division)
    assert not report.passed and _first_failure(report).label == "10 values over 4 ranks (round up)"
    report = _run(chA1.check_bytes_per_rank, ddp_also_shards)
    assert not report.passed and _first_failure(report).label == "GPT-2 small, DDP on 8 GPUs"
