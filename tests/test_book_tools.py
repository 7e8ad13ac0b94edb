"""The book's own machinery: set-up cells, notebook hygiene, the offline-site guard."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


notebooks_tool = _load("notebooks_tool", ROOT / "tools" / "notebooks.py")
CHAPTERS = notebooks_tool.chapter_notebooks()


def _setup_cell_sources() -> list[tuple[str, str]]:
    found = [(p.name, notebooks_tool._source(json.loads(p.read_text())["cells"][1])) for p in CHAPTERS]
    return found or [("(template)", notebooks_tool.setup_source())]


def _run_setup_cell(source: str, monkeypatch, in_colab: bool) -> tuple[list, list]:
    """Execute a set-up cell with subprocess.run and os.chdir recorded instead of run."""
    calls, chdirs = [], []
    fake_subprocess = types.ModuleType("subprocess")
    fake_subprocess.run = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "subprocess", fake_subprocess)
    monkeypatch.setattr(os, "chdir", chdirs.append)
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "<setup cell>", "exec"), {})
    return calls, chdirs


@pytest.mark.parametrize("name,source", _setup_cell_sources())
def test_setup_cell_installs_the_package_inside_colab(name, source, monkeypatch):
    calls, chdirs = _run_setup_cell(source, monkeypatch, in_colab=True)
    assert len(calls) == 2, f"{name}: expected a git clone and a pip install in Colab, got {calls}"
    url, branch = notebooks_tool.repository()
    book = "/content/transformers-piece-by-piece"
    (clone,), kwargs = calls[0]
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [url, book] and clone[clone.index("--branch") + 1] == branch
    (pip,), kwargs = calls[1]
    assert pip == [sys.executable, "-m", "pip", "install", "--quiet", f"{book}[reference]"]
    assert kwargs == {"check": True}
    assert chdirs == [f"{book}/chapters"], "the chapter must run from chapters/ so that ../book/data resolves"


@pytest.mark.parametrize("name,source", _setup_cell_sources())
def test_setup_cell_is_a_no_op_outside_colab(name, source, monkeypatch):
    assert _run_setup_cell(source, monkeypatch, in_colab=False) == ([], [])


def _minimal_notebook(path: Path) -> dict:
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
        "cells": [
            {"cell_type": "markdown", "id": "title", "metadata": {},
             "source": f"# Chapter 99: A test\n\n{notebooks_tool.badge_line(path)}"},
            {"cell_type": "code", "id": "setup", "metadata": {"tags": ["setup"]}, "outputs": [],
             "execution_count": None, "source": notebooks_tool.setup_source()},
            {"cell_type": "code", "id": "body", "metadata": {}, "outputs": [],
             "execution_count": None, "source": "x = 1"},
        ],
    }


def test_hygiene_accepts_a_clean_notebook_and_names_each_problem(tmp_path):
    path = tmp_path / "99_test_chapter.ipynb"
    clean = _minimal_notebook(path)
    path.write_text(json.dumps(clean))
    assert notebooks_tool.problems(path) == []

    dirty = copy.deepcopy(clean)
    dirty["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1"}]
    dirty["cells"][2]["execution_count"] = 3
    dirty["cells"][0]["source"] = "# Chapter 99: A test"  # badge gone
    dirty["cells"][1]["source"] = "import sys"  # set-up cell edited by hand
    dirty["metadata"]["kernelspec"]["name"] = "my-env"
    dirty["metadata"]["widgets"] = {"state": {}}
    dirty["cells"][2]["source"] = "x = 1\ny = " + "1 + " * 25 + "1"  # 108 columns
    path.write_text(json.dumps(dirty))
    found = "\n".join(notebooks_tool.problems(path))
    for expected in ["cell 2 has committed outputs", "cell 2 has an execution count",
                     "cell 0 lacks the Colab badge", "cell 1 is not the current set-up cell",
                     "kernelspec", "widget state", "cell 2 has 1 line(s) over 88 columns (line 2"]:
        assert expected in found, f"missing {expected!r} in:\n{found}"


def test_the_set_up_cell_fits_in_88_columns():
    assert max(map(len, notebooks_tool.setup_source().splitlines())) <= notebooks_tool.MAX_COLUMNS


def test_stamp_adds_badge_and_setup_cell_idempotently(tmp_path):
    path = tmp_path / "98_stamp_me.ipynb"
    nb = _minimal_notebook(path)
    nb["cells"] = [
        {"cell_type": "markdown", "id": "t", "metadata": {}, "source": "# Chapter 98: Stamp me\n\nIntro."},
        {"cell_type": "code", "id": "c", "metadata": {}, "outputs": [{"output_type": "stream", "name": "stdout", "text": "x"}],
         "execution_count": 1, "source": "print('x')"},
    ]
    path.write_text(json.dumps(nb))
    notebooks_tool.stamp(path)
    once = path.read_text()
    notebooks_tool.stamp(path)
    assert path.read_text() == once
    assert notebooks_tool.problems(path) == []
    cells = json.loads(once)["cells"]
    assert notebooks_tool.badge_line(path) in notebooks_tool._source(cells[0])
    assert "Intro." in notebooks_tool._source(cells[0])
    assert cells[2]["outputs"] == []


def _exercise_cells(number: str, label: str) -> list[dict]:
    def cell(kind: str, cid: str, text: str, *tags: str) -> dict:
        out = {"cell_type": kind, "id": cid, "metadata": {"tags": list(tags)} if tags else {}, "source": text}
        return out | ({"outputs": [], "execution_count": None} if kind == "code" else {})
    return [cell("markdown", f"s{label}", f"### Exercise {number}: T\n<!-- exercise: {label} -->\n\nWrite f."),
            cell("markdown", f"a{label}", f"#### Solution\n<!-- solution-start: {label} -->"),
            cell("code", f"b{label}", 'def f(x):\n    """Two x."""\n    return 2 * x', "solution"),
            cell("markdown", f"c{label}", "#### Check\n<!-- solution-end -->"),
            cell("code", f"d{label}", "check(f)", "check")]


def test_stamp_numbers_exercises_per_chapter_and_folds_solutions(tmp_path):
    path = tmp_path / "97_exercises.ipynb"
    nb = _minimal_notebook(path)
    nb["cells"] += _exercise_cells("97.2", "ex-97-a") + _exercise_cells("3.1", "ex-97-b")
    path.write_text(json.dumps(nb))
    found = "\n".join(notebooks_tool.problems(path))
    for expected in ["exercise ex-97-a is numbered 97.2, expected 97.1",
                     "exercise ex-97-b is numbered 3.1, expected 97.2",
                     "solution of ex-97-a lacks its '# @title' fold line",
                     "solution of ex-97-b is not folded"]:
        assert expected in found, f"missing {expected!r} in:\n{found}"
    notebooks_tool.stamp(path)
    assert notebooks_tool.problems(path) == []
    cells = json.loads(path.read_text())["cells"]
    headings = [notebooks_tool._source(c).splitlines()[0] for c in cells if "<!-- exercise:" in notebooks_tool._source(c)]
    assert headings == ["### Exercise 97.1: T", "### Exercise 97.2: T"]
    solution = next(c for c in cells if "solution" in c["metadata"].get("tags", []))
    assert solution["metadata"]["cellView"] == "form" and solution["metadata"]["jupyter"]["source_hidden"]
    assert notebooks_tool._source(solution).startswith("# @title Solution")


def test_hygiene_refuses_the_old_directive_form(tmp_path):
    path = tmp_path / "96_old.ipynb"
    nb = _minimal_notebook(path)
    nb["cells"].append({"cell_type": "markdown", "id": "old", "metadata": {},
                        "source": "```{exercise} Old\n:label: ex-96-old\n\nWrite f.\n```"})
    path.write_text(json.dumps(nb))
    assert any("cell 3 writes an exercise as a Sphinx directive" in m for m in notebooks_tool.problems(path))


def test_every_chapter_notebook_is_clean():
    found = [m for p in CHAPTERS for m in notebooks_tool.problems(p)]
    assert found == []


def test_teaching_guide_lists_every_exercise():
    from transformer_book import classroom

    guide = (ROOT / "book" / "teaching.md").read_text()
    labels = [e.label for p in CHAPTERS for e in classroom.parse_exercises(classroom._load(p), str(p))]
    assert len(labels) >= 3 * len(CHAPTERS)
    assert [label for label in labels if f"(`{label}`)" not in guide] == [], "add them to book/teaching.md"


def test_every_chapter_has_four_exercises_at_every_level():
    import re

    from transformer_book import classroom

    for path in CHAPTERS:
        nb = classroom._load(path)
        levels = [re.findall(r"\(Level: (apply|extend|transfer)\.\)", classroom._source(nb["cells"][e.statement]))
                  for e in classroom.parse_exercises(nb, str(path))]
        assert len(levels) >= 4, f"{path.name}: {len(levels)} exercises, expected at least 4"
        assert all(len(found) == 1 for found in levels), f"{path.name}: a statement without one '(Level: ...)'"
        missing = [lv for lv in ("apply", "extend", "transfer") if [lv] not in levels]
        assert missing == [], f"{path.name}: no exercise of level {', '.join(missing)}"


def test_toc_lists_only_pages_that_exist():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    missing = [f for f in files if not any((ROOT / f).with_suffix(s).exists() for s in (".md", ".ipynb"))]
    assert missing == []
    listed = {f for f in files if f.startswith("chapters/")}
    unlisted = [p.stem for p in CHAPTERS if f"chapters/{p.stem}" not in listed]
    assert unlisted == [], "every chapter notebook must be in _toc.yml"


def test_offline_guard_flags_remote_assets_but_not_links():
    ext = _load("offline_assets", ROOT / "book" / "_ext" / "offline_assets.py")
    assert ext._REMOTE_ASSET.search('<script src="https://cdn.example.org/x.js"></script>')
    assert ext._REMOTE_ASSET.search("<img src='//cdn.example.org/x.png'>")
    assert ext._REMOTE_ASSET.search('<link rel="stylesheet" href="https://fonts.example.com/a.css">')
    assert not ext._REMOTE_ASSET.search('<a href="https://colab.research.google.com/github/x">Colab</a>')
    assert not ext._REMOTE_ASSET.search('<script src="../_static/vendor/require.js"></script>')


def test_vendored_javascript_is_pinned_and_hashed():
    manifest = json.loads((ROOT / "book" / "vendor.json").read_text())
    for pkg in manifest["packages"]:
        assert pkg["version"][0].isdigit(), pkg
        assert len(pkg["sha256"]) == 64, f"{pkg['name']} has no recorded sha256"


def test_browser_check_names_missing_parts_and_build_paths():
    pytest.importorskip("playwright")
    check = _load("browser_check_tool", ROOT / "tools" / "browser_check.py")
    for said in ["Triton is not installed: the kernel cells are skipped",
                 "huggingface.co cannot be reached", "this step was skipped"]:
        assert check.MISSING_PHRASES.search(said), said
    for fine in ["causal block skipping", "skipped (grey)", "No skipping: every block"]:
        assert not check.MISSING_PHRASES.search(fine), fine
    assert check.BUILD_PATHS.search("saved to /root/.cache/transformer-book/x.pt")
    assert check.BUILD_PATHS.search("in /home/runner/work/book")
    assert not check.BUILD_PATHS.search("saved to ~/.cache/transformer-book/x.pt")
