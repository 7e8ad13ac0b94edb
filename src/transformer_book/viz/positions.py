"""Pictures of positions: sinusoidal tables as heatmaps, RoPE as a turning arrow; figures + slider widgets.

Each ``*_figure`` function draws one matplotlib figure for fixed values; each ``*_widget``
function puts sliders in front of the same function: live in Jupyter/Colab (only ipywidgets
features present in 7.7 and 8), and on the website a grid of figures drawn at build time
behind the same sliders (:func:`transformer_book.viz.widgets.precomputed_views`).
"""

from __future__ import annotations

import math

import torch

from transformer_book.positional import apply_rope, rope_angles, sinusoidal_encoding
from transformer_book.viz.widgets import figure_html, on_website, precomputed_views

#: The grids the website shows (each must contain the widgets' defaults).
SINUSOIDAL_GRID = {"d_model": (16, 32, 64, 128), "base": (100.0, 10000.0),
                   "position": (5, 20, 60)}
ROPE_GRID = {"position": (0, 1, 2, 5, 10, 20, 40, 64), "pair": (0, 1, 3, 7)}

__all__ = ["rope_figure", "rope_widget", "sinusoidal_figure", "sinusoidal_widget"]


def sinusoidal_figure(n_positions: int = 100, d_model: int = 64, base: float = 10000.0, position: int = 20):
    """Left: the table ``PE`` (positions x dimensions). Right: ``PE[position] . PE[q]`` for every ``q``,
    the similarity of one position to all others (it peaks at ``q = position`` and falls off
    with the distance, the same way wherever ``position`` is)."""
    import matplotlib.pyplot as plt

    if not isinstance(position, int) or not 0 <= position < n_positions:
        raise ValueError(f"position must be an int in [0, {n_positions}) (n_positions), got {position!r}")
    pe = sinusoidal_encoding(n_positions, d_model, base=base)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.3, 1]})
    im = ax1.imshow(pe.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax1.axhline(position, color="black", lw=1, ls="--")
    ax1.set(xlabel="dimension (even: sin, odd: cos)", ylabel="position",
            title=f"sinusoidal encoding, d_model={d_model}, base={base:g}")
    fig.colorbar(im, ax=ax1, fraction=0.04)
    similarity = (pe @ pe[position]).numpy()
    ax2.plot(similarity, color="tab:blue")
    ax2.axvline(position, color="black", lw=1, ls="--")
    ax2.set(xlabel="position q", ylabel=f"PE[{position}] · PE[q]", title=f"similarity to position {position}")
    fig.tight_layout()
    return fig


def _show(out, make_figure, **kwargs) -> None:
    import matplotlib.pyplot as plt
    from IPython.display import display

    with out:
        out.clear_output(wait=True)
        fig = make_figure(**kwargs)
        display(fig)
        plt.close(fig)


def _sliders_with_output(make_figure, sliders: dict):
    import ipywidgets as widgets

    out = widgets.Output()

    def redraw(_change=None) -> None:
        _show(out, make_figure, **{name: s.value for name, s in sliders.items()})

    for s in sliders.values():
        s.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(list(sliders.values())), out])


def sinusoidal_widget(n_positions: int = 100, d_model: int = 64, base: float = 10000.0, position: int = 20):
    """:func:`sinusoidal_figure` with sliders for ``d_model``, ``base`` and ``position``."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}

    def figure(d_model, base, position):
        return sinusoidal_figure(n_positions, d_model, base, position)

    if on_website():
        def view(d_model, base, position):
            alt = (f"Left: heatmap of the sinusoidal encoding, {n_positions} positions by "
                   f"{d_model} dimensions, base {base:g}, stripes that widen from left to right; "
                   f"right: the dot product of position {position} with every position, "
                   f"peaking at {position}.")
            return figure_html(figure(d_model, base, position), alt)

        defaults = {"d_model": d_model, "base": base, "position": position}
        grid = {k: sorted(set(v) | {defaults[k]}) for k, v in SINUSOIDAL_GRID.items()}
        grid["position"] = [p for p in grid["position"] if p < n_positions]
        return precomputed_views(view, grid, default={"d_model": d_model, "base": base,
                                                      "position": position},
                                 sliders=list(grid))
    sliders = {
        "d_model": widgets.IntSlider(value=d_model, min=4, max=128, step=2, description="d_model", style=style),
        "base": widgets.FloatLogSlider(value=base, base=10, min=1, max=5, step=0.25, description="base", style=style),
        "position": widgets.IntSlider(value=position, min=0, max=n_positions - 1, description="position", style=style),
    }
    return _sliders_with_output(figure, sliders)


def rope_figure(position: int = 5, pair: int = 0, d_head: int = 16, base: float = 10000.0):
    """Left: RoPE turning one 2-D pair of a query. The arrow starts at (1, 0) at position 0 and
    turns by ``w_pair`` radians per position; dots mark positions ``0..position``.
    Right: ``apply_rope(q, m) . apply_rope(k, n)`` for ``q = k`` = all ones, as a function of the
    offset ``m - n``: the score depends on the offset only (and tends to shrink as it grows)."""
    import matplotlib.pyplot as plt

    if not isinstance(d_head, int) or d_head < 2 or d_head % 2:
        raise ValueError(f"d_head must be an even int >= 2, got {d_head!r}")
    if not isinstance(pair, int) or not 0 <= pair < d_head // 2:
        raise ValueError(f"pair must be an int in [0, {d_head // 2}) (d_head / 2 pairs), got {pair!r}")
    if not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be a non-negative int, got {position!r}")
    angles = rope_angles(torch.arange(position + 1), d_head, base)[:, pair]  # (position + 1,)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    t = torch.linspace(0, 2 * math.pi, 200)
    ax1.plot(t.cos(), t.sin(), color="#ccc", lw=1)
    ax1.scatter(angles.cos(), angles.sin(), c=range(position + 1), cmap="viridis", s=18, zorder=2)
    ax1.annotate("", xy=(1, 0), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="#999", lw=1.5))
    ax1.annotate("", xy=(math.cos(angles[-1]), math.sin(angles[-1])), xytext=(0, 0),
                 arrowprops=dict(arrowstyle="->", color="tab:red", lw=2.5))
    w = angles[1].item() if position else rope_angles(torch.tensor([1]), d_head, base)[0, pair].item()
    ax1.set(xlim=(-1.25, 1.25), ylim=(-1.25, 1.25), aspect="equal", xticks=[], yticks=[],
            title=f"pair {pair}: {w:.4f} rad per position\nposition {position}: angle {angles[-1].item():.2f} rad")
    offsets = torch.arange(-64, 65)
    ones = torch.ones(1, 1, len(offsets), d_head, dtype=torch.float64)
    queries = apply_rope(ones, 64 + offsets, base=base)  # query at position 64 + offset
    keys = apply_rope(ones, torch.full_like(offsets, 64), base=base)  # key at position 64
    scores = (queries * keys).sum(-1).flatten() / d_head
    ax2.plot(offsets, scores, color="tab:blue")
    ax2.axvline(position, color="tab:red", lw=1, ls="--")
    ax2.set(xlabel="offset m − n", ylabel="score / D", title=f"RoPE score of q = k = ones, D = {d_head}")
    fig.tight_layout()
    return fig


def rope_widget(position: int = 5, pair: int = 0, d_head: int = 16, base: float = 10000.0):
    """:func:`rope_figure` with sliders for the position and the pair."""
    import ipywidgets as widgets

    def figure(position, pair):
        return rope_figure(position, pair, d_head, base)

    if on_website():
        def view(position, pair):
            alt = (f"Left: a unit circle with an arrow turned by RoPE pair {pair} at position "
                   f"{position}, dots at the earlier positions; right: the RoPE score of q = k "
                   f"= ones against the offset m - n, largest at 0.")
            return figure_html(figure(position, pair), alt)

        grid = {"position": sorted(set(ROPE_GRID["position"]) | {position}),
                "pair": sorted({p for p in ROPE_GRID["pair"] if p < d_head // 2} | {pair})}
        return precomputed_views(view, grid, default={"position": position, "pair": pair},
                                 sliders=list(grid))
    sliders = {
        "position": widgets.IntSlider(value=position, min=0, max=64, description="position"),
        "pair": widgets.IntSlider(value=pair, min=0, max=d_head // 2 - 1, description="pair i"),
    }
    return _sliders_with_output(figure, sliders)
