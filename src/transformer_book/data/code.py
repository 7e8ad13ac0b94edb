"""A corpus of Python source code that every Python installation already has: its standard library.

Chapter 2 trains tokenizers on it and chapter 7 trains a small code model on it. Nothing is
downloaded: the files come from the running interpreter (``sysconfig.get_paths()["stdlib"]``),
so the corpus exists on a laptop, in CI and in Colab alike. Two interpreters of different
versions give different corpora; one interpreter always gives the same one.

What is left out, and why:

* ``site-packages`` / ``dist-packages``: third-party code, different on every machine;
* ``test``, ``tests``, ``idle_test``: the test suites are large and repetitive;
* ``encodings`` and ``pydoc_data``: generated data (codec tables, the help text as one giant
  string literal) rather than code people write;
* ``__pycache__``: compiled files.

The files are split by *file*, not by line, into a training part and a held-out part, so that
held-out text never shares a file with training text. A file goes to the held-out part when the
CRC-32 of its path relative to the standard library (with ``/`` separators) is divisible by 10:
about one file in ten, the same files on every machine with the same Python version, and
independent of ``seed``.
"""

from __future__ import annotations

import io
import os
import random
import sysconfig
import tokenize as _py_tokenize  # the standard library's tokenize, for PEP 263 encoding cookies
import zlib
from pathlib import Path

from transformer_book import _checks

__all__ = ["SKIP_DIRS", "SPLITS", "stdlib_corpus", "stdlib_files", "stdlib_root"]

SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data"}
)
SPLITS = ("train", "heldout", "all")
_HELDOUT_MODULUS = 10


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _split_of(relative: str) -> str:
    return "heldout" if zlib.crc32(relative.encode("utf-8")) % _HELDOUT_MODULUS == 0 else "train"


def _check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split  # type: ignore[return-value]


def stdlib_files(split: str = "train", root: str | Path | None = None) -> list[str]:
    """Paths (relative to the standard library, ``/``-separated, sorted) of the corpus's ``.py`` files.

    ``split`` is ``"train"``, ``"heldout"`` (about 1 file in 10, chosen by a hash of the path) or
    ``"all"``. ``root`` defaults to :func:`stdlib_root`; tests pass a small directory instead.
    """
    split = _check_split(split)
    if root is not None:
        _checks.instance("root", root, (str, os.PathLike), "str, os.PathLike or None")
    base = stdlib_root() if root is None else Path(root)
    if not base.is_dir():
        raise ValueError(f"root must be an existing directory, got {str(base)!r}")
    found = []
    for directory, subdirs, filenames in os.walk(base):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS]  # prune: never walk site-packages
        for filename in filenames:
            if not filename.endswith(".py"):
                continue
            name = (Path(directory) / filename).relative_to(base).as_posix()
            if split == "all" or _split_of(name) == split:
                found.append(name)
    return sorted(found)


def _read_source(path: Path) -> str:
    """Decode one source file the way Python itself would, never failing.

    The encoding comes from the PEP 263 cookie (``# -*- coding: latin-1 -*-``) or the BOM and
    defaults to UTF-8; bytes that are invalid in that encoding become U+FFFD rather than an error,
    and line endings are normalised to ``\\n``.
    """
    data = path.read_bytes()
    try:
        encoding, _ = _py_tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:  # a malformed or unknown cookie
        encoding = "utf-8"
    text = data.decode(encoding, errors="replace")
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` made of whole lines whose UTF-8 encoding fits in ``max_bytes``."""
    data = text.encode("utf-8", errors="surrogatepass")
    if len(data) <= max_bytes:
        return text
    cut = data.rfind(b"\n", 0, max_bytes)
    return data[: cut + 1].decode("utf-8", errors="surrogatepass") if cut >= 0 else ""


def stdlib_corpus(
    max_bytes: int | None = 1_000_000,
    seed: int = 0,
    split: str = "train",
    root: str | Path | None = None,
) -> str:
    """Python source from the standard library, at most ``max_bytes`` bytes of UTF-8.

    The files of ``split`` (see :func:`stdlib_files`) are shuffled with ``random.Random(seed)``
    (so that a small corpus mixes many modules instead of the alphabetically first ones) and
    concatenated, each ending with a newline, until the next file would pass ``max_bytes``; that
    last file is cut at a line boundary to fill the budget. ``max_bytes=None`` takes every file.

    Same interpreter + same arguments -> the same string.
    """
    if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0):
        raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    names = stdlib_files(split, root)
    if root is not None:
        _checks.instance("root", root, (str, os.PathLike), "str, os.PathLike or None")
    base = stdlib_root() if root is None else Path(root)
    if not names:
        raise RuntimeError(f"no Python files found for split={split!r} under {str(base)!r}")
    random.Random(seed).shuffle(names)
    parts: list[str] = []
    used = 0
    for name in names:
        text = _read_source(base / name)
        if not text.endswith("\n"):
            text += "\n"
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if max_bytes is not None and used + size > max_bytes:
            parts.append(_truncate_utf8(text, max_bytes - used))
            break
        parts.append(text)
        used += size
    return "".join(parts)
