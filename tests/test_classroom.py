"""transformer_book.classroom: exercise-cell validation, the student and solutions editions, grading."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest
import torch

from transformer_book import classroom
from transformer_book.classroom import (
    ExerciseFormatError,
    grade_executed,
    parse_exercises,
    stub_solution,
    student_notebook,
)
from transformer_book.exercises.core import Case, check_function

FIXTURE = Path(__file__).parent / "fixtures" / "classroom" / "99_fixture.ipynb"
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/o/r/blob/main/chapters/99_fixture.ipynb)")
F = "```"


def load_fixture() -> dict:
    return classroom._load(FIXTURE)


def md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def code(text: str, *tags: str) -> dict:
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "outputs": [],
            "execution_count": None, "source": text}


def exercise(label: str, title: str = "Title") -> dict:
    return md(f"### Exercise 9.1: {title}\n<!-- exercise: {label} -->\n\nWrite it.")


def start(label: str) -> dict:
    return md(f"#### Solution\n<!-- solution-start: {label} -->\n\nFolded in Jupyter.")


END = md("#### Check\n<!-- solution-end -->")
SOLVED = 'def f(x):\n    """Double x."""\n    return 2 * x'


def notebook(*cells: dict) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [md("# Chapter 9: T"), *cells]}


# --------------------------------------------------------------------------- stubbing a solution cell

def test_stub_keeps_signature_and_docstring():
    src = '''import torch
from math import sqrt

SCALE = 2.0
UNUSED = 3


@torch.no_grad()
def attend(q, k,
           v, scale=SCALE):  # a comment in the signature
    """Attention.

    q: (B, T, D)
    """
    s = q @ k.mT / sqrt(q.shape[-1])
    return s.softmax(-1) @ v


def _helper(x):
    return x


print(attend)
'''
    out = stub_solution(src, "ex-04-attend")
    assert out == '''import torch

from math import sqrt

SCALE = 2.0


@torch.no_grad()
def attend(q, k,
           v, scale=SCALE):  # a comment in the signature
    """Attention.

    q: (B, T, D)
    """
    raise NotImplementedError("Exercise ex-04-attend: write this function (see the exercise above)")'''
    ast.parse(out)


def test_stub_keeps_assignments_needed_in_turn():
    src = 'BASE = 10\nEPS = 1.0 / BASE\nJUNK = 1\n\ndef f(x, eps=EPS):\n    """F."""\n    return x + eps\n'
    out = stub_solution(src, "ex-01-f")
    assert "BASE = 10" in out and "EPS = 1.0 / BASE" in out and "JUNK" not in out


def test_stub_class_and_async():
    src = '''from dataclasses import dataclass
import torch.nn as nn


class Head(nn.Module):
    """One attention head."""

    d: int = 4

    def __init__(self, d):
        super().__init__()
        self.d = d

    def forward(self, x):
        """x: (B, T, C)"""
        return self._mix(x)

    def _mix(self, x):
        return x


async def fetch(n):
    """Async too."""
    return n
'''
    out = stub_solution(src, "ex-04-head")
    tree = ast.parse(out)
    head = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    names = [n.name for n in head.body if isinstance(n, ast.FunctionDef)]
    assert names == ["__init__", "forward"]  # the private helper is the solution's
    assert "d: int = 4" in out
    assert out.count('raise NotImplementedError("Exercise ex-04-head: write this method') == 2
    assert 'raise NotImplementedError("Exercise ex-04-head: write this function' in out  # fetch
    assert "super().__init__()" not in out and "return x" not in out


def test_stub_init_without_docstring_is_fine_but_public_function_is_not():
    with pytest.raises(ExerciseFormatError, match=r"cell 7: function 'f' \(line 1\) has no docstring"):
        stub_solution("def f(x):\n    return x\n", "ex-01-f", where="nb.ipynb: cell 7")


@pytest.mark.parametrize("src, match", [
    ("x = 1\nprint(x)\n", "defines no public top-level function or class"),
    ("def _only_private(x):\n    '''d'''\n    return x\n", "defines no public top-level function or class"),
    ("def f(x:\n    pass\n", r"does not parse \(line 1"),
    ('def f(x): """doc"""\n', "put the body of 'f' \\(line 1\\) on its own lines"),
    ('def f(x):\n    """doc"""; return x\n', "nothing may follow the docstring"),
    ('class C:\n    x = 1\n', "class 'C' .* has no docstring"),
    ('class C:\n    """Doc."""\n    x = 1\n', "class 'C' has no method for the learner to write"),
])
def test_stub_refuses(src, match):
    with pytest.raises(ExerciseFormatError, match=match):
        stub_solution(src, "ex-01-f", where="nb.ipynb: cell 3")


# --------------------------------------------------------------------------- validating a notebook

def test_parse_fixture():
    found = parse_exercises(load_fixture(), "fixture")
    assert [e.label for e in found] == ["ex-99-softmax-t", "ex-99-merge-pair"]
    first = found[0]
    assert (first.title, first.statement, first.start, first.solutions, first.notes, first.end, first.checks) == \
        ("Softmax with a temperature", 5, 6, [7], [8], 9, [10])


def test_prose_only_exercise():
    nb = notebook(md("## Exercise 1.1: Think\n<!-- exercise: ex-01-think -->\nWhy?"),
                  md("<!-- solution-start: ex-01-think -->"), md("Because."),
                  md("<!-- solution-end -->"))
    (ex,) = parse_exercises(nb)
    assert ex.label == "ex-01-think" and ex.notes == [3] and ex.solutions == []


@pytest.mark.parametrize("cells, match", [
    ([exercise("ex-01-f"), start("ex-01-f"), code("x = 1", "solution"), END],
     r"nb: cell 3: the solution cell defines no public top-level function"),
    ([exercise("ex-01-f"), start("ex-01-f"), code(SOLVED, "solution")],
     r"nb: cell 2: solution-start for 'ex-01-f' has no solution-end after it"),
    ([exercise("ex-01-f"), END], r"nb: cell 2: solution-end without a solution-start"),
    ([exercise("ex-01-f"), code(SOLVED, "solution")],
     r"nb: cell 2: code cell tagged 'solution' is not between a solution-start and a solution-end"),
    ([exercise("ex-01-f"), start("ex-01-f"), code(SOLVED, "solution"), code("f(1)"), END],
     r"nb: cell 4: code cell inside the solution of 'ex-01-f' is not tagged 'solution'"),
    ([exercise("ex-01-f"), exercise("ex-01-f")], r"nb: cell 2: exercise label 'ex-01-f' is used twice"),
    ([exercise("ex-01-f"), start("ex-01-g")], r"nb: cell 2: solution-start refers to 'ex-01-g', which no"),
    ([exercise("ex-01-f"), exercise("ex-01-g"), start("ex-01-f")],
     r"nb: cell 3: solution-start for 'ex-01-f' must follow that exercise"),
    ([code("check(f)", "check")], r"nb: cell 1: check cell before any exercise cell"),
    ([md("### Exercise 1.1: No label\nWrite.")], r"nb: cell 1: exercise heading has no '<!-- exercise: "),
    ([exercise("softmax")], r"nb: cell 1: exercise label 'softmax' should look like 'ex-01-short-name'"),
    ([exercise("ex-01-f"), start("ex-01-f"), exercise("ex-01-g")],
     r"nb: cell 3: exercise heading inside the solution of 'ex-01-f' \(cell 2\)"),
    ([exercise("ex-01-f"), start("ex-01-f"), END], r"nb: cell 3: the solution of 'ex-01-f' is empty"),
    ([exercise("ex-01-f"), start("ex-01-f"), start("ex-01-f")], r"nb: cell 3: solution-start while the solution"),
    ([exercise("ex-01-f"), start("ex-01-f"), code(SOLVED, "solution", "check"), END],
     r"nb: cell 3: tagged both 'solution' and 'check'"),
    ([md("### Exercise 1.1: A\n<!-- exercise: ex-01-a -->\n<!-- solution-start: ex-01-a -->")],
     r"nb: cell 1: holds more than one exercise heading/solution-start/solution-end marker"),
])
def test_malformed_notebooks_are_refused(cells, match):
    with pytest.raises(ExerciseFormatError, match=match):
        parse_exercises(notebook(*cells), "nb")


# --------------------------------------------------------------------------- the website's form

def test_site_notebook_writes_sphinx_exercise_directives():
    nb = notebook(exercise("ex-09-f", "Double it"), start("ex-09-f"),
                  code("# @title Solution (folded)\n" + SOLVED, "solution"), END, code("check(f)", "check"))
    before = copy.deepcopy(nb)
    out = classroom.site_notebook(nb)
    assert nb == before  # a new notebook; the input is not changed
    assert [classroom._source(c) for c in out["cells"][1:]] == [
        f"{F}{{exercise}} Double it\n:label: ex-09-f\n\nWrite it.\n{F}",
        f"{F}{{solution-start}} ex-09-f\n:class: dropdown\n{F}",
        SOLVED,  # Colab's fold line is not shown on the site
        f"{F}{{solution-end}}\n{F}",
        "check(f)",
    ]


def test_site_notebook_fences_a_statement_that_holds_code():
    nb = notebook(md(f"### Exercise 9.1: Code\n<!-- exercise: ex-09-c -->\n\nLike this:\n\n{F}python\nf(2)\n{F}"))
    text = classroom._source(classroom.site_notebook(nb)["cells"][1])
    assert text.startswith("````{exercise} Code\n:label: ex-09-c\n") and text.endswith(f"{F}python\nf(2)\n{F}\n````")


def test_student_stub_is_not_folded():
    solved = code("# @title Solution (folded)\n" + SOLVED, "solution")
    solved["metadata"].update({"cellView": "form", "jupyter": {"source_hidden": True}})
    out = student_notebook(notebook(exercise("ex-09-f"), start("ex-09-f"), solved, END, code("check(f)", "check")))
    (stub,) = [c for c in out["cells"] if "exercise" in c["metadata"].get("tags", [])]
    assert "cellView" not in stub["metadata"] and not stub["metadata"]["jupyter"].get("source_hidden")
    assert "@title" not in classroom._source(stub) and "raise NotImplementedError" in classroom._source(stub)


# --------------------------------------------------------------------------- the editions

def test_student_edition_of_fixture():
    nb = load_fixture()
    original = copy.deepcopy(nb)
    nb["cells"][7]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "solved!"}]
    nb["cells"][7]["execution_count"] = 3
    out = student_notebook(nb, where="fixture")
    nb["cells"][7]["outputs"], nb["cells"][7]["execution_count"] = [], None
    assert nb == original  # the input is not changed
    sources = [classroom._source(c) for c in out["cells"]]
    text = "\n".join(sources)
    assert "solution-start" not in text and "solution-end" not in text
    assert "Subtracting the maximum" not in text  # the solution's explanation goes too
    assert "z.max(dim=-1" not in text and "_matches" not in text and "islice" in text
    assert len(out["cells"]) == len(nb["cells"]) - 5 + 2  # + the summary's heading and cell
    stubs = [c for c in out["cells"] if "exercise" in c.get("metadata", {}).get("tags", [])]
    assert [classroom._source(c).count("raise NotImplementedError") for c in stubs] == [1, 1]
    assert all("solution" not in c.get("metadata", {}).get("tags", []) for c in out["cells"])
    # the statements and the checks stay
    assert sum("<!-- exercise:" in s for s in sources) == 2
    assert [s for s in sources if s.startswith("check_")] == ["check_softmax_t(softmax_t)", "check_merge_pair(merge_pair)"]
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in out["cells"] if c["cell_type"] == "code")
    # no Colab address given: the badge (which points at the solved chapter) becomes a note
    assert "colab.research.google.com/github" not in sources[0]
    assert sources[0].startswith("# Chapter 99: A fixture for the classroom tools\n\n> **Student edition.**")
    assert "File → Upload notebook" in sources[0]


@pytest.mark.parametrize("base", [
    "https://github.com/me/course/blob/main/student",
    "https://colab.research.google.com/github/me/course/blob/main/student/",
])
def test_student_badge_points_at_student_copy(base):
    out = student_notebook(load_fixture(), name="99_fixture.ipynb", colab_base=base)
    first = classroom._source(out["cells"][0])
    assert ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            "(https://colab.research.google.com/github/me/course/blob/main/student/99_fixture.ipynb)") in first


def test_bad_colab_base():
    with pytest.raises(ValueError, match="colab_base must be a GitHub folder URL .* got 'ftp://x'"):
        student_notebook(load_fixture(), name="a.ipynb", colab_base="ftp://x")


def test_solutions_edition_is_the_chapter_without_outputs():
    nb = load_fixture()
    nb["cells"][10]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]
    nb["metadata"]["widgets"] = {"state": {}}
    out = classroom.solutions_notebook(nb)
    assert [classroom._source(c) for c in out["cells"]] == [classroom._source(c) for c in nb["cells"]]
    assert out["cells"][10]["outputs"] == [] and "widgets" not in out["metadata"]


def test_cli_writes_editions(tmp_path, capsys):
    assert classroom.main(["student", str(tmp_path / "s"), str(FIXTURE)]) == 0
    assert classroom.main(["solutions", str(tmp_path / "k"), str(FIXTURE)]) == 0
    assert classroom.main(["check", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "wrote the student edition of 1 notebooks" in out and "2 exercises ok" in out
    student = json.loads((tmp_path / "s" / FIXTURE.name).read_text())
    assert "raise NotImplementedError" in "".join(classroom._source(c) for c in student["cells"])
    solutions = json.loads((tmp_path / "k" / FIXTURE.name).read_text())
    assert len(solutions["cells"]) == len(load_fixture()["cells"])


def test_cli_refuses_malformed_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "02_bad.ipynb"
    bad.write_text(json.dumps(notebook(exercise("ex-02-f"), start("ex-02-f"), code(SOLVED, "solution"))))
    outdir = tmp_path / "out"
    assert classroom.main(["student", str(outdir), str(FIXTURE), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: cell 2: solution-start for 'ex-02-f' has no solution-end after it" in err
    assert not outdir.exists()  # validated first, written after
    (tmp_path / "junk.ipynb").write_text("{not json")
    assert classroom.main(["check", str(tmp_path / "junk.ipynb")]) == 2
    assert "not a readable notebook" in capsys.readouterr().err


def test_write_edition_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind must be 'student' or 'solutions', got 'teacher'"):
        classroom.write_edition("teacher", tmp_path, [FIXTURE])
    with pytest.raises(ValueError, match="notebooks is empty"):
        classroom.write_edition("student", tmp_path, [])
    with pytest.raises(ValueError, match="refusing to overwrite the source notebook"):
        classroom.write_edition("solutions", FIXTURE.parent, [FIXTURE])


# --------------------------------------------------------------------------- grading

def test_verdict_line_format_is_what_grading_reads(capsys):
    cases = [Case(args=(2,), label="two")]
    for fn, status, detail in [(lambda x: 2 * x, "PASSED", "1/1 cases"),
                               (lambda x: x, "FAILED", "0/1 cases passed")]:
        check_function(fn, lambda x: 2 * x, cases, exercise="ex-01-double", name="double")
        m = classroom.VERDICT_RE.match(capsys.readouterr().out)
        assert m and m.group("exercise", "function", "status", "detail") == ("ex-01-double", "double", status, detail)


def test_grade_executed_reads_outputs():
    def out(text):
        return [{"output_type": "stream", "name": "stdout", "text": text}]

    nb = notebook(exercise("ex-01-a", "A"), code("check(a)", "check"),
                  exercise("ex-01-b", "B"), code("check(b1); check(b2)", "check"),
                  exercise("ex-01-c", "C"), code("check(c)", "check"),
                  exercise("ex-01-d", "D"),
                  exercise("ex-01-e", "E"), code("check(e)", "check"))
    nb["cells"][2]["outputs"] = out("ex-01-a · a: PASSED (2/2 cases)\n  ✓ x; y\n")
    nb["cells"][4]["outputs"] = out("ex-01-b · b1: PASSED (1/1 cases)\n") + \
        out("ex-01-b · b2: FAILED (0/1 cases passed)\n  ✗ x: output is None\n")
    nb["cells"][6]["outputs"] = [{"output_type": "error", "ename": "NameError", "evalue": "name 'c' is not defined",
                                  "traceback": []}]
    rows = grade_executed(nb)
    assert [(r.exercise, r.status, r.functions) for r in rows] == [
        ("ex-01-a", "passed", ["a"]), ("ex-01-b", "failed", ["b1", "b2"]), ("ex-01-c", "error", []),
        ("ex-01-d", "not checked", []), ("ex-01-e", "no verdict", [])]
    assert rows[2].detail == "NameError: name 'c' is not defined"
    table = classroom.format_grades(rows)
    assert "1 of 4 auto-checked exercises passed; 1 to grade by hand" in table
    assert "ex-01-b   b1, b2    failed (0/1 cases passed)" in table


@pytest.mark.slow
def test_student_edition_runs_and_every_check_says_not_done(tmp_path):
    written = classroom.write_edition("student", tmp_path, [FIXTURE])
    executed = classroom.execute_notebook(classroom._load(written[0]), cwd=tmp_path, timeout=120,
                                          allow_errors=False)
    checks = [c for c in executed["cells"] if "check" in c.get("metadata", {}).get("tags", [])]
    assert len(checks) == 2
    for cell in checks:
        text = "".join(classroom._output_text(o) for o in cell["outputs"])
        assert text.count("not done yet") == 1, text  # printed once, not repeated by the display hook
        assert "Traceback" not in text
    assert [r.status for r in grade_executed(executed)] == ["not done", "not done"]


@pytest.mark.slow
def test_grade_command_on_a_learners_notebook(tmp_path, capsys):
    student = classroom.student_notebook(load_fixture(), where="fixture")
    for cell in student["cells"]:
        src = classroom._source(cell)
        if src.startswith("def softmax_t"):  # the overflow mistake
            cell["source"] = src.split("    raise")[0] + "    e = (x / t).exp()\n    return e / e.sum(-1, keepdim=True)\n"
        elif "def merge_pair" in src:
            cell["source"] = (src.split("    raise")[0] + "    out, i = [], 0\n    while i < len(ids):\n"
                              "        if tuple(ids[i:i + 2]) == tuple(pair):\n            out.append(new_id)\n"
                              "            i += 2\n        else:\n            out.append(ids[i])\n            i += 1\n"
                              "    return out\n")
    path = tmp_path / "learner.ipynb"
    path.write_text(json.dumps(student))
    report = tmp_path / "grades.json"
    assert classroom.main(["grade", str(path), "--timeout", "120", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "ex-99-softmax-t   softmax_t   failed (1/2 cases passed)" in out
    assert "ex-99-merge-pair  merge_pair  passed (3/3 cases)" in out
    assert "1 of 2 auto-checked exercises passed" in out
    table = json.loads(report.read_text())
    (learner,) = table["learners"]
    assert [learner["results"][e["label"]]["status"] for e in table["exercises"]] == ["failed", "passed"]


def test_grade_command_bad_arguments(tmp_path, capsys):
    assert classroom.main(["grade", str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook or folder" in capsys.readouterr().err
    assert classroom.main(["grade", str(FIXTURE), "--timeout", "0"]) == 2
    assert "--timeout must be a positive number of seconds, got 0" in capsys.readouterr().err
    assert classroom.main(["grade", str(FIXTURE), "--jobs", "0"]) == 2
    assert "--jobs must be a positive number, got 0" in capsys.readouterr().err
    assert classroom.main(["grade", str(FIXTURE), "--out", str(tmp_path / "t.xlsx")]) == 2
    assert "--out must name a .csv or .json file" in capsys.readouterr().err
    assert classroom.main(["grade", str(tmp_path)]) == 2  # an empty folder
    assert "no notebook (*.ipynb) in" in capsys.readouterr().err


def test_grade_counts_only_the_exercises_own_check_cell_for_the_function_it_names():
    def out(text):
        return [{"output_type": "stream", "name": "stdout", "text": text}]

    nb = notebook(exercise("ex-01-a", "A"), code("print('hi')"), code("check_a(a)", "check"),
                  exercise("ex-01-b", "B"), code("check_b(b)", "check"))
    # A learner's own cell prints a fake PASSED for ex-01-a: ignored.
    nb["cells"][2]["outputs"] = out("ex-01-a · a: PASSED (3/3 cases)\n")
    # The real check of ex-01-a fails; the learner's function also printed a PASSED for another
    # function name, and one for another exercise: both ignored.
    nb["cells"][3]["outputs"] = out("ex-01-a · cheat: PASSED (3/3 cases)\nex-01-b · b: PASSED (1/1 cases)\n"
                                    "ex-01-a · a: FAILED (0/3 cases passed)\n")
    nb["cells"][5]["outputs"] = out("ex-01-a · a: PASSED (3/3 cases)\n")  # ex-01-a's verdict in ex-01-b's cell
    rows = grade_executed(nb)
    assert [(r.exercise, r.status, r.functions) for r in rows] == [
        ("ex-01-a", "failed", ["a"]), ("ex-01-b", "no verdict", [])]


# --------------------------------------------------------------------------- the student's summary and wording

def test_student_edition_ends_with_a_summary_of_its_exercises():
    out = student_notebook(load_fixture(), where="fixture")
    heading, cell = out["cells"][-2:]
    assert heading["cell_type"] == "markdown" and classroom._source(heading).startswith("## Where you stand")
    assert cell["cell_type"] == "code" and classroom.SUMMARY_TAG in cell["metadata"]["tags"]
    src = classroom._source(cell)
    assert "summary([" in src and "'ex-99-softmax-t'" in src and "'ex-99-merge-pair'" in src
    assert len({c.get("id") for c in out["cells"]}) == len(out["cells"])  # cell ids stay unique
    ast.parse(src)


def test_summary_cell_reports_pass_not_done_fail_and_not_run(capsys):
    from transformer_book.exercises import core

    namespace: dict = {}
    exec(classroom._source(load_fixture()["cells"][3]), namespace)  # the fixture's checkers
    core._LAST.clear()

    def softmax_t(x, t):
        raise NotImplementedError("Exercise ex-99-softmax-t: write this function")

    namespace["check_softmax_t"](softmax_t)
    namespace["check_merge_pair"](lambda ids, pair, new_id: list(ids))  # wrong
    capsys.readouterr()
    cell = classroom._source(student_notebook(load_fixture())["cells"][-1])
    exec(cell, {})
    text = capsys.readouterr().out
    assert "Where you stand" in text
    assert "… ex-99-softmax-t   softmax_t  not done" in text
    assert "✗ ex-99-merge-pair  <lambda>   failed" in text
    assert "0 of 2 passed, 1 failed, 1 not done" in text
    # Solve one: the summary follows the last check of each exercise.
    def softmax_t(x, t):  # noqa: F811 - the learner's second try, same name
        return torch.softmax(x / t, dim=-1)

    namespace["check_softmax_t"](softmax_t)
    assert core.summary(["ex-99-softmax-t", "ex-99-merge-pair", "ex-99-other"], quiet=True) == {
        "ex-99-softmax-t": "passed", "ex-99-merge-pair": "failed", "ex-99-other": "not run"}
    core.summary(["ex-99-other"])
    assert "0 of 1 passed, 0 failed, 0 not done, 1 not run yet (run its check cell)" in capsys.readouterr().out
    # The summary's lines are not verdicts: grading cannot mistake them for a check's output.
    assert not classroom.VERDICT_RE.search(text)
    with pytest.raises(TypeError, match="exercises must be a list of exercise labels"):
        core.summary("ex-99-softmax-t")
    core._LAST.clear()


@pytest.mark.parametrize("text, expected", [
    ("## Exercises\n\nEach exercise has a solution hidden behind a toggle and a check cell that compares your"
     " function\nwith the book's implementation.",
     "## Exercises\n\nEach exercise has a check cell that compares your function\nwith the book's implementation."),
    ("Each exercise has a solution hidden under a toggle and a check cell: run it after your own code.",
     "Each exercise has a check cell: run it after your own code."),
    ("Try first. Click to show the solution when stuck. Then run the check.", "Try first. Then run the check."),
    ("The solutions are hidden in drop-downs.\n\nThe hidden state is h.", "The hidden state is h."),
    ("```python\n# a toggle inside code stays\n```", "```python\n# a toggle inside code stays\n```"),
    ("Click a colour square to switch heads on and off.", "Click a colour square to switch heads on and off."),
])
def test_student_wording(text, expected):
    assert classroom.student_wording(text) == expected


def test_student_edition_has_no_toggle_wording():
    nb = load_fixture()
    nb["cells"][4]["source"] = ("## Exercises\n\nEach exercise has a solution hidden under a toggle and a check "
                                "cell: run it after your own code.")
    out = student_notebook(nb)
    text = "\n".join(classroom._source(c) for c in out["cells"] if c["cell_type"] == "markdown")
    assert "toggle" not in text.lower() and "Each exercise has a check cell: run it" in text
    assert classroom._source(classroom.solutions_notebook(nb)["cells"][4]) == classroom._source(nb["cells"][4])


# --------------------------------------------------------------------------- grading a class

SOFTMAX_OK = "    z = x / t\n    z = z - z.max(dim=-1, keepdim=True).values\n    return z.exp() / z.exp().sum(-1, keepdim=True)\n"
SOFTMAX_OVERFLOW = "    e = (x / t).exp()\n    return e / e.sum(-1, keepdim=True)\n"
MERGE_OK = ("    out, i = [], 0\n    while i < len(ids):\n"
            "        if tuple(ids[i:i + 2]) == tuple(pair):\n            out.append(new_id)\n"
            "            i += 2\n        else:\n            out.append(ids[i])\n            i += 1\n    return out\n")


def learner_notebook(softmax: str = "", merge: str = "", first_code_prefix: str = "",
                     after_first_check: str = "") -> dict:
    """The fixture's student edition with the learner's bodies and, optionally, a bad cell."""
    nb = classroom.student_notebook(load_fixture(), where="fixture")
    cells = nb["cells"]
    for cell in cells:
        src = classroom._source(cell)
        if src.startswith("def softmax_t") and softmax:
            cell["source"] = src.split("    raise")[0] + softmax
        elif "def merge_pair" in src and merge:
            cell["source"] = src.split("    raise")[0] + merge
    if first_code_prefix:  # the cell that defines the checkers fails at its first line
        i = next(k for k, c in enumerate(cells) if "check_function" in classroom._source(c))
        cells[i]["source"] = first_code_prefix + classroom._source(cells[i])
    if after_first_check:
        i = next(k for k, c in enumerate(cells) if classroom._source(c).startswith("check_softmax_t"))
        cells.insert(i + 1, code(after_first_check) | {"id": "learner-cell"})
    return nb


def make_class(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    learners = {
        "right": learner_notebook(SOFTMAX_OK, MERGE_OK),
        "wrong": learner_notebook(SOFTMAX_OVERFLOW, MERGE_OK),
        "empty": learner_notebook(),
        "crash_import": learner_notebook(SOFTMAX_OK, MERGE_OK,
                                         first_code_prefix="import a_package_that_is_not_installed\n"),
        "crash_kernel": learner_notebook(SOFTMAX_OK, MERGE_OK, after_first_check="import os\nos._exit(3)"),
        "looping": learner_notebook(SOFTMAX_OK, MERGE_OK, after_first_check="while True:\n    pass"),
    }
    for name, nb in learners.items():
        (folder / f"{name}.ipynb").write_text(json.dumps(nb))
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "right-checkpoint.ipynb").write_text("{}")  # skipped
    (folder / "notes.txt").write_text("not a notebook")
    (folder / "broken.ipynb").write_text("{not json")
    return folder


@pytest.mark.slow
def test_grade_a_class_in_parallel(tmp_path, capsys):
    folder = make_class(tmp_path / "class")
    csv_out, json_out = tmp_path / "grades.csv", tmp_path / "grades.json"
    rc = classroom.main(["grade", str(folder), "--timeout", "40", "--jobs", "3",
                         "--out", str(csv_out), "--out", str(json_out)])
    out = capsys.readouterr().out
    assert rc == 1
    table = json.loads(json_out.read_text())
    assert [e["label"] for e in table["exercises"]] == ["ex-99-softmax-t", "ex-99-merge-pair"]
    got = {row["learner"]: [row["results"][e]["status"] for e in ("ex-99-softmax-t", "ex-99-merge-pair")]
           for row in table["learners"]}
    assert got == {
        "broken.ipynb": ["error", "error"],
        "crash_import.ipynb": ["error", "error"],
        "crash_kernel.ipynb": ["passed", "error"],
        "empty.ipynb": ["not done", "not done"],
        "looping.ipynb": ["passed", "error"],
        "right.ipynb": ["passed", "passed"],
        "wrong.ipynb": ["failed", "passed"],
    }
    rows = {row["learner"]: row for row in table["learners"]}
    loop_cell = next(i for i, c in enumerate(json.loads((folder / "looping.ipynb").read_text())["cells"])
                     if "while True" in classroom._source(c))
    assert rows["looping.ipynb"]["problem"] == \
        f"stopped at the time limit (40 s) while running cell {loop_cell} (counted from 0)"
    exit_cell = next(i for i, c in enumerate(json.loads((folder / "crash_kernel.ipynb").read_text())["cells"])
                     if "os._exit" in classroom._source(c))
    assert rows["crash_kernel.ipynb"]["problem"].startswith("the kernel died")
    assert rows["crash_kernel.ipynb"]["problem"].endswith(f"while running cell {exit_cell} (counted from 0)")
    assert "not a readable notebook" in rows["broken.ipynb"]["problem"]
    assert rows["crash_import.ipynb"]["results"]["ex-99-softmax-t"]["detail"] == \
        "NameError: name 'check_softmax_t' is not defined"
    assert rows["wrong.ipynb"]["results"]["ex-99-softmax-t"]["detail"] == "1/2 cases passed"
    assert rows["right.ipynb"]["problem"] == "" and rows["right.ipynb"]["passed"] == 2
    assert rows["looping.ipynb"]["seconds"] < 40 + 60  # the loop did not hold up the class
    # The CSV holds the same table, one row per learner.
    import csv

    with csv_out.open() as f:
        records = list(csv.DictReader(f))
    assert [r["learner"] for r in records] == sorted(got)
    assert {r["learner"]: [r["ex-99-softmax-t"], r["ex-99-merge-pair"]] for r in records} == got
    assert records[-1]["ex-99-softmax-t detail"] == "1/2 cases passed"
    # And the printed grid.
    assert "grading 7 notebook(s), 3 at a time, 40 s each at most" in out
    assert "right.ipynb         passed           passed            2/2" in out
    assert "looping.ipynb: stopped at the time limit (40 s)" in out
