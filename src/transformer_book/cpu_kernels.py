"""A matrix-vector product that reads the weights at the memory's speed (chapter 8).

Decoding one token multiplies one vector by every weight matrix: each weight is read once and
used for one multiply-add, so a step can go no faster than memory streams the model's bytes.
PyTorch's CPU kernels for this shape (MKL's ``gemv``, oneDNN's prepacked ``linear``) reach a
fraction of that speed on the book's CPU; the loop of ``cpu_kernels.c`` (shown in the chapter,
which measures all of them) gets much closer, because it does nothing but stream each row of
``W`` once and multiply it with the vector held in the L1 cache.

:func:`gemv` is ``F.linear(x, w, bias)`` for a few rows of ``x``, ``w`` in ``nn.Linear``'s own
``(out, in)`` layout (no copy of the weights). :class:`TokenStep` is a whole decoding step of a
GPT-2 style decoder (batch 1) in one call: the products and the small operations between them;
:func:`in_reading_order` lays the matrices it reads end to end in one block, on 2 MB pages where the
system gives them (:func:`on_huge_pages`). The C source is
compiled once per machine with the system's C compiler (``$CC``, else ``cc`` or ``gcc``;
:data:`FLAGS`) into the book's cache directory (:func:`transformer_book.cache_root`), written
atomically and checked against ``torch`` each time it is loaded (rebuilt if the file is bad).
Where there is no compiler, or the check fails, :func:`available` is ``False``, :func:`status`
says why, and the book's decoding uses PyTorch's kernels instead. Float32 CPU tensors only.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_book import _checks, cache_root

__all__ = ["SOURCE", "FLAGS", "MAX_ROWS", "HUGE_PAGE", "available", "enabled", "whole_step", "whole_step_enabled",
           "status", "library_path", "gemv", "on_huge_pages", "in_reading_order", "BlockWeights", "TokenStep"]

#: The kernel's C source, shipped with the package.
SOURCE = Path(__file__).with_name("cpu_kernels.c")
#: How it is compiled: optimised for this CPU, OpenMP threads and ``omp simd`` vectorisation.
FLAGS = ("-O3", "-march=native", "-funroll-loops", "-fopenmp", "-shared", "-fPIC")
#: The most rows :func:`gemv` takes: its arithmetic grows with the rows, and from about four on a
#: blocked GEMM (oneDNN's) is faster; the book sends it one row.
MAX_ROWS = 16

_state: dict = {}  # "fn", "token": the loaded functions or None, "why": the reason, "path", "off", "split"


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
    """The library's functions: ``gemv_f32`` (returned), ``decode_token_f32`` and
    ``decode_greedy_f32`` (kept in ``_state``)."""
    library = ctypes.CDLL(str(path))
    fn, token, greedy = library.gemv_f32, library.decode_token_f32, library.decode_greedy_f32
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
    token.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_long), ctypes.c_float, ctypes.c_int]
    greedy.argtypes = token.argtypes + [ctypes.c_long, ctypes.c_void_p]
    fn.restype = token.restype = None
    greedy.restype = ctypes.c_long
    _state.update(token=token, greedy=greedy)
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
def _switched_off(key: str, off: bool):
    """Set ``_state[key]`` to ``off`` for the ``with`` block, then back to what it was."""
    before = _state.get(key, False)
    _state[key] = off
    try:
        yield
    finally:
        _state[key] = before


def enabled(on: bool):
    """``with enabled(False):`` the book's decoding uses PyTorch's kernels instead, so that the two
    can be measured side by side (the chapter does); ``enabled(True)`` switches it back on."""
    return _switched_off("off", not _checks.boolean("on", on))


def whole_step(on: bool):
    """``with whole_step(False):`` a GPT's batch-1 decoding step calls the C loop once per product
    (:func:`gemv`) instead of once per token (:class:`TokenStep`), so that the two can be
    measured side by side (the chapter does); ``whole_step(True)`` switches it back on."""
    return _switched_off("split", not _checks.boolean("on", on))


def whole_step_enabled() -> bool:
    """Whether a GPT's batch-1 step runs as one :class:`TokenStep` call: the kernel is
    :func:`available` and :func:`whole_step` has not switched it off."""
    return available() and not _state.get("split", False)


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


#: Bytes in a transparent huge page on x86-64 (and on arm64 with 4 KB base pages).
HUGE_PAGE = 2 << 20


def on_huge_pages(numel: int) -> Tensor:
    """A float32 tensor of ``numel`` zeros in memory that Linux is asked to back with 2 MB pages
    (``madvise(MADV_HUGEPAGE)``: transparent huge pages, where the system allows them); an
    ordinary ``torch.zeros`` elsewhere.

    A stream through memory needs the address translation of every page it reads. With 4 KB
    pages a 500 MB read crosses 122,000 of them, each a miss in the TLB whose walk, in a virtual
    machine, goes through two page tables (the guest's and the host's); with 2 MB pages it
    crosses 240. On some of the book's virtual machines ``torch.sum`` reads such a block much
    faster than ordinary memory, on others hardly (chapter 8 measures both in each run). The
    memory is an anonymous mapping, released when the last tensor viewing it is gone."""
    numel = _checks.positive_int("numel", numel)
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if advise is None or not hasattr(mmap.mmap, "madvise"):  # not Linux: ordinary memory
        return torch.zeros(numel)
    size = numel * 4
    # private and anonymous (shared memory has THP settings of its own, usually off); zeroed;
    # one huge page more, to start on a 2 MB boundary
    region = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(region)) % HUGE_PAGE
    with contextlib.suppress(OSError):  # THP switched off ("never"): 4 KB pages, still correct
        region.madvise(advise, start, size)
    return torch.frombuffer(region, dtype=torch.float32, count=numel, offset=start)  # keeps region alive


def in_reading_order(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Copies of ``tensors`` (float32, CPU) laid end to end in one block of memory allocated for
    them (:func:`on_huge_pages`), in the order given: the matrices of a decoding step stored the
    way the step reads them, one stream from the first byte to the last. On the book's virtual
    machines the model's own tensors, allocated one by one on 4 KB pages while the model was
    built and loaded, read slower than such a block (chapter 8 measures both in each run); the
    price is a second copy of the weights, made once per set of weights."""
    _checks.instance("tensors", tensors, Sequence, "a sequence of float32 CPU tensors")
    if not tensors:
        raise ValueError("tensors must hold at least one tensor, got an empty sequence")
    for i, t in enumerate(tensors):
        _check_float32_cpu(**{f"tensors[{i}]": _checks.tensor(f"tensors[{i}]", t)})
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, whatever the caller's mode
        block = on_huge_pages(sum(t.numel() for t in tensors))
        copies, start = [], 0
        for t in tensors:
            copies.append(block[start:start + t.numel()].view(t.shape).copy_(t))
            start += t.numel()
    return copies


class BlockWeights(NamedTuple):
    """One GPT-2 block's tensors for :class:`TokenStep`, matrices in ``nn.Linear``'s ``(out, in)``
    layout, biases ``None`` where the model has none: ``C`` = n_embd, ``F`` the feed-forward
    width, ``qkv`` the query, key and value projections stacked, ``(C + 2 H_kv D, C)``."""

    ln_1: Tensor  # (C,) weight
    ln_1_bias: Tensor | None
    qkv: Tensor  # (C + 2 H_kv D, C)
    qkv_bias: Tensor | None
    out: Tensor  # (C, C) the attention's output projection
    out_bias: Tensor | None
    ln_2: Tensor
    ln_2_bias: Tensor | None
    fc: Tensor  # (F, C)
    fc_bias: Tensor | None
    proj: Tensor  # (C, F)
    proj_bias: Tensor | None


class TokenStep:
    """One decoding step of a GPT-2 style decoder, batch 1, float32 on the CPU, in one call of the
    C function ``decode_token_f32``: every block (layer norm, q/k/v, the new key and value
    written into the cache, attention over positions ``0 .. position``, output projection and
    residual, layer norm, GELU feed-forward and residual), the final layer norm and the LM head.

    The same numbers as the model's PyTorch step, to float32 rounding; no Python and no thread
    waking between the products (chapter 8 measures what that is worth). Built once for a model
    and a cache: it keeps their tensors (and so their addresses). ``blocks``: one
    :class:`BlockWeights` per layer; ``ln_f``: the final norm's ``(weight, bias or None)``;
    ``head``: the LM head ``(V, C)``; ``keys``, ``values``: the cache's buffers, one
    ``(1, H_kv, T, D)`` per layer, written at ``position``; ``n_head``, ``eps``: the model's.
    ``embeddings``: optional ``(token table (V_in, C), position table (P, C))``, for
    :meth:`from_token`, which looks the token up in C too.
    ``matrices``: the matrices the step reads, in the order it reads them (every block's ``qkv``,
    ``out``, ``fc``, ``proj``, then the head).
    """

    def __init__(self, blocks: Sequence[BlockWeights], ln_f: tuple, head: Tensor, keys: Sequence[Tensor],
                 values: Sequence[Tensor], n_head: int, eps: float, embeddings: tuple | None = None) -> None:
        _need_library()  # RuntimeError, with the reason, where the kernel is not available
        _checks.instance("blocks", blocks, Sequence, "a sequence of BlockWeights, one per layer")
        _checks.instance("keys", keys, Sequence, "the cache's key buffers, one per layer")
        _checks.instance("values", values, Sequence, "the cache's value buffers, one per layer")
        if not blocks or len(keys) != len(blocks) or len(values) != len(blocks):
            raise ValueError(f"blocks, keys and values must have one entry per layer, got {len(blocks)}, "
                             f"{len(keys)} and {len(values)}")
        n_head, eps = _checks.positive_int("n_head", n_head), _checks.number("eps", eps, 0.0, low_open=True)
        head = _contiguous_f32("head", head, 2, "(V, C)")
        v, c = head.shape
        _checks.divides("n_head", n_head, "n_embd (head.shape[1])", c)
        d = c // n_head
        _, h_kv, t_max, _ = _contiguous_f32("keys[0]", keys[0], 4, "(1, H_kv, T, D)").shape
        _checks.divides("H_kv (keys[0].shape[1])", h_kv, "n_head", n_head)
        first = _checks.instance("blocks[0]", blocks[0], BlockWeights)
        f = _contiguous_f32("blocks[0].fc", first.fc, 2, "(F, C)").shape[0]  # the feed-forward width
        shapes = {"ln_1": (c,), "qkv": (c + 2 * h_kv * d, c), "out": (c, c), "ln_2": (c,), "fc": (f, c),
                  "proj": (c, f)}
        tensors = [None, None, None, *self._norm("ln_f", ln_f, c), head]  # x, scratch, logits: per call
        for i, block in enumerate(blocks):
            _checks.instance(f"blocks[{i}]", block, BlockWeights)
            for name, shape in shapes.items():
                _contiguous_f32(f"blocks[{i}].{name}", getattr(block, name), len(shape), "", shape)
                bias = getattr(block, name + "_bias")
                if bias is not None:
                    _contiguous_f32(f"blocks[{i}].{name}_bias", bias, 1, "", shape[:1])
            for name, buffer in ((f"keys[{i}]", keys[i]), (f"values[{i}]", values[i])):
                _contiguous_f32(name, buffer, 4, "(1, H_kv, T, D)", (1, h_kv, t_max, d))
            tensors += [*block[:4], keys[i], values[i], *block[4:]]  # the C layout: the fields, the cache after qkv
        self._token_slot, self._tables = len(tensors), self._embeddings(embeddings, c)
        tensors += [None, *(self._tables or (None, None))]  # the token id (per call), the two tables
        self.n_embd, self.max_len, self.eps = c, t_max, eps
        self.keys, self.values = list(keys), list(values)  # what a caller compares with its cache's
        self.matrices = [m for b in blocks for m in (b.qkv, b.out, b.fc, b.proj)] + [head]  # in reading order
        self._tensors = tensors  # alive as long as the pointers below
        self._scratch = torch.empty(2 * c + 2 * h_kv * d + f + n_head * t_max)
        self._x = torch.empty(c)  # from_token's residual stream
        self._ptr = (ctypes.c_void_p * len(tensors))(*[None if t is None else t.data_ptr() for t in tensors])
        self._ptr[1] = self._scratch.data_ptr()
        self._dim = (ctypes.c_long * 9)(c, n_head, h_kv, d, f, 0, t_max, len(blocks), v)

    @staticmethod
    def _norm(name: str, norm: object, c: int) -> tuple:
        _checks.instance(name, norm, tuple, "(weight, bias or None)")
        if len(norm) != 2:
            raise ValueError(f"{name} must be (weight, bias or None), got a tuple of {len(norm)}")
        weight, bias = norm
        _contiguous_f32(f"{name}[0]", weight, 1, "(C,)", (c,))
        if bias is not None:
            _contiguous_f32(f"{name}[1]", bias, 1, "(C,)", (c,))
        return weight, bias

    @staticmethod
    def _embeddings(embeddings: object, c: int) -> tuple | None:
        if embeddings is None:
            return None
        _checks.instance("embeddings", embeddings, tuple, "a tuple (token table, position table) or None")
        if len(embeddings) != 2:
            raise ValueError(f"embeddings must be (token table, position table), got a tuple of {len(embeddings)}")
        return tuple(_contiguous_f32(f"embeddings[{i}]", table, 2, f"({rows}, C)", (None, c))
                     for i, (table, rows) in enumerate(zip(embeddings, ("V_in", "P"))))

    def writes_to(self, keys: Sequence[Tensor], values: Sequence[Tensor]) -> bool:
        """Whether ``keys`` and ``values`` are the very buffers this step was built for (a cache's
        ``keys`` and ``values`` lists): the step holds their addresses, not their names."""
        return len(keys) == len(self.keys) and all(
            a is b for a, b in zip(self.keys + self.values, list(keys) + list(values)))

    def __call__(self, x: Tensor, position: int, *, check: bool = True) -> Tensor:
        """The next-token logits ``(1, V)`` of a token whose embedding (token + position) is ``x``
        ``(C,)``, at ``position``; writes its key and value there in every layer and overwrites
        ``x`` with the residual stream. ``check=False`` skips the checks (a decoding loop that
        holds the invariants)."""
        if check:
            _contiguous_f32("x", x, 1, "(C,)", (self.n_embd,))
            _checks.integer("position", position, 0, self.max_len - 1)
        return self._run(x, None, position)

    def from_token(self, token: Tensor, position: int, *, check: bool = True) -> Tensor:
        """``self(token_table[token] + position_table[position], position)`` with the lookup made
        in C as well: ``token`` is one token id (a one-element integer tensor), the tables are the
        ``embeddings`` given at construction. After a step has streamed the weights through the
        caches, the four PyTorch calls of that lookup cost more than the lookup itself."""
        token = self._token("from_token", token, position, 1, check)
        return self._run(self._x, token, position)

    def greedy(self, token: Tensor, position: int, n: int, *, check: bool = True) -> Tensor:
        """Greedy decoding in one C call: the ``n`` tokens ``(n,)`` (int64) that follow ``token``
        at ``position``. Each step takes the largest logit (the first on a tie, as
        ``torch.argmax``) and feeds it at the next position, in C, with no Python and no waking
        of threads between the tokens; the keys and values of ``token`` and of the first
        ``n - 1`` chosen tokens are written at ``position .. position + n - 1`` (the last one is
        not fed). ``ValueError`` if a step's logits hold a NaN or have no finite maximum: there
        is no next token (the positions that step wrote are the caller's to discard)."""
        token = self._token("greedy", token, position, n, check)
        return self._run(self._x, token, position, n)

    def _token(self, method: str, token: Tensor, position: int, n: int, check: bool) -> Tensor:
        """``token`` checked (with ``position`` and the ``n`` positions from it) and as one int64."""
        if self._tables is None:  # even with check=False: the C loop would read a null table
            raise ValueError(f"{method} needs the embedding tables: build the TokenStep with embeddings=")
        if check:
            token = _checks.token_ids("token", token, self._tables[0].shape[0], dim=(0, 1, 2), layout="(one id)")
            if token.numel() != 1 or token.device.type != "cpu":
                raise ValueError(f"token must hold one token id on the CPU, got shape {tuple(token.shape)} on "
                                 f"{token.device}")
            positions = min(self.max_len, self._tables[1].shape[0])  # the cache's and the position table's
            _checks.integer("n", n, 1, positions)
            _checks.integer("position", position, 0, positions - n)
        return token if token.dtype == torch.int64 else token.long()  # the C loop reads one int64

    def _run(self, x: Tensor, token: Tensor | None, position: int, n: int = 0) -> Tensor:
        """One C call: ``x`` the residual stream (holding the embedding unless ``token`` is given,
        whose row the C loop looks up), fresh logits ``(1, V)`` returned; with ``n``, the ``n``
        greedy tokens chosen in C instead (each step's logits overwrite the last's)."""
        logits = x.new_empty(1, self._dim[8])
        self._ptr[0], self._ptr[2], self._dim[5] = x.data_ptr(), logits.data_ptr(), position
        self._ptr[self._token_slot] = None if token is None else token.data_ptr()
        if not n:
            _state["token"](self._ptr, self._dim, self.eps, torch.get_num_threads())
            return logits
        out = torch.empty(n, dtype=torch.int64)
        chosen = _state["greedy"](self._ptr, self._dim, self.eps, torch.get_num_threads(), n, out.data_ptr())
        if chosen < n:
            raise _checks.no_next_token(position + chosen)
        return out


def _contiguous_f32(name: str, t: object, dim: int, layout: str, shape: tuple | None = None) -> Tensor:
    """A contiguous float32 CPU tensor of ``dim`` dimensions (and ``shape``, if given)."""
    t = _checks.float_tensor(name, t, dim, layout=layout)
    _check_float32_cpu(**{name: t})
    if shape is not None:
        _checks.shape_is(name, t, shape, layout=layout)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the C loop walks its memory in order), got strides "
                         f"{t.stride()}")
    return t
