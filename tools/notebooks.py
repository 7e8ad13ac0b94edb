"""Stamp and check the chapter notebooks.

    python tools/notebooks.py stamp chapters/01_seq2seq_attention.ipynb   # badge, set-up cell, exercises
    python tools/notebooks.py strip  [NOTEBOOKS...]                        # remove outputs
    python tools/notebooks.py check  [NOTEBOOKS...]                        # hygiene (the test run calls this)

The repository's address lives in one place, ``_config.yml``; the badge and the set-up cell
of every notebook are written from it, and ``check`` fails when a notebook disagrees.
``stamp`` also numbers the exercises per chapter (the website numbers them the same way) and
folds their solution cells in JupyterLab and Colab.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from transformer_book.classroom import ExerciseFormatError, parse_exercises

ROOT = Path(__file__).resolve().parents[1]
#: Code cells stay within this many columns (the website shows 88 without scrolling).
MAX_COLUMNS = 88
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
SETUP_TAG = "setup"
ALLOWED_TAGS = {
    SETUP_TAG, "solution", "check", "exercise",
    "hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell",
    "raises-exception", "skip-execution", "full-width", "margin",
}


def repository() -> tuple[str, str]:
    """(url, branch) from _config.yml."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repo = config["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def colab_url(notebook: Path) -> str:
    url, branch = repository()
    github = url.removeprefix("https://github.com/")
    path = notebook.resolve()
    # A notebook outside the repository (a test's copy) is addressed as if it were in chapters/.
    relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else f"chapters/{path.name}"
    return f"https://colab.research.google.com/github/{github}/blob/{branch}/{relative}"


def badge_line(notebook: Path) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def setup_source() -> str:
    url, branch = repository()
    return (
        "# Set-up: inside Colab, fetch the book and install its package; anywhere else this\n"
        "# cell does nothing (locally, `bash tools/build.sh` or `bash tools/test.sh` made the\n"
        "# environment already).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import os\n"
        "    import subprocess\n"
        "\n"
        "    repository = (\n"
        f'        "{url}"\n'
        "    )\n"
        '    book = "/content/transformers-piece-by-piece"\n'
        "    if not os.path.isdir(book):\n"
        '        subprocess.run(["git", "clone", "--quiet", "--depth", "1",\n'
        f'                        "--branch", "{branch}", repository, book], check=True)\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",\n'
        '                    f"{book}[reference]"], check=True)\n'
        "    # Work in chapters/ as in a clone: chapters load recorded data from ../book/data.\n"
        '    os.chdir(f"{book}/chapters")'
    )


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _save(path: Path, nb: dict) -> None:
    for cell in nb["cells"]:  # sources as lists of lines, as Jupyter writes them (small diffs)
        cell["source"] = _source(cell).splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _new_id(nb: dict, base: str) -> str:
    ids = {c.get("id") for c in nb["cells"]}
    i = 0
    while f"{base}-{i}" in ids:
        i += 1
    return f"{base}-{i}" if i else base


#: First line of a solution cell: with ``cellView: form`` it folds the cell in Colab.
SOLUTION_FOLD = "# @title Solution (folded: write yours first, then unfold to compare)"
_OLD_DIRECTIVE = re.compile(r"\{(?:exercise|solution-start|solution-end)\}")


def chapter_key(path: Path) -> str:
    """'08_kv_cache.ipynb' -> '8', 'A1_scaling_out.ipynb' -> 'A1': the chapter in exercise numbers."""
    head = path.name.split("_", 1)[0]
    return head.lstrip("0") if head.isdigit() else head


def fix_exercises(nb: dict, path: Path) -> list[str]:
    """Number the exercises N.1, N.2, ... and fold their solution cells, in place.

    Returns what was out of place (empty when the notebook was already right).
    """
    changed = []
    for k, ex in enumerate(parse_exercises(nb, path.name), start=1):
        number = f"{chapter_key(path)}.{k}"
        if ex.number != number:
            cell = nb["cells"][ex.statement]
            cell["source"] = _source(cell).replace(f"Exercise {ex.number}:", f"Exercise {number}:", 1)
            changed.append(f"cell {ex.statement}: exercise {ex.label} is numbered {ex.number}, "
                           f"expected {number}")
        for i in ex.solutions:
            cell = nb["cells"][i]
            meta = cell.setdefault("metadata", {})
            if not _source(cell).startswith("# @title"):
                cell["source"] = SOLUTION_FOLD + "\n" + _source(cell)
                changed.append(f"cell {i}: solution of {ex.label} lacks its '# @title' fold line")
            if meta.get("cellView") != "form" or not meta.get("jupyter", {}).get("source_hidden"):
                meta["cellView"] = "form"
                meta.setdefault("jupyter", {})["source_hidden"] = True
                changed.append(f"cell {i}: solution of {ex.label} is not folded")
    return changed


def strip(nb: dict) -> dict:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb["metadata"].pop("widgets", None)
    return nb


def stamp(path: Path) -> None:
    nb = _load(path)
    cells = nb["cells"]
    if not cells or cells[0]["cell_type"] != "markdown" or not _source(cells[0]).startswith("# "):
        raise SystemExit(f"{path}: cell 0 must be a markdown cell starting with '# Chapter ...' title")
    lines = [l for l in _source(cells[0]).splitlines() if "Open In Colab" not in l]
    title, rest = lines[0], lines[1:]
    while rest and not rest[0].strip():
        rest = rest[1:]
    cells[0]["source"] = "\n".join([title, "", badge_line(path)] + ([""] + rest if rest else []))
    setup = {
        "cell_type": "code", "execution_count": None, "id": "setup",
        "metadata": {"tags": [SETUP_TAG, "remove-cell"]}, "outputs": [], "source": setup_source(),
    }
    if len(cells) > 1 and SETUP_TAG in cells[1].get("metadata", {}).get("tags", []):
        setup["id"] = cells[1].get("id", "setup")
        cells[1] = setup
    else:
        setup["id"] = _new_id(nb, "setup")
        cells.insert(1, setup)
    nb["metadata"]["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb["metadata"]["language_info"] = {"name": "python"}
    nb["metadata"].setdefault("colab", {"provenance": []})
    nb["nbformat"], nb["nbformat_minor"] = 4, max(5, nb.get("nbformat_minor", 5))
    fix_exercises(nb, path)
    _save(path, strip(nb))


def problems(path: Path) -> list[str]:
    """Everything wrong with one notebook, as messages naming the cell."""
    where = path.relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else str(path)
    try:
        nb = _load(path)
    except (OSError, json.JSONDecodeError) as err:
        return [f"{where}: not a readable notebook ({err})"]
    out = []
    if nb.get("nbformat") != 4:
        out.append(f"{where}: nbformat is {nb.get('nbformat')}, expected 4")
    kernel = nb.get("metadata", {}).get("kernelspec", {})
    if kernel.get("name") != "python3" or kernel.get("language") != "python":
        out.append(f"{where}: kernelspec is {kernel}, expected name 'python3', language 'python'")
    if "widgets" in nb.get("metadata", {}):
        out.append(f"{where}: notebook metadata holds saved widget state; strip it")
    cells = nb.get("cells", [])
    if not re.match(r"^\d\d_[a-z0-9_]+\.ipynb$|^A\d_[a-z0-9_]+\.ipynb$", path.name):
        out.append(f"{where}: file name must look like NN_topic.ipynb")
    if len(cells) < 3:
        return out + [f"{where}: has {len(cells)} cells; expected title, set-up cell and content"]
    first = _source(cells[0])
    if cells[0]["cell_type"] != "markdown" or not re.match(r"^# (Chapter \d+|Appendix [A-Z]\d*): \S", first):
        out.append(f"{where}: cell 0 must be markdown starting with '# Chapter N: Title'")
    if badge_line(path) not in first:
        out.append(f"{where}: cell 0 lacks the Colab badge for this notebook "
                   f"(expected {badge_line(path)!r}); run tools/notebooks.py stamp")
    if cells[1]["cell_type"] != "code" or _source(cells[1]) != setup_source():
        out.append(f"{where}: cell 1 is not the current set-up cell; run tools/notebooks.py stamp")
    ids = [c.get("id") for c in cells]
    if len(set(ids)) != len(ids) or None in ids:
        out.append(f"{where}: cell ids missing or duplicated")
    for i, cell in enumerate(cells):
        tags = set(cell.get("metadata", {}).get("tags", []))
        unknown = tags - ALLOWED_TAGS
        if unknown:
            out.append(f"{where}: cell {i} has unknown tags {sorted(unknown)}")
        if cell["cell_type"] == "code":
            if cell.get("outputs"):
                out.append(f"{where}: cell {i} has committed outputs; run tools/notebooks.py strip")
            if cell.get("execution_count") is not None:
                out.append(f"{where}: cell {i} has an execution count; run tools/notebooks.py strip")
            wide = [n for n, line in enumerate(_source(cell).splitlines(), 1)
                    if len(line) > MAX_COLUMNS]
            if wide:
                out.append(f"{where}: cell {i} has {len(wide)} line(s) over {MAX_COLUMNS} "
                           f"columns (line {wide[0]}: {len(_source(cell).splitlines()[wide[0] - 1])})")
            if "pip install" in _source(cell) and i != 1:
                out.append(f"{where}: cell {i} installs packages; only the set-up cell may")
        elif "attachments" in cell and cell["attachments"]:
            out.append(f"{where}: cell {i} has attachments; put images under book/_static")
        if cell["cell_type"] == "markdown" and _OLD_DIRECTIVE.search(_source(cell)):
            out.append(f"{where}: cell {i} writes an exercise as a Sphinx directive; use the "
                       f"plain-Markdown form (CONTRIBUTING.md, 'Exercises')")
    try:
        out += [f"{where}: {msg}; run tools/notebooks.py stamp"
                for msg in fix_exercises(json.loads(json.dumps(nb)), path)]
    except ExerciseFormatError as err:
        out.append(str(err))
    return out


def chapter_notebooks() -> list[Path]:
    return sorted((ROOT / "chapters").glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["stamp", "strip", "check"])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or chapter_notebooks()
    if args.command == "stamp":
        for p in paths:
            stamp(p)
            print(f"stamped {p.relative_to(ROOT)}")
        return 0
    if args.command == "strip":
        for p in paths:
            _save(p, strip(_load(p)))
        return 0
    found = [msg for p in paths for msg in problems(p)]
    for msg in found:
        print(msg, file=sys.stderr)
    print(f"notebook hygiene: {len(paths)} notebooks, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
