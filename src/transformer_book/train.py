"""Training helpers (chapter 6, reused by later chapters): schedules, loss, checkpoints, a loop.

* :func:`warmup_inverse_sqrt` and :func:`warmup_cosine`: learning-rate multipliers for
  ``torch.optim.lr_scheduler.LambdaLR``. The first is the schedule of Vaswani et al. (2017):
  linear warm-up, then decay as ``1 / sqrt(step)``.
* :func:`label_smoothed_cross_entropy`: cross-entropy against a target distribution that puts
  ``1 - eps`` on the right token and spreads ``eps`` over the whole vocabulary (Szegedy et
  al., 2016), padding ignored.
* :func:`clip_gradients`: ``torch.nn.utils.clip_grad_norm_`` with a checked argument; it
  returns the norm *before* clipping, worth logging.
* :func:`save_checkpoint` / :func:`load_checkpoint`: weights + the config that built them;
  loading refuses a checkpoint made with another config (:class:`CheckpointConfigError`)
  or a file that is not a checkpoint (:class:`CheckpointError`).
* :class:`History`, :func:`train_loop`, :func:`plot_histories`: a small loop with a
  ``tqdm.auto`` progress bar that records losses and learning rates, and their plot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "warmup_inverse_sqrt",
    "warmup_cosine",
    "lr_lambda",
    "label_smoothed_cross_entropy",
    "clip_gradients",
    "CheckpointError",
    "CheckpointConfigError",
    "save_checkpoint",
    "load_checkpoint",
    "History",
    "train_loop",
    "plot_histories",
]

_FORMAT = "transformer_book.checkpoint/1"


# --------------------------------------------------------------------------- checks

def _int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _number_in(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a number in {bracket}{low}, {high}], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- schedules

def warmup_inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate multiplier of Vaswani et al. (2017), normalised to peak at 1.

    ``min(s / warmup, sqrt(warmup / s))`` with ``s = step + 1``: a linear ramp over
    ``warmup`` steps, then decay as ``1/sqrt(s)``. The paper's rate is this times
    ``d_model^-0.5 * warmup^-0.5``. ``warmup=0`` means no warm-up (constant 1, then the
    decay starts at once: ``1/sqrt(s)``).
    """
    _int_at_least("step", step, 0)
    _int_at_least("warmup", warmup, 0)
    s = step + 1
    if warmup == 0:
        return 1.0 / math.sqrt(s)
    return min(s / warmup, math.sqrt(warmup / s))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 down to ``min_ratio`` at ``total``.

    The schedule of most GPT training runs. After ``total`` steps it stays at ``min_ratio``.
    """
    _int_at_least("step", step, 0)
    _int_at_least("warmup", warmup, 0)
    _int_at_least("total", total, 1)
    if warmup > total:
        raise ValueError(f"warmup={warmup} must be <= total={total} steps")
    _number_in("min_ratio", min_ratio, 0.0, 1.0)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_lambda(kind: str, warmup: int, total: int | None = None, min_ratio: float = 0.0) -> Callable[[int], float]:
    """A ``step -> multiplier`` function for ``LambdaLR``: ``kind`` in ``"inverse_sqrt"``, ``"cosine"``, ``"constant"``.

    ``"constant"`` with ``warmup > 0`` is a linear warm-up then a flat rate.
    """
    _int_at_least("warmup", warmup, 0)
    if kind == "inverse_sqrt":
        return lambda step: warmup_inverse_sqrt(step, warmup)
    if kind == "cosine":
        if total is None:
            raise ValueError("total (the number of training steps) is needed for kind='cosine'")
        warmup_cosine(0, warmup, total, min_ratio)  # check the arguments once, now
        return lambda step: warmup_cosine(step, warmup, total, min_ratio)
    if kind == "constant":
        return lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    raise ValueError(f"kind must be one of ('inverse_sqrt', 'cosine', 'constant'), got {kind!r}")


# --------------------------------------------------------------------------- loss

def label_smoothed_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float = 0.0,
                                 ignore_index: int | None = None) -> Tensor:
    """Mean cross-entropy against the smoothed target ``(1 - eps) * onehot + eps / V``.

    Args:
        logits: ``(N, V)`` or ``(B, T, V)`` unnormalised scores.
        targets: ``(N,)`` or ``(B, T)`` integer ids in ``[0, V)`` (or ``ignore_index``).
        smoothing: ``eps`` in ``[0, 1)``; 0 is the plain cross-entropy.
        ignore_index: positions whose target equals it (padding) count neither in the sum nor
            in the mean.

    Equal to ``F.cross_entropy(logits, targets, label_smoothing=eps, ignore_index=...)``: the
    loss is ``(1 - eps) * NLL(target) + eps * mean_v(-log p_v)``. Smoothing stops the model
    from driving its logits towards infinity to reach probability 1 (Szegedy et al., 2016).
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of class ids, got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    if logits.dim() < 2 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets must have the shape of logits without its last (vocabulary) dimension: "
                         f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)}")
    _number_in("smoothing", smoothing, 0.0, 1.0)
    if smoothing == 1.0:
        raise ValueError("smoothing must be < 1 (at 1 the target ignores the right answer), got 1.0")
    v = logits.shape[-1]
    logits, targets = logits.reshape(-1, v), targets.reshape(-1)
    keep = torch.ones_like(targets, dtype=torch.bool) if ignore_index is None else targets != ignore_index
    bad = keep & ((targets < 0) | (targets >= v))
    if bool(bad.any()):
        raise ValueError(f"targets must lie in [0, {v - 1}] (or equal ignore_index={ignore_index}), got "
                         f"{targets[bad][:5].tolist()}")
    log_p = torch.log_softmax(logits.float(), dim=-1)[keep]
    t = targets[keep]
    if t.numel() == 0:
        # Every target is padding: F.cross_entropy returns NaN here; zero is what a sum over
        # nothing should give, and it keeps training running.
        return logits.sum() * 0.0
    nll = -log_p.gather(1, t[:, None]).squeeze(1)
    uniform = -log_p.mean(dim=-1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean().to(logits.dtype)


def clip_gradients(parameters: Iterable[nn.Parameter] | nn.Module, max_norm: float) -> float:
    """Scale all gradients down together so that their global L2 norm is at most ``max_norm``.

    A thin wrapper over ``torch.nn.utils.clip_grad_norm_`` (the well-tested one); returns the
    norm before clipping, as a float.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    return float(nn.utils.clip_grad_norm_(parameters, max_norm))


# --------------------------------------------------------------------------- checkpoints

class CheckpointError(ValueError):
    """The file is not a readable checkpoint of this book (missing, corrupt, another format)."""


class CheckpointConfigError(CheckpointError):
    """The checkpoint was made with a different config than the model it should load into."""


def _plain(config: object) -> dict:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif hasattr(config, "__dataclass_fields__"):
        from dataclasses import asdict

        config = asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict (or a dataclass), got {type(config).__name__}")
    return dict(config)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: Mapping | Any,
                    optimizer: torch.optim.Optimizer | None = None, **extra: Any) -> None:
    """Save ``model``'s weights with the ``config`` that built it (and optionally the optimizer).

    ``extra`` keys (step, losses, the recipe, ...) are stored as they are and come back from
    :func:`load_checkpoint`. The file is written to a temporary name and renamed, so a crash
    never leaves half a checkpoint behind.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = _plain(config)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    for key in ("format", "config", "model", "optimizer"):
        if key in extra:
            raise ValueError(f"extra key {key!r} is reserved by the checkpoint format")
    state = {"format": _FORMAT, "config": config, "model": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None, **extra}
    path = os.fspath(path)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _config_diff(stored: Mapping, wanted: Mapping) -> list[str]:
    lines = []
    for key in sorted(set(stored) | set(wanted), key=str):
        a, b = stored.get(key, "<missing>"), wanted.get(key, "<missing>")
        if a != b:
            lines.append(f"{key}: checkpoint has {a!r}, model config has {b!r}")
    return lines


def load_checkpoint(path: str | os.PathLike, model: nn.Module, config: Mapping | Any,
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Refuses, before touching ``model``:

    * a missing file, or one that is not a checkpoint of this format (:class:`CheckpointError`);
    * a checkpoint whose stored config differs from ``config`` (:class:`CheckpointConfigError`,
      naming every differing field with both values);
    * weights that do not fit the model (missing/unexpected keys, other shapes).

    Returns the checkpoint's dict (``"config"``, ``"model"``, ``"optimizer"`` and the extras).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = _plain(config)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise CheckpointError(f"{path!r} is corrupt or not a checkpoint (torch.load failed: "
                              f"{type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointError(f"{path!r} is not a transformer_book checkpoint (expected format {_FORMAT!r}, "
                              f"got {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    diff = _config_diff(state["config"], config)
    if diff:
        raise CheckpointConfigError(f"checkpoint {path!r} was made with a different config:\n  " + "\n  ".join(diff))
    weights, own = state["model"], model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"checkpoint {path!r} does not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(weights)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {path!r} has no optimizer state to load")
        optimizer.load_state_dict(state["optimizer"])
    return state


# --------------------------------------------------------------------------- training loop

@dataclass
class History:
    """What a training run records: the loss and learning rate of every step, and evaluations."""

    name: str = ""
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    evals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def smoothed(self, window: int = 20) -> list[float]:
        """Running mean of the loss over the last ``window`` steps (for plotting)."""
        _int_at_least("window", window, 1)
        out, total = [], 0.0
        for i, x in enumerate(self.loss):
            total += x
            if i >= window:
                total -= self.loss[i - window]
            out.append(total / min(i + 1, window))
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "loss": self.loss, "lr": self.lr,
                "grad_norm": self.grad_norm, "evals": self.evals}

    @classmethod
    def from_dict(cls, d: Mapping) -> History:
        return cls(name=d.get("name", ""), steps=list(d["steps"]), loss=list(d["loss"]), lr=list(d.get("lr", [])),
                   grad_norm=list(d.get("grad_norm", [])),
                   evals={k: [tuple(x) for x in v] for k, v in d.get("evals", {}).items()})


def train_loop(
    model: nn.Module,
    batches: Iterable | Callable[[int], Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    scheduler: Any | None = None,
    clip: float | None = 1.0,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    eval_every: int = 0,
    history: History | None = None,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Run ``steps`` optimisation steps and return the :class:`History`.

    Args:
        batches: an iterable of batches (cycled when it ends) or a function ``step -> batch``.
        loss_fn: ``loss_fn(model, batch) -> scalar loss``.
        scheduler: e.g. a ``LambdaLR``, stepped after every optimiser step.
        clip: gradient-norm clipping (``None``: none).
        evaluate: ``evaluate(model) -> {name: value}`` every ``eval_every`` steps and at the end;
            the model is put in ``eval()`` mode for it and back in ``train()`` after.
        history: a history to continue (e.g. after loading a checkpoint).

    A non-finite loss stops training with a ``FloatingPointError`` that names the step, rather
    than silently filling the weights with NaNs.
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    _int_at_least("steps", steps, 1)
    _int_at_least("eval_every", eval_every, 0)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (model, batch) -> loss, got {type(loss_fn).__name__}")
    history = history if history is not None else History(name=desc)
    start = history.steps[-1] + 1 if history.steps else 0

    def batch_stream() -> Iterator:
        if callable(batches) and not hasattr(batches, "__iter__"):
            step = start
            while True:
                yield batches(step)
                step += 1
        while True:
            empty = True
            for b in batches:
                empty = False
                yield b
            if empty:
                raise ValueError("batches is empty")

    def run_eval(step: int) -> dict:
        model.eval()
        with torch.no_grad():
            values = dict(evaluate(model))
        model.train()
        for k, v in values.items():
            history.evals.setdefault(k, []).append((step, float(v)))
        return values

    model.train()
    stream = batch_stream()
    bar = tqdm(range(start, start + steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        loss = loss_fn(model, next(stream))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}: training diverged "
                                     "(try a lower learning rate, a warm-up, or pre-LN)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_gradients(model, clip) if clip is not None else float("nan")
        optimizer.step()
        history.steps.append(step)
        history.loss.append(loss.item())
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.grad_norm.append(norm)
        if scheduler is not None:
            scheduler.step()
        if evaluate is not None and eval_every and (step + 1 - start) % eval_every == 0 and step + 1 - start < steps:
            run_eval(step)
        if (step - start) % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if evaluate is not None:
        run_eval(start + steps - 1)
    model.eval()
    return history


def plot_histories(histories: Iterable[History], *, smooth: int = 20, ax=None, log_y: bool = True,
                   title: str | None = None):
    """Plot each history's (smoothed) training loss against the step on one axis; returns the axis."""
    import matplotlib.pyplot as plt

    histories = list(histories)
    if not histories or not all(isinstance(h, History) for h in histories):
        raise TypeError("histories must be a non-empty list of History objects")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.6))
    for h in histories:
        ax.plot(h.steps, h.smoothed(smooth), label=h.name or None)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean of {smooth} steps)" if smooth > 1 else "training loss")
    if any(h.name for h in histories):
        ax.legend()
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax
