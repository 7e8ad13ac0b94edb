"""bertviz adapters (offline rewriting, checked in headless Chromium) and the matplotlib attention grids."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from transformer_book.viz import attention_views as av  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "book" / "_static" / "vendor"
VENDOR_FILES = ["require.js", "jquery.min.js", "d3.min.js"]
# a CDN host, a script tag or a require.js path pointing at another host (a URL inside a
# JavaScript comment, like bertviz's credit to tensor2tensor, loads nothing and is fine)
CDN = re.compile(r"""cdnjs|cdn\.|src=["']https?:|(?:d3|jquery)\s*:\s*["']https?:""")


def _attention(n_layers=2, heads=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(torch.randn(1, heads, t, t, generator=g), -1) for _ in range(n_layers)]


TOKENS = ["<s>", "a", "b", "c", "</s>"]


# ---------------------------------------------------------------- rewriting
def test_unchanged_without_env(monkeypatch):
    monkeypatch.delenv(av.JS_ROOT_ENV, raising=False)
    from bertviz import head_view as bv_head_view

    html = av.head_view(_attention(), TOKENS).data
    assert "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js" in html
    assert "https://cdnjs.cloudflare.com/ajax/libs/d3/5.7.0/d3.min" in html
    assert "https://cdnjs.cloudflare.com/ajax/libs/jquery/2.0.0/jquery.min" in html
    assert "__tbRoot" not in html
    # identical to bertviz's own output, except for the random view id
    ref = bv_head_view(_attention(), TOKENS, html_action="return").data
    strip = re.compile(r"bertviz-[0-9a-f]{32}")
    assert strip.sub("ID", html) == strip.sub("ID", ref)


@pytest.mark.parametrize("view", ["head_view", "model_view"])
def test_rewritten_with_env(monkeypatch, view):
    monkeypatch.setenv(av.JS_ROOT_ENV, "../_static/vendor")
    html = getattr(av, view)(_attention(), TOKENS).data
    assert not CDN.search(html), CDN.search(html)
    assert html.count("<script") == 1  # the require.js tag is gone; one script remains
    assert 'new URL("../_static/vendor/", document.baseURI)' in html
    assert 'd3: __tbRoot + "d3.min"' in html and 'jquery: __tbRoot + "jquery.min"' in html
    assert '__tbRoot + "require.js"' in html
    assert "typeof window.requirejs === \"function\"" in html  # loads require.js only when missing
    # explicit js_root=None wins over the environment
    assert "cdnjs" in getattr(av, view)(_attention(), TOKENS, js_root=None).data


def test_localize_rejects_unexpected_html():
    with pytest.raises(ValueError, match="found 0 require.js tag"):
        av.localize_bertviz_html("<div>not bertviz</div>", "vendor")
    with pytest.raises(ValueError, match="js_root must be a non-empty URL path.*''"):
        av.localize_bertviz_html("<div></div>", "")


def test_encoder_decoder_views(monkeypatch):
    monkeypatch.setenv(av.JS_ROOT_ENV, "/static")
    g = torch.Generator().manual_seed(0)
    enc = [torch.softmax(torch.randn(1, 2, 4, 4, generator=g), -1)]
    dec = [torch.softmax(torch.randn(1, 2, 3, 3, generator=g), -1)]
    cross = [torch.softmax(torch.randn(1, 2, 3, 4, generator=g), -1)]
    html = av.head_view(encoder_attention=enc, decoder_attention=dec, cross_attention=cross,
                        encoder_tokens=list("abcd"), decoder_tokens=list("xyz")).data
    assert "Cross" in html and not CDN.search(html)


def test_view_input_checks():
    with pytest.raises(ValueError, match="tokens has 4 entries but the attention has 5 positions"):
        av.head_view(_attention(), TOKENS[:4], js_root=None)
    with pytest.raises(ValueError, match=r"attention\[0\] must have shape \(1, heads, T_q, T_k\).*\(2, 3, 5, 5\)"):
        av.head_view([torch.rand(2, 3, 5, 5)], TOKENS, js_root=None)
    with pytest.raises(ValueError, match=r"attention\[1\] has shape \(1, 3, 4, 4\) but attention\[0\] has"):
        av.model_view([torch.rand(1, 3, 5, 5), torch.rand(1, 3, 4, 4)], TOKENS, js_root=None)
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 2\), got 2"):
        av.head_view(_attention(), TOKENS, layer=2, js_root=None)
    with pytest.raises(ValueError, match=r"scale must be a number in \(0, 4\] or None, got 0"):
        av.model_view(_attention(), TOKENS, scale=0, js_root=None)
    zoomed = av.model_view(_attention(), TOKENS, scale=0.5, js_root=None).data
    assert zoomed.startswith('<div class="transformer-book-zoom" style="zoom: 0.5">')
    with pytest.raises(ValueError, match="display_mode must be 'light' or 'dark', got 'blue'"):
        av.model_view(_attention(), TOKENS, display_mode="blue", js_root=None)
    # (H, T, T) per layer and one (L, H, T, T) tensor are accepted too
    html = av.head_view(torch.stack([a[0] for a in _attention()]), TOKENS, js_root=None).data
    assert '"left_text": ["<s>", "a", "b", "c", "</s>"]' in html and '"attn": [[[[' in html


# ---------------------------------------------------------------- the views draw offline
def _chromium():
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs playwright and a chromium binary")
@pytest.mark.skipif(not all((VENDOR / f).exists() for f in VENDOR_FILES),
                    reason="vendored JavaScript not fetched (python tools/vendor_js.py)")
@pytest.mark.parametrize("page_has_require", [False, True])
def test_views_draw_offline_in_chromium(tmp_path, page_has_require):
    """Two head views and a model view on one page draw with the network off, whether or not the
    page already loads require.js (as the site does for widgets), with no JavaScript error."""
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    (site / "_static" / "vendor").mkdir(parents=True)
    (site / "chapters").mkdir()
    for f in VENDOR_FILES:
        shutil.copy(VENDOR / f, site / "_static" / "vendor" / f)
    views = [av.head_view(_attention(seed=1), TOKENS, js_root="../_static/vendor").data,
             av.head_view(_attention(seed=2), TOKENS, js_root="../_static/vendor").data,
             av.model_view(_attention(seed=3), TOKENS, js_root="../_static/vendor", scale=0.6).data]
    head = '<script src="../_static/vendor/require.js"></script>' if page_has_require else ""
    page_file = site / "chapters" / "page.html"
    page_file.write_text(f"<!doctype html><html><head>{head}</head><body>{''.join(views)}</body></html>")

    problems, remote = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                remote.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(page_file.as_uri())
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('[id^=\"bertviz\"]'))"
            ".every(d => d.querySelectorAll('svg *').length > 10)", timeout=20000)
        n_require = page.evaluate("() => document.querySelectorAll('script[src$=\"require.js\"]').length")
        model_width = page.evaluate("() => document.querySelectorAll('[id^=\"bertviz\"]')[2]"
                                    ".querySelector('svg').getBoundingClientRect().width")
        browser.close()
    assert problems == [] and remote == []
    assert n_require == 1  # one copy of require.js, whichever loaded it
    assert 970 * 0.6 - 5 < model_width < 970 * 0.6 + 5  # bertviz's 970 px, zoomed


# ---------------------------------------------------------------- matplotlib
def test_attention_grid_shapes_and_labels():
    import matplotlib.pyplot as plt

    w = _attention(n_layers=1, heads=4)[0][0]
    fig = av.attention_grid(w, TOKENS, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4 and [ax.get_title() for ax in visible] == [f"head {i}" for i in range(4)]
    assert [t.get_text() for t in visible[0].get_yticklabels()] == TOKENS
    plt.close(fig)
    fig = av.attention_grid(torch.stack([a[0] for a in _attention(3, 2)]), TOKENS, row_titles=["a", "b", "c"])
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "L0 H0"
    plt.close(fig)
    ax = av.plot_mask(torch.ones(5, 5, dtype=torch.bool).tril(), TOKENS, title="causal")
    assert ax.get_title() == "causal"
    plt.close("all")


def test_plot_input_checks():
    with pytest.raises(ValueError, match=r"\(heads, T_q, T_k\) or \(layers, heads, T_q, T_k\), got \(5,\)"):
        av.attention_grid(torch.rand(5))
    with pytest.raises(ValueError, match="q_tokens has 2 labels but the weights have 5 positions"):
        av.attention_grid(torch.rand(2, 5, 5), ["a", "b"])
    with pytest.raises(TypeError, match="mask must be a boolean tensor.*torch.float32"):
        av.plot_mask(torch.rand(3, 3))
    with pytest.raises(ValueError, match=r"one matrix \(T_q, T_k\), got shape \(1, 1, 3, 3\)"):
        av.plot_mask(torch.ones(1, 1, 3, 3, dtype=torch.bool))
