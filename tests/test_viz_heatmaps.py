"""Tests for transformer_book.viz.heatmaps and transformer_book.viz.widgets."""

from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from transformer_book.viz.heatmaps import attention_heatmap, to_matrix  # noqa: E402
from transformer_book.viz.widgets import figure_png, live_view, png_output  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_heatmap_draws_the_matrix_with_labels_on_both_axes():
    w = torch.tensor([[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]])
    ax = attention_heatmap(w, ["vier", "und", "zwanzig"], ["twenty", "four"], title="24")
    image = ax.images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), w.numpy())
    assert image.get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["twenty", "four"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["vier", "und", "zwanzig"]
    assert ax.get_title() == "24"
    assert len(ax.figure.axes) == 2  # heatmap + colour bar


def test_heatmap_into_given_axes_with_annotations_and_no_colorbar():
    fig = Figure()
    ax = fig.add_subplot()
    out = attention_heatmap(np.eye(2), ["a", "b"], ["x", "y"], ax=ax, annotate=True, colorbar=False, vmax=None)
    assert out is ax and len(fig.axes) == 1
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.00", "1.00", "1.00"]


def test_to_matrix_accepts_lists_arrays_tensors():
    np.testing.assert_array_equal(to_matrix([[1, 2], [3, 4]]), np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert to_matrix(torch.ones(2, 3, requires_grad=True)).shape == (2, 3)


@pytest.mark.parametrize(
    "weights, rows, cols, error, pattern",
    [
        (torch.ones(2, 3, 4), ["a", "b"], ["x"] * 3, ValueError, r"2-D matrix \(rows, columns\), got shape \(2, 3, 4\)"),
        (torch.ones(0, 3), [], ["x"] * 3, ValueError, r"got shape \(0, 3\)"),
        (torch.ones(2, 3), ["a"], ["x"] * 3, ValueError, r"row_labels has 1 labels but weights of shape \(2, 3\) has 2 rows"),
        (torch.ones(2, 3), ["a", "b"], ["x"], ValueError, r"col_labels has 1 labels .* has 3 columns"),
        (torch.tensor([[0.5, float("nan")]]), ["a"], ["x", "y"], ValueError, "NaN or infinite"),
        (torch.ones(1, 2), "a", ["x", "y"], TypeError, "single str 'a'"),
        ({"a": 1}, ["a"], ["x"], TypeError, "2-D array or tensor of numbers, got dict"),
    ],
)
def test_heatmap_bad_input(weights, rows, cols, error, pattern):
    with pytest.raises(error, match=pattern):
        attention_heatmap(weights, rows, cols)


def _render(text):
    if text == "bad":
        raise ValueError("unknown words ['bad']")
    if text == "none":
        return "<b>no figure</b>", None
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [0, len(text)])
    return f"<b>{text}</b>", fig


def _png(box) -> bytes:
    (entry,) = box.output.outputs
    assert entry["output_type"] == "display_data"
    return base64.b64decode(entry["data"]["image/png"])


def test_live_view_is_filled_at_creation_and_updates_on_new_text():
    box = live_view(_render, default="24", description="Number:")
    assert box.text.value == "24" and box.text.continuous_update is False
    assert box.message.value == "<b>24</b>"
    first = _png(box)
    assert first.startswith(b"\x89PNG")
    box.text.value = "372845"  # what the frontend does when the reader presses Enter
    assert box.message.value == "<b>372845</b>"
    assert _png(box) != first
    box.button.click()  # the button re-renders the current text
    assert box.message.value == "<b>372845</b>"


def test_live_view_shows_errors_as_messages_and_clears_the_figure():
    box = live_view(_render, default="24")
    box.text.value = "bad"
    assert "unknown words [&#x27;bad&#x27;]" in box.message.value and "#b00" in box.message.value
    assert box.output.outputs == ()
    box.text.value = "none"
    assert box.message.value == "<b>no figure</b>" and box.output.outputs == ()
    with pytest.raises(TypeError, match="render must be callable"):
        live_view("not a function", default="1")
    with pytest.raises(TypeError, match="default must be a str, got int"):
        live_view(_render, default=24)


def test_png_helpers():
    fig = Figure(figsize=(1, 1))
    png = figure_png(fig)
    assert png.startswith(b"\x89PNG")
    entry = png_output(png, text="x")
    assert base64.b64decode(entry["data"]["image/png"]) == png and entry["data"]["text/plain"] == "<x>"
    with pytest.raises(ValueError, match="PNG signature"):
        png_output(b"GIF89a")
    with pytest.raises(TypeError, match="matplotlib Figure, got str"):
        figure_png("fig")
