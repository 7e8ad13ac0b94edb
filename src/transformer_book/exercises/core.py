"""Check a learner's function against a reference and print a short verdict.

Every chapter's checkers (``transformer_book.exercises.chNN``) are thin wrappers around
:func:`check_function`::

    from transformer_book.exercises.core import Case, check_function

    def check_softmax_t(fn):
        cases = [Case(args=(torch.tensor([1.0, 2.0]), 1.0), label="two logits, t=1",
                      hint="Divide the logits by t before the exponential.")]
        return check_function(fn, reference=_softmax_t_reference, cases=cases,
                              exercise="ex-01-softmax-temperature")

What a learner sees is the printed verdict; its first line always reads

    ``<exercise> · <function>: PASSED (n/n cases)``
    ``<exercise> · <function>: FAILED (k/n cases passed)``
    ``<exercise> · <function>: not done yet — ...``

(``python -m transformer_book.classroom grade`` reads these lines). A failed case shows its
input (shapes, dtypes and a few values), what was expected, what came back, and one hint.
Never a traceback: an exception is shown as its type, its message and the learner's line.

The learner's function is called on deep copies of each case's arguments (so a function that
writes into its input cannot corrupt the checker's cases), in a worker thread with a time limit.
A function that runs past the limit is stopped by raising an exception inside that thread
(``PyThreadState_SetAsyncExc``). That stops any loop written in Python; it cannot stop a thread
stuck inside one long C call (one enormous matrix product, a blocking read) — the verdict says
so, and that thread finishes in the background.

The checker's own steps run under the same protection and time limit: the reference solution,
the summaries of the learner's result (a ``__repr__`` that never returns gets a verdict, not a
hung notebook) and the comparison. The learner's result is compared as plain values: a
``torch.Tensor`` subclass becomes a plain tensor (its ``__torch_function__`` and ``__eq__``
are not consulted), an ``int``/``float``/``str``/``list``/``tuple``/``dict`` subclass its base
type. After every case the global state a learner's function may have changed is put back:
attributes of ``torch``, ``torch.nn.functional``, ``torch.linalg``, ``torch.special``,
``math`` and ``torch.Tensor`` (``torch.softmax = None``), the default dtype and device, grad
mode, the number of threads and torch's random-number state. In-process checks cannot stop a
learner set on cheating (one can patch the checker itself); they make honest mistakes and
casual tricks visible.

:func:`check_function` returns a :class:`CheckReport`. It prints the verdict itself; in Jupyter
the report, as the last expression of the check cell, displays nothing more (no second copy),
and displayed again in a later cell it prints the verdict again. ``repr(report)`` is one line.
"""

from __future__ import annotations

import copy
import ctypes
import inspect
import linecache
import math
import os
import sys
import sysconfig
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from transformer_book import _checks

__all__ = [
    "Case",
    "CaseResult",
    "CheckReport",
    "check_function",
    "compare_values",
    "summarize",
    "last_verdicts",
    "summary",
]

PASSED, FAILED, NOT_DONE = "passed", "failed", "not done"
_MISSING = object()
# How long a stopped function gets to unwind after the exception is injected into its thread.
_STOP_GRACE_S = 1.0


@dataclass(frozen=True)
class Case:
    """One call of the learner's function: ``fn(*args, **kwargs)``.

    ``label`` names the case in the verdict ("two logits, t=1"); ``hint`` is shown when this
    case is the first to fail. ``expected`` (optional) gives the right answer directly instead
    of computing it with the reference; ``atol``/``rtol`` (optional) override the checker's
    tolerances for this case.
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""
    hint: str = ""
    expected: Any = _MISSING
    atol: float | None = None
    rtol: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.args, tuple):
            raise TypeError(f"Case args must be a tuple of positional arguments, got "
                            f"{type(self.args).__name__} {self.args!r:.60}; write args=(x,) for one argument")
        if not isinstance(self.kwargs, dict):
            raise TypeError(f"Case kwargs must be a dict, got {type(self.kwargs).__name__}")
        if not isinstance(self.label, str) or not isinstance(self.hint, str):
            raise TypeError(f"Case label and hint must be str, got {type(self.label).__name__} "
                            f"and {type(self.hint).__name__}")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise ValueError(f"Case {name} must be a non-negative number or None, got {value!r}")


@dataclass
class CaseResult:
    """What happened in one case. ``status`` is ``"passed"``, ``"failed"`` or ``"not done"``."""

    label: str
    status: str
    reason: str = ""  # one line: why it failed ("" when it passed)
    input: str = ""  # summary of the arguments
    expected: str = ""  # summary of the reference's answer
    received: str = ""  # summary of the learner's answer
    hint: str = ""
    seconds: float = 0.0
    before: str = ""  # an argument the function changed in place, as it was given...
    after: str = ""  # ...and as the function left it

    @property
    def passed(self) -> bool:
        return self.status == PASSED


@dataclass
class CheckReport:
    """The verdict of one :func:`check_function` call.

    ``passed`` is True when every case passed; ``not_done`` when the learner's function still
    raises ``NotImplementedError``. ``str(report)`` is the full verdict text.
    """

    exercise: str
    function: str
    cases: list[CaseResult] = field(default_factory=list)
    not_done: bool = False
    error: str = ""  # set when the check could not run at all (e.g. not a function)
    max_details: int = 1
    _shown_in: Any = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and not self.not_done and not self.error and all(c.passed for c in self.cases)

    @property
    def status(self) -> str:
        return NOT_DONE if self.not_done else PASSED if self.passed else FAILED

    @property
    def n_passed(self) -> int:
        return sum(c.passed for c in self.cases)

    def __bool__(self) -> bool:
        return self.passed

    def text(self) -> str:
        head = f"{self.exercise} · {self.function}"
        if self.not_done:
            return (f"{head}: not done yet — replace the `raise NotImplementedError(...)` in "
                    f"`{self.function}` with your code, run that cell, then run this check again.")
        if self.error:
            return f"{head}: FAILED — {self.error}"
        n = len(self.cases)
        if self.passed:
            labels = "; ".join(c.label for c in self.cases)
            return f"{head}: PASSED ({n}/{n} cases)\n  ✓ {labels}"
        lines = [f"{head}: FAILED ({self.n_passed}/{n} cases passed)"]
        passed = [c.label for c in self.cases if c.passed]
        if passed:
            lines.append("  ✓ " + "; ".join(passed))
        details = 0
        for c in self.cases:
            if c.passed:
                continue
            lines.append(f"  ✗ {c.label}: {c.reason}")
            if details < self.max_details:
                details += 1
                for key, value in (("input", c.input), ("before", c.before), ("after", c.after),
                                   ("expected", c.expected), ("received", c.received), ("hint", c.hint)):
                    if value:
                        lines.append(f"      {key + ':':<9} {value}")
        return "\n".join(lines)

    __str__ = text

    def __repr__(self) -> str:
        verdict = ("not done yet" if self.not_done else "could not run" if self.error
                   else f"{self.n_passed}/{len(self.cases)} passed")
        return f"<CheckReport {self.exercise} · {self.function}: {verdict}>"

    def show(self) -> None:
        """Print the verdict, and remember which notebook cell printed it."""
        print(self.text(), flush=True)
        self._shown_in = _cell_id()

    def _ipython_display_(self) -> None:
        # check_function already printed the verdict in this cell: show nothing more.
        # Displayed from a later cell (`report` on its own), print it again.
        if self._shown_in is None or self._shown_in != _cell_id():
            self.show()


def _cell_id() -> Any:
    """An id of the notebook cell running now (IPython's execution count), else None."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get else None
    return getattr(shell, "execution_count", None) if shell is not None else None


# --------------------------------------------------------------------------- summaries

def _torch():
    return sys.modules.get("torch")


def _numpy():
    return sys.modules.get("numpy")


def _is_tensor(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _is_ndarray(x: Any) -> bool:
    np = _numpy()
    return np is not None and isinstance(x, np.ndarray)


def _fmt_number(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _few_values(flat: list, total: int, k: int = 4) -> str:
    shown = ", ".join(_fmt_number(v) for v in flat[:k])
    return f"[{shown}{', …' if total > k else ''}]"


def _array_summary(kind: str, dtype: str, shape: tuple, flat: list, total: int) -> str:
    shape_s = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    return f"{kind} {dtype} {shape_s} {_few_values(flat, total)}"


def summarize(x: Any, width: int = 80) -> str:
    """A one-line description of a value: type, dtype, shape and a few values for arrays."""
    width = _checks.positive_int("width", width)
    try:
        return _summarize(x, width)
    except Exception:  # a value that can't be printed (a meta tensor, a broken __repr__)
        return f"a {type(x).__name__} (could not be printed)"


def _summarize(x: Any, width: int) -> str:
    if _is_tensor(x):
        t = x.detach()
        flat = t.reshape(-1)[:4].cpu().tolist() if t.numel() else []
        dtype = str(t.dtype).removeprefix("torch.")
        s = _array_summary("tensor", dtype, tuple(t.shape), flat, t.numel())
        if t.dtype.is_floating_point or t.dtype.is_complex:
            bad = _nonfinite(t)
            if bad:
                s += f" ({bad})"
        return s
    if _is_ndarray(x):
        flat = x.reshape(-1)[:4].tolist()
        return _array_summary("ndarray", str(x.dtype), tuple(x.shape), flat, x.size)
    if x is None or isinstance(x, (bool, int, float, complex)):
        return _fmt_number(x) if not isinstance(x, complex) else repr(x)
    if isinstance(x, str):
        r = repr(x)
        return r if len(r) <= width else r[: width - 5] + "…" + r[-3:] + f" ({len(x)} chars)"
    if isinstance(x, (list, tuple)):
        if all(isinstance(v, (bool, int, float, str)) or v is None for v in x):
            r = "[" + ", ".join(_fmt_number(v) if not isinstance(v, str) else repr(v) for v in x[:8])
            r += (", …" if len(x) > 8 else "") + "]"
            if isinstance(x, tuple):
                r = "(" + r[1:-1] + ("," if len(x) == 1 else "") + ")"
            s = f"{type(x).__name__} of {len(x)}: {r}"
        else:
            inner = "; ".join(summarize(v, width) for v in x[:3])
            s = f"{type(x).__name__} of {len(x)}: ({inner}{'; …' if len(x) > 3 else ''})"
        return s if len(s) <= 2 * width else s[: 2 * width - 1] + "…"
    if isinstance(x, dict):
        items = ", ".join(f"{k!r}: {summarize(v, 30)}" for k, v in list(x.items())[:4])
        s = f"dict of {len(x)}: {{{items}{', …' if len(x) > 4 else ''}}}"
        return s if len(s) <= 2 * width else s[: 2 * width - 1] + "…"
    r = repr(x)
    return r if len(r) <= width else r[: width - 1] + "…"


def _nonfinite(t: Any) -> str:
    """'contains NaN (3 of 6 values)' and/or inf, for a float tensor; '' if all finite."""
    torch = _torch()
    if t.is_complex():
        t = torch.view_as_real(t)
    n_nan = int(torch.isnan(t).sum())
    n_inf = int(torch.isinf(t).sum())
    parts = []
    if n_nan:
        parts.append(f"NaN in {n_nan} of {t.numel()} values")
    if n_inf:
        parts.append(f"inf in {n_inf} of {t.numel()} values")
    return ", ".join(parts)


# --------------------------------------------------------------------------- comparison

def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _compare_tensors(expected: Any, received: Any, atol: float, rtol: float, check_dtype: bool,
                     where: str) -> str | None:
    torch = _torch()
    if not _is_tensor(received):
        if _is_ndarray(received):
            return f"{where} is a numpy array; expected a torch.Tensor (use torch tensor operations)"
        return f"{where} is {_type_name(received)}; expected a torch.Tensor of shape {_shape_str(expected.shape)}"
    e, r = expected.detach().cpu(), received.detach().cpu()
    if tuple(r.shape) != tuple(e.shape):
        msg = f"{where} has shape {_shape_str(r.shape)}; expected {_shape_str(e.shape)}"
        if r.dim() >= 2 and tuple(r.shape[:-2]) + (r.shape[-1], r.shape[-2]) == tuple(e.shape):
            msg += " (the last two dimensions look swapped)"
        elif r.numel() == e.numel():
            msg += " (same number of values: reshaped or transposed?)"
        return msg
    if check_dtype and r.dtype != e.dtype:
        return (f"{where} has dtype {str(r.dtype).removeprefix('torch.')}; expected "
                f"{str(e.dtype).removeprefix('torch.')}")
    if e.dtype == torch.bool or r.dtype == torch.bool or not (e.is_floating_point() or e.is_complex()):
        if r.dtype != e.dtype:
            r = r.to(e.dtype)
        wrong = r != e
        if bool(wrong.any()):
            return _first_mismatch(where, e, r, wrong)
        return None
    if not (r.is_floating_point() or r.is_complex()):
        r = r.to(e.dtype)
    r = r.to(torch.promote_types(r.dtype, e.dtype))
    e = e.to(r.dtype)
    bad_r, bad_e = _nonfinite(r), _nonfinite(e)
    if bad_r and bad_r != bad_e:
        nan_where = torch.isnan(r) & ~torch.isnan(e)
        if bool(nan_where.any()):
            return _first_mismatch(where, e, r, nan_where, prefix=f"{where} contains NaN "
                                   f"({int(nan_where.sum())} of {r.numel()} values)")
        inf_where = torch.isinf(r) & ~torch.isinf(e)
        if bool(inf_where.any()):
            return _first_mismatch(where, e, r, inf_where, prefix=f"{where} contains inf "
                                   f"({int(inf_where.sum())} of {r.numel()} values)")
    close = torch.isclose(r, e, atol=atol, rtol=rtol, equal_nan=True)
    if bool(close.all()):
        return None
    diff = (r - e).abs()
    diff = torch.where(torch.isnan(diff), torch.zeros_like(diff), diff)
    msg = _first_mismatch(where, e, r, ~close, largest=float(diff.max()))
    scale = _scale_factor(e, r)
    if scale is not None:
        msg += f"; your values are ≈ {scale:.4g} × the expected ones (a missing or extra factor?)"
    return msg


def _scale_factor(e: Any, r: Any) -> float | None:
    """If r ≈ c · e for a constant c far from 1, return c."""
    torch = _torch()
    if e.is_complex() or not bool(torch.isfinite(e).all()) or not bool(torch.isfinite(r).all()):
        return None
    e64, r64 = e.double().reshape(-1), r.double().reshape(-1)
    denom = float(e64 @ e64)
    if denom == 0.0:
        return None
    c = float(r64 @ e64) / denom
    if abs(c - 1.0) < 1e-3 or c == 0.0:
        return None
    if bool(torch.allclose(r64, c * e64, rtol=1e-3, atol=1e-6 * max(1.0, float(e64.abs().max())))):
        return c
    return None


def _first_mismatch(where: str, e: Any, r: Any, wrong: Any, prefix: str | None = None,
                    largest: float | None = None) -> str:
    idx = tuple(int(i) for i in wrong.nonzero()[0].tolist()) if wrong.dim() else ()
    n = int(wrong.sum())
    head = prefix or f"{where} differs in {n} of {wrong.numel()} values"
    if largest is not None:
        head += f" (largest difference {largest:.3g})"
    at = f"{where}[{', '.join(str(i) for i in idx)}]" if idx else where
    return f"{head}; first at {at}: got {_fmt_number(r[idx].item())}, expected {_fmt_number(e[idx].item())}"


def _type_name(x: Any) -> str:
    """'an int', 'a torch.Tensor', 'None'."""
    if x is None:
        return "None"
    module = type(x).__module__
    name = ("" if module == "builtins" else module.split(".")[0] + ".") + type(x).__name__
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def compare_values(expected: Any, received: Any, *, atol: float = 1e-5, rtol: float = 1e-4,
                   check_dtype: bool = True, where: str = "output") -> str | None:
    """Compare the learner's ``received`` value with ``expected``; None if they match.

    Otherwise return one line saying what differs, naming the position (``output[1]`` for the
    second element of a returned tuple). Handles torch tensors (shape, dtype, NaN/inf, values
    within ``atol + rtol·|expected|``), numpy arrays, numbers, strings, None, and lists, tuples
    and dicts of these, nested. ``received`` is compared as plain values (see :func:`plain`):
    a subclass that overrides ``==`` or ``__torch_function__`` cannot pass by lying.
    """
    atol = _checks.number("atol", atol, low=0.0)
    rtol = _checks.number("rtol", rtol, low=0.0)
    check_dtype = _checks.boolean("check_dtype", check_dtype)
    _checks.instance("where", where, str)
    return _compare(expected, plain(received), atol, rtol, check_dtype, where)


def plain(x: Any, _depth: int = 0) -> Any:
    """``x`` rebuilt from plain types: a tensor subclass (``nn.Parameter``, or one that overrides
    ``__eq__``/``__torch_function__``) becomes a ``torch.Tensor``, subclasses of ``int``,
    ``float``, ``str``, ``list``, ``tuple``, ``dict`` and ``numpy.ndarray`` their base type
    (recursively). Other objects are returned as they are."""
    t = type(x)
    if x is None or t in (bool, int, float, complex, str, bytes):
        return x
    torch, np = _torch(), _numpy()
    if torch is not None and isinstance(x, torch.Tensor):
        if t is torch.Tensor:
            return x
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.as_subclass(x, torch.Tensor).detach().clone()
    if np is not None and isinstance(x, np.ndarray):
        return x if t is np.ndarray else np.ndarray.view(x, np.ndarray).copy()
    if _depth > 32:
        return x
    for base, make in ((bool, bool), (int, int.__int__), (float, float.__float__), (str, str.__str__)):
        if isinstance(x, base):
            return make(x)
    if isinstance(x, list):
        return [plain(v, _depth + 1) for v in list.__iter__(x)]
    if isinstance(x, tuple):
        return tuple(plain(v, _depth + 1) for v in tuple.__iter__(x))
    if isinstance(x, dict):
        return {k: plain(v, _depth + 1) for k, v in dict.items(x)}
    return x


def _compare(expected: Any, received: Any, atol: float, rtol: float, check_dtype: bool, where: str) -> str | None:
    if received is None and expected is not None:
        return f"{where} is None (did the function forget to `return` its result?)"
    if _is_tensor(expected):
        return _compare_tensors(expected, received, atol, rtol, check_dtype, where)
    if _is_ndarray(expected):
        np = _numpy()
        if _is_tensor(received):
            return f"{where} is a torch.Tensor; expected a numpy array"
        if not _is_ndarray(received):
            return f"{where} is {_type_name(received)}; expected a numpy array of shape {_shape_str(expected.shape)}"
        if received.shape != expected.shape:
            return f"{where} has shape {_shape_str(received.shape)}; expected {_shape_str(expected.shape)}"
        if check_dtype and received.dtype != expected.dtype:
            return f"{where} has dtype {received.dtype}; expected {expected.dtype}"
        torch = _torch()
        if torch is not None and expected.dtype != object:
            return _compare_tensors(torch.from_numpy(np.ascontiguousarray(expected)),
                                    torch.from_numpy(np.ascontiguousarray(received)),
                                    atol, rtol, False, where)
        if not np.array_equal(expected, received):
            return f"{where} differs from the expected array"
        return None
    if expected is None:
        return None if received is None else f"{where} is {summarize(received, 40)}; expected None"
    if isinstance(expected, bool):
        if not isinstance(received, bool) and not (_is_tensor(received) and received.numel() == 1):
            return f"{where} is {_type_name(received)}; expected a bool ({expected})"
        value = bool(received.item()) if _is_tensor(received) else received
        return None if value == expected else f"{where} is {value}; expected {expected}"
    if isinstance(expected, (int, float)):
        value = received
        if (_is_tensor(received) or _is_ndarray(received)) and getattr(received, "size", None) is not None:
            n = received.numel() if _is_tensor(received) else received.size
            if n != 1:
                return f"{where} is {summarize(received)}; expected one number ({_fmt_number(expected)})"
            value = received.item()
        elif _numpy() is not None and isinstance(received, _numpy().generic):
            value = received.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where} is {summarize(received, 40)}; expected a number ({_fmt_number(expected)})"
        if isinstance(expected, int) and isinstance(value, int):
            return None if value == expected else f"{where} is {value}; expected {expected}"
        if math.isnan(value) and not math.isnan(expected):
            return f"{where} is nan; expected {_fmt_number(expected)}"
        if math.isclose(value, expected, rel_tol=rtol, abs_tol=atol) or (math.isnan(value) and math.isnan(expected)):
            return None
        return f"{where} is {_fmt_number(value)}; expected {_fmt_number(expected)}"
    if isinstance(expected, str):
        if not isinstance(received, str):
            return f"{where} is {_type_name(received)}; expected a str"
        if received == expected:
            return None
        if _is_label(expected) and _is_label(received):  # a category, not text: no character diff
            return f"{where} is {received!r}; expected {expected!r}"
        i = next((k for k, (a, b) in enumerate(zip(received, expected)) if a != b), min(len(received), len(expected)))
        return (f"{where} differs from the expected string at character {i}: got "
                f"{received[i:i + 12]!r}, expected {expected[i:i + 12]!r}"
                + (f" (lengths {len(received)} vs {len(expected)})" if len(received) != len(expected) else ""))
    if isinstance(expected, (list, tuple)):
        if not isinstance(received, (list, tuple)):
            return f"{where} is {_type_name(received)}; expected a {type(expected).__name__} of {len(expected)} items"
        if len(received) != len(expected):
            return f"{where} has {len(received)} items; expected {len(expected)}"
        for i, (e, r) in enumerate(zip(expected, received)):
            msg = _compare(e, r, atol, rtol, check_dtype, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(expected, dict):
        if not isinstance(received, dict):
            return f"{where} is {_type_name(received)}; expected a dict"
        missing = [k for k in expected if k not in received]
        extra = [k for k in received if k not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {missing[:5]!r}")
            if extra:
                parts.append(f"unexpected keys {extra[:5]!r}")
            return f"{where}: " + ", ".join(parts)
        for k in expected:
            msg = _compare(expected[k], received[k], atol, rtol, check_dtype, f"{where}[{k!r}]")
            if msg:
                return msg
        return None
    if type(received) is not type(expected):
        return f"{where} is {_type_name(received)}; expected {_type_name(expected)}"
    try:
        same = bool(expected == received)
    except Exception as err:  # a value whose == raises
        return f"{where} could not be compared with the expected value ({type(err).__name__}: {err})"
    return None if same else f"{where} is {summarize(received, 40)}; expected {summarize(expected, 40)}"


def _is_label(text: str) -> bool:
    """A short word such as "full" or "skip" (a category), not a sentence or a longer string."""
    return 0 < len(text) <= 24 and not any(ch.isspace() for ch in text)


# --------------------------------------------------------------------------- running the learner's code

class _StopRunaway(BaseException):
    """Raised inside a learner's thread at the time limit (a BaseException: `except Exception` won't catch it)."""


@dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    stopped: bool = True  # False: the thread could not be stopped (stuck in one C call)
    seconds: float = 0.0


def _inject(thread: threading.Thread) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_StopRunaway))


def _stop(thread: threading.Thread, done: threading.Event, grace_s: float) -> bool:
    """Raise _StopRunaway in the thread until it ends (a loop may catch it once); True if it ended."""
    deadline = time.monotonic() + grace_s
    while thread.is_alive() and time.monotonic() < deadline:
        if not done.is_set():  # never inject once the learner's function has returned
            _inject(thread)
        thread.join(0.02)
    if thread.is_alive():
        # Give up; clear the pending exception so it doesn't fire at a random later moment.
        if thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), None)
        return False
    return True


def _run_limited(fn: Callable, args: tuple, kwargs: dict, timeout_s: float | None) -> _Outcome:
    out = _Outcome()
    if timeout_s is None:
        t0 = time.perf_counter()
        try:
            out.value = fn(*args, **kwargs)
        except Exception as err:  # the learner's error becomes part of the verdict
            out.error = err
        out.seconds = time.perf_counter() - t0
        return out

    done = threading.Event()

    def target() -> None:
        t0 = time.perf_counter()
        try:
            try:
                out.value = fn(*args, **kwargs)
            except _StopRunaway:
                out.timed_out = True
            except BaseException as err:  # SystemExit, KeyboardInterrupt, ... from the learner's code
                out.error = err
            finally:
                out.seconds = time.perf_counter() - t0
                done.set()
        except _StopRunaway:  # arrived just as the function returned: nothing left to stop
            pass

    thread = threading.Thread(target=target, name="exercise-check", daemon=True)
    thread.start()
    try:
        finished = done.wait(timeout_s)
    except BaseException:
        # The learner pressed "interrupt" while their function ran: stop it too, then pass it on.
        _stop(thread, done, _STOP_GRACE_S)
        raise
    if not finished:
        out.timed_out = True
        out.stopped = _stop(thread, done, _STOP_GRACE_S)
        out.seconds = float(timeout_s)
        out.value, out.error = None, None
        return out
    thread.join()
    return out


def _library_dirs() -> tuple[str, ...]:
    """Where the standard library, installed packages and this package live: not the learner's code."""
    import site

    dirs = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # some embedded interpreters lack these
        pass
    dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # transformer_book/
    return tuple(sorted({os.path.normcase(os.path.realpath(d)) for d in dirs if d}))


_LIBRARY_DIRS = _library_dirs()


def _is_learner_file(filename: str) -> bool:
    """Code outside the standard library, installed packages and this package: the learner's."""
    if filename.startswith("<"):  # <string>, <stdin>, <ipython-input-...>: typed-in code
        return not filename.startswith("<frozen")
    path = os.path.normcase(os.path.realpath(filename))
    return not any(path == d or path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def _learner_line(err: BaseException, fn: Callable) -> str:
    """'line 3 of softmax_t: return ...' for the deepest frame of learner code in the traceback."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if _is_learner_file(f.filename)]
    if not frames:
        return ""
    f = frames[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    start = _first_line(fn) if f.name == getattr(fn, "__name__", None) else None
    where = f"line {f.lineno - start + 1} of {f.name}" if start else f"in {f.name}, line {f.lineno}"
    return f"{where}: {code}" if code else where


def _first_line(fn: Callable) -> int | None:
    code = getattr(fn, "__code__", None)
    return getattr(code, "co_firstlineno", None)


def _describe_args(reference: Callable | None, fn: Callable, case: Case) -> str:
    names: list[str] = []
    for f in (fn, reference):  # the names the learner's stub uses, else the reference's
        try:
            params = list(inspect.signature(f).parameters.values()) if f is not None else []
        except (TypeError, ValueError):
            continue
        if all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params[: len(case.args)]) \
                and len(params) >= len(case.args):
            names = [p.name for p in params[: len(case.args)]]
            break
    parts = [f"{names[i]} = {summarize(a, 60)}" if names else summarize(a, 60) for i, a in enumerate(case.args)]
    parts += [f"{k} = {summarize(v, 60)}" for k, v in case.kwargs.items()]
    return "; ".join(parts) if parts else "(no arguments)"


def _arg_name(reference: Callable | None, fn: Callable, i: int | str) -> str:
    if isinstance(i, str):
        return i
    for f in (fn, reference):
        try:
            params = list(inspect.signature(f).parameters) if f is not None else []
        except (TypeError, ValueError):
            continue
        if i < len(params):
            return params[i]
    return f"argument {i + 1}"


def _mutated(original: Case, given_args: tuple, given_kwargs: dict) -> list[int | str]:
    changed: list[int | str] = []
    for i, (a, b) in enumerate(zip(original.args, given_args)):
        if _differs(a, b):
            changed.append(i)
    for k in original.kwargs:
        if _differs(original.kwargs[k], given_kwargs.get(k)):
            changed.append(k)
    return changed


def _differs(a: Any, b: Any) -> bool:
    try:
        return _compare(a, plain(b), 0.0, 0.0, True, "x") is not None
    except Exception:
        return False


def _is_placeholder(err: BaseException) -> bool:
    """A NotImplementedError raised by a `raise` in the learner's code (not one from inside torch)."""
    if not isinstance(err, NotImplementedError):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return True
    last = frames[-1]
    if not _is_learner_file(last.filename):
        return False
    line = (last.line or linecache.getline(last.filename, last.lineno)).strip()
    return not line or line.startswith("raise")


def _describe_error(err: BaseException, fn: Callable) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(message) > 160:
        message = message[:159] + "…"
    text = f"raised {type(err).__name__}" + (f": {message}" if message else "")
    line = _learner_line(err, fn)
    return text + (f" (at {line})" if line else "")


def _name_of(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


class _GlobalState:
    """What a learner's function may change globally, saved before a check and put back after each case."""

    MODULES = ("torch", "torch.nn.functional", "torch.linalg", "torch.special", "math")

    def __init__(self) -> None:
        torch = _torch()
        self.namespaces = [(mod, dict(vars(mod))) for mod in map(sys.modules.get, self.MODULES) if mod is not None]
        self.torch = torch
        if torch is not None:
            self.namespaces.append((torch.Tensor, dict(vars(torch.Tensor))))
            self.dtype, self.grad, self.threads = torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads()
            self.device = torch.get_default_device() if hasattr(torch, "get_default_device") else None
            self.rng = torch.random.get_rng_state()

    def restore(self) -> None:
        for obj, saved in self.namespaces:
            current = vars(obj)
            for key, value in saved.items():
                if current.get(key, _MISSING) is not value:
                    try:
                        setattr(obj, key, value)
                    except (AttributeError, TypeError):  # a read-only slot: nothing a learner could change
                        pass
        torch = self.torch
        if torch is None:
            return
        torch.set_default_dtype(self.dtype)
        torch.set_grad_enabled(self.grad)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if self.device is not None and torch.get_default_device() != self.device:
            torch.set_default_device(self.device)
        torch.random.set_rng_state(self.rng)


def _diagnose(mistakes: Sequence[tuple[Callable, str]], case: Case, received: Any, atol: float, rtol: float,
              check_dtype: bool, compare: Callable | None) -> str:
    """The hint of the first known mistake whose answer on this case is exactly the learner's, else ""."""
    for wrong, hint in mistakes:
        try:
            value = wrong(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
            if compare is not None:
                verdict = compare(value, received)
                same = verdict is None or verdict is True
            else:
                same = _compare(value, received, atol, rtol, check_dtype, "output") is None
        except Exception:  # noqa: BLE001 - a mistake that does not apply to this case
            continue
        if same:
            return hint
    return ""


def _protected(step: Callable[[], Any], timeout_s: float | None) -> tuple[Any, str]:
    """Run one of the checker's own steps under the time limit: ``(value, "")`` or ``(None, what went wrong)``."""
    outcome = _run_limited(step, (), {}, timeout_s)
    if outcome.timed_out:
        return None, f"did not finish within {timeout_s:g} s"
    if outcome.error is not None:
        try:
            text = f"{type(outcome.error).__name__}: {str(outcome.error)[:160]}"
        except Exception:  # noqa: BLE001 - an exception whose __str__ fails
            text = type(outcome.error).__name__
        return None, text
    return outcome.value, ""


def _run_case(fn: Callable, reference: Callable | None, case: Case, result: CaseResult, report: CheckReport,
              compare: Callable | None, timeout_s: float | None, atol: float, rtol: float, check_dtype: bool,
              allow_mutation: bool, state: _GlobalState, mistakes: Sequence[tuple[Callable, str]] = ()) -> bool:
    """Fill ``result`` for one case; True when the learner's function could not be stopped."""

    def prepare() -> tuple[str, Any, str]:  # the input summary and the reference's answer
        expected = (copy.deepcopy(case.expected) if case.expected is not _MISSING
                    else reference(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs)))
        return _describe_args(reference, fn, case), expected, summarize(expected)

    prepared, problem = _protected(prepare, timeout_s)
    if problem:
        result.reason = (f"the checker's reference solution could not run ({problem}); if your function "
                         f"changed torch itself, restart the kernel and run the check again")
        return False
    result.input, expected, result.expected = prepared

    args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    try:
        outcome = _run_limited(fn, args, kwargs, timeout_s)
    finally:
        state.restore()  # torch.softmax = None, another default dtype, ...: undone before judging
    result.seconds = outcome.seconds
    if outcome.error is not None and _is_placeholder(outcome.error):
        report.not_done = True
        result.status = NOT_DONE
        return False
    if outcome.timed_out:
        if outcome.stopped:
            result.reason = (f"did not return within {timeout_s:g} s, so it was stopped "
                             f"(an endless loop? check the loop's exit condition)")
        else:
            result.reason = (f"did not return within {timeout_s:g} s and could not be stopped: it is stuck "
                             f"inside one long C call (e.g. a huge tensor operation) or catches every "
                             f"exception, and keeps running in the background; if the notebook gets slow, "
                             f"restart the kernel")
        result.received = "(nothing: stopped at the time limit)"
        return True
    if outcome.error is not None:
        described, problem = _protected(lambda: _describe_error(outcome.error, fn), timeout_s)
        result.reason = described or f"raised {type(outcome.error).__name__} (its message could not be shown)"
        result.received = f"{type(outcome.error).__name__} instead of a value"
        return False

    def judge() -> tuple[str, str | None, str, str, str]:  # summary, what is wrong, before, after, hint
        received = plain(outcome.value)
        summary = summarize(received)
        if compare is not None:
            try:
                verdict = compare(expected, received)
            except Exception as err:
                verdict = f"could not be checked ({type(err).__name__}: {err})"
            msg = None if verdict is None or verdict is True else (
                "output is not what was expected" if verdict is False else str(verdict))
        else:
            try:
                msg = _compare(expected, received, atol, rtol, check_dtype, "output")
            except Exception as err:  # e.g. a sparse or meta tensor
                msg = f"output could not be compared with the expected value ({type(err).__name__}: {err})"
        changed = [] if allow_mutation else _mutated(case, args, kwargs)
        before = after = hint = ""
        if changed:
            names = ", ".join(f"`{_arg_name(reference, fn, k)}`" for k in changed)
            k = changed[0]
            given = case.args[k] if isinstance(k, int) else case.kwargs[k]
            left = args[k] if isinstance(k, int) else kwargs.get(k)
            name = _arg_name(reference, fn, k)
            before, after = f"{name} = {summarize(given, 60)}", f"{name} = {summarize(plain(left), 60)}"
            hint = (f"Your function changed `{name}`, the caller's own object: build the result in a new "
                    f"object (a new list, `x.clone()`, an out-of-place operation such as `x = x / t` instead "
                    f"of `x /= t`) and leave `{name}` as it was.")
            msg = (f"it changed its input {names} in place (see before/after); compute a new value instead"
                   + (f"; also {msg}" if msg else ""))
        elif msg:
            hint = _diagnose(mistakes, case, received, atol, rtol, check_dtype, compare)
        return summary, msg, before, after, hint

    judged, problem = _protected(judge, timeout_s)
    if problem:
        result.received = f"a {type(outcome.value).__name__} (could not be shown)"
        result.reason = f"what your function returned could not be checked ({problem}): return plain values"
        return False
    result.received, msg, result.before, result.after, hint = judged
    if hint:  # the mistake recognised (or the mutation) says more than the case's general hint
        result.hint = hint
    if msg:
        result.reason = msg
    else:
        result.status = PASSED
    return False


def check_function(
    fn: Any,
    reference: Callable | None,
    cases: Sequence[Case],
    *,
    exercise: str,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    timeout_s: float | None = 5.0,
    compare: Callable[[Any, Any], Any] | None = None,
    check_dtype: bool = True,
    allow_mutation: bool = False,
    max_details: int = 1,
    name: str | None = None,
    quiet: bool = False,
    mistakes: Sequence[tuple[Callable, str]] = (),
) -> CheckReport:
    """Run the learner's ``fn`` on every case, compare with ``reference``, print the verdict.

    Args:
        fn: the learner's function (anything callable).
        reference: the book's implementation, called as ``reference(*case.args, **case.kwargs)``;
            may be None when every case gives ``expected``.
        cases: the calls to make; include the edge cases.
        exercise: the exercise label, e.g. ``"ex-01-softmax-temperature"``.
        atol, rtol: tolerances for float values (``|got - expected| <= atol + rtol·|expected|``).
        timeout_s: time limit per case in seconds (None: no limit, run in this thread).
        compare: optional ``compare(expected, received)`` replacing the default comparison
            (:func:`compare_values`); it returns None or True for a match, and False or a
            one-line message (str) saying what is wrong otherwise.
        check_dtype: whether a tensor/array of the right values but another dtype fails.
        allow_mutation: whether the function may modify its arguments in place.
        max_details: how many failed cases show input/expected/received/hint (the others get one line).
        name: the function's name in the verdict (default ``fn.__name__``).
        quiet: don't print (the report is still returned).
        mistakes: known wrong answers, ``(wrong_function, hint)`` pairs: when a case fails and the
            learner's answer equals ``wrong_function``'s on that case, its hint replaces the case's
            (so the verdict names the mistake made, e.g. "merges applied leftmost first").

    Returns:
        A :class:`CheckReport` (``.passed``, ``.not_done``, ``.cases``).

    Raises:
        TypeError/ValueError: for a mistake in the *checker* (not in the learner's function):
            bad cases, reference, tolerances or exercise label.
    """
    _checks.instance("exercise", exercise, str, "non-empty str label like 'ex-01-softmax'")
    if not exercise:
        raise ValueError("exercise must be a non-empty str label like 'ex-01-softmax', got ''")
    if reference is not None and not callable(reference):
        raise TypeError(f"reference must be callable or None, got {type(reference).__name__}")
    if compare is not None and not callable(compare):
        raise TypeError(f"compare must be callable or None, got {type(compare).__name__}")
    if isinstance(cases, Case) or not isinstance(cases, Sequence):
        raise TypeError(f"cases must be a non-empty list of Case, got {cases!r:.80}")
    if not cases:
        raise ValueError("cases must be a non-empty list of Case, got an empty one")
    for i, c in enumerate(cases):
        if not isinstance(c, Case):
            raise TypeError(f"cases[{i}] must be a Case, got {type(c).__name__}")
        if reference is None and c.expected is _MISSING:
            raise ValueError(f"cases[{i}] ({c.label!r}) has no expected value and reference is None")
    atol = _checks.number("atol", atol, low=0.0)
    rtol = _checks.number("rtol", rtol, low=0.0)
    if timeout_s is not None:
        timeout_s = _checks.number("timeout_s", timeout_s, low=0.0, low_open=True)
    check_dtype = _checks.boolean("check_dtype", check_dtype)
    allow_mutation = _checks.boolean("allow_mutation", allow_mutation)
    max_details = _checks.integer("max_details", max_details, low=0)
    if name is not None:
        _checks.instance("name", name, str, "str or None")
    quiet = _checks.boolean("quiet", quiet)
    if isinstance(mistakes, (str, bytes)) or not isinstance(mistakes, Sequence):
        raise TypeError(f"mistakes must be a list of (function, hint) pairs, got {type(mistakes).__name__}")
    for i, m in enumerate(mistakes):
        if not (isinstance(m, tuple) and len(m) == 2 and callable(m[0]) and isinstance(m[1], str)):
            raise TypeError(f"mistakes[{i}] must be a (function, hint str) pair, got {m!r:.80}")

    fname = name or (_name_of(fn) if callable(fn) else "your function")
    report = CheckReport(exercise=exercise, function=fname, max_details=max_details)
    if not callable(fn):
        report.error = (f"expected a function, got {summarize(fn, 40)} ({type(fn).__name__}). "
                        f"Pass the function itself, without calling it: e.g. check(my_function), "
                        f"not check(my_function(x)).")
        if not quiet:
            report.show()
        return report

    state = _GlobalState()
    stuck = False
    try:
        for i, case in enumerate(cases):
            label = case.label or f"case {i + 1}"
            if stuck:  # one runaway is enough: don't wait for the time limit again on every case
                report.cases.append(CaseResult(label=label, status=FAILED,
                                               reason="not run (an earlier case did not return in time)"))
                continue
            result = CaseResult(label=label, status=FAILED, hint=case.hint)
            stuck = _run_case(fn, reference, case, result, report, compare, timeout_s,
                              case.atol if case.atol is not None else atol,
                              case.rtol if case.rtol is not None else rtol, check_dtype, allow_mutation, state,
                              mistakes)
            report.cases.append(result)
            if report.not_done:
                break
    finally:
        state.restore()

    _record(report)
    if not quiet:
        report.show()
    return report


# --------------------------------------------------------------------------- where you stand

# The last verdict of every (exercise, function) checked in this Python process, in the order
# first checked: what `summary()` prints at the end of a student notebook.
_LAST: dict[tuple[str, str], CheckReport] = {}
_WORST = {PASSED: 0, NOT_DONE: 1, FAILED: 2}


def _record(report: CheckReport) -> None:
    _LAST.pop((report.exercise, report.function), None)  # re-insert: keep one entry, the newest
    _LAST[(report.exercise, report.function)] = report


def last_verdicts() -> dict[str, str]:
    """``{exercise: "passed" | "failed" | "not done"}`` from the last check of each exercise run
    in this session; an exercise with several functions gets the worst of their verdicts."""
    out: dict[str, str] = {}
    for (exercise, _), report in _LAST.items():
        if exercise not in out or _WORST[report.status] > _WORST[out[exercise]]:
            out[exercise] = report.status
    return out


def summary(exercises: Sequence[str] | None = None, *, quiet: bool = False) -> dict[str, str]:
    """Print where you stand: each exercise's last verdict in this session, as a small table.

    ``exercises`` lists the labels to report (a notebook's own exercises, in order); an exercise
    whose check cell has not run yet in this session shows "not run". Without it, every exercise
    checked so far is listed. Returns ``{exercise: status}``.
    """
    if exercises is None:
        labels = list(dict.fromkeys(e for e, _ in _LAST))
    else:
        if isinstance(exercises, str) or not isinstance(exercises, Sequence):
            raise TypeError(f"exercises must be a list of exercise labels or None, got {exercises!r:.60}")
        for i, label in enumerate(exercises):
            _checks.instance(f"exercises[{i}]", label, str, "an exercise label like 'ex-01-softmax'")
        labels = list(exercises)
    quiet = _checks.boolean("quiet", quiet)
    verdicts = last_verdicts()
    rows = []
    for label in labels:
        status = verdicts.get(label, "not run")
        functions = [f for (e, f) in _LAST if e == label]
        rows.append((label, ", ".join(functions) or "-", status))
    statuses = {label: status for label, _, status in rows}
    if not quiet:
        print(_summary_text(rows), flush=True)
    return statuses


_SUMMARY_MARK = {PASSED: "✓", FAILED: "✗", NOT_DONE: "…", "not run": "?"}


def _summary_text(rows: list[tuple[str, str, str]]) -> str:
    if not rows:
        return "Where you stand: no exercise has been checked yet in this session."
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = ["Where you stand (the last check of each exercise in this session):"]
    lines += [f"  {_SUMMARY_MARK[s]} {label:<{w0}}  {fn:<{w1}}  {s}" for label, fn, s in rows]
    counts = {s: sum(r[2] == s for r in rows) for s in (PASSED, FAILED, NOT_DONE, "not run")}
    lines.append(f"{counts[PASSED]} of {len(rows)} passed, {counts[FAILED]} failed, {counts[NOT_DONE]} not done"
                 + (f", {counts['not run']} not run yet (run its check cell)" if counts["not run"] else ""))
    return "\n".join(lines)
