"""Training helpers (chapter 6, reused by later chapters): schedules, loss, checkpoints, a loop.

* :func:`warmup_inverse_sqrt` and :func:`warmup_cosine`: learning-rate multipliers for
  ``torch.optim.lr_scheduler.LambdaLR``. The first is the schedule of Vaswani et al. (2017):
  linear warm-up, then decay as ``1 / sqrt(step)``.
* :func:`label_smoothed_cross_entropy`: cross-entropy against a target distribution that puts
  ``1 - eps`` on the right token and spreads ``eps`` over the whole vocabulary (Szegedy et
  al., 2016), padding ignored.
* :func:`clip_gradients`: ``torch.nn.utils.clip_grad_norm_`` with a checked argument; it
  returns the norm *before* clipping, worth logging.
* :func:`save_checkpoint` / :func:`load_checkpoint`: weights + the config that built them +
  a checksum of the tensors; loading checks everything before it touches the model and refuses
  a checkpoint made with another config (:class:`CheckpointConfigError`) or a file that is not
  a sound checkpoint (:class:`CheckpointError`: missing, malformed, damaged, non-finite).
* :class:`History`, :func:`train_loop`, :func:`plot_histories`: a small loop with a
  ``tqdm.auto`` progress bar that records losses and learning rates, and their plot.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from transformer_book import _checks

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
    "read_checkpoint",
    "tensor_checksum",
    "History",
    "train_loop",
    "plot_histories",
]

_FORMAT = "transformer_book.checkpoint/1"


# --------------------------------------------------------------------------- schedules

def warmup_inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate multiplier of Vaswani et al. (2017), normalised to peak at 1.

    ``min(s / warmup, sqrt(warmup / s))`` with ``s = step + 1``: a linear ramp over
    ``warmup`` steps, then decay as ``1/sqrt(s)``. The paper's rate is this times
    ``d_model^-0.5 * warmup^-0.5``. ``warmup=0`` means no warm-up (constant 1, then the
    decay starts at once: ``1/sqrt(s)``).
    """
    step = _checks.integer("step", step, low=0)
    warmup = _checks.integer("warmup", warmup, low=0)
    return _inverse_sqrt(step, warmup)


def _inverse_sqrt(step: int, warmup: int) -> float:
    s = step + 1
    if warmup == 0:
        return 1.0 / math.sqrt(s)
    return min(s / warmup, math.sqrt(warmup / s))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 down to ``min_ratio`` at ``total``.

    The schedule of most GPT training runs. After ``total`` steps it stays at ``min_ratio``.
    """
    step = _checks.integer("step", step, low=0)
    warmup, total, min_ratio = _check_cosine(warmup, total, min_ratio)
    return _cosine(step, warmup, total, min_ratio)


def _check_cosine(warmup: object, total: object, min_ratio: object) -> tuple[int, int, float]:
    warmup = _checks.integer("warmup", warmup, low=0)
    total = _checks.positive_int("total", total)
    if warmup > total:
        raise ValueError(f"warmup={warmup} must be <= total={total} steps")
    return warmup, total, _checks.probability("min_ratio", min_ratio)


def _cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_lambda(kind: str, warmup: int, total: int | None = None, min_ratio: float = 0.0) -> Callable[[int], float]:
    """A ``step -> multiplier`` function for ``LambdaLR``: ``kind`` in ``"inverse_sqrt"``, ``"cosine"``, ``"constant"``.

    ``"constant"`` with ``warmup > 0`` is a linear warm-up then a flat rate. The arguments are
    checked here, once; the returned function trusts the steps ``LambdaLR`` gives it.
    """
    kind = _checks.one_of("kind", kind, ("inverse_sqrt", "cosine", "constant"))
    warmup = _checks.integer("warmup", warmup, low=0)
    if kind == "inverse_sqrt":
        return lambda step: _inverse_sqrt(step, warmup)
    if kind == "cosine":
        if total is None:
            raise ValueError("total (the number of training steps) is needed for kind='cosine'")
        warmup, total, min_ratio = _check_cosine(warmup, total, min_ratio)
        return lambda step: _cosine(step, warmup, total, min_ratio)
    return lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0


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

    **A batch whose targets are all ignored has loss 0.0** (``F.cross_entropy`` gives NaN): a
    zero that still hangs on ``logits`` (it has a ``grad_fn``), so ``backward()`` works and adds
    nothing to the gradients. ``GPT.forward`` follows the same rule.
    """
    logits = _checks.float_tensor("logits", logits, min_dim=2, layout="(N, V) or (B, T, V)")
    targets = _checks.tensor("targets", targets)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of class ids, got dtype {targets.dtype}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets must have the shape of logits without its last (vocabulary) dimension: "
                         f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)}")
    smoothing = _checks.number("smoothing", smoothing, 0.0, 1.0, high_open=True)
    if ignore_index is not None:
        ignore_index = _checks.integer("ignore_index", ignore_index)
    v = logits.shape[-1]
    logits, targets = logits.reshape(-1, v), targets.reshape(-1)
    keep = torch.ones_like(targets, dtype=torch.bool) if ignore_index is None else targets != ignore_index
    bad = keep & ((targets < 0) | (targets >= v))
    if bool(bad.any()):
        raise ValueError(f"targets must lie in [0, {v - 1}] (or equal ignore_index={ignore_index}), got "
                         f"{targets[bad][:5].tolist()}")
    if not bool(keep.any()):
        return logits.sum() * 0.0  # every target ignored: the documented 0.0, with a grad_fn
    log_p = torch.log_softmax(logits[keep].float(), dim=-1)  # (N_kept, V)
    t = targets[keep].long()
    nll = -log_p.gather(1, t[:, None]).squeeze(1)            # -log p(target)
    uniform = -log_p.mean(dim=-1)                            # mean_v -log p_v
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean().to(logits.dtype)


def clip_gradients(parameters: Iterable[nn.Parameter] | nn.Module, max_norm: float) -> float:
    """Scale all gradients down together so that their global L2 norm is at most ``max_norm``.

    A thin wrapper over ``torch.nn.utils.clip_grad_norm_`` (the well-tested one); returns the
    norm before clipping, as a float.
    """
    max_norm = _checks.number("max_norm", max_norm, low=0.0, low_open=True)
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    elif isinstance(parameters, Tensor):
        parameters = [parameters]
    elif not isinstance(parameters, Iterable) or isinstance(parameters, (str, bytes)):
        raise TypeError(f"parameters must be an nn.Module or an iterable of tensors, got "
                        f"{_checks.describe(parameters)}")
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


def tensor_checksum(tree: object) -> str:
    """SHA-256 (hex) over every tensor in a nested dict/list, in a fixed order.

    Dict keys are visited sorted (as strings); each tensor contributes its path, dtype, shape
    and raw bytes, so one flipped bit in any weight changes the sum. Non-tensor leaves
    (numbers, strings, ``None``) contribute their ``repr``. Used by checkpoints and the model
    cache to refuse damaged files.
    """
    h = hashlib.sha256()

    def visit(path: str, node: object) -> None:
        if isinstance(node, Tensor):
            data = node.detach().cpu().contiguous().reshape(-1)
            h.update(f"{path}|{data.dtype}|{tuple(node.shape)}|".encode())
            h.update(data.view(torch.uint8).numpy().tobytes())
        elif isinstance(node, Mapping):
            for key in sorted(node, key=str):
                visit(f"{path}/{key}", node[key])
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                visit(f"{path}[{i}]", item)
        else:
            h.update(f"{path}={node!r};".encode())

    visit("", tree)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: Mapping | Any,
                    optimizer: torch.optim.Optimizer | None = None, **extra: Any) -> None:
    """Save ``model``'s weights with the ``config`` that built it (and optionally the optimizer).

    ``extra`` keys (step, losses, the recipe, ...) are stored as they are and come back from
    :func:`load_checkpoint`. The file carries a checksum of its tensors and values (weights,
    optimizer state, config, extras: :func:`tensor_checksum`), checked when it is read. It is written to a temporary
    name and renamed, so a crash never leaves half a checkpoint behind (nor the temporary file).
    """
    path = _checks.instance("path", path, (str, os.PathLike), "str or os.PathLike")
    _checks.instance("model", model, nn.Module, "torch.nn.Module")
    config = _plain(config)
    if optimizer is not None:
        _checks.instance("optimizer", optimizer, torch.optim.Optimizer, "torch.optim.Optimizer or None")
    for key in _RESERVED:
        if key in extra:
            raise ValueError(f"extra key {key!r} is reserved by the checkpoint format")
    state = {"format": _FORMAT, "config": config, "model": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None, **extra}
    state["checksum"] = tensor_checksum(state)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_RESERVED = ("format", "config", "model", "optimizer", "checksum")


def _config_diff(stored: Mapping, wanted: Mapping) -> list[str]:
    lines = []
    for key in sorted(set(stored) | set(wanted), key=str):
        a, b = stored.get(key, "<missing>"), wanted.get(key, "<missing>")
        if a != b:
            lines.append(f"{key}: checkpoint has {a!r}, model config has {b!r}")
    return lines


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The dict of a checkpoint file, verified but loaded into nothing.

    Checks that the file is a checkpoint of this format with a dict config, a dict of weight
    tensors and a well-formed (or no) optimizer state, that its checksum matches (files from
    before checksums have none) and that no weight or optimizer tensor is NaN or infinite;
    any failure is a :class:`CheckpointError`. The model cache reads an entry's config with it
    before building a model from that config.
    """
    path = os.fspath(_checks.instance("path", path, (str, os.PathLike), "str or os.PathLike"))
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at path {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise CheckpointError(f"{path!r} is corrupt or not a checkpoint (torch.load failed: "
                              f"{type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointError(f"{path!r} is not a transformer_book checkpoint (expected format {_FORMAT!r}, "
                              f"got {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    # Files written before checksums existed have none; every newer file must match its own.
    if "checksum" in state and state["checksum"] != tensor_checksum({k: v for k, v in state.items() if k != "checksum"}):
        raise CheckpointError(f"checkpoint {path!r} is damaged: the checksum of its tensors does not match "
                              "(a changed or flipped byte); it was not loaded")
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {path!r} is malformed: its config must be a dict, got "
                              f"{_checks.describe(state.get('config'))}")
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"checkpoint {path!r} is malformed: its model weights must be a dict of "
                              f"name -> tensor, got {_checks.describe(weights)}")
    opt = state.get("optimizer")
    if opt is not None and not (isinstance(opt, dict) and isinstance(opt.get("state"), dict)
                                and isinstance(opt.get("param_groups"), list)
                                and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                        for g in opt["param_groups"])):
        raise CheckpointError(f"checkpoint {path!r} is malformed: its optimizer state must be None or a dict "
                              f"with 'state' (dict) and 'param_groups' (list of dicts with 'params')")
    for name, tree in (("model weight", weights), ("optimizer state", opt)):
        for key, x in _tensors(tree):
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise CheckpointError(f"checkpoint {path!r} holds non-finite values in {name} {key!r}: "
                                      "refused (a diverged run, or a damaged file)")
    return state


def _tensors(tree: object, path: str = "") -> Iterator[tuple[str, Tensor]]:
    if isinstance(tree, Tensor):
        yield path, tree
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{path}[{i}]")


def load_checkpoint(path: str | os.PathLike, model: nn.Module, config: Mapping | Any,
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Everything is checked *before* ``model`` or ``optimizer`` is touched; any refusal is a
    :class:`CheckpointError` (a ``ValueError``):

    * a missing file, one that is not a checkpoint of this format, or a malformed one (keys
      missing, wrong types);
    * a checksum that does not match the tensors (a damaged file), or non-finite weights;
    * a stored config that differs from ``config`` (:class:`CheckpointConfigError`, naming
      every differing field with both values);
    * weights that do not fit the model (missing/unexpected keys, other shapes or dtypes);
    * with an ``optimizer``: no optimizer state, or one that does not fit it (other number of
      parameter groups or parameters, other state shapes).

    Returns the checkpoint's dict (``"config"``, ``"model"``, ``"optimizer"`` and the extras).
    """
    path = os.fspath(_checks.instance("path", path, (str, os.PathLike), "str or os.PathLike"))
    _checks.instance("model", model, nn.Module, "torch.nn.Module")
    config = _plain(config)
    if optimizer is not None:
        _checks.instance("optimizer", optimizer, torch.optim.Optimizer, "torch.optim.Optimizer or None")
    state = read_checkpoint(path)
    diff = _config_diff(state["config"], config)
    if diff:
        raise CheckpointConfigError(f"checkpoint {path!r} was made with a different config:\n  " + "\n  ".join(diff))
    weights, own = state["model"], model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    shapes += [f"{k}: checkpoint dtype {weights[k].dtype}, model {own[k].dtype}"
               for k in own if k in weights and weights[k].is_floating_point() != own[k].is_floating_point()]
    if missing or unexpected or shapes:
        raise CheckpointError(f"checkpoint {path!r} does not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    if optimizer is not None:
        _check_optimizer_state(path, state.get("optimizer"), optimizer)
    # Everything checked: load both; if torch still refuses, put the model back as it was.
    backup = {k: v.detach().clone() for k, v in own.items()}
    opt_backup = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    try:
        model.load_state_dict(weights)
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:
        model.load_state_dict(backup)
        if optimizer is not None:
            optimizer.load_state_dict(opt_backup)
        raise CheckpointError(f"checkpoint {path!r} could not be loaded ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); the model and optimizer are unchanged") from exc
    return state


def _check_optimizer_state(path: str, stored: dict | None, optimizer: torch.optim.Optimizer) -> None:
    if stored is None:
        raise CheckpointError(f"checkpoint {path!r} has no optimizer state to load")
    groups, own = stored["param_groups"], optimizer.param_groups
    sizes, own_sizes = [len(g["params"]) for g in groups], [len(g["params"]) for g in own]
    if sizes != own_sizes:
        raise CheckpointError(f"checkpoint {path!r}: its optimizer state has parameter groups of sizes {sizes}, "
                              f"the optimizer has {own_sizes}")
    ids = [i for g in groups for i in g["params"]]
    params = dict(zip(ids, (p for g in own for p in g["params"])))
    for key, entry in stored["state"].items():
        if key not in params or not isinstance(entry, dict):
            raise CheckpointError(f"checkpoint {path!r}: optimizer state for unknown parameter {key!r}")
        p = params[key]
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(p.shape):
                raise CheckpointError(f"checkpoint {path!r}: optimizer state {name!r} of parameter {key} has shape "
                                      f"{tuple(value.shape)}, the parameter {tuple(p.shape)}")


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
        window = _checks.positive_int("window", window)
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
        _checks.instance("d", d, Mapping, "dict (from History.to_dict)")
        for key in ("steps", "loss"):
            if key not in d:
                raise ValueError(f"d must hold {key!r} (a dict from History.to_dict), got keys {sorted(d, key=str)}")
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

    A non-finite loss, or a non-finite gradient norm, stops training with a
    ``FloatingPointError`` that names the step *before* ``optimizer.step()``: the weights are
    left as they were after the last good step, never filled with NaNs. ``History.grad_norm``
    holds the norm before clipping (also when ``clip`` is ``None``).
    """
    from tqdm.auto import tqdm

    _checks.instance("model", model, nn.Module, "torch.nn.Module")
    if not (callable(batches) or isinstance(batches, Iterable)) or isinstance(batches, (str, bytes)):
        raise TypeError(f"batches must be an iterable of batches or a function step -> batch, got "
                        f"{_checks.describe(batches)}")
    if isinstance(batches, Sized) and not callable(batches) and len(batches) == 0:
        raise ValueError("batches must hold at least one batch, got an empty one")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (model, batch) -> loss, got {_checks.describe(loss_fn)}")
    _checks.instance("optimizer", optimizer, torch.optim.Optimizer, "torch.optim.Optimizer")
    steps = _checks.positive_int("steps", steps)
    max_norm = float("inf") if clip is None else _checks.number("clip", clip, low=0.0, low_open=True)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be callable model -> {{name: value}} or None, got {_checks.describe(evaluate)}")
    eval_every = _checks.integer("eval_every", eval_every, low=0)
    if history is not None:
        _checks.instance("history", history, History, "History or None")
    progress = _checks.boolean("progress", progress)
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
    # progress=False hides the bar; otherwise tqdm decides, so TQDM_DISABLE=1 is honoured
    bar = tqdm(range(start, start + steps), desc=desc, leave=False, **({} if progress else {"disable": True}))
    for step in bar:
        loss = loss_fn(model, next(stream))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}: training diverged "
                                     "(try a lower learning rate, a warm-up, or pre-LN)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm))  # the norm before clipping
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"gradient norm is {norm} at step {step} (the loss was {loss.item():.4g}): "
                                     "training stopped before optimizer.step(), the weights are unchanged "
                                     "(try a lower learning rate, clipping, or a warm-up)")
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

    if not isinstance(histories, Iterable):
        raise TypeError(f"histories must be a non-empty list of History objects, got {_checks.describe(histories)}")
    histories = list(histories)
    if not all(isinstance(h, History) for h in histories):
        raise TypeError("histories must be a non-empty list of History objects, got "
                        + ", ".join(type(h).__name__ for h in histories))
    if not histories:
        raise ValueError("histories must be a non-empty list of History objects, got an empty list")
    smooth = _checks.positive_int("smooth", smooth)
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
