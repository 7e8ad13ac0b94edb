"""Checkers for the exercises of Appendix A (scaling out with ``torch.distributed``).

The learner's functions are plain arithmetic on one process (no process group is needed to run
them); the references are ``torch.utils.data.distributed.DistributedSampler`` itself and the
rules of :mod:`transformer_book.distributed`.
"""

from __future__ import annotations

import torch
from torch.utils.data.distributed import DistributedSampler

from transformer_book.distributed import training_bytes
from transformer_book.exercises.core import Case, CheckReport, check_function

__all__ = ["check_average_gradients", "check_shard_indices", "check_batch_plan", "check_bytes_per_rank"]


# --------------------------------------------------------------------------- averaging

def _average_reference(grads: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
    total = sum(counts)
    return sum(g * (c / total) for g, c in zip(grads, counts))


def check_average_gradients(fn, *, quiet: bool = False) -> CheckReport:
    """ex-a1-average-gradients: ``fn(grads, counts)``, the whole batch's gradient from the ranks' ones."""
    g = torch.Generator().manual_seed(0)
    two = [torch.randn(3, 4, generator=g) for _ in range(2)]
    four = [torch.randn(5, generator=g) for _ in range(4)]
    mean_hint = ("all_reduce gives the SUM of the ranks' gradients; each is already a mean over its own "
                 "examples, so divide the sum by the number of ranks (the known FSDP/gloo pitfall was a sum).")
    weight_hint = ("With unequal shares each rank's mean gradient stands for counts[r] examples: weight it by "
                   "counts[r] and divide by the total number of examples, sum(counts).")
    cases = [
        Case(args=(two, [8, 8]), label="2 ranks, 8 examples each", hint=mean_hint),
        Case(args=(four, [4, 4, 4, 4]), label="4 ranks, equal shares", hint=mean_hint),
        Case(args=([two[0]], [16]), label="1 rank: its own gradient", hint=mean_hint),
        Case(args=(two, [12, 4]), label="2 ranks, 12 and 4 examples", hint=weight_hint),
        Case(args=(four, [1, 2, 3, 10]), label="4 ranks, unequal shares", hint=weight_hint),
        Case(args=([t.double() for t in two], [3, 5]), label="float64 gradients keep their dtype",
             hint="Multiply by Python numbers (floats), not float32 tensors, so the dtype stays."),
    ]
    return check_function(fn, reference=_average_reference, cases=cases, exercise="ex-a1-average-gradients",
                          atol=1e-6, rtol=1e-6, quiet=quiet)


# --------------------------------------------------------------------------- sharding

def _shard_reference(n: int, world_size: int, rank: int) -> list[int]:
    return list(DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False))


def check_shard_indices(fn, *, quiet: bool = False) -> CheckReport:
    """ex-a1-shard-indices: ``fn(n, world_size, rank)`` equals ``DistributedSampler(shuffle=False)``'s list."""
    deal = "Deal the indices out like cards: rank r takes positions r, r + W, r + 2W, ... (a step of W)."
    pad = ("Every rank must get the same number of indices, ceil(n / W): first repeat indices from the "
           "start (0, 1, ...) until the list's length is a multiple of W, then deal.")
    cases = [
        Case(args=(10, 2, 0), label="n=10, W=2, rank 0", hint=deal),
        Case(args=(10, 2, 1), label="n=10, W=2, rank 1", hint=deal),
        Case(args=(12, 4, 3), label="n=12, W=4, rank 3", hint=deal),
        Case(args=(7, 1, 0), label="n=7, W=1: everything", hint=deal),
        Case(args=(10, 3, 2), label="n=10, W=3, rank 2 (padded)", hint=pad),
        Case(args=(10, 4, 3), label="n=10, W=4, rank 3 (padded)", hint=pad),
        Case(args=(3, 8, 7), label="n=3, W=8, rank 7 (more ranks than items)", hint=pad),
    ]
    return check_function(fn, reference=_shard_reference, cases=cases, exercise="ex-a1-shard-indices", quiet=quiet)


# --------------------------------------------------------------------------- batch and learning rate

def _plan_reference(global_batch: int, world_size: int, micro_batch: int, base_lr: float, base_batch: int
                    ) -> tuple[int, float]:
    return global_batch // (world_size * micro_batch), base_lr * global_batch / base_batch


def check_batch_plan(fn, *, quiet: bool = False) -> CheckReport:
    """ex-a1-batch-plan: ``fn(global_batch, world_size, micro_batch, base_lr, base_batch) -> (accum, lr)``."""
    accum_hint = ("One optimizer step sees world_size x micro_batch x accum examples: solve for accum "
                  "(an int: use //).")
    lr_hint = ("The linear scaling rule ties the learning rate to the *global* batch: lr = base_lr x "
               "global_batch / base_batch. The number of GPUs does not appear in it.")
    hint = f"output[0] is accum: {accum_hint} output[1] is lr: {lr_hint}"
    cases = [
        Case(args=(256, 8, 8, 3e-4, 256), label="8 GPUs, the recipe's batch", hint=hint),
        Case(args=(256, 2, 8, 3e-4, 256), label="the same batch on 2 GPUs", hint=hint),
        Case(args=(64, 2, 32, 6e-3, 32), label="batch doubled, no accumulation", hint=hint),
        Case(args=(512, 4, 16, 1e-3, 256), label="4 GPUs, batch 512", hint=hint),
        Case(args=(128, 16, 8, 1e-3, 512), label="16 GPUs, a smaller batch", hint=hint),
    ]
    return check_function(fn, reference=_plan_reference, cases=cases, exercise="ex-a1-batch-plan", rtol=1e-9,
                          atol=0.0, quiet=quiet)


# --------------------------------------------------------------------------- memory

def _bytes_reference(n_params: int, world_size: int, sharded: bool) -> dict[str, int]:
    return training_bytes(n_params, world_size, sharded)


def check_bytes_per_rank(fn, *, quiet: bool = False) -> CheckReport:
    """ex-a1-bytes-per-rank: ``fn(n_params, world_size, sharded)`` -> bytes of params, grads, AdamW state."""
    full = ("Without sharding every rank holds everything: 4 bytes per float32 value for the parameters, "
            "as many for the gradients, twice as many for AdamW's two moments (exp_avg, exp_avg_sq).")
    shard = ("Sharded, each rank keeps ceil(n_params / world_size) values of each (math.ceil), "
             "whatever world_size is.")
    cases = [
        Case(args=(1000, 1, False), label="1 rank", hint=full),
        Case(args=(124_439_808, 8, False), label="GPT-2 small, DDP on 8 GPUs", hint=full),
        Case(args=(124_439_808, 8, True), label="GPT-2 small, FSDP on 8 GPUs", hint=shard),
        Case(args=(10, 4, True), label="10 values over 4 ranks (round up)", hint=shard),
        Case(args=(10, 1, True), label="sharded over 1 rank = not sharded", hint=shard),
    ]
    return check_function(fn, reference=_bytes_reference, cases=cases, exercise="ex-a1-bytes-per-rank", quiet=quiet)

