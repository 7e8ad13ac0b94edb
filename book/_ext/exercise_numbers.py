"""Exercises on the website: sphinx-exercise directives, numbered per chapter ("Exercise 1.2").

A notebook writes its exercises in plain Markdown, which reads well in Jupyter and Colab
(``transformer_book.classroom``); as Sphinx reads a chapter notebook, ``_directives`` turns
them into sphinx-exercise's ``{exercise}`` and ``{solution-start}`` drop-downs.

sphinx-exercise numbers its exercises with Sphinx's figure numbering, which counts through the
whole book. Chapter files are named ``NN_topic``: after Sphinx has assigned numbers, we replace
each exercise's number by (chapter, position within the chapter). ``{numref}`` follows.
"""

from __future__ import annotations

import json
import re

from transformer_book.classroom import site_notebook

_CHAPTER = re.compile(r"(?:^|/)(?P<n>\d+|[A-Z]\d*)_[^/]*$")


def _per_chapter(app, env):
    for docname, numbers in env.toc_fignumbers.items():
        exercises = numbers.get("exercise")
        match = _CHAPTER.search(docname)
        if not exercises or not match:
            continue
        chapter = match.group("n").lstrip("0") if match.group("n").isdigit() else match.group("n")
        for k, node_id in enumerate(sorted(exercises, key=exercises.get), start=1):
            exercises[node_id] = (chapter, k)
    return []


def _directives(app, docname, source):
    if not docname.startswith("chapters/") or not source[0].lstrip().startswith("{"):
        return
    nb = json.loads(source[0])
    source[0] = json.dumps(site_notebook(nb, where=docname), ensure_ascii=False)


def setup(app):
    app.connect("source-read", _directives)
    app.connect("env-get-updated", _per_chapter, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}
