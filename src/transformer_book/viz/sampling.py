"""Play with temperature, top-k and top-p on a trained language model (chapter 7).

:func:`sampling_render` draws, for a prompt, the model's next-token distribution before and
after the filters as a bar chart, and samples a continuation with the same settings.
:func:`sampling_view` puts it behind a prompt box and three sliders (ipywidgets 7.7 features
only), live in Jupyter/Colab; on the website it is a grid of renders made when the book was
built, behind the same three sliders (:func:`transformer_book.viz.widgets.precomputed_views`).
"""

from __future__ import annotations

import html

import torch
from torch import nn

from transformer_book.generate import generate, next_token_probs
from transformer_book.viz.widgets import (figure_html, figure_png, on_website, png_output,
                                          precomputed_views)

#: The settings the website shows (the defaults of :func:`sampling_view` are added).
SAMPLING_GRID = {"temperature": (0.0, 0.5, 0.8, 1.2, 2.0), "top_k": (0, 5, 50),
                 "top_p": (0.5, 0.9, 1.0)}

__all__ = ["token_label", "sampling_render", "sampling_view"]


def token_label(tokenizer, token_id: int) -> str:
    """A readable label for one token: its text with spaces as '·' and newlines as '⏎'."""
    text = tokenizer.decode([token_id]).replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥")
    # other control characters have no glyph: show their code instead
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text) or "∅"


def _settings(temperature: float, top_k: int | None, top_p: float | None) -> str:
    parts = [f"temperature {temperature:g}" + (" (greedy)" if temperature == 0 else "")]
    parts.append(f"top-k {top_k}" if top_k else "no top-k")
    parts.append(f"top-p {top_p:g}" if top_p is not None and top_p < 1 else "no top-p")
    return ", ".join(parts)


@torch.no_grad()
def sampling_render(model: nn.Module, tokenizer, prompt: str, temperature: float = 0.8, top_k: int | None = None,
                    top_p: float | None = None, max_new_tokens: int = 40, seed: int = 0, n_bars: int = 16):
    """``(html, figure)``: a sampled continuation of ``prompt`` and the next-token distribution.

    The figure shows the ``n_bars`` most likely next tokens: in grey the model's own distribution
    (temperature 1, no filter), in colour the one the sampler draws from. ``top_k=0`` or ``None``
    and ``top_p=1`` or ``None`` switch those filters off. Bad settings raise ``ValueError``.
    """
    from matplotlib.figure import Figure

    if not isinstance(prompt, str) or not prompt:
        raise ValueError("type a prompt (at least one character)")
    top_k = top_k or None
    top_p = None if top_p is None or top_p >= 1 else top_p
    ids = tokenizer.encode(prompt)
    idx = torch.tensor([ids])
    block = getattr(model, "block_size", None) or idx.shape[1]
    model.eval()
    logits = model(idx[:, -block:]).logits[0, -1]
    raw = torch.softmax(logits, dim=-1)
    used = next_token_probs(logits, temperature, top_k, top_p)
    kept = int((used > 0).sum())
    show = torch.argsort(raw, descending=True)[:n_bars]

    fig = Figure(figsize=(7.5, 2.9), layout="constrained")
    ax = fig.add_subplot()
    pos = torch.arange(len(show)).float()
    ax.bar(pos - 0.2, raw[show].tolist(), 0.4, color="#bbbbbb", label="model (temperature 1, no filter)")
    ax.bar(pos + 0.2, used[show].tolist(), 0.4, color="#3b75af", label="sampled from (" + _settings(
        temperature, top_k, top_p) + ")")
    ax.set_xticks(pos.tolist(), [token_label(tokenizer, int(i)) for i in show], rotation=60, fontsize=8,
                  fontfamily="monospace")
    ax.set_ylabel("probability")
    ax.set_title(f"next token after the prompt: {kept} of {len(raw)} tokens can be drawn", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")

    generator = torch.Generator().manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   generator=generator)
    continuation = tokenizer.decode(out[0, len(ids):].tolist())
    line = ("<pre style='white-space:pre-wrap;font-size:85%;border:1px solid #ddd;padding:6px'>"
            f"{html.escape(prompt)}<b style='color:#3b75af'>{html.escape(continuation)}</b></pre>"
            f"<div style='color:#555;font-size:85%'>{_settings(temperature, top_k, top_p)}, seed {seed}, "
            f"{max_new_tokens} new tokens</div>")
    return line, fig


def sampling_view(model: nn.Module, tokenizer, prompt: str = "def ", temperature: float = 0.8, top_k: int = 0,
                  top_p: float = 1.0, max_new_tokens: int = 40, seed: int = 0):
    """A prompt box, sliders for temperature / top-k / top-p and a seed, and the render under them.

    Returns an ``ipywidgets.VBox`` (attributes ``prompt``, ``temperature``, ``top_k``, ``top_p``,
    ``seed``, ``message``, ``output`` for tests), already showing the default settings.
    """
    import ipywidgets as widgets

    if on_website():
        def view(temperature, top_k, top_p):
            line, fig = sampling_render(model, tokenizer, prompt, temperature, top_k, top_p,
                                        max_new_tokens, seed)
            alt = (f"Bar chart of the 16 most likely next tokens after the prompt: grey bars "
                   f"for the model's own probabilities, blue bars for the distribution "
                   f"sampled from with {_settings(temperature, top_k or None, top_p)}.")
            return figure_html(fig, alt) + line

        defaults = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        grid = {k: sorted(set(v) | {defaults[k]}) for k, v in SAMPLING_GRID.items()}
        return precomputed_views(view, grid, default=defaults, sliders=list(grid),
                                 labels={"top_k": "top-k (0 = off)", "top_p": "top-p (1 = off)"},
                                 note=f"Prompt {prompt!r}, seed {seed}.")
    vocab = getattr(model, "vocab_size", 1000)
    text = widgets.Text(value=prompt, description="Prompt:", continuous_update=False,
                        layout=widgets.Layout(width="36em"))
    temp = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                               continuous_update=False)
    k = widgets.IntSlider(value=top_k, min=0, max=min(int(vocab), 200), step=1, description="top-k (0 = off)",
                          continuous_update=False, style={"description_width": "initial"})
    p = widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p (1 = off)",
                            continuous_update=False, style={"description_width": "initial"})
    seed_box = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="12em"))
    message = widgets.HTML()
    output = widgets.Output()

    def update(_=None) -> None:
        try:
            line, fig = sampling_render(model, tokenizer, text.value, temp.value, k.value, p.value,
                                        max_new_tokens, seed_box.value)
        except (ValueError, TypeError) as err:
            message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            output.outputs = ()
            return
        message.value = line
        output.outputs = (png_output(figure_png(fig), text="next-token distribution"),)

    for w in (text, temp, k, p, seed_box):
        w.observe(update, names="value")
    update()
    box = widgets.VBox([text, widgets.HBox([temp, k]), widgets.HBox([p, seed_box]), output, message])
    box.prompt, box.temperature, box.top_k, box.top_p, box.seed = text, temp, k, p, seed_box
    box.message, box.output = message, output
    return box
