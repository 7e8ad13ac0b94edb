"""What every chapter's checker tests share: run a checker quietly, find its first failing case."""

from __future__ import annotations


def run(checker, fn):
    """The report of ``checker(fn)``, without printing the verdict."""
    return checker(fn, quiet=True)


def first_failure(report):
    """The first case of ``report`` that did not pass (the one whose message names the mistake)."""
    return next(c for c in report.cases if not c.passed)
