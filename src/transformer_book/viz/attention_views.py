"""Pictures of attention: bertviz's interactive views (offline-ready) and the book's heatmap grids.

bertviz (Vig, 2019) draws any model's attention: a list with one tensor ``(1, heads, T, T)``
per layer, plus the tokens. Its HTML loads three JavaScript files from cdnjs: require.js
2.3.6 (a ``<script src>`` tag) and, through ``require.config``, d3 5.7.0 and jQuery 2.0.0.
On the book's website nothing may come from another host, so :func:`head_view` and
:func:`model_view` ask bertviz for the HTML (``html_action='return'``) and, when the
environment variable ``TRANSFORMER_BOOK_JS_ROOT`` is set (the build sets it to the site's
vendored-JavaScript folder, e.g. ``../_static/vendor``), rewrite it with
:func:`localize_bertviz_html` to load ``require.js``, ``jquery.min.js`` and ``d3.min.js`` from
that folder. Unset (live Jupyter, Colab), the HTML is left exactly as bertviz made it.

Why a small loader instead of a ``<script src=require.js>`` tag: a page may already have
require.js (the website loads it for embedded widgets, Jupyter has its own), and two copies on
one page clash ("Mismatched anonymous define()"). The rewritten view therefore waits until the
page has parsed, uses the page's require.js if ``window.requirejs`` is already defined, and
otherwise loads the vendored copy once (several views on one page share that one load).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "JS_ROOT_ENV",
    "head_view",
    "model_view",
    "localize_bertviz_html",
    "attention_grid",
    "plot_attention",
    "plot_mask",
]

JS_ROOT_ENV = "TRANSFORMER_BOOK_JS_ROOT"
# What the rewritten HTML loads from the folder named by TRANSFORMER_BOOK_JS_ROOT.
REQUIRE_JS = "require.js"
AMD_PATHS = {"d3": "d3.min", "jquery": "jquery.min"}  # require.js adds ".js"

_FROM_ENV = object()
_REQUIRE_TAG = re.compile(r"""<script\b[^>]*\bsrc=["'][^"']*require(?:\.min)?\.js["'][^>]*>\s*</script>\s*""")
_VIEW_SCRIPT = re.compile(r"""<script type="text/javascript">\n(?P<body>.*require\.config\(.*)\n</script>""", re.S)
_AMD_PATH = re.compile(r"""(?P<name>\b(?:d3|jquery))\s*:\s*['"][^'"]*['"]""")


# ---------------------------------------------------------------------------- bertviz adapters
def localize_bertviz_html(html: str, js_root: str) -> str:
    """Rewrite bertviz's HTML to load its JavaScript from ``js_root`` instead of cdnjs.

    * the ``<script src=".../require.min.js">`` tag is removed;
    * the ``require.config`` paths of ``d3`` and ``jquery`` become ``js_root + "/d3.min"`` and
      ``js_root + "/jquery.min"``, resolved against the page's address in the browser (so a
      relative root such as ``../_static/vendor`` works whatever require.js's ``baseUrl`` is);
    * the view's script is wrapped in a loader that uses the page's require.js when there is
      one and otherwise loads ``js_root + "/require.js"`` (once per page).

    Raises ``ValueError`` if the HTML does not look like a bertviz view (e.g. a bertviz release
    that changed its template), rather than leaving a CDN address in the page.
    """
    if not isinstance(html, str):
        raise TypeError(f"html must be a str, got {type(html).__name__}")
    if not isinstance(js_root, str) or not js_root.strip():
        raise ValueError(f"js_root must be a non-empty URL path such as '../_static/vendor', got {js_root!r}")
    tags = _REQUIRE_TAG.findall(html)
    scripts = list(_VIEW_SCRIPT.finditer(html))
    if len(tags) != 1 or len(scripts) != 1:
        raise ValueError(f"html is not a bertviz view as expected: found {len(tags)} require.js tag(s) and "
                         f"{len(scripts)} require.config script(s), expected 1 and 1")
    body = scripts[0].group("body")
    names = {m.group("name") for m in _AMD_PATH.finditer(body)}
    if names != set(AMD_PATHS):
        raise ValueError(f"bertviz's require.config names paths {sorted(names)}, expected {sorted(AMD_PATHS)}")
    body = _AMD_PATH.sub(lambda m: f"{m.group('name')}: __tbRoot + {json.dumps(AMD_PATHS[m.group('name')])}", body)
    loader = f"""<script type="text/javascript">
(function () {{
  // transformer_book: bertviz view served offline from {js_root} (see viz/attention_views.py)
  var __tbRoot = new URL({json.dumps(js_root.rstrip("/") + "/")}, document.baseURI).href;
  function draw() {{
{body}
  }}
  function hasRequire() {{
    return typeof window.requirejs === "function" && typeof window.define === "function" && !!window.define.amd;
  }}
  function start() {{
    if (hasRequire()) {{ draw(); return; }}
    if (!window.__transformerBookRequire) {{
      window.__transformerBookRequire = new Promise(function (resolve, reject) {{
        var s = document.createElement("script");
        s.src = __tbRoot + {json.dumps(REQUIRE_JS)};
        s.onload = resolve;
        s.onerror = function () {{ reject(new Error("could not load " + s.src)); }};
        document.head.appendChild(s);
      }});
    }}
    window.__transformerBookRequire.then(draw);
  }}
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
}})();
</script>"""
    html = _REQUIRE_TAG.sub("", html, count=1)
    start, end = _VIEW_SCRIPT.search(html).span()
    return html[:start] + loader + html[end:]


def _js_root(js_root: Any) -> str | None:
    if js_root is _FROM_ENV:
        return os.environ.get(JS_ROOT_ENV) or None
    if js_root is not None and not isinstance(js_root, str):
        raise TypeError(f"js_root must be a str or None, got {type(js_root).__name__}")
    return js_root or None


def _layers(name: str, attention: Any) -> list[Tensor]:
    """Normalise attention to bertviz's input: a list of ``(1, H, T_q, T_k)`` float tensors."""
    if isinstance(attention, Tensor):
        if attention.dim() == 4:  # (L, H, T_q, T_k)
            attention = list(attention.unbind(0))
        elif attention.dim() == 5:  # (L, 1, H, T_q, T_k)
            attention = list(attention.unbind(0))
        else:
            raise ValueError(f"{name} as one tensor must be (layers, heads, T_q, T_k), got shape "
                             f"{tuple(attention.shape)}")
    if not isinstance(attention, Sequence) or isinstance(attention, str) or len(attention) == 0:
        raise TypeError(f"{name} must be a non-empty list (one per layer) of tensors (1, heads, T_q, T_k)")
    out = []
    for i, layer in enumerate(attention):
        if not isinstance(layer, Tensor) or not layer.is_floating_point():
            raise TypeError(f"{name}[{i}] must be a floating-point tensor, got "
                            f"{getattr(layer, 'dtype', type(layer).__name__)}")
        if layer.dim() == 3:
            layer = layer[None]
        if layer.dim() != 4 or layer.shape[0] != 1:
            raise ValueError(f"{name}[{i}] must have shape (1, heads, T_q, T_k) or (heads, T_q, T_k), got "
                             f"{tuple(layer.shape)} (bertviz shows one sequence: pick it with [b:b+1])")
        if out and layer.shape != out[0].shape:
            raise ValueError(f"{name}[{i}] has shape {tuple(layer.shape)} but {name}[0] has "
                             f"{tuple(out[0].shape)}: all layers must match")
        out.append(layer.detach().to("cpu", torch.float32))
    return out


def _tokens(name: str, tokens: Any, length: int) -> list[str]:
    if tokens is None or isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a list of {length} strings, got {type(tokens).__name__}")
    if len(tokens) != length:
        raise ValueError(f"{name} has {len(tokens)} entries but the attention has {length} positions")
    return [str(t) for t in tokens]


def _bertviz_kwargs(attention, tokens, encoder_attention, decoder_attention, cross_attention,
                    encoder_tokens, decoder_tokens) -> dict[str, Any]:
    if attention is not None:
        if any(x is not None for x in (encoder_attention, decoder_attention, cross_attention)):
            raise ValueError("pass either attention (self-attention model) or encoder_/decoder_/cross_attention, "
                             "not both")
        layers = _layers("attention", attention)
        if layers[0].shape[-1] != layers[0].shape[-2]:
            raise ValueError(f"attention must be square self-attention (T_q == T_k), got {tuple(layers[0].shape)}; "
                             "for cross-attention use cross_attention=")
        return {"attention": layers, "tokens": _tokens("tokens", tokens, layers[0].shape[-1])}
    kwargs: dict[str, Any] = {}
    if encoder_attention is not None:
        kwargs["encoder_attention"] = enc = _layers("encoder_attention", encoder_attention)
        kwargs["encoder_tokens"] = _tokens("encoder_tokens", encoder_tokens, enc[0].shape[-1])
    if decoder_attention is not None:
        kwargs["decoder_attention"] = dec = _layers("decoder_attention", decoder_attention)
        kwargs["decoder_tokens"] = _tokens("decoder_tokens", decoder_tokens, dec[0].shape[-1])
    if cross_attention is not None:
        kwargs["cross_attention"] = cross = _layers("cross_attention", cross_attention)
        kwargs["decoder_tokens"] = _tokens("decoder_tokens", decoder_tokens, cross[0].shape[-2])
        kwargs["encoder_tokens"] = _tokens("encoder_tokens", encoder_tokens, cross[0].shape[-1])
    if not kwargs:
        raise ValueError("give attention= (with tokens=) or encoder_/decoder_/cross_attention= (with their tokens)")
    return kwargs


def _finish(html_obj: Any, js_root: Any):
    from IPython.display import HTML

    root = _js_root(js_root)
    html = html_obj.data
    return HTML(localize_bertviz_html(html, root) if root else html)


def head_view(
    attention: Sequence[Tensor] | Tensor | None = None,
    tokens: Sequence[str] | None = None,
    *,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    encoder_attention: Sequence[Tensor] | Tensor | None = None,
    decoder_attention: Sequence[Tensor] | Tensor | None = None,
    cross_attention: Sequence[Tensor] | Tensor | None = None,
    encoder_tokens: Sequence[str] | None = None,
    decoder_tokens: Sequence[str] | None = None,
    js_root: str | None = _FROM_ENV,  # type: ignore[assignment]
):
    """bertviz's head view (one layer, its heads as coloured lines) as an ``IPython.display.HTML``.

    ``attention``: one tensor per layer, ``(1, heads, T, T)`` or ``(heads, T, T)`` (or one
    tensor ``(layers, heads, T, T)``), with ``tokens`` (``T`` strings). For an encoder-decoder,
    pass ``encoder_attention`` / ``decoder_attention`` / ``cross_attention`` and both token
    lists instead. ``js_root`` defaults to ``$TRANSFORMER_BOOK_JS_ROOT``; ``None`` keeps
    bertviz's CDN addresses. Make it the last expression of a cell to display it.
    """
    from bertviz import head_view as _head_view

    kwargs = _bertviz_kwargs(attention, tokens, encoder_attention, decoder_attention, cross_attention,
                             encoder_tokens, decoder_tokens)
    n_layers = len(next(v for k, v in kwargs.items() if k.endswith("attention")))
    if layer is not None and not (isinstance(layer, int) and 0 <= layer < n_layers):
        raise ValueError(f"layer must be an int in [0, {n_layers}), got {layer!r}")
    return _finish(_head_view(**kwargs, layer=layer, heads=None if heads is None else list(heads),
                              html_action="return"), js_root)


def model_view(
    attention: Sequence[Tensor] | Tensor | None = None,
    tokens: Sequence[str] | None = None,
    *,
    display_mode: str = "light",
    scale: float | None = None,
    encoder_attention: Sequence[Tensor] | Tensor | None = None,
    decoder_attention: Sequence[Tensor] | Tensor | None = None,
    cross_attention: Sequence[Tensor] | Tensor | None = None,
    encoder_tokens: Sequence[str] | None = None,
    decoder_tokens: Sequence[str] | None = None,
    js_root: str | None = _FROM_ENV,  # type: ignore[assignment]
):
    """bertviz's model view (a thumbnail per layer and head) as an ``IPython.display.HTML``.

    Arguments as in :func:`head_view`; ``display_mode`` is ``"light"`` (the book's default) or
    ``"dark"``. bertviz draws the model view 970 pixels wide and sizes its thumbnails for about
    twelve heads, so a model with few heads gets very large thumbnails; ``scale`` (e.g. ``0.7``)
    shrinks the whole view with CSS ``zoom`` to fit a page (``None``: as bertviz draws it).
    """
    from bertviz import model_view as _model_view

    if display_mode not in ("light", "dark"):
        raise ValueError(f"display_mode must be 'light' or 'dark', got {display_mode!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 4):
        raise ValueError(f"scale must be a number in (0, 4] or None, got {scale!r}")
    kwargs = _bertviz_kwargs(attention, tokens, encoder_attention, decoder_attention, cross_attention,
                             encoder_tokens, decoder_tokens)
    view = _finish(_model_view(**kwargs, display_mode=display_mode, html_action="return"), js_root)
    if scale is not None:
        from IPython.display import HTML

        view = HTML(f'<div class="transformer-book-zoom" style="zoom: {float(scale):g}">{view.data}</div>')
    return view


# ---------------------------------------------------------------------------- matplotlib heatmaps
def _as_matrix_stack(name: str, weights: Any) -> Tensor:
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weights).__name__}")
    w = weights.detach().to("cpu").float()
    if w.dim() == 2:
        w = w[None]
    if w.dim() != 3:
        raise ValueError(f"{name} must have shape (T_q, T_k) or (heads, T_q, T_k), got {tuple(weights.shape)}")
    return w


def _label_axes(ax, q_tokens, k_tokens, n_q, n_k, fontsize):
    if k_tokens is not None:
        ax.set_xticks(range(n_k))
        ax.set_xticklabels([str(t) for t in k_tokens], rotation=90, fontsize=fontsize)
    else:
        ax.set_xticks([])
    if q_tokens is not None:
        ax.set_yticks(range(n_q))
        ax.set_yticklabels([str(t) for t in q_tokens], fontsize=fontsize)
    else:
        ax.set_yticks([])


def _check_labels(name: str, labels: Any, n: int) -> None:
    if labels is not None and len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} labels but the weights have {n} positions on that axis")


def plot_attention(weights: Tensor, q_tokens: Sequence | None = None, k_tokens: Sequence | None = None, *,
                   ax=None, title: str | None = None, vmax: float | None = 1.0, cmap: str = "viridis",
                   colorbar: bool = False, fontsize: int = 8):
    """One heatmap of ``weights`` ``(T_q, T_k)``: rows are queries, columns keys. Returns the axes."""
    import matplotlib.pyplot as plt

    w = _as_matrix_stack("weights", weights)
    if w.shape[0] != 1:
        raise ValueError(f"weights must be one matrix (T_q, T_k), got shape {tuple(weights.shape)}; "
                         "use attention_grid for several heads")
    w = w[0]
    k_tokens = q_tokens if k_tokens is None and w.shape[0] == w.shape[1] else k_tokens
    _check_labels("q_tokens", q_tokens, w.shape[0])
    _check_labels("k_tokens", k_tokens, w.shape[1])
    if ax is None:
        _, ax = plt.subplots(figsize=(0.3 * w.shape[1] + 1.5, 0.3 * w.shape[0] + 1.2))
    image = ax.imshow(w.numpy(), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    _label_axes(ax, q_tokens, k_tokens, w.shape[0], w.shape[1], fontsize)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_mask(mask: Tensor, q_tokens: Sequence | None = None, k_tokens: Sequence | None = None, *,
              ax=None, title: str | None = None, fontsize: int = 8):
    """Picture of a boolean mask ``(T_q, T_k)``: dark = may attend, light = blocked. Returns the axes."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = may attend), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be one matrix (T_q, T_k), got shape {tuple(mask.shape)} "
                         "(index a batch/head, or expand a broadcast mask first)")
    ax = plot_attention(mask.float(), q_tokens, k_tokens, ax=ax, title=title, vmax=1.0, cmap="Greys",
                        fontsize=fontsize)
    return ax


def attention_grid(weights: Tensor, q_tokens: Sequence | None = None, k_tokens: Sequence | None = None, *,
                   titles: Sequence[str] | None = None, row_titles: Sequence[str] | None = None,
                   ncols: int | None = None, vmax: float | None = 1.0, cmap: str = "viridis",
                   cell: float = 0.22, fontsize: int = 7):
    """A grid of heatmaps, one per head: ``(H, T_q, T_k)`` in one row (or ``ncols`` per row), or
    ``(L, H, T_q, T_k)`` as one row per layer. Returns the matplotlib ``Figure``."""
    import matplotlib.pyplot as plt

    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    w = weights.detach().to("cpu").float()
    if w.dim() == 3:
        n = w.shape[0]
        ncols = n if ncols is None else ncols
        if not isinstance(ncols, int) or ncols < 1:
            raise ValueError(f"ncols must be a positive int, got {ncols!r}")
        nrows = -(-n // ncols)
        panels = [(i // ncols, i % ncols, w[i]) for i in range(n)]
        default_titles = [f"head {i}" for i in range(n)]
    elif w.dim() == 4:
        nrows, ncols = w.shape[0], w.shape[1]
        panels = [(r, c, w[r, c]) for r in range(nrows) for c in range(ncols)]
        default_titles = [f"L{r} H{c}" for r in range(nrows) for c in range(ncols)]
        n = nrows * ncols
    else:
        raise ValueError(f"weights must have shape (heads, T_q, T_k) or (layers, heads, T_q, T_k), got "
                         f"{tuple(weights.shape)}")
    titles = default_titles if titles is None else list(titles)
    if len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries, expected one per panel ({n})")
    if row_titles is not None and len(row_titles) != nrows:
        raise ValueError(f"row_titles has {len(row_titles)} entries, expected one per row ({nrows})")
    t_q, t_k = w.shape[-2], w.shape[-1]
    k_tokens = q_tokens if k_tokens is None and t_q == t_k else k_tokens
    _check_labels("q_tokens", q_tokens, t_q)
    _check_labels("k_tokens", k_tokens, t_k)
    label = 0.6 if q_tokens is not None else 0.1
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(ncols * (cell * t_k + label) + 0.6, nrows * (cell * t_q + label + 0.3) + 0.2))
    for ax in axes.flat:
        ax.set_visible(False)
    for (r, c, m), title in zip(panels, titles):
        ax = axes[r, c]
        ax.set_visible(True)
        ax.imshow(m.numpy(), cmap=cmap, vmin=0.0, vmax=vmax, aspect="equal", interpolation="nearest")
        _label_axes(ax, q_tokens if c == 0 else None, k_tokens if r == nrows - 1 else None, t_q, t_k, fontsize)
        ax.set_title(title, fontsize=fontsize + 1)
        if row_titles is not None and c == 0:
            ax.set_ylabel(row_titles[r], fontsize=fontsize + 1)
    fig.tight_layout()
    return fig
