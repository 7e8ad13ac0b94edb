"""See tokens: text coloured token by token, as HTML, and a live widget that re-tokenizes as you type.

:func:`tokens_html` is the static view (it works on the website, in a PDF, anywhere HTML shows);
:func:`token_widget` wraps the same HTML in ipywidgets (a text box + one coloured view per
tokenizer), using only features present in ipywidgets 7.7 (Colab) and 8. Its views are filled
when the widget is made, so a saved notebook already shows the initial text tokenized.

Works with any tokenizer of :mod:`transformer_book.tokenize`: ``encode`` plus ``id_to_token``,
which returns ``str`` (character/word tokenizers) or ``bytes`` (BPE). A BPE token that is not
valid UTF-8 on its own -- a piece of a multi-byte character such as an emoji -- is shown as its
bytes in hex, e.g. ``⟨f0 9f⟩``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from transformer_book.viz.widgets import on_website, precomputed_views

__all__ = ["PALETTE", "token_pieces", "tokens_html", "token_widget"]

#: Background colours cycled over consecutive tokens (light, readable with dark text).
PALETTE = ("#cfe8ff", "#ffe3b3", "#d6f5d6", "#f7d4f0", "#fff6a8", "#e0dcff")
UNKNOWN_COLOUR = "#e4572e"


def _piece_text(piece: str | bytes) -> tuple[str, bool]:
    """(text to show, whether it is a readable string)."""
    if isinstance(piece, str):
        return piece, True
    try:
        return piece.decode("utf-8"), True
    except UnicodeDecodeError:
        return "⟨" + " ".join(f"{b:02x}" for b in piece) + "⟩", False


def token_pieces(tokenizer: Any, text: str) -> list[tuple[int, str, bool]]:
    """``(id, shown text, readable)`` for each token of ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    for method in ("encode", "id_to_token"):
        if not callable(getattr(tokenizer, method, None)):
            raise TypeError(f"tokenizer must have an {method}() method, got {type(tokenizer).__name__}")
    return [(i, *_piece_text(tokenizer.id_to_token(i))) for i in tokenizer.encode(text)]


def _one_line(text: str, width: int = 60) -> str:
    """A drop-down label for ``text``: its repr, shortened to ``width`` characters."""
    label = repr(text)[1:-1]
    return label if len(label) <= width else label[: width - 1] + "…"


def _escape(shown: str) -> str:
    # make whitespace visible without changing the layout: newline -> '↵' then a real line break
    shown = html.escape(shown).replace("\t", "→\t")
    return shown.replace("\n", "↵\n")


def tokens_html(tokenizer: Any, text: str, max_tokens: int = 3000, title: str | None = None) -> str:
    """``text`` as HTML, each token on its own coloured background (hover for its id).

    Unknown tokens (id ``tokenizer.unk_id`` of a character/word tokenizer) are red. Shows at most
    ``max_tokens`` tokens and ends with a summary: characters, UTF-8 bytes, tokens, bytes/token.
    """
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    pieces = token_pieces(tokenizer, text)
    unk = getattr(tokenizer, "unk_id", None)
    spans = []
    for k, (token_id, shown, readable) in enumerate(pieces[:max_tokens]):
        if token_id == unk:
            style = f"background:{UNKNOWN_COLOUR};color:white"
        else:
            style = f"background:{PALETTE[k % len(PALETTE)]};color:#111"
            if not readable:
                style += ";font-size:80%;outline:1px dashed #888"
        spans.append(f'<span title="id {token_id}" style="{style};border-radius:3px;padding:1px 0">'
                     f"{_escape(shown)}</span>")
    if len(pieces) > max_tokens:
        spans.append(f' <i>… {len(pieces) - max_tokens} more tokens</i>')
    n_bytes = len(text.encode("utf-8", errors="surrogatepass"))
    ratio = f"{n_bytes / len(pieces):.2f}" if pieces else "–"
    summary = (f"{len(text)} characters, {n_bytes} bytes → <b>{len(pieces)} tokens</b> "
               f"({ratio} bytes/token)")
    head = f"<div style='font-weight:bold;margin-top:4px'>{html.escape(title)}</div>" if title else ""
    body = ("<div style='font-family:monospace;white-space:pre-wrap;line-height:1.9;"
            "border:1px solid #ddd;padding:6px;border-radius:4px'>" + "".join(spans) + "</div>")
    return f"{head}{body}<div style='color:#555;font-size:85%'>{summary}</div>"


def token_widget(tokenizers: Mapping[str, Any] | Any,
                 text: str = "def greet(name):\n    return f'Hi, {name}!'\n",
                 examples: Sequence[str] = ()):
    """A text box and, under it, the text tokenized by each tokenizer, updated as you type.

    ``tokenizers`` is one tokenizer or a ``{name: tokenizer}`` mapping. Returns an
    ``ipywidgets.VBox``; its views already hold ``text`` tokenized. On the website
    (:func:`transformer_book.viz.widgets.on_website`) it is a drop-down over ``text`` and
    ``examples`` instead, each tokenized when the book was built.
    """
    import ipywidgets as widgets

    if not isinstance(tokenizers, Mapping):
        tokenizers = {type(tokenizers).__name__: tokenizers}
    if not tokenizers:
        raise ValueError("tokenizers must hold at least one tokenizer, got an empty mapping")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if on_website():
        texts = list(dict.fromkeys([text, *examples]))
        shown = {_one_line(t): t for t in texts}

        def view(text):
            return "".join(tokens_html(tok, shown[text], title=name)
                           for name, tok in tokenizers.items())

        return precomputed_views(view, {"text": list(shown)}, labels={"text": "Text:"})
    box = widgets.Textarea(value=text, description="Text:", layout=widgets.Layout(width="95%", height="90px"))
    views = {name: widgets.HTML(value=tokens_html(tok, text, title=name)) for name, tok in tokenizers.items()}

    def update(change: dict) -> None:
        for name, tok in tokenizers.items():
            views[name].value = tokens_html(tok, change["new"], title=name)

    box.observe(update, names="value")
    return widgets.VBox([box, *views.values()])
