"""Attention heatmaps: one row per query (output token), one column per key (input token)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["attention_heatmap", "to_matrix"]


def to_matrix(weights: object, name: str = "weights") -> np.ndarray:
    """A 2-D float NumPy array from a tensor / array / nested list, or a ValueError naming the shape."""
    try:
        import torch

        if isinstance(weights, torch.Tensor):
            weights = weights.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        matrix = np.asarray(weights, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 2-D array or tensor of numbers, got {type(weights).__name__}") from None
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"{name} must be a non-empty 2-D matrix (rows, columns), got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values; attention weights must be finite")
    return matrix


def attention_heatmap(
    weights: object,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    ax=None,
    title: str | None = None,
    xlabel: str | None = "input",
    ylabel: str | None = "output",
    cmap: str = "Blues",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    annotate: bool = False,
    colorbar: bool = True,
):
    """Draw an attention matrix as a heatmap and return the matplotlib ``Axes``.

    Args:
        weights: ``(rows, columns)`` tensor or array; row ``i`` is where output ``i`` looked.
        row_labels: one label per row (the output / query tokens).
        col_labels: one label per column (the input / key tokens), written along the top.
        ax: draw into this Axes; default: a new figure sized to the matrix.
        vmin, vmax: colour range (default 0..1, the range of softmax weights); ``None`` = data range.
        annotate: write each weight in its cell (for small matrices).
        colorbar: add a colour bar next to the heatmap.
    """
    matrix = to_matrix(weights)
    for name, labels, size, axis in (("row_labels", row_labels, matrix.shape[0], "rows"),
                                     ("col_labels", col_labels, matrix.shape[1], "columns")):
        if isinstance(labels, str):
            raise TypeError(f"{name} must be a sequence of labels, got a single str {labels!r}")
        if len(labels) != size:
            raise ValueError(
                f"{name} has {len(labels)} labels but weights of shape {matrix.shape} has {size} {axis}"
            )
    if ax is None:
        import matplotlib.pyplot as plt

        rows, cols = matrix.shape
        _, ax = plt.subplots(figsize=(1.2 + 0.55 * cols + (1.0 if colorbar else 0), 0.9 + 0.42 * rows))
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in col_labels], rotation=60, ha="left")
    ax.set_yticks(range(matrix.shape[0]), [str(r) for r in row_labels])
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, pad=12, fontsize="medium")
    if annotate:
        high = vmax if vmax is not None else matrix.max()
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                value = matrix[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                        color="white" if value > 0.6 * high else "black")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    return ax
