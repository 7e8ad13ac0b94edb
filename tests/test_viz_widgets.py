"""The interactive views: live ipywidgets in a notebook, precomputed views on the website."""

from __future__ import annotations

import html
import json
import re

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.figure import Figure

from transformer_book.viz import widgets
from transformer_book.viz.widgets import (WEBSITE_ENV, figure_html, live_view, on_website,
                                          precomputed_views, view_key)


def _views(markup: str) -> dict[str, bool]:
    """{view key: shown} of a precomputed view."""
    return {html.unescape(key): not hidden
            for key, hidden in re.findall(r'data-tb-view="([^"]*)"( hidden)?', markup)}


def test_on_website_follows_the_environment(monkeypatch):
    monkeypatch.delenv(WEBSITE_ENV, raising=False)
    assert not on_website()
    monkeypatch.setenv(WEBSITE_ENV, "1")
    assert on_website()


def test_precomputed_views_hold_every_combination_and_show_the_default():
    page = precomputed_views(lambda a, b: f"<b>{a}-{b}</b>", {"a": [1, 2, 3], "b": ["x", "y"]},
                             default={"a": 2, "b": "y"}, sliders=["a"])
    markup = page._repr_html_()
    views = _views(markup)
    assert len(views) == 6
    assert [k for k, shown in views.items() if shown] == ["a=2&b=y"]
    assert "<b>3-x</b>" in markup
    # the slider's values are the same strings book.js joins into the key
    values = json.loads(html.unescape(re.search(r"data-tb-values='([^']*)'", markup).group(1)))
    assert values == ["1", "2", "3"]
    assert 'data-tb-control="b"' in markup and "<select" in markup
    assert view_key({"a": "2", "b": "y"}) == "a=2&b=y"


def test_precomputed_views_refuse_bad_grids():
    with pytest.raises(TypeError, match="render"):
        precomputed_views("not callable", {"a": [1]})
    with pytest.raises(ValueError, match="controls"):
        precomputed_views(lambda a: "", {})
    with pytest.raises(ValueError, match="distinct"):
        precomputed_views(lambda a: "", {"a": [1, 1]})
    with pytest.raises(ValueError, match="default"):
        precomputed_views(lambda a: "", {"a": [1, 2]}, default={"a": 3})


def test_a_single_value_is_a_plain_view_without_controls():
    markup = precomputed_views(lambda a: f"only {a}", {"a": [7]})._repr_html_()
    assert "only 7" in markup and "data-tb-control" not in markup


def test_figure_html_is_an_svg_with_alt_text():
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    tag = figure_html(fig, 'a line going "down"')
    assert tag.startswith('<img src="data:image/svg+xml;base64,')
    assert 'alt="a line going &quot;down&quot;"' in tag
    with pytest.raises(ValueError, match="alt"):
        figure_html(fig, " ")
    with pytest.raises(TypeError, match="Figure"):
        figure_html("fig", "x")


def _render(text):
    if text == "bad":
        raise ValueError("not a number")
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    return f"<i>{text}</i>", fig


def test_live_view_is_a_widget_in_a_notebook(monkeypatch):
    monkeypatch.delenv(WEBSITE_ENV, raising=False)
    box = live_view(_render, default="12", choices=["3", "4"])
    assert box.text.value == "12" and "<i>12</i>" in box.message.value
    box.text.value = "bad"
    assert "not a number" in box.message.value


def test_live_view_is_a_chooser_on_the_website(monkeypatch):
    monkeypatch.setenv(WEBSITE_ENV, "1")
    page = live_view(_render, default="12", choices=["3", "12", "bad"],
                     alt=lambda t: f"plot of {t}")
    markup = page._repr_html_()
    assert list(_views(markup)) == ["input=12", "input=3", "input=bad"]
    assert 'alt="plot of 3"' in markup and "not a number" in markup


def test_the_book_widgets_are_precomputed_on_the_website(monkeypatch):
    from transformer_book.tokenize import CharTokenizer
    from transformer_book.viz.positions import rope_widget
    from transformer_book.viz.tokens import token_widget

    monkeypatch.setenv(WEBSITE_ENV, "1")
    monkeypatch.setattr("transformer_book.viz.positions.ROPE_GRID",
                        {"position": (0, 3), "pair": (0, 1)})
    views = _views(rope_widget(position=5, pair=0)._repr_html_())
    assert len(views) == 3 * 2 and views["position=5&pair=0"]
    tok = CharTokenizer.from_text("abc def")
    markup = token_widget({"chars": tok}, text="abc", examples=["def", "abc"])._repr_html_()
    assert list(_views(markup)) == ["text=abc", "text=def"]
    monkeypatch.delenv(WEBSITE_ENV)
    assert not isinstance(rope_widget(), widgets._Page)
