"""The student edition of every chapter runs top to bottom, and each check says "not done yet".

Slow: it executes every chapter notebook once more (each may take up to ~3 minutes on 2 cores).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from transformer_book import classroom

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.skipif(not CHAPTERS, reason="chapters/ has no notebooks yet")
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_student_edition_runs_and_checks_say_not_done(chapter, tmp_path, monkeypatch):
    (student,) = classroom.write_edition("student", tmp_path, [chapter])
    # The kernel inherits this environment: it must import the package from this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Run it from chapters/ (as the chapter itself runs) so that relative paths to data still resolve.
    # allow_errors=False: any cell that raises (not tagged raises-exception) fails this test, naming the cell.
    executed = classroom.execute_notebook(classroom._load(student), cwd=chapter.parent, timeout=600,
                                          allow_errors=False)
    exercises = classroom.parse_exercises(classroom._load(chapter), str(chapter))
    checks = [c for c in executed["cells"] if classroom.CHECK_TAG in c.get("metadata", {}).get("tags", [])]
    assert len(checks) == sum(len(e.checks) for e in exercises)
    for cell in checks:
        text = "".join(classroom._output_text(o) for o in cell.get("outputs", []))
        assert "not done yet" in text, f"{chapter.name}: check cell {classroom._source(cell)!r} printed {text!r}"
