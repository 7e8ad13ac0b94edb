"""The classroom editions of the chapter notebooks, and grading a learner's notebook.

    python -m transformer_book.classroom student   OUTDIR [NOTEBOOKS...] [--colab-base URL]
    python -m transformer_book.classroom solutions OUTDIR [NOTEBOOKS...]
    python -m transformer_book.classroom grade     NOTEBOOKS_OR_FOLDERS... [--timeout S] [--jobs N]
                                                   [--out table.csv] [--out table.json]
    python -m transformer_book.classroom check     [NOTEBOOKS...]

Without NOTEBOOKS, every ``chapters/*.ipynb`` (of the current directory, else of the repository
this package lives in) is used.

An exercise in a chapter notebook is a run of cells (CONTRIBUTING.md, "Exercises"), written as
plain Markdown so that it reads well in Jupyter and Colab, where no Sphinx directive renders:

1. markdown, the statement: a heading ``### Exercise N.K: Title`` and a comment
   ``<!-- exercise: ex-NN-name -->`` (the label), then the text;
2. markdown ``#### Solution`` with ``<!-- solution-start: ex-NN-name -->``;
3. code cell(s) tagged ``solution``: top-level ``def``s (or classes) with docstrings, solved;
   their input is folded in JupyterLab (``jupyter.source_hidden``) and Colab (``cellView: form``
   with a ``# @title`` line); markdown cells in between explain the solution;
4. markdown ``#### Check`` with ``<!-- solution-end -->``;
5. a code cell tagged ``check`` that calls the chapter's checker.

On the website (:func:`site_notebook`, called by ``book/_ext/exercise_numbers.py`` as each
notebook is read) the statement becomes a sphinx-exercise ``{exercise}`` directive and the
solution a ``{solution-start}`` / ``{solution-end}`` drop-down, numbered per chapter.

The **student edition** keeps everything except the solutions:

- each ``solution`` cell keeps, for every public top-level function, its decorators, signature
  and docstring; the body becomes ``raise NotImplementedError("Exercise ex-..: write this
  function (see the exercise above)")``. A class keeps its header, docstring and class-level
  attributes, and each public or dunder method is stubbed the same way. Functions and methods
  whose names start with one underscore are the solution's own helpers and are dropped.
  ``import`` statements are kept; a top-level assignment is kept only when a kept signature,
  decorator or base class uses the name it assigns (e.g. a default value ``eps=EPS``); every
  other statement (a demo call, a print) is part of the solution and is dropped. The cell's tag
  becomes ``exercise``;
- the solution-start / solution-end cells and the markdown between them are removed;
- the statements and the ``check`` cells stay, so that each check reports "not done yet";
- sentences about the website's solution toggles ("Each exercise has a solution hidden under a
  toggle and a check cell", "Click to show") are rewritten or dropped (:func:`student_wording`):
  in Jupyter and Colab there is no toggle, the solutions are gone;
- a closing "Where you stand" cell runs ``transformer_book.exercises.core.summary([...])`` on
  the notebook's auto-checked exercises: which pass, fail, are not done, or were not run yet;
- all outputs are cleared, and the Colab badge points at the student copy when
  ``--colab-base`` says where the copies will live (a GitHub folder such as
  ``https://github.com/ORG/REPO/blob/main/student`` or a Colab URL prefix); without it, the
  badge is replaced by a line saying how to open the notebook (an uploaded copy has no address).

The **solutions edition** is the chapters as they are, outputs cleared.

**Grading** (``grade``) takes learners' notebooks, files or folders of them, and runs them
``--jobs`` at a time (default min(4, CPUs)), each in its own process and kernel with a limit of
``--timeout`` seconds for the whole notebook: at the limit its kernel is killed, the exercises
checked by then keep their verdicts and the rest read "error", so one looping, crashing or
kernel-killing notebook cannot stop the others. Only the verdict that an exercise's own check
cell prints counts. ``--out table.csv`` / ``--out table.json`` write one table, learner file x
exercise -> passed / failed / not done / error (+ a short detail; also "no verdict", "not
checked" for exercises graded by hand, "missing" for a deleted statement).

A malformed notebook (a solution cell without a function, a solution-start without an end, a
solution that does not parse, ...) is refused with a message naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformer_book import _checks

__all__ = [
    "ExerciseFormatError",
    "Exercise",
    "parse_exercises",
    "stub_solution",
    "student_notebook",
    "site_notebook",
    "solutions_notebook",
    "write_edition",
    "grade_notebook",
    "grade_class",
    "write_class_table",
    "student_wording",
    "summary_cells",
    "GradeRow",
    "LearnerResult",
    "main",
]

SOLUTION_TAG, CHECK_TAG, EXERCISE_TAG = "solution", "check", "exercise"
# The Markdown that marks an exercise's cells (see the module docstring).
_EXERCISE_RE = re.compile(r"^[ \t]*#{2,4}[ \t]+Exercise[ \t]+(?P<number>[A-Z]?\d+\.\d+)[ \t]*:[ \t]*"
                          r"(?P<title>[^\n]*)$", re.M)
_LABEL_RE = re.compile(r"<!--[ \t]*exercise:[ \t]*(?P<label>\S+)[ \t]*-->")
_START_RE = re.compile(r"<!--[ \t]*solution-start:[ \t]*(?P<label>\S*)[ \t]*-->")
_END_RE = re.compile(r"<!--[ \t]*solution-end[ \t]*-->")
_TITLE_LINE_RE = re.compile(r"^# @title[^\n]*\n?")  # Colab's fold line of a solution cell
_LABEL_OK = re.compile(r"^ex-[A-Za-z0-9][\w-]*$")
_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\((?P<url>[^)]*)\)")
VERDICT_RE = re.compile(
    r"^(?P<exercise>ex-[\w-]+) · (?P<function>.+?): (?P<status>PASSED|FAILED|not done yet)"
    r"(?: \((?P<detail>[^)]*)\))?", re.M)

STUDENT_NOTE = (
    "> **Student edition.** The exercise solutions are removed: each function you are asked to "
    "write raises `NotImplementedError` until you replace its body with your code, and the check "
    "cell after it reports *not done yet*, then what passes and what does not."
)
NO_BADGE_NOTE = (
    "*To run this notebook in Colab, upload it (File → Upload notebook) or open it from your "
    "Google Drive; in Jupyter, just open it.*"
)


class ExerciseFormatError(ValueError):
    """A chapter notebook's exercise cells don't follow the convention; the message says where."""


@dataclass
class Exercise:
    """The cells (indices) of one exercise in a notebook."""

    label: str
    title: str
    statement: int  # the markdown cell with the "### Exercise N.K: Title" heading
    number: str = ""  # "N.K" as the heading writes it
    start: int | None = None  # "#### Solution" (solution-start)
    end: int | None = None  # "#### Check" (solution-end)
    solutions: list[int] = field(default_factory=list)  # code cells tagged "solution"
    notes: list[int] = field(default_factory=list)  # markdown between start and end
    checks: list[int] = field(default_factory=list)  # code cells tagged "check"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parse_exercises(nb: dict, where: str = "notebook") -> list[Exercise]:
    """Find and validate the exercises of a notebook (a dict in nbformat 4 layout).

    Raises:
        ExerciseFormatError: naming ``where`` and the cell index for the first problem found.
    """
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ExerciseFormatError(f"{where}: not a notebook (expected a dict with a 'cells' list)")
    exercises: dict[str, Exercise] = {}
    order: list[Exercise] = []
    current: Exercise | None = None  # the exercise whose section we are in
    open_block: Exercise | None = None  # inside solution-start ... solution-end
    for i, cell in enumerate(nb["cells"]):
        kind, text, tags = cell.get("cell_type"), _source(cell), _tags(cell)
        at = f"{where}: cell {i}"
        if kind == "markdown":
            n_ex, n_start, n_end = len(_EXERCISE_RE.findall(text)), len(_START_RE.findall(text)), len(_END_RE.findall(text))
            if n_ex + n_start + n_end > 1:
                raise ExerciseFormatError(f"{at}: holds more than one exercise heading/solution-start/"
                                          f"solution-end marker; put each in its own markdown cell")
            if n_ex:
                if open_block is not None:
                    raise ExerciseFormatError(f"{at}: exercise heading inside the solution of "
                                              f"{open_block.label!r} (cell {open_block.start}); close it "
                                              f"with a solution-end cell first")
                m = _LABEL_RE.search(text)
                if not m:
                    raise ExerciseFormatError(f"{at}: exercise heading has no '<!-- exercise: ex-NN-name -->' "
                                              f"label line")
                label = m.group("label")
                if not _LABEL_OK.match(label):
                    raise ExerciseFormatError(f"{at}: exercise label {label!r} should look like 'ex-01-short-name'")
                if label in exercises:
                    raise ExerciseFormatError(f"{at}: exercise label {label!r} is used twice "
                                              f"(first in cell {exercises[label].statement})")
                heading = _EXERCISE_RE.search(text)
                current = Exercise(label=label, title=heading.group("title").strip(), statement=i,
                                   number=heading.group("number"))
                exercises[label] = current
                order.append(current)
            elif n_start:
                label = _START_RE.search(text).group("label")
                if open_block is not None:
                    raise ExerciseFormatError(f"{at}: solution-start while the solution of {open_block.label!r} "
                                              f"(cell {open_block.start}) has no solution-end yet")
                if not label:
                    raise ExerciseFormatError(f"{at}: solution-start names no exercise label")
                if label not in exercises:
                    raise ExerciseFormatError(f"{at}: solution-start refers to {label!r}, which no earlier "
                                              f"exercise cell defines")
                ex = exercises[label]
                if ex.start is not None:
                    raise ExerciseFormatError(f"{at}: a second solution for {label!r} (first at cell {ex.start})")
                if ex is not current:
                    raise ExerciseFormatError(f"{at}: solution-start for {label!r} must follow that exercise, "
                                              f"but the exercise just above is {current.label!r}")
                ex.start = i
                open_block = ex
            elif n_end:
                if open_block is None:
                    raise ExerciseFormatError(f"{at}: solution-end without a solution-start before it")
                open_block.end = i
                if not open_block.solutions and not open_block.notes:
                    raise ExerciseFormatError(f"{at}: the solution of {open_block.label!r} is empty")
                open_block = None
            elif open_block is not None:
                open_block.notes.append(i)
        elif kind == "code":
            if SOLUTION_TAG in tags and CHECK_TAG in tags:
                raise ExerciseFormatError(f"{at}: tagged both 'solution' and 'check'")
            if SOLUTION_TAG in tags:
                if open_block is None:
                    raise ExerciseFormatError(f"{at}: code cell tagged 'solution' is not between a "
                                              f"solution-start and a solution-end cell")
                stub_solution(text, open_block.label, where=at)  # refuses what can't be stubbed
                open_block.solutions.append(i)
            elif open_block is not None:
                raise ExerciseFormatError(f"{at}: code cell inside the solution of {open_block.label!r} "
                                          f"is not tagged 'solution' (the student edition would keep it)")
            elif CHECK_TAG in tags:
                if current is None:
                    raise ExerciseFormatError(f"{at}: check cell before any exercise cell")
                current.checks.append(i)
    if open_block is not None:
        raise ExerciseFormatError(f"{where}: cell {open_block.start}: solution-start for {open_block.label!r} "
                                  f"has no solution-end after it")
    return order


# --------------------------------------------------------------------------- stubbing a solution

def _docstring_node(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0]
    return None


def _first_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([d.lineno for d in decorators] + [node.lineno])


def _stub_def(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], message: str, at: str,
              need_docstring: bool = True) -> str:
    """Decorators + signature (+ docstring) of ``node`` as written, then ``raise NotImplementedError``."""
    doc = _docstring_node(node)
    body = node.body[0]
    if body.lineno == node.lineno or (doc is not None and doc.lineno == node.lineno):
        raise ExerciseFormatError(f"{at}: put the body of {node.name!r} (line {node.lineno}) on its own lines")
    if doc is None:
        if need_docstring:
            raise ExerciseFormatError(f"{at}: function {node.name!r} (line {node.lineno}) has no docstring; the "
                                      f"student edition keeps the signature and docstring, so write one")
        head = lines[_first_line(node) - 1: body.lineno - 1]
        while head and (not head[-1].strip() or head[-1].lstrip().startswith("#")):
            head.pop()  # comments before the first statement belong to the solution
        indent = " " * body.col_offset
    else:
        if len(node.body) > 1 and node.body[1].lineno == doc.end_lineno:
            raise ExerciseFormatError(f"{at}: {node.name!r}: nothing may follow the docstring on its last line")
        head = lines[_first_line(node) - 1: doc.end_lineno]
        indent = " " * doc.col_offset
    return "\n".join(head + [f"{indent}raise NotImplementedError({_quote(message)})"])


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a double-quoted Python string literal too


def _stub_class(node: ast.ClassDef, lines: list[str], label: str, at: str) -> str:
    doc = _docstring_node(node)
    if doc is None:
        raise ExerciseFormatError(f"{at}: class {node.name!r} (line {node.lineno}) has no docstring")
    out = lines[_first_line(node) - 1: doc.end_lineno]
    methods = 0
    for item in node.body[1:]:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if item.name.startswith("_") and not (item.name.startswith("__") and item.name.endswith("__")):
                continue
            out.append("")
            out.append(_stub_def(item, lines, f"Exercise {label}: write this method (see the exercise above)", at,
                                 need_docstring=False))
            methods += 1
        else:  # class attributes (dataclass fields, constants) are the interface: keep them
            if out[-1].strip() and item.lineno - 1 >= 1 and not lines[_first_line(item) - 2].strip():
                out.append("")
            out.extend(lines[_first_line(item) - 1: item.end_lineno])
    if not methods:
        raise ExerciseFormatError(f"{at}: class {node.name!r} has no method for the learner to write")
    return "\n".join(out)


def _names_used(code: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _assigned_names(node: ast.AST) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def stub_solution(source: str, label: str, where: str = "solution cell") -> str:
    """The student's version of a solution cell's source (see the module docstring for the rules).

    Raises:
        ExerciseFormatError: if the source does not parse or defines no public function/class.
    """
    _checks.instance("source", source, str)
    _checks.instance("label", label, str)
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ExerciseFormatError(f"{where}: the solution does not parse (line {err.lineno}: {err.msg})") from None
    lines = source.splitlines()
    pieces: list[tuple[int, str]] = []  # (statement index, text); defs and classes start with "\n"
    pending: list[tuple[int, ast.AST]] = []  # assignments kept only if a kept piece needs them
    message = f"Exercise {label}: write this function (see the exercise above)"
    n_public = 0
    for k, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            pieces.append((k, "\n".join(lines[node.lineno - 1: node.end_lineno])))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("_"):
                continue
            pieces.append((k, "\n" + _stub_def(node, lines, message, where)))
            n_public += 1
        elif isinstance(node, ast.ClassDef):
            if node.name.startswith("_"):
                continue
            pieces.append((k, "\n" + _stub_class(node, lines, label, where)))
            n_public += 1
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            pending.append((k, node))
    if not n_public:
        raise ExerciseFormatError(f"{where}: the solution cell defines no public top-level function or class "
                                  f"for the learner to write")
    # Keep the assignments that kept code needs (a default value, a decorator, a base class), and
    # the assignments those need in turn.
    needed = set().union(*(_names_used(text) for _, text in pieces))
    changed = True
    while changed:
        changed = False
        for k, node in list(pending):
            if _assigned_names(node) & needed:
                text = "\n".join(lines[node.lineno - 1: node.end_lineno])
                pieces.append((k, text))
                pending.remove((k, node))
                needed |= _names_used(text)
                changed = True
    pieces.sort()
    out = "\n\n".join(text for _, text in pieces).strip("\n")
    ast.parse(out)  # the stub itself must be valid Python
    return out


# --------------------------------------------------------------------------- editions

def _clear_outputs(nb: dict) -> dict:
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def colab_url(base: str, name: str) -> str:
    """The Colab address of notebook ``name`` in folder ``base`` (a GitHub folder URL or a Colab URL prefix)."""
    base = base.rstrip("/")
    if base.startswith("https://github.com/"):
        base = "https://colab.research.google.com/github/" + base.removeprefix("https://github.com/")
    elif not base.startswith("https://colab.research.google.com/"):
        raise ValueError(f"colab_base must be a GitHub folder URL (https://github.com/ORG/REPO/blob/BRANCH/DIR) "
                         f"or a Colab URL prefix (https://colab.research.google.com/github/...), got {base!r}")
    return f"{base}/{name}"


def student_notebook(nb: dict, *, where: str = "notebook", name: str | None = None,
                     colab_base: str | None = None) -> dict:
    """The student edition of one chapter notebook (a new dict; ``nb`` is not changed)."""
    exercises = parse_exercises(nb, where)
    out = copy.deepcopy(nb)
    drop: set[int] = set()
    for ex in exercises:
        if ex.start is not None:
            drop |= {ex.start, ex.end, *ex.notes}
        for i in ex.solutions:
            cell = out["cells"][i]
            cell["source"] = stub_solution(_source(cell), ex.label, where=f"{where}: cell {i}")
            tags = [t for t in _tags(cell) if t != SOLUTION_TAG]
            meta = cell.setdefault("metadata", {})
            meta["tags"] = tags + ([EXERCISE_TAG] if EXERCISE_TAG not in tags else [])
            meta.pop("cellView", None)  # the learner's cell is theirs to write: not folded
            meta.get("jupyter", {}).pop("source_hidden", None)
    out["cells"] = [c for i, c in enumerate(out["cells"]) if i not in drop]
    for cell in out["cells"]:
        if cell.get("cell_type") == "markdown":
            cell["source"] = student_wording(_source(cell))
    if any(ex.checks for ex in exercises):
        extra = summary_cells([ex.label for ex in exercises if ex.checks])
        if not all("id" in c for c in out["cells"]):  # nbformat < 4.5 has no cell ids
            for c in extra:
                c.pop("id")
        out["cells"] += extra
    if out["cells"] and out["cells"][0].get("cell_type") == "markdown":
        first = out["cells"][0]
        text = _source(first)
        if colab_base and name:
            url = colab_url(colab_base, name)
            text = _BADGE_RE.sub(lambda m: m.group(0).replace(m.group("url"), url), text)
        else:
            text = _BADGE_RE.sub(NO_BADGE_NOTE, text)
        lines = text.split("\n")
        first["source"] = "\n".join(lines[:1] + ["", STUDENT_NOTE] + lines[1:])
    return _clear_outputs(out)



def _fence_for(text: str) -> str:
    """A backtick fence longer than any run of backticks in ``text`` (at least three)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def site_notebook(nb: dict, *, where: str = "notebook") -> dict:
    """The notebook as the website reads it (a new dict; ``nb`` is not changed).

    Each exercise's plain-Markdown cells become sphinx-exercise directives: the statement an
    ``{exercise}`` with its title and label (the heading and the label comment are dropped:
    the directive numbers and titles it), the ``#### Solution`` cell a ``{solution-start}``
    drop-down and the ``#### Check`` cell its ``{solution-end}``; markdown after the marker in
    those two cells is for Jupyter readers and is dropped. Solution cells lose Colab's
    ``# @title`` fold line.
    """
    out = copy.deepcopy(nb)
    cells = out["cells"]
    for ex in parse_exercises(nb, where):
        cell = cells[ex.statement]
        text = _source(cell)
        heading = _EXERCISE_RE.search(text)
        body = (text[: heading.start()] + text[heading.end():]).strip("\n")
        body = _LABEL_RE.sub("", body).strip("\n")
        fence = _fence_for(body)
        cell["source"] = f"{fence}{{exercise}} {ex.title}\n:label: {ex.label}\n\n{body}\n{fence}"
        if ex.start is not None:
            cells[ex.start]["source"] = f"```{{solution-start}} {ex.label}\n:class: dropdown\n```"
            cells[ex.end]["source"] = "```{solution-end}\n```"
        for i in ex.solutions:
            cells[i]["source"] = _TITLE_LINE_RE.sub("", _source(cells[i]), count=1)
    return out


# Sentences about the website's solution toggles are false in Jupyter and Colab, where the
# student edition runs: the solutions are not hidden there, they are gone.
_TOGGLE_CLAUSE_RE = re.compile(r"\ba solution hidden (?:behind|under|in) a (?:toggle|drop-?down)(?:,? and)?\s+",
                               re.I)
_TOGGLE_RE = re.compile(r"toggle|click to (?:show|reveal|see)|drop-?down|hidden (?:behind|under) a|"
                        r"(?:show|reveal|unfold|open) the solution|solutions? (?:is |are )?hidden", re.I)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


def student_wording(text: str) -> str:
    """A markdown cell's text with what speaks of toggles or hidden solutions removed or rewritten.

    "Each exercise has a solution hidden under a toggle and a check cell: ..." becomes
    "Each exercise has a check cell: ..."; any other sentence that mentions a toggle, a
    drop-down, "click to show" or hidden solutions is dropped. Code (fenced or indented by a
    fence) and paragraphs without such words are left as they are, line breaks included.
    """
    _checks.instance("text", text, str)
    if not _TOGGLE_RE.search(text):
        return text
    pieces = re.split(r"(^[ \t]*(?:`{3,}|~{3,})[^\n]*$)", text, flags=re.M)
    out, in_fence, fence = [], False, ""
    for piece in pieces:
        m = re.match(r"^[ \t]*(`{3,}|~{3,})", piece)
        if m and "\n" not in piece:
            if not in_fence:
                in_fence, fence = True, m.group(1)
            elif piece.strip().startswith(fence) and not piece.strip()[len(fence):].strip():
                in_fence = False
            out.append(piece)
        elif in_fence:
            out.append(piece)
        else:
            kept = [(p, _reword_paragraph(p)) for p in piece.split("\n\n")]
            out.append("\n\n".join(new for old, new in kept if new or not old))  # drop emptied ones
    return re.sub(r"\n{3,}", "\n\n", "".join(out))


def _reword_paragraph(paragraph: str) -> str:
    if not _TOGGLE_RE.search(paragraph):
        return paragraph
    paragraph = _TOGGLE_CLAUSE_RE.sub("", paragraph)
    if not _TOGGLE_RE.search(paragraph):
        return paragraph
    lead = paragraph[: len(paragraph) - len(paragraph.lstrip())]
    kept = [s for s in _SENTENCE_END_RE.split(paragraph.strip()) if not _TOGGLE_RE.search(s)]
    return lead + " ".join(" ".join(s.split()) for s in kept) if kept else ""


SUMMARY_TAG = "exercise-summary"
SUMMARY_HEADING = ("## Where you stand\n\nRun the cell below after your checks: it lists which of this "
                   "notebook's exercises pass, fail or are not done yet (from the last run of each check cell "
                   "in this session; \"not run\" means its check cell has not run since the kernel started).")


def summary_cells(labels: list[str]) -> list[dict]:
    """The two cells that end a student notebook: a heading and ``summary([...labels...])``."""
    body = ",\n".join(f"    {label!r}" for label in labels)
    src = ("from transformer_book.exercises.core import summary\n\n"
           f"summary([\n{body},\n])")
    return [{"cell_type": "markdown", "id": "where-you-stand", "metadata": {"tags": [SUMMARY_TAG]},
             "source": SUMMARY_HEADING},
            {"cell_type": "code", "id": "where-you-stand-summary", "metadata": {"tags": [SUMMARY_TAG]},
             "execution_count": None, "outputs": [], "source": src}]


def solutions_notebook(nb: dict, *, where: str = "notebook") -> dict:
    """The solutions edition: the notebook as it is (validated), outputs cleared."""
    parse_exercises(nb, where)
    return _clear_outputs(copy.deepcopy(nb))


def _load(path: Path) -> dict:
    """A notebook file as a dict, every cell's source joined into one str."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExerciseFormatError(f"{path}: not a readable notebook ({err})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        raise ExerciseFormatError(f"{path}: not a notebook in nbformat 4 (no 'cells' list or nbformat != 4)")
    for cell in nb["cells"]:
        if isinstance(cell, dict):
            cell["source"] = _source(cell)
    return nb


def _save(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_edition(kind: str, outdir: Path, notebooks: list[Path], colab_base: str | None = None) -> list[Path]:
    """Write the ``"student"`` or ``"solutions"`` edition of ``notebooks`` into ``outdir``.

    Every notebook is validated before anything is written, so a malformed one leaves
    ``outdir`` untouched. Returns the written paths.
    """
    if kind not in ("student", "solutions"):
        raise ValueError(f"kind must be 'student' or 'solutions', got {kind!r}")
    if not notebooks:
        raise ValueError("notebooks is empty: nothing to write")
    names = [p.name for p in notebooks]
    if len(set(names)) != len(names):
        raise ValueError(f"notebooks contains two files with the same name: {sorted(names)}")
    editions = []
    for path in notebooks:
        nb = _load(path)
        if kind == "student":
            editions.append(student_notebook(nb, where=str(path), name=path.name, colab_base=colab_base))
        else:
            editions.append(solutions_notebook(nb, where=str(path)))
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in zip(notebooks, editions):
        target = outdir / path.name
        if target.resolve() == path.resolve():
            raise ValueError(f"refusing to overwrite the source notebook {path} (choose another OUTDIR)")
        _save(target, nb)
        written.append(target)
    return written


# --------------------------------------------------------------------------- grading

@dataclass
class GradeRow:
    """The outcome of one exercise in a graded notebook.

    ``status``: "passed", "failed", "not done", "error" (the check cell raised), "no verdict"
    (the check printed nothing recognisable, e.g. it was deleted) or "not checked" (the exercise
    has no check cell: a written answer, to grade by hand).
    """

    exercise: str
    title: str = ""
    functions: list[str] = field(default_factory=list)
    status: str = "no verdict"
    detail: str = ""


def _output_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    elif output.get("output_type") in ("execute_result", "display_data"):
        text = output.get("data", {}).get("text/plain", "")
    elif output.get("output_type") == "error":
        text = f"{output.get('ename', '')}: {output.get('evalue', '')}"
    else:
        text = ""
    return "".join(text) if isinstance(text, list) else text


def execute_notebook(nb: dict, *, cwd: Path, timeout: int = 600, allow_errors: bool = True,
                     kernel_name: str = "python3") -> dict:
    """Run every cell of ``nb`` (in place) with nbclient; a cell past ``timeout`` s is interrupted."""
    from nbclient import NotebookClient

    node = _to_node(nb)
    # iopub_timeout: how long to wait for a cell's last outputs after the kernel has replied;
    # nbclient's 4 s default can drop a check's verdict on a busy 2-core machine.
    client = NotebookClient(node, timeout=timeout, kernel_name=kernel_name,
                            allow_errors=allow_errors, interrupt_on_timeout=True,
                            iopub_timeout=60, raise_on_iopub_timeout=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return json.loads(json.dumps(node))


def _to_node(nb: dict) -> Any:
    import nbformat

    return nbformat.from_dict(copy.deepcopy(nb))


def grade_executed(nb: dict, where: str = "notebook") -> list[GradeRow]:
    """Read the verdicts out of an executed notebook: one row per exercise, in order.

    Only a verdict printed by an exercise's own check cell (the cell tagged ``check`` after
    the exercise's statement) counts, and only one that names this exercise and a function
    the check cell names in its source (``check_softmax_t(softmax_t)`` names ``softmax_t``).
    A "PASSED" printed anywhere else -- by a learner's own cell, by the learner's function, or
    for another exercise -- is ignored. When a check prints several verdicts, the worst wins.
    """
    _checks.instance("nb", nb, dict, "notebook dict")
    if not isinstance(nb.get("cells"), list):
        raise ValueError(f"nb must be a notebook with a 'cells' list ({where}), got keys {sorted(nb)[:5]}")
    rows: dict[str, GradeRow] = {}
    current: GradeRow | None = None
    for cell in nb["cells"]:
        text = _source(cell)
        if cell.get("cell_type") == "markdown":
            m = _EXERCISE_RE.search(text)
            lm = _LABEL_RE.search(text) if m else None
            if lm:
                current = rows.setdefault(lm.group("label"), GradeRow(lm.group("label"), m.group("title").strip()))
                current.status = "not checked"
            continue
        if cell.get("cell_type") != "code" or current is None or CHECK_TAG not in _tags(cell):
            continue
        named = set(_IDENTIFIER_RE.findall(text))
        outputs = cell.get("outputs", [])
        found = False
        for out in outputs:
            for v in VERDICT_RE.finditer(_output_text(out)):
                if v.group("exercise") == current.exercise and v.group("function") in named:
                    found = True
                    _add_verdict(current, v)
        errors = [o for o in outputs if o.get("output_type") == "error"]
        if not found:
            if errors:
                current.status, current.detail = "error", _output_text(errors[0])[:120]
            elif current.status == "not checked":
                current.status, current.detail = "no verdict", "the check cell printed no verdict"
    return list(rows.values())


_IDENTIFIER_RE = re.compile(r"[A-Za-z_]\w*")


_RANK = {"not checked": 0, "no verdict": 1, "passed": 2, "not done": 3, "failed": 4, "error": 5}


def _add_verdict(row: GradeRow, v: re.Match) -> None:
    status = {"PASSED": "passed", "FAILED": "failed", "not done yet": "not done"}[v.group("status")]
    fn = v.group("function")
    if fn not in row.functions:
        row.functions.append(fn)
    # Several functions in one exercise: the worst verdict wins.
    if row.status in ("not checked", "no verdict") or _RANK[status] > _RANK[row.status]:
        row.status = status
        row.detail = v.group("detail") or ""


def _execute_graded(nb: dict, *, cwd: Path, timeout: int, kernel_name: str) -> tuple[dict, str]:
    """Run ``nb`` with a limit of ``timeout`` s for the whole notebook; ``(executed cells, problem)``.

    Whatever ran before the limit (or before the kernel died) keeps its outputs, so the
    exercises checked by then are still graded. ``problem`` is "" when every cell ran.
    """
    import signal
    import threading

    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    node = _to_node(nb)
    running: list[int] = []  # the index of the cell sent to the kernel last

    def started(cell: Any, cell_index: int, **_: Any) -> None:
        running[:] = [cell_index]

    # The per-cell limit is a backstop: the watchdog below enforces the notebook's limit.
    client = NotebookClient(node, timeout=timeout + 30, kernel_name=kernel_name, allow_errors=True,
                            interrupt_on_timeout=True, iopub_timeout=60, raise_on_iopub_timeout=True,
                            on_cell_execute=started, resources={"metadata": {"path": str(cwd)}})
    expired = threading.Event()

    def kill_kernel() -> None:  # at the time limit: the kernel goes, the outputs so far stay
        expired.set()
        provisioner = getattr(getattr(client, "km", None), "provisioner", None)
        pgid, pid = getattr(provisioner, "pgid", None), getattr(provisioner, "pid", None)
        try:
            if pgid:
                os.killpg(pgid, signal.SIGKILL)
            elif pid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    watchdog = threading.Timer(timeout, kill_kernel)
    watchdog.daemon = True
    problem = ""
    watchdog.start()
    try:
        client.execute()
    except (DeadKernelError, CellTimeoutError):
        problem = (f"stopped at the time limit ({timeout} s)" if expired.is_set()
                   else "the kernel died (os._exit, a crash in C code, or out of memory)")
    except Exception as err:  # noqa: BLE001 - a kernel that cannot start, a broken cell, ...
        problem = (f"stopped at the time limit ({timeout} s)" if expired.is_set()
                   else f"could not run ({type(err).__name__}: {str(err)[:120]})")
    finally:
        watchdog.cancel()
    executed = json.loads(json.dumps(node))
    if problem and running:
        problem += f" while running cell {running[0]} (counted from 0)"
    return executed, problem


def _grade_one(path: Path, timeout: int, kernel_name: str) -> tuple[list[GradeRow], str]:
    nb = _load(path)
    executed, problem = _execute_graded(nb, cwd=path.resolve().parent, timeout=timeout, kernel_name=kernel_name)
    rows = grade_executed(executed, str(path))
    if problem:  # the checks that never printed a verdict did not run because of the problem
        for row in rows:
            if row.status == "no verdict":
                row.status, row.detail = "error", f"{problem} before this check ran"
    return rows, problem


def grade_notebook(path: Path, *, timeout: int = 600, kernel_name: str = "python3") -> list[GradeRow]:
    """Execute a learner's notebook (its own folder as working directory) and grade it.

    ``timeout`` is the limit in seconds for the whole notebook: at the limit the kernel is
    stopped, the exercises checked so far keep their verdicts and the others read "error".
    This runs the learner's code: do it in a container or a throw-away account.
    """
    path = Path(_checks.instance("path", path, (str, os.PathLike), "path to a notebook"))
    timeout = _checks.positive_int("timeout", timeout)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a notebook file")
    rows, _ = _grade_one(path, timeout, kernel_name)
    return rows


# --------------------------------------------------------------------------- grading a class

@dataclass
class LearnerResult:
    """One learner's notebook, graded: its rows, and what went wrong with the notebook as a whole.

    ``problem`` is "" when every cell ran, else e.g. "stopped at the time limit (60 s)", "the
    kernel died (...)" or "not a readable notebook (...)".
    """

    learner: str
    path: str
    rows: list[GradeRow] = field(default_factory=list)
    problem: str = ""
    seconds: float = 0.0

    @property
    def checked(self) -> list[GradeRow]:
        return [r for r in self.rows if r.status != "not checked"]

    @property
    def n_passed(self) -> int:
        return sum(r.status == "passed" for r in self.rows)


def find_notebooks(paths: list[Path]) -> list[Path]:
    """The notebooks named by ``paths``: files as given, folders' ``*.ipynb`` (not recursive,
    hidden files and Jupyter's ``.ipynb_checkpoints`` skipped), each once, in order."""
    found: list[Path] = []
    for p in paths:
        p = Path(_checks.instance("paths[i]", p, (str, os.PathLike), "path to a notebook or folder"))
        if p.is_dir():
            found += sorted(q for q in p.glob("*.ipynb") if not q.name.startswith(".") and q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise ValueError(f"no such notebook or folder: {str(p)!r}")
    unique = list(dict.fromkeys(q.resolve() for q in found))
    return [next(q for q in found if q.resolve() == u) for u in unique]


def _learner_names(paths: list[Path]) -> list[str]:
    """The file name, or the path when two learners' files share a name."""
    names = [p.name for p in paths]
    return [p.name if names.count(p.name) == 1 else str(p) for p in paths]


_WORKER = ("import sys; from transformer_book.classroom import _worker_main; "
           "sys.exit(_worker_main(sys.argv[1:]))")


def _worker_main(argv: list[str]) -> int:
    """In a child process: grade one notebook, write ``{rows, problem}`` as JSON to argv[1]."""
    path, out, timeout, kernel_name = Path(argv[0]), Path(argv[1]), int(argv[2]), argv[3]
    try:
        rows, problem = _grade_one(path, timeout, kernel_name)
    except ExerciseFormatError as err:
        rows, problem = [], str(err)
    result = {"rows": [r.__dict__ for r in rows], "problem": problem}
    _write_atomic(out, json.dumps(result, ensure_ascii=False))
    return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _grade_in_child(path: Path, learner: str, timeout: int, kernel_name: str, scratch: Path) -> LearnerResult:
    """Grade one notebook in its own process (its own kernel), killed if it outlives the limit."""
    import signal
    import subprocess
    import time

    import hashlib

    out = scratch / (hashlib.sha1(str(path.resolve()).encode()).hexdigest() + ".json")
    result = LearnerResult(learner=learner, path=str(path))
    t0 = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(out), str(timeout), kernel_name],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # The child stops its kernel at `timeout`; the extra time covers starting and stopping.
        _, err = child.communicate(timeout=timeout + 90)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        _, err = child.communicate()
        result.problem = f"stopped at the time limit ({timeout} s); the grader had to kill it"
    result.seconds = round(time.monotonic() - t0, 1)
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
        result.rows = [GradeRow(**r) for r in data["rows"]]
        result.problem = result.problem or data["problem"]
    except (OSError, ValueError, KeyError, TypeError):
        last = (err or b"").decode("utf-8", "replace").strip().splitlines()
        result.problem = result.problem or ("the grader failed: " + (last[-1][:160] if last else
                                                                     f"exit status {child.returncode}"))
    return result


def grade_class(paths: list[Path], *, jobs: int | None = None, timeout: int = 600, kernel_name: str = "python3",
                progress: Any = None) -> list[LearnerResult]:
    """Grade every learner notebook of ``paths`` (files or folders), ``jobs`` at a time.

    Each notebook runs in its own process with its own kernel and a limit of ``timeout`` s for
    the whole notebook: one that loops, crashes or kills its kernel gets its own verdicts and
    cannot stop the others. ``progress(result)``, if given, is called as each one finishes.
    Returns one :class:`LearnerResult` per notebook, in the order of ``paths``.
    """
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    _checks.instance("paths", paths, (list, tuple), "list of notebook files or folders")
    timeout = _checks.positive_int("timeout", timeout)
    jobs = default_jobs() if jobs is None else _checks.positive_int("jobs", jobs)
    notebooks = find_notebooks(list(paths))
    if not notebooks:
        raise ValueError(f"paths holds no notebook (*.ipynb): {[str(p) for p in paths]}")
    names = _learner_names(notebooks)
    with tempfile.TemporaryDirectory(prefix="grade-") as scratch:
        # Threads only wait: each notebook runs in a child process of its own.
        with ThreadPoolExecutor(max_workers=min(jobs, len(notebooks))) as pool:
            futures = [pool.submit(_grade_in_child, p, n, timeout, kernel_name, Path(scratch))
                       for p, n in zip(notebooks, names)]
            for future in futures if progress is None else _as_completed(futures):
                if progress is not None:
                    progress(future.result())
            return [f.result() for f in futures]


def _as_completed(futures: list) -> Any:
    from concurrent.futures import as_completed

    return as_completed(futures)


def default_jobs() -> int:
    """How many notebooks to grade at once: min(4, the number of CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def class_exercises(results: list[LearnerResult]) -> list[str]:
    """Every exercise label seen in any notebook, in the order they first appear."""
    return list(dict.fromkeys(r.exercise for res in results for r in res.rows))


def class_table(results: list[LearnerResult]) -> dict:
    """The grade table as plain data (what ``--out table.json`` writes)."""
    exercises = class_exercises(results)
    learners = []
    for res in results:
        by_ex = {r.exercise: r for r in res.rows}
        cells = {}
        for ex in exercises:
            r = by_ex.get(ex)
            cells[ex] = ({"status": r.status, "detail": r.detail, "functions": r.functions} if r else
                         {"status": "error" if res.problem else "missing",
                          "detail": res.problem or "the exercise's statement is not in this notebook",
                          "functions": []})
        learners.append({"learner": res.learner, "path": res.path, "results": cells,
                         "passed": sum(c["status"] == "passed" for c in cells.values()),
                         "auto_checked": sum(c["status"] != "not checked" for c in cells.values()),
                         "seconds": res.seconds, "problem": res.problem})
    titles = {}
    for res in results:
        for r in res.rows:
            titles.setdefault(r.exercise, r.title)
    return {"exercises": [{"label": ex, "title": titles.get(ex, "")} for ex in exercises], "learners": learners}


def write_class_table(results: list[LearnerResult], path: Path) -> Path:
    """Write the table to ``path``: ``.csv`` (one row per learner; per exercise a status and a
    detail column) or ``.json`` (:func:`class_table`). Written atomically."""
    import csv
    import io

    path = Path(_checks.instance("path", path, (str, os.PathLike), "a .csv or .json file path"))
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"path must end in .csv or .json, got {str(path)!r}")
    table = class_table(results)
    if suffix == ".json":
        text = json.dumps(table, indent=1, ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        labels = [e["label"] for e in table["exercises"]]
        writer.writerow(["learner", *[x for ex in labels for x in (ex, f"{ex} detail")],
                         "passed", "auto_checked", "seconds", "problem"])
        for row in table["learners"]:
            cells = [x for ex in labels for x in (row["results"][ex]["status"], row["results"][ex]["detail"])]
            writer.writerow([row["learner"], *cells, row["passed"], row["auto_checked"], row["seconds"],
                             row["problem"]])
        text = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, text)
    return path


_SHORT = {"passed": "passed", "failed": "FAILED", "not done": "not done", "error": "ERROR",
          "no verdict": "no verdict", "not checked": "by hand", "missing": "missing"}


def format_class(results: list[LearnerResult]) -> str:
    """A plain-text grid: one line per learner, one column per exercise, then problems."""
    table = class_table(results)
    labels = [e["label"] for e in table["exercises"]]
    header = ["learner", *labels, "passed"]
    body = [[row["learner"], *[_SHORT.get(row["results"][ex]["status"], row["results"][ex]["status"])
                               for ex in labels], f"{row['passed']}/{row['auto_checked']}"]
            for row in table["learners"]]
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"{row['learner']}: {row['problem']}" for row in table["learners"] if row["problem"]]
    for row in table["learners"]:
        for ex in labels:
            cell = row["results"][ex]
            if cell["status"] in ("failed", "error") and cell["detail"] and not (
                    row["problem"] and cell["detail"].startswith(row["problem"])):
                notes.append(f"{row['learner']} · {ex}: {cell['status']} ({cell['detail']})")
    return "\n".join(lines + ([""] + notes if notes else []))


def format_grades(rows: list[GradeRow], title: str = "") -> str:
    """A plain-text table: exercise, function(s), result."""
    header = ("exercise", "function", "result")
    body = [(r.exercise, ", ".join(r.functions) or "-", r.status + (f" ({r.detail})" if r.detail else ""))
            for r in rows]
    widths = [max(len(x[k]) for x in [header, *body]) for k in range(2)]
    lines = [title] if title else []
    lines.append(f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}")
    lines.append(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 6}")
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in body]
    checked = [r for r in rows if r.status != "not checked"]
    lines.append(f"{sum(r.status == 'passed' for r in checked)} of {len(checked)} auto-checked exercises passed"
                 + (f"; {len(rows) - len(checked)} to grade by hand" if len(checked) < len(rows) else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def _default_notebooks() -> list[Path]:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        found = sorted((root / "chapters").glob("*.ipynb"))
        if found:
            return found
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer_book.classroom", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("student", help="write the student edition (solutions removed)")
    p.add_argument("outdir", type=Path)
    p.add_argument("notebooks", nargs="*", type=Path)
    p.add_argument("--colab-base", default=None,
                   help="where the student copies will live, for the Colab badge: a GitHub folder URL "
                        "(https://github.com/ORG/REPO/blob/BRANCH/DIR) or a Colab URL prefix")
    p = sub.add_parser("solutions", help="write the solutions edition (the chapters, outputs cleared)")
    p.add_argument("outdir", type=Path)
    p.add_argument("notebooks", nargs="*", type=Path)
    p = sub.add_parser("check", help="validate the exercise cells of notebooks")
    p.add_argument("notebooks", nargs="*", type=Path)
    p = sub.add_parser("grade", help="run learners' notebooks in parallel and write a table learner x exercise")
    p.add_argument("notebooks", nargs="+", type=Path, help="notebook files and/or folders of them")
    p.add_argument("--timeout", type=int, default=600, help="seconds per notebook (default 600)")
    p.add_argument("--jobs", type=int, default=None,
                   help=f"notebooks graded at once (default min(4, CPUs) = {default_jobs()} here)")
    p.add_argument("--out", type=Path, action="append", default=[],
                   help="write the table here: FILE.csv or FILE.json (may be given twice)")
    p.add_argument("--json", type=Path, default=None, help="same as --out FILE.json")
    args = parser.parse_args(argv)

    try:
        if args.command == "grade":
            return _grade_command(args)
        notebooks = args.notebooks or _default_notebooks()
        if not notebooks:
            print(f"{args.command}: no notebooks given and no chapters/*.ipynb found", file=sys.stderr)
            return 2
        if args.command == "check":
            for path in notebooks:
                found = parse_exercises(_load(path), str(path))
                print(f"{path}: {len(found)} exercises ok")
            return 0
        written = write_edition(args.command, args.outdir, notebooks, colab_base=getattr(args, "colab_base", None))
        print(f"wrote the {args.command} edition of {len(written)} notebooks to {args.outdir}")
        return 0
    except (ExerciseFormatError, ValueError) as err:
        print(f"{args.command}: {err}", file=sys.stderr)
        return 2


def _grade_command(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.notebooks if not p.exists()]
    if missing:
        print(f"grade: no such notebook or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print(f"grade: --timeout must be a positive number of seconds, got {args.timeout}", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs <= 0:
        print(f"grade: --jobs must be a positive number, got {args.jobs}", file=sys.stderr)
        return 2
    outs = list(args.out) + ([args.json.with_suffix(".json") if args.json.suffix != ".json" else args.json]
                             if args.json else [])
    bad = [str(o) for o in outs if o.suffix.lower() not in (".csv", ".json")]
    if bad:
        print(f"grade: --out must name a .csv or .json file, got {', '.join(bad)}", file=sys.stderr)
        return 2
    notebooks = find_notebooks(args.notebooks)
    if not notebooks:
        print(f"grade: no notebook (*.ipynb) in {', '.join(map(str, args.notebooks))}", file=sys.stderr)
        return 2
    jobs = args.jobs or default_jobs()
    print(f"grading {len(notebooks)} notebook(s), {min(jobs, len(notebooks))} at a time, "
          f"{args.timeout} s each at most", flush=True)

    def progress(res: LearnerResult) -> None:
        note = f"; {res.problem}" if res.problem else ""
        print(f"  {res.learner}: {res.n_passed} of {len(res.checked)} passed ({res.seconds:g} s{note})", flush=True)

    results = grade_class(notebooks, jobs=jobs, timeout=args.timeout, progress=progress)
    print()
    if len(results) == 1:
        print(format_grades(results[0].rows, title=results[0].learner))
        if results[0].problem:
            print(f"problem: {results[0].problem}")
    else:
        print(format_class(results))
    for out in outs:
        write_class_table(results, out)
        print(f"wrote {out}")
    everything = [r for res in results for r in res.checked]
    ok = everything and all(r.status == "passed" for r in everything) and not any(res.problem for res in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
