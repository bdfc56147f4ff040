"""Running a student's code against hidden cases, and saying kindly what went wrong.

A check is a list of :class:`Case` objects.  Each case calls the student's code
(usually inside the real VPN machinery: a real ``Device``, a simulated host) and
either returns quietly or raises :class:`CaseFailed` with what was expected.
:func:`run_cases` runs them in order and stops at the first failure, because
later cases usually depend on the earlier, simpler ones.

Students must never see a traceback from a check: a traceback points into the
checker, not into their code, and says nothing about *what* is wrong.  Every
exception their code raises is caught and turned into one line, and
``NotImplementedError`` (what the unsolved stubs raise) becomes "not written
yet".  The one exception is grading with nbgrader, which gives points to a
grade cell that runs without an error: when ``NBGRADER_EXECUTION`` is set
(nbgrader sets it while it validates or autogrades), a failed check raises
:class:`LabCheckFailed` after printing, so the cell counts as failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

PASS_MARK = "\u2714"   # ✔
FAIL_MARK = "\u2718"   # ✘
NOT_WRITTEN = "not written yet \u2014 write the code above"


class CaseFailed(Exception):
    """A case's expectation did not hold.  ``what`` says what happened, ``hint`` what to look at."""

    def __init__(self, what: str, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.hint = hint


class LabCheckFailed(AssertionError):
    """Raised by a failed check only under nbgrader (so the grade cell scores 0)."""


def expect(condition: bool, what: str, hint: str | None = None) -> None:
    """Fail the current case with ``what`` unless ``condition`` holds."""
    if not condition:
        raise CaseFailed(what, hint)


@dataclass
class Case:
    """One thing the student's code must do.  ``run`` gets the student's parts as keyword arguments."""

    name: str
    run: Callable[..., None]
    hint: str = ""


@dataclass
class CheckResult:
    """What :func:`vpnedu.exercises.check` found.  Truthy when every case passed."""

    exercise: str
    title: str
    passed: int
    total: int
    failed_case: str | None = None
    problem: str | None = None
    hint: str | None = None
    cases: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_case is None and self.passed == self.total

    def __bool__(self) -> bool:
        return self.ok

    def message(self) -> str:
        if self.ok:
            return f"{PASS_MARK} {self.title}: {self.passed}/{self.total} cases passed"
        lines = [f"{FAIL_MARK} {self.title}: case '{self.failed_case}' failed \u2014 {self.problem}"]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        lines.append(f"  ({self.passed}/{self.total} cases passed before this one)")
        return "\n".join(lines)

    __str__ = message

    def __repr__(self) -> str:
        return f"CheckResult({self.exercise!r}, ok={self.ok}, {self.passed}/{self.total})"

    def _ipython_display_(self) -> None:
        """The check already printed its verdict; showing the object again would only repeat it."""


def describe_exception(e: BaseException) -> str:
    """One line for an exception from the student's code (never a traceback)."""
    if isinstance(e, NotImplementedError):
        return NOT_WRITTEN
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"your code raised {type(e).__name__}" + (f": {text}" if text else "")


def run_cases(exercise: str, title: str, cases: list[Case], parts: dict[str, Any],
              out: Callable[[str], None] | None = print) -> CheckResult:
    """Run ``cases`` against the student's ``parts``; print and return the verdict."""
    result = CheckResult(exercise, title, 0, len(cases))
    for case in cases:
        try:
            case.run(**parts)
        except CaseFailed as e:
            result.failed_case, result.problem, result.hint = case.name, e.what, e.hint or case.hint
        except NotImplementedError:
            result.failed_case, result.problem, result.hint = case.name, NOT_WRITTEN, case.hint
        except Exception as e:  # anything the student's code does wrong: one line, no traceback
            result.failed_case, result.problem, result.hint = case.name, describe_exception(e), case.hint
        if result.failed_case is not None:
            result.cases.append((case.name, False))
            break
        result.passed += 1
        result.cases.append((case.name, True))
    if out is not None:
        out(result.message())
    if not result.ok and os.environ.get("NBGRADER_EXECUTION"):
        raise LabCheckFailed(result.message())
    return result
