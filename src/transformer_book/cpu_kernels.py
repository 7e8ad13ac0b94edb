"""Two C loops that read memory at its speed, for a decoding step on the CPU (chapter 8).

Decoding one token multiplies one vector by every weight matrix and lets one query per head
read the cached keys and values: each byte is read once and used for one multiply-add, so a
step can go no faster than memory streams the model's bytes. PyTorch's general kernels for
these shapes (MKL's ``gemv``, oneDNN's prepacked ``linear``, ``scaled_dot_product_attention``)
spend much of their time around the read; the two loops of ``cpu_kernels.c`` (shown in the
chapter) do nothing but the read:

* :func:`gemv`: ``F.linear(x, w, bias)`` for a few rows of ``x``, ``w`` in ``nn.Linear``'s own
  ``(out, in)`` layout (no copy of the weights);
* :func:`decode_attention`: one new query per head over the cache, ``softmax(q k^T / sqrt(D)) v``,
  grouped-query attention included.

The C source is compiled once per machine with the system's C compiler (``$CC``, else ``cc``
or ``gcc``; :data:`FLAGS`) into the book's cache directory (:func:`transformer_book.cache_root`),
written atomically and checked against ``torch`` each time it is loaded. Where there is no
compiler, or the check fails, :func:`available` is ``False``, :func:`status` says why, and the
book's decoding uses PyTorch's kernels instead. Float32 CPU tensors only.
"""

from __future__ import annotations

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

__all__ = ["SOURCE", "FLAGS", "MAX_ROWS", "available", "status", "library_path", "gemv", "decode_attention"]

#: The kernel's C source, shipped with the package.
SOURCE = Path(__file__).with_name("cpu_kernels.c")
#: How it is compiled: optimised for this CPU, OpenMP threads and ``omp simd`` vectorisation.
FLAGS = ("-O3", "-march=native", "-funroll-loops", "-fopenmp", "-shared", "-fPIC")
#: More rows than this re-read each row of ``W`` from L2 instead of L1: a GEMM serves them better.
MAX_ROWS = 16

_state: dict = {}  # "lib": the loaded functions or None, "why": the reason it is None, "path"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


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


def _load(path: Path) -> dict:
    lib = ctypes.CDLL(str(path))
    p, i, f = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    fns = {"gemv": lib.gemv_f32, "attention": lib.decode_attention_f32}
    fns["gemv"].argtypes = [p, p, p, p, i, i, i, ctypes.c_int]
    fns["attention"].argtypes = [p, p, p, p, i, i, i, i, i, i, i, f, ctypes.c_int]
    for fn in fns.values():
        fn.restype = None
    return fns


def _self_test(lib: dict) -> None:
    """The loaded kernels against ``torch`` on awkward sizes (odd lengths, 1 and 3 rows, a bias or
    none, grouped heads, a strided cache view): a stale or foreign library fails here, not in a
    model."""
    g = torch.Generator().manual_seed(0)
    for rows, n_out, n_in in ((1, 37, 19), (3, 5, 130), (1, 64, 1)):
        x, w, b = (torch.randn(*s, generator=g) for s in ((rows, n_in), (n_out, n_in), (n_out,)))
        for bias in (b, None):
            if not torch.allclose(_gemv(lib, x, w, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-5):
                raise RuntimeError("the compiled gemv disagrees with torch.nn.functional.linear")
    q = torch.randn(2, 6, 1, 24, generator=g)
    k, v = (torch.randn(2, 3, 40, 24, generator=g)[:, :, :29] for _ in range(2))  # views, as in a cache
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    if not torch.allclose(_attention(lib, q, k, v, 24 ** -0.5), expected, rtol=1e-5, atol=1e-5):
        raise RuntimeError("the compiled decode_attention disagrees with F.scaled_dot_product_attention")


def _library() -> dict | None:
    """The loaded C functions, compiling them first if needed; ``None`` (and the reason) if impossible."""
    if "lib" not in _state:
        compiler = _compiler()
        try:
            if compiler is None:
                raise RuntimeError("no C compiler found (set $CC, or install gcc)")
            path = library_path(compiler)
            try:
                lib = _load(path)  # a library built by an earlier run ...
                _self_test(lib)
            except (OSError, RuntimeError):  # ... missing, unreadable or wrong: (re)build it
                _build(path, compiler)
                lib = _load(path)
                _self_test(lib)
            _state.update(lib=lib, why="", path=path)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _state.update(lib=None, why=f"{type(exc).__name__}: {exc}", path=None)
    return _state["lib"]


def available() -> bool:
    """Whether the compiled kernels can be used here (they are compiled on the first call)."""
    return _library() is not None


def status() -> str:
    """One line: where the compiled kernels were loaded from, or why they are not available."""
    if _library() is None:
        return f"C kernels not available ({_state['why']}); PyTorch's kernels are used instead"
    return f"C kernels compiled from {SOURCE.name} with {' '.join(FLAGS)}, loaded from {_state['path'].name}"


def _gemv(lib: dict, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    y = x.new_empty(x.shape[0], w.shape[0])
    lib["gemv"](w.data_ptr(), x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
                x.shape[0], w.shape[0], w.shape[1], torch.get_num_threads())
    return y


def _attention(lib: dict, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    b, h, _, d = q.shape
    out = q.new_empty(b, h, 1, d)
    lib["attention"](q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), b, h, k.shape[1], k.shape[2], d,
                     k.stride(0), k.stride(1), scale, torch.get_num_threads())
    return out


def _check_float32_cpu(**tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise TypeError(f"{name} must be a float32 CPU tensor, got {_checks.describe(t)} on {t.device}")


def _need_library() -> dict:
    lib = _library()
    if lib is None:
        raise RuntimeError(status())
    return lib


def gemv(x: Tensor, w: Tensor, bias: Tensor | None = None, *, check: bool = True) -> Tensor:
    """``x @ w.T + bias`` (``F.linear``) with the compiled loop: ``x`` ``(M, in)``, ``M <= MAX_ROWS``,
    ``w`` ``(out, in)`` contiguous, ``bias`` ``(out,)`` or ``None``; float32 CPU tensors -> ``(M, out)``.

    Uses ``torch.get_num_threads()`` threads. ``check=False`` skips the checks, for a caller that
    holds the invariants (``x`` contiguous too) and has seen :func:`available` be true. Raises
    ``RuntimeError`` (with :func:`status`'s reason) where the kernels are not available.
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
    return _gemv(_need_library() if check else _state["lib"], x, w, bias)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, *,
                     check: bool = True) -> Tensor:
    """One new query per head over ``n`` cached positions: ``softmax(q k^T * scale) v``, what
    ``F.scaled_dot_product_attention(q, k, v, enable_gqa=True)`` computes for one query.

    ``q`` ``(B, H, 1, D)``; ``k``, ``v`` ``(B, H_kv, n, D)`` with ``H_kv`` dividing ``H`` (query
    head ``h`` reads key/value head ``h // (H / H_kv)``), each row of ``D`` contiguous (a slice
    ``[:, :, :n]`` of a :class:`~transformer_book.kv_cache.KVCache` buffer is); ``scale``
    defaults to ``1 / sqrt(D)``. Float32 CPU tensors -> ``(B, H, 1, D)``. ``check=False``: as
    for :func:`gemv` (and ``q`` contiguous).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if check:
        q = _checks.float_tensor("q", q, 4, layout="(B, H, 1, D)")
        k = _checks.float_tensor("k", k, 4, layout="(B, H_kv, n, D)")
        v = _checks.float_tensor("v", v, 4, layout="(B, H_kv, n, D)")
        _check_float32_cpu(q=q, k=k, v=v)
        b, h, _, d = _checks.shape_is("q", q, (None, None, 1, None), layout="(B, H, 1, D): one query").shape
        _checks.shape_is("k", k, (b, None, None, d), layout=f"(B={b}, H_kv, n, D={d})")
        _checks.shape_is("v", v, tuple(k.shape), layout="(B, H_kv, n, D) of k")
        _checks.divides("k.shape[1] (H_kv)", k.shape[1], "q.shape[1] (H)", h,
                        "each key/value head serves an equal group of query heads")
        if k.stride() != v.stride() or k.stride(3) != 1 or k.stride(2) != d:
            raise ValueError(f"k and v must share strides with rows of D={d} contiguous, got strides "
                             f"{k.stride()} and {v.stride()}")
        scale = _checks.number("scale", scale, 0.0, None, low_open=True)
        q = q.contiguous()
    return _attention(_need_library() if check else _state["lib"], q, k, v, float(scale))
