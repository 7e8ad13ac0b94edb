"""Auto-checked exercises: checkers a learner calls on the functions they wrote.

Each chapter's checkers live in ``transformer_book.exercises.chNN`` (e.g.
``from transformer_book.exercises.ch01 import check_softmax_t``); all of them are built on
:func:`transformer_book.exercises.core.check_function`, which prints a short verdict and
returns a :class:`~transformer_book.exercises.core.CheckReport`.
"""

from __future__ import annotations

from transformer_book.exercises.core import Case, CaseResult, CheckReport, check_function, compare_values, summarize

__all__ = ["Case", "CaseResult", "CheckReport", "check_function", "compare_values", "summarize"]
