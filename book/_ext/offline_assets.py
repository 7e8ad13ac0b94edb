"""Keep the website self-contained: every asset a page loads comes from the site itself.

The book must work offline, and the browser check fails on any request to another host.
Two things in our sources would otherwise reach out to the internet:

* the "Open in Colab" badge at the top of every notebook is an image hosted by Colab. In a
  notebook (Colab, Jupyter, GitHub) that is what people expect; on the website we swap in
  the copy under ``book/_static`` — the link itself still goes to Colab;
* any other remote image in a page. Those are reported as warnings, which ``-W`` turns into
  build errors, so a remote asset can never slip into the site unnoticed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

COLAB_BADGE_URL = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_BADGE = "/book/_static/colab-badge.svg"
# Tags that make the browser fetch something as soon as the page loads.
_REMOTE_ASSET = re.compile(
    r"""<(?:script|img|iframe|source|audio|video)\b[^>]*\bsrc=["'](https?:)?//"""
    r"""|<link\b[^>]*\brel=["'](?:stylesheet|preload|icon|modulepreload)["'][^>]*\bhref=["'](https?:)?//""",
    re.IGNORECASE,
)


def _localise_images(app: Sphinx, doctree: nodes.document) -> None:
    for image in doctree.findall(nodes.image):
        uri = image.get("uri", "")
        if uri == COLAB_BADGE_URL:
            image["uri"] = LOCAL_BADGE
            image["candidates"] = {"*": LOCAL_BADGE.lstrip("/")}
        elif "://" in uri:
            logger.warning("remote image %s: the site must serve its own copy", uri,
                           location=image)


def _check_built_pages(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for page in sorted(Path(app.outdir).rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        match = _REMOTE_ASSET.search(text)
        if match:
            snippet = text[match.start(): match.start() + 160].replace("\n", " ")
            logger.warning("%s loads a remote asset: %s",
                           page.relative_to(app.outdir), snippet)


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated script tags (sphinx-thebe registers its inline config twice under
    Jupyter Book, and the second ``const THEBE_JS_URL`` is a JavaScript error)."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", None) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # The widget manager is an AMD module: require.js computes its URL (and so the URL of the
    # fonts it loads) from the module name, relative to the page. Map the name to our copy.
    vendor = context["pathto"]("_static/vendor/", 1)
    for i, script in enumerate(unique):
        if (getattr(script, "filename", None) or "").endswith("html-manager/dist/embed-amd.js"):
            attributes = dict(script.attributes, **{"data-jupyter-widgets-cdn": vendor})
            unique[i] = type(script)(script.filename, priority=script.priority, **attributes)
            paths = {"@jupyter-widgets/html-manager/dist": vendor + "@jupyter-widgets/html-manager/dist"}
            config = f"require.config({{paths: {json.dumps(paths)}}});"
            unique.insert(i, type(script)(None, priority=script.priority, body=config))
            break
    context["script_files"] = unique


def setup(app: Sphinx) -> dict:
    # Before Sphinx's own image collector (priority 500) looks at the URIs.
    app.connect("doctree-read", _localise_images, priority=100)
    # Before MathJax's config and the widget manager (default priority 500).
    app.add_js_file("mathjax2-shim.js", priority=100)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("build-finished", _check_built_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}
