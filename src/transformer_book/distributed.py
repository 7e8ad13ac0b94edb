"""Appendix A: the book's GPT trained by several processes at once, with ``torch.distributed``.

Data parallelism: every process (a *rank*) holds the whole model, takes its own slice of the
batch, computes gradients on it, and the ranks *average* their gradients before each optimizer
step. Since the loss of a batch is the mean of its examples' losses, the mean of the ranks'
gradients is the gradient of the whole batch: ``W`` processes with ``B / W`` examples each take
the step that one process with ``B`` examples would take. This module does it three ways:

* :func:`average_gradients`: by hand, one ``all_reduce`` per parameter;
* ``torch.nn.parallel.DistributedDataParallel`` (DDP): the same sum, packed into buckets and
  started while the backward pass is still running (Li et al., 2020);
* ``torch.distributed.fsdp.fully_shard`` (FSDP): each rank also keeps only ``1 / W`` of the
  parameters, gradients and optimizer state (Zhao et al., 2023; the idea of ZeRO, Rajbhandari
  et al., 2020).

The script is started by ``torchrun``, which runs ``W`` copies of it and tells each its rank
through environment variables; the same command line works on this CPU (gloo), on 8 GPUs of
one machine or on many machines (NCCL), only the ``torchrun`` options change::

    torchrun --nproc_per_node=2 -m transformer_book.distributed train --out runs/a1
    python -m transformer_book.distributed parity --nproc 2     # 2 processes == 1 process?

Rank 0 logs and writes the checkpoints (atomically, verified when read); a job restarted by
``torchrun --max-restarts`` resumes from the last one and ends with the same weights as a job
that never failed. The data order is a function of the step number only, so a resumed run
reads exactly the batches the failed one would have read.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data.distributed import DistributedSampler

from transformer_book import _checks
from transformer_book.data.code import stdlib_corpus
from transformer_book.models.gpt import GPT, GPTConfig
from transformer_book.tokenize import CharTokenizer
from transformer_book.train import CheckpointError, clip_gradients, load_checkpoint, lr_lambda, save_checkpoint

__all__ = [
    "RENDEZVOUS_VARIABLES",
    "World",
    "Settings",
    "check_batch",
    "token_windows",
    "rank_batch",
    "build_model",
    "average_gradients",
    "fully_shard_gpt",
    "state_digest",
    "training_bytes",
    "run_training",
    "parity_worker",
    "free_port",
    "torchrun_command",
    "Launch",
    "launch",
    "main",
]

#: What ``torchrun`` puts in every worker's environment (and ``init_process_group`` reads).
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
#: float32 gradients of 2 processes x B/2 vs 1 process x B: the sums are done in another order,
#: so they differ by rounding only; anything larger is a bug (a sum instead of a mean is 100%).
GRAD_TOLERANCE = 1e-6
#: The character vocabulary (at most 127 characters + <unk>), fixed so that the model's shape
#: does not depend on which characters the corpus happens to hold.
VOCAB_SIZE = 128


# --------------------------------------------------------------------------- who am I?

@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``world_size``, on ``device``, talking ``backend``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"
    device: str = "cpu"
    restart: int = 0  # how many times torchrun has restarted the job (TORCHELASTIC_RESTART_COUNT)
    launched: bool = False  # started by torchrun (there is a process group to join), even with W = 1

    @classmethod
    def from_env(cls, env: dict | None = None) -> World:
        """Read the rendezvous that ``torchrun`` wrote into the environment; refuse a missing one.

        Every rank runs this before any communication, on the same kind of environment, so a
        job launched without ``torchrun`` fails at once on every rank instead of hanging.
        NCCL (and one GPU per local rank) when there are enough GPUs, gloo on the CPU otherwise.
        """
        env = os.environ if env is None else env
        missing = [name for name in RENDEZVOUS_VARIABLES if not env.get(name)]
        if missing:
            raise ValueError(f"missing rendezvous: environment variable(s) {', '.join(missing)} not set "
                             f"(got {', '.join(f'{n}={env.get(n)!r}' for n in RENDEZVOUS_VARIABLES)}); "
                             f"launch the script with torchrun, e.g. `torchrun --nproc_per_node=2 -m "
                             f"transformer_book.distributed train ...`")
        try:
            rank, world_size, local_rank = (int(env[n]) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        except ValueError:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got RANK={env['RANK']!r}, "
                             f"WORLD_SIZE={env['WORLD_SIZE']!r}, LOCAL_RANK={env['LOCAL_RANK']!r}") from None
        if not (world_size >= 1 and 0 <= rank < world_size and local_rank >= 0):
            raise ValueError(f"need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got RANK={rank}, "
                             f"WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}")
        # NCCL when every local rank has a GPU of its own (LOCAL_WORLD_SIZE: the ranks on this
        # node, the same on all of them, so every rank picks the same backend); else gloo, CPU.
        local_world = int(env.get("LOCAL_WORLD_SIZE", local_rank + 1))
        cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        return cls(rank, world_size, local_rank, "nccl" if cuda else "gloo",
                   f"cuda:{local_rank}" if cuda else "cpu", int(env.get("TORCHELASTIC_RESTART_COUNT", "0")), True)

    def join(self) -> None:
        """Meet the other ranks (``init_process_group``): the first collective call of the job.

        The ranks find each other through a key-value store at ``MASTER_ADDR:MASTER_PORT``, which
        ``torchrun``'s agent keeps for the whole job. After a restart the store still holds the
        addresses the failed attempt's workers published, and in torch 2.13 a new worker may read
        a dead one's address ("connection refused"). Each attempt therefore gets its own key
        prefix, so the new workers only ever read each other's keys.
        """
        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 hosts it
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size,
                              is_master=self.rank == 0 and not agent_store)
        store = dist.PrefixStore(f"attempt-{self.restart}", store)
        dist.init_process_group(self.backend, store=store, rank=self.rank, world_size=self.world_size)

    def tag(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


# --------------------------------------------------------------------------- the run's settings

@dataclass(frozen=True)
class Settings:
    """Everything that decides a run's weights (stored in its checkpoints and compared on resume).

    ``batch_size`` is the *global* batch: each of ``W`` ranks takes ``batch_size / W`` windows per
    step, in ``accum`` micro-batches. ``mode`` is ``"ddp"`` or ``"hand"`` (:func:`average_gradients`).
    """

    steps: int = 20
    batch_size: int = 16
    accum: int = 1
    lr: float = 3e-3
    warmup: int = 5
    weight_decay: float = 0.1
    clip: float = 1.0
    block_size: int = 32
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    corpus_bytes: int = 100_000
    seed: int = 0
    mode: str = "ddp"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accum", "block_size", "n_layer", "n_head", "n_embd", "corpus_bytes"):
            _checks.positive_int(name, getattr(self, name))
        _checks.integer("warmup", self.warmup, low=0, high=self.steps)
        _checks.integer("seed", self.seed, low=0)
        _checks.number("lr", self.lr, 0.0, low_open=True)
        _checks.number("weight_decay", self.weight_decay, 0.0)
        _checks.number("clip", self.clip, 0.0, low_open=True)
        _checks.one_of("mode", self.mode, ("ddp", "hand"))

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=0.0)


def check_batch(batch_size: int, world_size: int, accum: int = 1, where: str = "") -> int:
    """The windows per rank and micro-batch, ``batch_size / (world_size * accum)``; refuse a remainder.

    Every rank calls this with the same numbers before any collective, so every rank refuses.
    """
    per_step = world_size * accum
    if batch_size % per_step:
        raise ValueError(f"{where + ': ' if where else ''}batch_size={batch_size} must be divisible by "
                         f"world_size={world_size} x accum={accum} = {per_step} (each rank takes an equal "
                         f"share of every batch); use a batch size that is a multiple of {per_step}")
    return batch_size // per_step


# --------------------------------------------------------------------------- data

def token_windows(settings: Settings) -> tuple[CharTokenizer, Tensor]:
    """The corpus as non-overlapping windows ``(N, block_size + 1)``: inputs ``[:, :-1]``, targets ``[:, 1:]``.

    Characters of the standard library's source (deterministic, the same on every rank: each
    rank builds the data itself, nothing is sent).
    """
    text = stdlib_corpus(max_bytes=settings.corpus_bytes, seed=0, split="train")
    tokenizer = CharTokenizer.from_text(text, max_size=VOCAB_SIZE - 1)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    t = settings.block_size
    n = (ids.numel() - 1) // t
    rows = torch.arange(n)[:, None] * t + torch.arange(t + 1)  # (N, T + 1)
    return tokenizer, ids[rows]


def rank_batch(windows: Tensor, step: int, batch_size: int, rank: int, world_size: int, seed: int = 0
               ) -> tuple[Tensor, Tensor]:
    """This rank's share of the global batch of ``step``: inputs and targets, each ``(B / W, T)``.

    ``DistributedSampler`` shuffles the window indices with ``seed + epoch`` (the same permutation
    on every rank) and deals them out round-robin: rank ``r`` gets positions ``r, r + W, ...``.
    Step ``s`` of an epoch takes positions ``s*B .. (s+1)*B - 1`` of that permutation, whatever
    ``W`` is, so ``W`` ranks together read exactly the batch one process would read. Everything
    is a function of ``step``: a resumed run needs no sampler state.
    """
    n = windows.shape[0]
    steps_per_epoch = n // batch_size
    epoch, s = divmod(step, steps_per_epoch)
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    b = batch_size // world_size
    mine = list(sampler)[s * b:(s + 1) * b]
    chunk = windows[mine]
    return chunk[:, :-1], chunk[:, 1:]


# --------------------------------------------------------------------------- model, gradients

def build_model(config: GPTConfig, seed: int = 0) -> GPT:
    """The GPT with weights drawn from ``seed``: every rank builds the same one.

    (DDP would broadcast rank 0's weights at wrapping anyway; the by-hand version relies on this.)
    """
    torch.manual_seed(seed)
    return GPT(config)


def fully_shard_gpt(model: GPT) -> GPT:
    """Shard ``model`` over the ranks with FSDP2 (``fully_shard``), one unit per block; returns it.

    Each parameter becomes a ``DTensor`` of which this rank keeps ``1 / W`` (dimension 0 split).
    A unit's full weights are all-gathered just before its forward (and again for its backward)
    and freed after; its gradients are reduce-scattered, averaged over the ranks, each rank
    keeping its shard. The root call takes what is left: the embeddings (tied with the head)
    and the final norm. Needs a process group (after :meth:`World.join`).
    """
    from torch.distributed.fsdp import fully_shard

    for block in model.h:
        fully_shard(block)
    fully_shard(model)
    return model


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Data parallelism by hand: replace every gradient by its mean over the ranks.

    ``all_reduce`` leaves the *sum* of all ranks' tensors on every rank; dividing by ``W`` makes
    it the mean, the gradient of the whole batch (each rank's loss is a mean over its share).
    One message per parameter, sent after the whole backward pass: correct, and slow.
    """
    for p in model.parameters():  # a tied weight (wte = lm_head) is one parameter, sent once
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size


def _optimizer(model: nn.Module, settings: Settings) -> torch.optim.AdamW:
    # Weight decay on the matrices only (not on norms' gains, biases or position vectors).
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wpe" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.95))


def state_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 of a state dict's names, shapes, dtypes and bytes: equal digests = identical weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def training_bytes(n_params: int, world_size: int = 1, sharded: bool = False, bytes_per_value: int = 4
                   ) -> dict[str, int]:
    """Bytes per rank of parameters, gradients and AdamW's two moments, computed from the count.

    DDP keeps a full copy of all three on every rank; FSDP keeps ``1 / W`` of each (rounded up:
    it pads every tensor to a multiple of ``W`` rows, so a measurement can be slightly larger).
    """
    n_params = _checks.positive_int("n_params", n_params)
    world_size = _checks.positive_int("world_size", world_size)
    local = math.ceil(n_params / world_size) if _checks.boolean("sharded", sharded) else n_params
    b = _checks.positive_int("bytes_per_value", bytes_per_value)
    return {"params": local * b, "grads": local * b, "optimizer": 2 * local * b}


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank


def _measured_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the tensors this rank actually holds (a DTensor counts its local shard)."""
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor) and v.dim() > 0]
    size = lambda ts: sum(_local(t).numel() * _local(t).element_size() for t in ts)  # noqa: E731
    return {"params": size(params), "grads": size(p.grad for p in params if p.grad is not None),
            "optimizer": size(state)}


# --------------------------------------------------------------------------- checkpoints

def _checkpoint_config(settings: Settings, config: GPTConfig, world_size: int) -> dict:
    # What must match for a resumed run to be the same run: the model, the recipe, the world size.
    return {**{f"model.{k}": v for k, v in config.to_dict().items()},
            **{f"run.{k}": v for k, v in asdict(settings).items()}, "world_size": world_size}


def _save(path: Path, model: nn.Module, optimizer, settings: Settings, config: GPTConfig, world: World,
          step: int, losses: list[float]) -> None:
    # save_checkpoint writes to a temporary name and renames it: a crash mid-write leaves the
    # previous checkpoint intact. The digest lets the reader verify the weights it got.
    save_checkpoint(path, model, _checkpoint_config(settings, config, world.world_size), optimizer,
                    step=step, losses=losses, digest=state_digest(model.state_dict()))


def _resume(path: Path, model: nn.Module, optimizer, settings: Settings, config: GPTConfig, world: World
            ) -> tuple[int, list[float]]:
    """Load ``path`` if it exists; return ``(next step, losses so far)``. Refuses another run's file."""
    if not path.exists():
        return 0, []
    try:
        state = load_checkpoint(path, model, _checkpoint_config(settings, config, world.world_size), optimizer)
    except CheckpointError as err:  # another model, recipe or world size; or a damaged file
        raise ValueError(f"{world.tag()}: cannot resume from {str(path)!r}: {err}. Resume with the settings "
                         f"and world size that wrote it, or start a new run in another --out directory") from None
    if state.get("digest") != state_digest(model.state_dict()):
        raise ValueError(f"{world.tag()}: checkpoint {str(path)!r} failed verification: its weights do not "
                         f"match the digest stored with them (digest {state.get('digest')!r})")
    return int(state["step"]), list(state["losses"])


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the training script

def run_training(settings: Settings, out: str | os.PathLike, world: World | None = None, *,
                 checkpoint_every: int = 0, fail_at_step: int | None = None, fail_rank: int = 1,
                 log_every: int = 0) -> dict:
    """Train the tiny GPT for ``settings.steps`` steps; rank 0 writes ``out/result.json`` and returns it.

    ``world=None`` is one process without a process group (the reference). Under ``torchrun``
    pass :meth:`World.from_env`; the process group is joined here after every check has passed.
    ``checkpoint_every=k`` saves (rank 0) after every ``k``-th step and resumes from
    ``out/checkpoint.pt`` if it is there. ``fail_at_step=n``: rank ``fail_rank`` kills itself
    (SIGKILL) when it reaches step ``n`` in the job's first attempt -- the fault of the restart demo.
    """
    _checks.instance("settings", settings, Settings)
    world = World() if world is None else _checks.instance("world", world, World)
    checkpoint_every = _checks.integer("checkpoint_every", checkpoint_every, low=0)
    log_every = _checks.integer("log_every", log_every, low=0)
    if fail_at_step is not None:
        _checks.integer("fail_at_step", fail_at_step, low=0, high=settings.steps - 1)
    micro = check_batch(settings.batch_size, world.world_size, settings.accum, where=world.tag())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    _, windows = token_windows(settings)
    config = settings.model_config(vocab_size=VOCAB_SIZE)
    model = build_model(config, settings.seed).to(world.device)
    optimizer = _optimizer(model, settings)
    start, losses = _resume(out / CHECKPOINT, model, optimizer, settings, config, world)  # checked on every rank

    distributed = world.launched
    if distributed:
        world.join()
    net = nn.parallel.DistributedDataParallel(model) if distributed and settings.mode == "ddp" else model
    schedule = lr_lambda("cosine", settings.warmup, settings.steps, 0.1)
    step_times, sync_times = [], []
    for step in range(start, settings.steps):
        if fail_at_step == step and world.rank == fail_rank and world.restart == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash: no clean-up, no goodbye to the others
        t0 = time.perf_counter()
        x, y = rank_batch(windows, step, settings.batch_size, world.rank, world.world_size, settings.seed)
        x, y = x.to(world.device), y.to(world.device)
        loss_sum = 0.0
        for i in range(settings.accum):
            xb, yb = x[i * micro:(i + 1) * micro], y[i * micro:(i + 1) * micro]
            # DDP: sum gradients only after the last micro-batch; before, accumulate locally.
            last = i == settings.accum - 1
            sync = net.no_sync() if isinstance(net, nn.parallel.DistributedDataParallel) and not last \
                else contextlib.nullcontext()
            with sync:
                loss = net(xb, yb).loss / settings.accum
                loss.backward()
            loss_sum += float(loss.detach())
        if distributed and settings.mode == "hand":
            ts = time.perf_counter()
            average_gradients(model, world.world_size)
            sync_times.append(time.perf_counter() - ts)
        clip_gradients(model, settings.clip)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * schedule(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_t = torch.tensor(loss_sum, device=world.device)
        if distributed:  # the logged loss is the whole batch's: the mean of the ranks' losses
            dist.all_reduce(loss_t)
            loss_t /= world.world_size
        losses.append(float(loss_t))
        step_times.append(time.perf_counter() - t0)
        if world.rank == 0 and log_every and (step % log_every == 0 or step == settings.steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({world.tag()}, attempt {world.restart})", flush=True)
        if world.rank == 0 and checkpoint_every and (step + 1) % checkpoint_every == 0:
            _save(out / CHECKPOINT, model, optimizer, settings, config, world, step + 1, losses)

    result = {
        "settings": asdict(settings), "world_size": world.world_size, "backend": world.backend,
        "restarts": world.restart, "resumed_from_step": start, "losses": losses,
        "step_seconds": step_times, "sync_seconds": sync_times, "n_params": model.num_parameters(),
        "digest": state_digest(model.state_dict()),
    }
    if world.rank == 0:
        torch.save(model.state_dict(), out / "final.tmp")
        os.replace(out / "final.tmp", out / "final.pt")
        _write_json(out / RESULT, result)
    if distributed:
        dist.barrier()  # rank 0 has written everything before anyone leaves
        dist.destroy_process_group()
    return result


# --------------------------------------------------------------------------- parity: W == 1?

def _max_diff(grads: list[Tensor], reference: list[Tensor]) -> float:
    return max(float((g - r).abs().max()) for g, r in zip(grads, reference))


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # all-gather a DTensor's shards


def _compute_vs_communication(model: nn.Module, x: Tensor, y: Tensor, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one forward + backward pass on this rank's share, and of one all-reduce
    of a tensor as large as all the gradients (after one untimed call of each: the first
    collective also sets up the connections)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def compute() -> None:
        model.zero_grad(set_to_none=True)
        model(x, y).loss.backward()

    def communicate() -> None:
        dist.all_reduce(flat)

    out = {}
    for name, fn in (("compute_seconds", compute), ("all_reduce_seconds", communicate)):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def parity_worker(settings: Settings, out: str | os.PathLike, world: World) -> dict:
    """One step's gradients four ways on ``W`` ranks, against one process on the whole batch.

    Every rank computes the reference itself (the whole global batch, no communication), then its
    share's gradients averaged by hand, by DDP, by DDP with ``no_sync`` accumulation over two
    micro-batches, and by FSDP (``fully_shard``) where this torch supports it. Rank 0 writes
    ``out/result.json``: the largest ``|difference|`` of each, FSDP's gradient scale (1 = mean;
    ``W`` would be the sum-instead-of-mean bug), bytes held per rank, and timings.
    """
    check_batch(settings.batch_size, world.world_size, 2, where=world.tag())  # the no_sync run uses 2 micro-batches
    Path(out).mkdir(parents=True, exist_ok=True)
    _, windows = token_windows(settings)
    config = settings.model_config(vocab_size=VOCAB_SIZE)
    world = replace(world, backend="gloo", device="cpu")  # a CPU check, on GPU machines too
    world.join()
    w, r = world.world_size, world.rank
    x_all, y_all = rank_batch(windows, 0, settings.batch_size, 0, 1, settings.seed)  # the global batch
    x, y = rank_batch(windows, 0, settings.batch_size, r, w, settings.seed)  # this rank's share

    reference = build_model(config, settings.seed)
    reference(x_all, y_all).loss.backward()
    ref = [p.grad.clone() for p in reference.parameters()]
    results, report = {}, {"rank": r, "shard_rows": x.shape[0]}

    hand = build_model(config, settings.seed)
    loss = hand(x, y).loss
    loss.backward()
    report["shard_loss"] = float(loss.detach())
    report["grad_norm_own_shard"] = float(torch.cat([p.grad.flatten() for p in hand.parameters()]).norm())
    average_gradients(hand, w)
    report["grad_norm_averaged"] = float(torch.cat([p.grad.flatten() for p in hand.parameters()]).norm())
    results["by hand (all_reduce / W)"] = _max_diff([p.grad for p in hand.parameters()], ref)

    report.update(_compute_vs_communication(hand, x, y))

    ddp = nn.parallel.DistributedDataParallel(build_model(config, settings.seed))
    ddp(x, y).loss.backward()
    results["DDP"] = _max_diff([p.grad for p in ddp.module.parameters()], ref)

    acc = nn.parallel.DistributedDataParallel(build_model(config, settings.seed))
    half = x.shape[0] // 2
    with acc.no_sync():  # first micro-batch: gradients stay local
        (acc(x[:half], y[:half]).loss / 2).backward()
    (acc(x[half:], y[half:]).loss / 2).backward()  # second: DDP sums the accumulated gradients
    results["DDP + no_sync, 2 micro-batches"] = _max_diff([p.grad for p in acc.module.parameters()], ref)

    ddp_opt = _optimizer(ddp.module, settings)
    ddp_opt.step()
    report["bytes_ddp"] = _measured_bytes(ddp.module, ddp_opt)

    fsdp_note = ""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2: torch >= 2.6)
    except ImportError as err:
        fsdp_note = f"skipped: torch {torch.__version__} has no torch.distributed.fsdp.fully_shard ({err})"
    if not fsdp_note:
        sharded = fully_shard_gpt(build_model(config, settings.seed))
        with warnings.catch_warnings():
            # Each block returns its keys/values (views) beside its output; training never writes
            # into them in place, so FSDP's warning about in-place ops on views does not apply.
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
            sharded(x, y).loss.backward()  # gradients are reduce-scattered: each rank keeps a shard
        grads = [_full(p.grad) for p in sharded.parameters()]  # all-gather the shards, on every rank
        results["FSDP (fully_shard)"] = _max_diff(grads, ref)
        flat_g, flat_r = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref])
        report_scale = float(flat_g @ flat_r / (flat_r @ flat_r))  # 1 = averaged, W = summed
        fsdp_opt = _optimizer(sharded, settings)
        fsdp_opt.step()
        report["bytes_fsdp"] = _measured_bytes(sharded, fsdp_opt)
    per_rank = [None] * w
    dist.all_gather_object(per_rank, report)
    result = {
        "world_size": w, "backend": world.backend, "torch": torch.__version__, "batch_size": settings.batch_size,
        "n_params": reference.num_parameters(), "tolerance": GRAD_TOLERANCE, "max_abs_diff": results,
        "reference_grad_max": max(float(g.abs().max()) for g in ref),
        "fsdp": fsdp_note or "ran", "fsdp_grad_scale": None if fsdp_note else report_scale, "per_rank": per_rank,
    }
    if r == 0:
        _write_json(Path(out) / RESULT, result)
    dist.barrier()
    dist.destroy_process_group()
    return result


# --------------------------------------------------------------------------- launching torchrun

def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script_args: list[str], nproc: int = 2, *, nnodes: int = 1, node_rank: int = 0,
                     endpoint: str = "127.0.0.1:29500", rdzv: str = "c10d", run_id: str = "a1",
                     max_restarts: int = 0, python: str | None = None) -> list[str]:
    """The ``torchrun`` command line (as a list) that starts this module with ``script_args``.

    ``python -m torch.distributed.run`` is ``torchrun``; every node runs it and starts ``nproc``
    workers. Two ways to meet (``rdzv``):

    * ``"c10d"``: the same command on every node; they meet at ``endpoint`` (``host:port``,
      on one of them) under ``run_id`` and are numbered as they arrive. Restarts after a
      failure (``max_restarts``) work with it.
    * ``"static"``: each node is told which one it is (``node_rank``); node 0 listens at
      ``endpoint``. (In torch 2.13 a *restart* fails under it: the workers of the new attempt
      find the old attempt's addresses in the store. The book restarts only under c10d.)
    """
    _checks.positive_int("nproc", nproc)
    _checks.positive_int("nnodes", nnodes)
    _checks.integer("node_rank", node_rank, low=0, high=nnodes - 1)
    _checks.integer("max_restarts", max_restarts, low=0)
    _checks.one_of("rdzv", rdzv, ("c10d", "static"))
    meet = ([f"--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"] if rdzv == "c10d"
            else [f"--rdzv-backend=static", f"--rdzv-endpoint={endpoint}", f"--node_rank={node_rank}"])
    return [python or sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--nproc_per_node={nproc}", *meet, f"--max-restarts={max_restarts}",
            "-m", "transformer_book.distributed", *script_args]


@dataclass
class Launch:
    """What a :func:`launch` gave back: the command, its exit code, its output, its wall time."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    pids: list[int] = field(default_factory=list)  # torchrun and the workers seen (none survive the return)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux ``/proc``; elsewhere none are found)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields_ = stat.read_text().rsplit(")", 1)[1].split()  # after "(command name)"
            children.setdefault(int(fields_[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited; only its parent's wait() is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _kill(pids: list[int]) -> None:
    # torchrun starts each worker in a session of its own, so killing torchrun's process group
    # alone would leave the workers running: kill every process of the job, each with its group.
    for pid in pids:
        for kill, target in ((os.killpg, pid), (os.kill, pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)


_JOBS = itertools.count()  # numbers this process's jobs: each rendezvous gets an id of its own


def launch(script_args: list[str], nproc: int = 2, *, max_restarts: int = 0, timeout: float = 120.0,
           nnodes: int = 1, node_rank: int = 0, rdzv: str = "c10d", port: int | None = None,
           cwd: str | None = None) -> Launch:
    """Run ``torchrun ... -m transformer_book.distributed <script_args>`` as a subprocess and wait.

    One thread per worker (``OMP_NUM_THREADS=1``), rendezvous on the loopback interface. On one
    node (c10d) the rendezvous store binds whatever port is free itself (``127.0.0.1:0``, as
    ``torchrun --standalone`` does); a port chosen first and bound later by torchrun, seconds
    after its start, could meanwhile be taken by another process on a busy machine. Several
    nodes must agree on a port in advance: ``port``, else :func:`free_port`. Whatever happens (a
    timeout, an exception here), the job is torn down before this returns: torchrun is asked to
    stop its workers (SIGTERM), then every process of the job still there is killed, so nothing
    is left behind. ``Launch.pids`` lists the processes it saw.
    """
    _checks.number("timeout", timeout, 0.0, low_open=True)
    if port is not None:
        port = _checks.integer("port", port, low=1, high=65535)
    elif nnodes == 1 and rdzv == "c10d":
        port = 0  # the store picks a free port as it binds: nothing to lose in between
    else:
        port = free_port()
    command = torchrun_command(script_args, nproc, nnodes=nnodes, node_rank=node_rank, max_restarts=max_restarts,
                               rdzv=rdzv, endpoint=f"127.0.0.1:{port}", run_id=f"a1-{os.getpid()}-{next(_JOBS)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    src = str(Path(__file__).resolve().parents[1])  # the package's own checkout, for the workers
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    timed_out, seen = False, {proc.pid}

    def watch() -> None:  # note the workers as they appear, so that they can be found later
        while proc.poll() is None:
            seen.update(_descendants(proc.pid))
            time.sleep(0.25)

    threading.Thread(target=watch, daemon=True).start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        seen.update(_descendants(proc.pid))
        proc.terminate()  # torchrun's agent stops its workers on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        _kill(sorted(seen))
        stdout, stderr = proc.communicate()
        stderr += f"\n[launch] killed after timeout={timeout} s"
    finally:
        if proc.poll() is None:  # an exception here (e.g. KeyboardInterrupt): tear the job down
            seen.update(_descendants(proc.pid))
            _kill(sorted(seen))
            proc.wait()
    _kill([p for p in seen if _alive(p)])
    return Launch(command, proc.returncode, stdout, stderr, time.perf_counter() - t0, timed_out, sorted(seen))


# --------------------------------------------------------------------------- command line

def _settings_parser(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--out", required=True, help="directory for the result, the checkpoint, the weights")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})


def _parity(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="a1-parity-") as out:
        job = launch(["parity-worker", "--out", out, "--batch-size", str(args.batch_size)], args.nproc,
                     timeout=args.timeout)
        path = Path(out) / RESULT
        if not job.ok or not path.exists():
            print(job.stderr[-3000:], file=sys.stderr)
            print(f"parity: the {args.nproc}-process job failed (exit code {job.returncode})", file=sys.stderr)
            return 2
        result = json.loads(path.read_text())
    if args.json:
        _write_json(Path(args.json), result)
    worst = max(result["max_abs_diff"].values())
    for name, diff in result["max_abs_diff"].items():
        print(f"{name:34s} max |grad difference| vs 1 process = {diff:.2e}")
    if result["fsdp_grad_scale"] is not None:
        print(f"FSDP gradient scale vs 1 process: {result['fsdp_grad_scale']:.6f} (1 = mean; "
              f"{result['world_size']} would be a sum)")
    else:
        print(f"FSDP: {result['fsdp']}")
    ok = worst <= args.tol
    print(f"largest gradient difference, {result['world_size']} processes vs 1: {worst:.2e} "
          f"({'within' if ok else 'OUTSIDE'} tolerance {args.tol:.0e}); job took {job.seconds:.1f} s")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``train`` / ``parity-worker`` (run under torchrun) and ``parity`` (starts torchrun itself)."""
    parser = argparse.ArgumentParser(prog="python -m transformer_book.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the tiny GPT (launch with torchrun)")
    _settings_parser(train)
    train.add_argument("--checkpoint-every", type=int, default=0)
    train.add_argument("--fail-at-step", type=int, default=None, help="fault injection: kill a rank there")
    train.add_argument("--fail-rank", type=int, default=1)
    train.add_argument("--log-every", type=int, default=5)
    worker = commands.add_parser("parity-worker", help="one step four ways (launch with torchrun)")
    _settings_parser(worker)
    parity = commands.add_parser("parity", help="start a W-process job and compare it with 1 process")
    parity.add_argument("--nproc", type=int, default=2)
    parity.add_argument("--batch-size", type=int, default=16)
    parity.add_argument("--tol", type=float, default=GRAD_TOLERANCE)
    parity.add_argument("--timeout", type=float, default=120.0)
    parity.add_argument("--json", default=None, help="also write the job's full result to this file")
    args = parser.parse_args(argv)
    if args.command == "parity":
        return _parity(args)
    settings = _settings(args)
    world = World.from_env()  # before anything else: no rendezvous, no run
    if args.command == "train":
        run_training(settings, args.out, world, checkpoint_every=args.checkpoint_every,
                     fail_at_step=args.fail_at_step, fail_rank=args.fail_rank, log_every=args.log_every)
    else:
        parity_worker(settings, args.out, world)
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
