"""Small interactive views that work in a notebook *and* on the website.

In Jupyter or Colab a view is a live ipywidget: a text box or sliders, and Python computes the
answer as you type. A page of the website has no Python behind it, so when the book is built
(``tools/build.sh`` sets ``TRANSFORMER_BOOK_WEBSITE=1``) the same call returns instead a
self-contained HTML view: every answer for a grid of control values, computed at build time,
and controls that switch between them with the book's own small script (``book/_static/
book.js``; nothing is fetched from another host). The convention, the same for every view::

    <div data-tb-interactive>
      <select data-tb-control="name"> ... </select>   or   <input type="range"
      <div data-tb-view="name=value&other=value"> ... </div>   data-tb-values='["a", "b"]'>

``tools/browser_check.py`` moves every control it finds and fails when the view does not
change. Only features of ipywidgets 7.7 (Colab's version) are used in the live views:
``Text(continuous_update=False)``, ``Button``, ``HTML``, ``Output`` whose ``outputs`` are set
directly (which needs no frontend, unlike ``with output: ...``).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence

__all__ = ["WEBSITE_ENV", "on_website", "figure_png", "figure_html", "png_output",
           "view_key", "precomputed_views", "live_view"]

#: Set to "1" by the website build: views are precomputed instead of live.
WEBSITE_ENV = "TRANSFORMER_BOOK_WEBSITE"


def on_website() -> bool:
    """Whether this code runs in the website build (``TRANSFORMER_BOOK_WEBSITE=1``)."""
    return os.environ.get(WEBSITE_ENV) == "1"


def figure_png(fig, dpi: int = 110) -> bytes:
    """The PNG bytes of a matplotlib figure (tight bounding box)."""
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def figure_html(fig, alt: str) -> str:
    """An ``<img>`` of a matplotlib figure for a web page: an SVG, sharp on any screen.

    Text stays text (``svg.fonttype = "none"``: smaller, and the browser's fonts draw it);
    ``alt`` describes the figure for readers who cannot see it. The figure is closed
    afterwards when pyplot manages it.
    """
    import matplotlib

    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError(f"alt must be a non-empty description of the figure, got {alt!r}")
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "transformer-book"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    _close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/svg+xml;base64,{data}" alt="{html.escape(alt, quote=True)}">'


def _close(fig) -> None:
    try:  # a figure made with pyplot must not also appear below the cell
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:  # pragma: no cover - pyplot not importable / figure not managed
        pass


def png_output(png: bytes, text: str = "figure") -> dict:
    """An ``Output`` widget entry (a Jupyter display_data message) that shows ``png``."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ValueError("png must be the bytes of a PNG image (starting with the PNG signature)")
    return {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(bytes(png)).decode("ascii"), "text/plain": f"<{text}>"},
        "metadata": {},
    }


class _Page:
    """What a precomputed view is displayed as: raw HTML (``_repr_html_``) with a text twin."""

    def __init__(self, markup: str, text: str):
        self.markup, self.text = markup, text

    def _repr_html_(self) -> str:
        return self.markup

    def __repr__(self) -> str:
        return self.text


def view_key(values: Mapping[str, object]) -> str:
    """The key of one view: ``name=value&name=value`` in control order (book.js builds the same)."""
    return "&".join(f"{name}={value}" for name, value in values.items())


def precomputed_views(
    render: Callable[..., str],
    controls: Mapping[str, Sequence],
    default: Mapping[str, object] | None = None,
    labels: Mapping[str, str] | None = None,
    sliders: Sequence[str] = (),
    note: str = "",
):
    """Every view of an interactive figure, computed now, behind controls that switch them.

    Args:
        render: ``render(**values) -> str``, the HTML of one view for one value per control.
        controls: ``{name: values}``; the grid is every combination (keep it small: each view
            is stored in the page).
        default: the values shown first (each must be in its list); default: the first ones.
        labels: the text in front of each control (default: its name).
        sliders: the controls drawn as a slider over their values; the others are drop-downs.
        note: a line under the view (e.g. what the grid covers).

    Returns:
        an object that Jupyter displays as the HTML (``_repr_html_``).
    """
    if not callable(render):
        raise TypeError(f"render must be callable, got {type(render).__name__}")
    if not isinstance(controls, Mapping) or not controls:
        raise ValueError(f"controls must be a non-empty mapping of name -> values, got {controls!r}")
    grid = {name: [str(v) for v in values] for name, values in controls.items()}
    for name, values in grid.items():
        if not values or len(set(values)) != len(values):
            raise ValueError(f"controls[{name!r}] must hold distinct values, got {controls[name]!r}")
    default = {name: str(v) for name, v in (default or {}).items()}
    for name, value in default.items():
        if name not in grid or value not in grid[name]:
            raise ValueError(f"default {name}={value!r} is not one of the control's values")
    chosen = {name: default.get(name, values[0]) for name, values in grid.items()}
    labels = dict(labels or {})
    if all(len(values) == 1 for values in grid.values()):  # nothing to choose: a plain view
        values = {name: values[0] for name, values in controls.items()}
        return _Page(f"<div>{render(**values)}</div>", "<view>")

    parts = ['<div class="tb-controls">']
    for name, values in grid.items():
        if len(values) == 1:
            continue
        label = html.escape(labels.get(name, name))
        attr = html.escape(name, quote=True)
        if name in sliders:
            parts.append(
                f'<label>{label} <input type="range" data-tb-control="{attr}" min="0" '
                f'max="{len(values) - 1}" step="1" value="{values.index(chosen[name])}" '
                f"data-tb-values='{html.escape(json.dumps(values), quote=True)}'>"
                f'<span class="tb-readout" data-tb-readout="{attr}">'
                f"{html.escape(chosen[name])}</span></label>")
        else:
            options = "".join(
                f'<option value="{html.escape(v, quote=True)}"'
                f'{" selected" if v == chosen[name] else ""}>{html.escape(v)}</option>'
                for v in values)
            parts.append(f'<label>{label} <select data-tb-control="{attr}">{options}</select>'
                         "</label>")
    parts.append("</div>")
    originals = {name: list(values) for name, values in controls.items()}
    n_views = 0
    for combination in itertools.product(*(range(len(v)) for v in grid.values())):
        shown = {name: grid[name][i] for name, i in zip(grid, combination)}
        values = {name: originals[name][i] for name, i in zip(grid, combination)}
        hidden = "" if shown == chosen else " hidden"
        parts.append(f'<div data-tb-view="{html.escape(view_key(shown), quote=True)}"{hidden}>'
                     f"{render(**values)}</div>")
        n_views += 1
    parts.append('<p class="tb-note" data-tb-missing hidden>No precomputed view for these '
                 "values.</p>")
    summary = (f"{n_views} views computed when the book was built; in Jupyter or Colab the "
               "same cell is live.")
    parts.append(f'<p class="tb-note">{html.escape(note + " " if note else "")}{summary}</p>')
    markup = "<div data-tb-interactive>" + "".join(parts) + "</div>"
    return _Page(markup, f"<precomputed view: {n_views} views of {', '.join(grid)}>")


def live_view(
    render: Callable[[str], tuple[str, object]],
    default: str,
    description: str = "Input:",
    placeholder: str = "",
    button: str = "Show",
    choices: Sequence[str] = (),
    alt: Callable[[str], str] | None = None,
):
    """A text box, a button and a view that ``render`` fills: a line of HTML and a figure.

    On the website (:func:`on_website`) it is instead a drop-down over ``default`` and
    ``choices``, each rendered at build time (see :func:`precomputed_views`).

    Args:
        render: ``render(text) -> (html, figure_or_None)``. A ``ValueError`` / ``TypeError`` it
            raises is shown to the reader as a message (not as a traceback).
        default: the text rendered at creation, so the view is never empty.
        description, placeholder, button: labels.
        choices: the inputs offered on the website, besides ``default``.
        alt: ``alt(text)``, the description of the figure for ``text`` (website only).

    Returns:
        an ``ipywidgets.VBox`` with attributes ``text``, ``button``, ``message`` (HTML) and
        ``output`` (Output) for tests and for callers that want to poke at it.
    """
    import ipywidgets as widgets

    if not callable(render):
        raise TypeError(f"render must be callable, got {type(render).__name__}")
    if not isinstance(default, str):
        raise TypeError(f"default must be a str, got {type(default).__name__}")
    if on_website():
        def view(input: str) -> str:  # noqa: A002 - the control's name
            text = input
            try:
                line, fig = render(text)
            except (ValueError, TypeError) as err:
                return f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            shown = alt(text) if alt is not None else f"figure for {text}"
            return f"<div>{line}</div>" + (figure_html(fig, shown) if fig is not None else "")

        inputs = [default] + [c for c in dict.fromkeys(choices) if c != default]
        return precomputed_views(view, {"input": inputs}, labels={"input": description})

    text = widgets.Text(value=default, description=description, placeholder=placeholder,
                        continuous_update=False, layout=widgets.Layout(width="32em"))
    go = widgets.Button(description=button)
    message = widgets.HTML()
    output = widgets.Output()

    def update(value: str) -> None:
        try:
            line, fig = render(value)
        except (ValueError, TypeError) as err:
            message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            output.outputs = ()
            return
        message.value = line
        if fig is None:
            output.outputs = ()
            return
        output.outputs = (png_output(figure_png(fig), text=value),)
        _close(fig)

    text.observe(lambda change: update(change["new"]), names="value")
    go.on_click(lambda _: update(text.value))
    update(default)
    box = widgets.VBox([widgets.HBox([text, go]), message, output])
    box.text, box.button, box.message, box.output = text, go, message, output
    return box
