"""What every page says about the book itself, and the bibliography's labels.

* The footer names the book's version (from ``pyproject.toml``) and the build date
  (``SOURCE_DATE_EPOCH`` when set, for reproducible builds; today otherwise), and links to the
  repository and its issue tracker, both derived from ``repository.url`` in ``_config.yml``.
* ``book_theme_options`` (in ``_config.yml``) are merged into the theme options that Jupyter
  Book derives from ``_config.yml``; ``html_theme_options`` there would replace them.
* Figures are numbered per chapter ("Fig. 7.2"), from the chapter's file name ``NN_topic``,
  as exercises are (``exercise_numbers``); ``{numref}`` follows.
* Progress bars (tqdm's ipywidgets) are dropped from the pages: they are for someone waiting
  at a live notebook, and a finished bar is a blank gap on a static page. Other widget views
  are kept. (A cell that draws a captioned figure should not also show progress bars: the
  caption would be given to each bar too. Train in one cell, plot in the next.)
* The reference list is labelled author-year ("Vaswani et al. 2017"), the same style as the
  citations in the text, instead of pybtex's default "[VSP+17]".
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
from collections import Counter
from pathlib import Path

from docutils import nodes
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle

ROOT = Path(__file__).resolve().parents[2]


def _version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def _build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc))
    return when.strftime("%Y-%m-%d")


def _footer(app, config) -> None:
    options = dict(config.html_theme_options or {})
    options.update(config.book_theme_options or {})
    repo = (options.get("repository_url") or "").rstrip("/")
    links = ""
    if repo:
        links = (f' · <a href="{html.escape(repo)}">source</a>'
                 f' · <a href="{html.escape(repo)}/issues/new">report an issue</a>')
    line = (f'<p class="tb-build-meta">Version {html.escape(_version())}, '
            f"built {_build_date()}{links}</p>")
    options["extra_footer"] = (options.get("extra_footer") or "") + line
    config.html_theme_options = options


class AuthorYearLabels(BaseLabelStyle):
    """"Vaswani et al. 2017", "Ba, Kiros and Hinton 2016" -> "Ba et al. 2016"; a, b, ... when
    two entries would get the same label."""

    def format_labels(self, sorted_entries):
        labels = [self._label(entry) for entry in sorted_entries]
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                yield f"{label}{chr(ord('a') + seen[label] - 1)}"
            else:
                yield label

    @staticmethod
    def _label(entry) -> str:
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [" ".join(p.last_names) or " ".join(p.first_names) for p in people]
        names = [re.sub(r"[{}]", "", n) for n in names]
        if not names:
            who = re.sub(r"[{}]", "", entry.fields.get("organization", entry.key))
        elif len(names) == 1:
            who = names[0]
        elif len(names) == 2:
            who = f"{names[0]} and {names[1]}"
        else:
            who = f"{names[0]} et al."
        return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(PlainStyle):
    """pybtex's "plain" entries (sorted by author, year, title) with author-year labels."""

    default_label_style = "authoryear"


_WIDGET_VIEW = re.compile(
    r'<script type="application/vnd.jupyter.widget-view\+json">(.*?)</script>', re.DOTALL)


def _progress_bar_ids(state: dict) -> set[str]:
    """Model ids of tqdm's bars: an HBox holding a FloatProgress (or IntProgress)."""
    models = state.get("state", {})
    bars = set()
    for model_id, model in models.items():
        if model.get("model_name") != "HBoxModel":
            continue
        children = [c.removeprefix("IPY_MODEL_") for c in model.get("state", {}).get("children", [])]
        if any(models.get(c, {}).get("model_name") in ("FloatProgressModel", "IntProgressModel")
               for c in children):
            bars.add(model_id)
    return bars


def _drop_progress_bars(app, doctree) -> None:
    docname = app.env.docname
    js_files = getattr(app.env, "nb_metadata", {}).get(docname, {}).get("js_files", {})
    state_file = js_files.get("ipywidgets_state")
    if not state_file:
        return
    try:
        state = json.loads(state_file[1]["body"])
    except (KeyError, TypeError, ValueError):
        return
    bars = _progress_bar_ids(state)
    for raw in list(doctree.findall(nodes.raw)):
        match = _WIDGET_VIEW.fullmatch(raw.astext().strip())
        if not match:
            continue
        try:
            model_id = json.loads(match.group(1)).get("model_id")
        except ValueError:
            continue
        if model_id in bars:
            target = raw
            while (target.parent is not None and len(target.parent.children) == 1
                   and "cell_output" not in target.parent.get("classes", [])):
                target = target.parent
            target.parent.remove(target)


_CHAPTER_FILE = re.compile(r"(?:^|/)(?P<n>\d+|[A-Z]\d*)_[^/]*$")


def _figures_per_chapter(app, env):
    for docname, numbers in env.toc_fignumbers.items():
        figures = numbers.get("figure")
        match = _CHAPTER_FILE.search(docname)
        if not figures or not match:
            continue
        n = match.group("n")
        chapter = n.lstrip("0") if n.isdigit() else n
        for k, node_id in enumerate(sorted(figures, key=figures.get), start=1):
            figures[node_id] = (chapter, k)
    return []


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    app.add_config_value("book_theme_options", {}, "html")
    app.connect("config-inited", _footer)
    app.connect("env-get-updated", _figures_per_chapter, priority=900)
    app.connect("doctree-read", _drop_progress_bars)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}
