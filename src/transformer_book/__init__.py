"""Transformers, Piece by Piece: the code the book builds, one chapter at a time.

Each module holds one idea and is introduced by one chapter (see ``DESIGN.md``);
later chapters import what earlier ones built.
"""

from __future__ import annotations

import os
import random

__version__ = "0.1.0"

__all__ = ["__version__", "seed_everything"]


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that a notebook gives the same numbers every run.

    Every chapter calls this in its first code cell. Functions that sample also take a
    ``torch.Generator`` so that a single call can be reproduced on its own.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    import numpy as np
    import torch

    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
