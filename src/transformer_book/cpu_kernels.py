"""A matrix-vector product that reads the weights at the memory's speed (chapter 8).

Decoding one token multiplies one vector by every weight matrix: each weight is read once and
used for one multiply-add, so a step can go no faster than memory streams the model's bytes.
PyTorch's CPU kernels for this shape (MKL's ``gemv``, oneDNN's prepacked ``linear``) reach a
fraction of that speed on the book's CPU; the loop of ``cpu_kernels.c`` (shown in the chapter,
which measures all of them) gets much closer, because it does nothing but stream each row of
``W`` once and multiply it with the vector held in the L1 cache.

:func:`gemv` is ``F.linear(x, w, bias)`` for a few rows of ``x``, ``w`` in ``nn.Linear``'s own
``(out, in)`` layout (no copy of the weights). The C source is compiled once per machine with
the system's C compiler (``$CC``, else ``cc`` or ``gcc``; :data:`FLAGS`) into the book's cache
directory (:func:`transformer_book.cache_root`), written atomically and checked against
``torch`` each time it is loaded (rebuilt if the file is bad). Where there is no compiler, or
the check fails, :func:`available` is ``False``, :func:`status` says why, and the book's
decoding uses PyTorch's kernels instead. Float32 CPU tensors only.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_book import _checks, cache_root

__all__ = ["SOURCE", "FLAGS", "MAX_ROWS", "available", "enabled", "status", "library_path", "gemv"]

#: The kernel's C source, shipped with the package.
SOURCE = Path(__file__).with_name("cpu_kernels.c")
#: How it is compiled: optimised for this CPU, OpenMP threads and ``omp simd`` vectorisation.
FLAGS = ("-O3", "-march=native", "-funroll-loops", "-fopenmp", "-shared", "-fPIC")
#: The most rows :func:`gemv` takes: its arithmetic grows with the rows, and from about four on a
#: blocked GEMM (oneDNN's) is faster; the book sends it one row.
MAX_ROWS = 16

_state: dict = {}  # "fn": the loaded function or None, "why": the reason it is None, "path", "off"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_name() -> str:
    """The CPU's model and instruction-set flags: a virtual machine may show one model name on
    hosts of different generations, and code built for AVX-512 dies on a CPU without it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")  # x86, then Arm's names
    return "\n".join(dict.fromkeys(line for line in lines if line.startswith(wanted))) or platform.processor()


def library_path(compiler: str | None = None) -> Path:
    """Where the compiled kernel lives: named by a hash of the source, the flags, the compiler's
    version and the CPU (``-march=native`` code runs only on the CPU it was built for)."""
    compiler = compiler or _compiler() or "cc"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    key = "\n".join([SOURCE.read_text(), " ".join(FLAGS), *version, platform.machine(), _cpu_name()])
    return cache_root() / "kernels" / f"cpu_kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _build(path: Path, compiler: str) -> None:
    """Compile ``SOURCE`` to ``path`` atomically (a temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-400:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: Path):
    fn = ctypes.CDLL(str(path)).gemv_f32
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
    fn.restype = None
    return fn


def _self_test(fn) -> None:
    """The loaded kernel against ``torch`` on awkward sizes (odd lengths, 1 and 3 rows, with and
    without a bias): a stale or foreign library fails here, not in a model."""
    g = torch.Generator().manual_seed(0)
    for rows, n_out, n_in in ((1, 37, 19), (3, 5, 130), (1, 64, 1)):
        x, w, b = (torch.randn(*s, generator=g) for s in ((rows, n_in), (n_out, n_in), (n_out,)))
        for bias in (b, None):
            if not torch.allclose(_gemv(fn, x, w, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-5):
                raise RuntimeError("the compiled gemv disagrees with torch.nn.functional.linear")


def _library():
    """The loaded C function, compiling it first if needed; ``None`` (and the reason) if impossible."""
    if "fn" not in _state:
        compiler = _compiler()
        try:
            if compiler is None:
                raise RuntimeError("no C compiler found (set $CC, or install gcc)")
            path = library_path(compiler)
            try:
                fn = _load(path)  # a library built by an earlier run ...
                _self_test(fn)
            except (OSError, RuntimeError):  # ... missing, unreadable or wrong: (re)build it
                _build(path, compiler)
                fn = _load(path)
                _self_test(fn)
            _state.update(fn=fn, why="", path=path)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _state.update(fn=None, why=f"{type(exc).__name__}: {exc}", path=None)
    return _state["fn"]


def available() -> bool:
    """Whether the compiled kernel can be used here (it is compiled on the first call) and is
    switched on (:func:`enabled`)."""
    return _library() is not None and not _state.get("off", False)


@contextlib.contextmanager
def enabled(on: bool):
    """``with enabled(False):`` the book's decoding uses PyTorch's kernels instead, so that the two
    can be measured side by side (the chapter does); ``enabled(True)`` switches it back on."""
    on = _checks.boolean("on", on)
    before = _state.get("off", False)
    _state["off"] = not on
    try:
        yield
    finally:
        _state["off"] = before


def status() -> str:
    """One line: where the compiled kernel was loaded from, or why it is not available."""
    if _library() is None:
        return f"C kernel not available ({_state['why']}); PyTorch's kernels are used instead"
    return f"C kernel compiled from {SOURCE.name} with {' '.join(FLAGS)}, loaded from {_state['path'].name}"


def _gemv(fn, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    y = x.new_empty(x.shape[0], w.shape[0])  # (M, out)
    fn(w.data_ptr(), x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
       x.shape[0], w.shape[0], w.shape[1], torch.get_num_threads())
    return y


def _check_float32_cpu(**tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise TypeError(f"{name} must be a float32 CPU tensor, got {_checks.describe(t)} on {t.device}")


def _need_library():
    fn = _library()
    if fn is None:
        raise RuntimeError(status())
    return fn


def gemv(x: Tensor, w: Tensor, bias: Tensor | None = None, *, check: bool = True) -> Tensor:
    """``x @ w.T + bias`` (``F.linear``) with the compiled loop: ``x`` ``(M, in)``, ``M <= MAX_ROWS``,
    ``w`` ``(out, in)`` contiguous, ``bias`` ``(out,)`` or ``None``; float32 CPU tensors -> ``(M, out)``.

    Uses ``torch.get_num_threads()`` threads. ``check=False`` skips the checks, for a caller that
    holds the invariants (``x`` contiguous too) and has seen :func:`available` be true. Raises
    ``RuntimeError`` (with :func:`status`'s reason) where the kernel is not available.
    """
    if check:
        x = _checks.float_tensor("x", x, 2, layout="(M, in)")
        w = _checks.float_tensor("w", w, 2, layout="(out, in)")
        if bias is not None:
            _checks.float_tensor("bias", bias, 1, layout="(out,)")
        _check_float32_cpu(x=x, w=w, bias=bias)
        _checks.integer("x.shape[0] (rows M)", x.shape[0], 1, MAX_ROWS)
        _checks.shape_is("x", x, (None, w.shape[1]), layout="(M, in) with in = w.shape[1]")
        if bias is not None:
            _checks.shape_is("bias", bias, (w.shape[0],), layout="(out,)")
        x, w, bias = x.contiguous(), w.contiguous(), None if bias is None else bias.contiguous()
    return _gemv(_need_library() if check else _state["fn"], x, w, bias)
