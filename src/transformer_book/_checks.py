"""Argument checks shared by the whole package (torch only, imported by every module).

One rule everywhere: a wrong *type* raises ``TypeError``, a wrong *value or shape* raises
``ValueError``; the message names the argument, says what was received (value, or shape and
dtype for a tensor) and what was expected. Each check is one call at the public entry point it
guards and returns the checked value, so a function reads::

    n_heads = _checks.positive_int("n_heads", n_heads)
    x = _checks.float_tensor("x", x, dim=3)

Internals behind a checked entry point trust their callers and check nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "describe", "integer", "positive_int", "number", "probability", "dropout", "boolean",
    "one_of", "instance", "tensor", "float_tensor", "token_ids", "finite", "same_dtype",
    "same_device", "divides", "generator", "shape_is",
]

#: The id dtypes ``nn.Embedding`` (and ``F.cross_entropy`` targets, after ``.long()``) accept.
ID_DTYPES = (torch.int64, torch.int32)


def describe(value: object) -> str:
    """How a received value is shown in a message: ``tensor of shape (2, 3), dtype torch.float32`` or ``int 4``."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    low, high = (v if v is None or isinstance(v, int) else f"{v:g}" for v in (low, high))  # ints as they are
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "finite"


# --------------------------------------------------------------------------- plain values

def integer(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """An ``int`` (never a ``bool``) in ``[low, high]``; the bounds are optional."""
    expected = "an int" + (f" {_range_text(low, high, False, False)}" if low is not None or high is not None else "")
    if not _is_int(value):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def positive_int(name: str, value: object) -> int:
    """An ``int >= 1``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def number(name: str, value: object, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (``int`` or ``float``, not ``bool``) in the given range; returns ``float``."""
    expected = ("a number " + _range_text(low, high, low_open, high_open)) if low is not None or high is not None \
        else "a finite number"
    if not _is_number(value):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    v = float(value)
    bad = not math.isfinite(v)
    bad = bad or (low is not None and (v <= low if low_open else v < low))
    bad = bad or (high is not None and (v >= high if high_open else v > high))
    if bad:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def probability(name: str, value: object) -> float:
    """A number in ``[0, 1]``."""
    return number(name, value, 0.0, 1.0)


def dropout(name: str, value: object) -> float:
    """A dropout probability: a number in ``[0, 1)``."""
    return number(name, value, 0.0, 1.0, high_open=True)


def boolean(name: str, value: object) -> bool:
    """A real ``bool`` (``0``/``1`` are refused: a flag passed by position is a common slip)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return value


def one_of(name: str, value: object, choices: Sequence[Any]) -> Any:
    """One of ``choices`` (compared with ``==``; unhashable values are refused cleanly)."""
    try:
        ok = any(type(value) is type(c) and value == c for c in choices)
    except Exception:  # an object whose == raises is not one of the choices
        ok = False
    if not ok:
        expected = " or ".join(map(repr, choices)) if len(choices) <= 2 else f"one of {tuple(choices)}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def instance(name: str, value: object, types: type | tuple[type, ...], expected: str | None = None) -> Any:
    """``value`` is an instance of ``types`` (else ``TypeError``)."""
    if not isinstance(value, types):
        if expected is None:
            names = types if isinstance(types, tuple) else (types,)
            expected = " or ".join(t.__name__ for t in names)
        article = "" if expected.startswith(("a ", "an ")) else "a "  # expected may bring its own
        raise TypeError(f"{name} must be {article}{expected}, got {describe(value)}")
    return value


def generator(name: str, value: object) -> torch.Generator | None:
    """``None`` or a ``torch.Generator``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {describe(value)}")
    return value


def divides(a_name: str, a: int, b_name: str, b: int, why: str = "") -> None:
    """``a`` divides ``b`` exactly (``ValueError`` naming both, with the reason)."""
    if b % a:
        raise ValueError(f"{a_name}={a} must divide {b_name}={b}" + (f" ({why})" if why else ""))


# --------------------------------------------------------------------------- tensors

def tensor(name: str, x: object, dim: int | Iterable[int] | None = None, *, min_dim: int | None = None,
           layout: str = "") -> Tensor:
    """A ``torch.Tensor`` with ``dim`` dimensions (an int or a set of ints) or at least ``min_dim``.

    ``layout`` (e.g. ``"(B, T, C)"``) is quoted in the message when the dimensions are wrong.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{' ' + layout if layout else ''}, got {describe(x)}")
    dims = (dim,) if isinstance(dim, int) else (tuple(dim) if dim is not None else None)
    if (dims is not None and x.dim() not in dims) or (min_dim is not None and x.dim() < min_dim):
        want = (f"{' or '.join(map(str, dims))} dimensions" if dims is not None
                else f"at least {min_dim} dimensions")
        raise ValueError(f"{name} must have {want}{' ' + layout if layout else ''}, got shape {tuple(x.shape)}")
    return x


def float_tensor(name: str, x: object, dim: int | Iterable[int] | None = None, *, min_dim: int | None = None,
                 layout: str = "") -> Tensor:
    """A floating-point tensor (see :func:`tensor`)."""
    x = tensor(name, x, dim, min_dim=min_dim, layout=layout)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def token_ids(name: str, x: object, vocab_size: int | None = None, dim: int = 2,
              layout: str = "(B, T)") -> Tensor:
    """Integer token ids (``int64`` or ``int32``, what ``nn.Embedding`` takes), non-empty, in the vocabulary."""
    x = tensor(name, x, dim, layout=layout)
    if x.dtype not in ID_DTYPES:
        raise TypeError(f"{name} must hold integer token ids (torch.int64 or torch.int32), got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty {layout}, got shape {tuple(x.shape)}")
    if vocab_size is not None:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} holds ids in [{lo}, {hi}], outside the vocabulary [0, vocab_size={vocab_size})")
    return x


def finite(name: str, x: Tensor) -> Tensor:
    """No NaN and no infinity in ``x``."""
    if not bool(torch.isfinite(x).all()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(f"{name} must be finite, got {n_nan} NaN and {n_inf} infinite values "
                         f"in a tensor of shape {tuple(x.shape)}")
    return x


def no_next_token(position: int) -> ValueError:
    """The error of a greedy decoding step whose logits (of the token at ``position``) hold a NaN
    or have no finite maximum: no next token exists. Returned for the caller to raise, so that
    the C loop and the PyTorch loop report it in the same words."""
    return ValueError(f"the logits at position {position} have a NaN, +inf or only -inf values: no next token "
                      "exists (is the model's output finite?)")


def shape_is(name: str, x: Tensor, expected: Sequence[int | None], layout: str = "") -> Tensor:
    """``x.shape`` equals ``expected`` (``None`` = any size in that dimension)."""
    ok = x.dim() == len(expected) and all(e is None or s == e for s, e in zip(x.shape, expected))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {layout + ' = ' if layout else ''}{want}, "
                         f"got shape {tuple(x.shape)}")
    return x


def same_dtype(**tensors: Tensor) -> torch.dtype:
    """All the named tensors share one dtype (``TypeError`` naming each one's dtype)."""
    dtypes = {n: t.dtype for n, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{', '.join(dtypes)} must share a dtype, got {got}")
    return next(iter(dtypes.values()))


def same_device(**tensors: Tensor) -> torch.device:
    """All the named tensors live on one device (``ValueError`` naming each one's device)."""
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        got = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{', '.join(devices)} must be on one device, got {got}")
    return next(iter(devices.values()))
