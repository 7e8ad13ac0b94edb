"""Small interactive views that also make sense without a running kernel.

A widget drawn on a static web page has no Python behind it: typing changes nothing. So every
view here is *filled at creation*: its initial state already holds the answer for a default
input, which the page's embedded widget state shows. The notebook then draws the same view
again as a plain figure (the "static twin") for readers of the website.

Only features of ipywidgets 7.7 (Colab's version) are used: ``Text(continuous_update=False)``,
``Button``, ``HTML``, ``Output`` whose ``outputs`` are set directly (which needs no frontend,
unlike ``with output: ...``).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable

__all__ = ["figure_png", "png_output", "live_view"]


def figure_png(fig, dpi: int = 110) -> bytes:
    """The PNG bytes of a matplotlib figure (tight bounding box)."""
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def png_output(png: bytes, text: str = "figure") -> dict:
    """An ``Output`` widget entry (a Jupyter display_data message) that shows ``png``."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ValueError("png must be the bytes of a PNG image (starting with the PNG signature)")
    return {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(bytes(png)).decode("ascii"), "text/plain": f"<{text}>"},
        "metadata": {},
    }


def live_view(
    render: Callable[[str], tuple[str, object]],
    default: str,
    description: str = "Input:",
    placeholder: str = "",
    button: str = "Show",
):
    """A text box, a button and a view that ``render`` fills: a line of HTML and a figure.

    Args:
        render: ``render(text) -> (html, figure_or_None)``. A ``ValueError`` / ``TypeError`` it
            raises is shown to the reader as a message (not as a traceback).
        default: the text rendered at creation, so the view is never empty.
        description, placeholder, button: labels.

    Returns:
        an ``ipywidgets.VBox`` with attributes ``text``, ``button``, ``message`` (HTML) and
        ``output`` (Output) for tests and for callers that want to poke at it.
    """
    import ipywidgets as widgets

    if not callable(render):
        raise TypeError(f"render must be callable, got {type(render).__name__}")
    if not isinstance(default, str):
        raise TypeError(f"default must be a str, got {type(default).__name__}")

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
        try:  # a figure made with pyplot must not also appear below the cell
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:  # pragma: no cover - pyplot not importable / figure not managed
            pass

    text.observe(lambda change: update(change["new"]), names="value")
    go.on_click(lambda _: update(text.value))
    update(default)
    box = widgets.VBox([widgets.HBox([text, go]), message, output])
    box.text, box.button, box.message, box.output = text, go, message, output
    return box
