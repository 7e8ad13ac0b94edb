"""Transformers, Piece by Piece: the code the book builds, one chapter at a time.

Each module holds one idea and is introduced by one chapter (see ``DESIGN.md``);
later chapters import what earlier ones built.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

__version__ = "0.1.0"

__all__ = ["__version__", "seed_everything", "cache_root"]


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that a notebook gives the same numbers every run.

    Every chapter calls this in its first code cell. Functions that sample also take a
    ``torch.Generator`` so that a single call can be reproduced on its own.
    """
    import numpy as np
    import torch

    from transformer_book import _checks

    seed = _checks.integer("seed", seed, 0, 2**63 - 1)  # what torch.manual_seed takes

    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cache_root() -> Path:
    """The book's cache directory (not created here): ``$TRANSFORMER_BOOK_CACHE``, else
    ``$XDG_CACHE_HOME/transformer-book``, else ``~/.cache/transformer-book``. Trained models
    (:mod:`transformer_book.model_cache`) and compiled kernels (:mod:`transformer_book.cpu_kernels`)
    live there."""
    env = os.environ.get("TRANSFORMER_BOOK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "transformer-book"
