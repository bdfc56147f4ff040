"""Classroom lab exercises: students build parts of the VPN and know at once whether they got them right.

Each exercise is a notebook in ``exercises/`` (the single source: solutions are
marked with ``### BEGIN SOLUTION`` / ``### END SOLUTION``; ``vpnedu labs build``
makes the student and instructor versions, see :mod:`vpnedu.exercises.build`).  The
student writes one real piece -- a parser, the replay window, the key schedule,
the route plan, a NAT table -- and a check cell runs::

    from vpnedu.exercises import check
    check("replay", ReplayWindow)

:func:`check` runs the student's code against hidden cases that live here, in
the package, not in the notebook: most of them put the student's piece inside
the real machinery (a real protocol ``Device`` pair, the simulated lab's hosts)
and compare with the real implementation.  It prints one friendly line -- a pass,
or the first failing case with a hint -- and never a traceback.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from .checking import CheckResult, LabCheckFailed, run_cases


@dataclass(frozen=True)
class Exercise:
    """One lab: its check name, notebook, the module with its cases, and what it teaches."""

    name: str
    notebook: str
    module: str
    goal: str
    minutes: int

    def load(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    @property
    def title(self) -> str:
        return self.load().TITLE

    @property
    def parts(self) -> tuple[str, ...]:
        return self.load().PARTS


_ALL = (
    Exercise("capture", "lab6-capture-suites.ipynb", "capture",
             "choose a cipher suite and show in a capture what each one hides", 30),
    Exercise("nat", "lab5-udp-nat.ipynb", "nat",
             "a UDP NAT table: allocate public ports, translate both ways, expire idle mappings", 45),
    Exercise("routes", "lab4-client-routes.ipynb", "routes",
             "the client's route change (full and split tunnel) and its undo", 35),
    Exercise("kdf", "lab3-noise-kdf.ipynb", "kdf",
             "the Noise KDF chain of the handshake, down to the transport keys", 45),
    Exercise("ipv4", "lab1-ipv4-header.ipynb", "ipv4",
             "parse an IPv4 header (RFC 791) from packets read off the TUN device", 30),
    Exercise("replay", "lab2-replay-window.ipynb", "replay",
             "the sliding replay window (RFC 6479) that makes a replayed packet worthless", 40),
)
EXERCISES: dict[str, Exercise] = {e.name: e for e in sorted(_ALL, key=lambda e: e.notebook)}


def check(name: str, *objects: Any, quiet: bool = False, **named: Any) -> CheckResult:
    """Check the student's code for exercise ``name``; print a verdict and return it (truthy on pass).

    The student's pieces are given in the order of the exercise's ``PARTS``
    (``check("kdf", kdf, handshake_chain)``) or by name.  Whatever the student's
    code does -- raise, return the wrong type, not exist yet -- this prints a
    one-line verdict with a hint instead of a traceback.
    """
    ex = EXERCISES.get(name)
    if ex is None:
        return _misuse(name, name, f"there is no lab exercise called {name!r}",
                       "choose one of: " + ", ".join(EXERCISES), quiet)
    mod = ex.load()
    parts = dict(zip(mod.PARTS, objects))
    parts.update(named)
    unknown = [p for p in named if p not in mod.PARTS]
    if unknown or len(parts) != len(mod.PARTS) or len(objects) > len(mod.PARTS):
        return _misuse(name, mod.TITLE, f"check({name!r}, ...) takes {len(mod.PARTS)} piece(s): "
                       + ", ".join(mod.PARTS), "pass what you wrote, in that order, as the check cell does", quiet)
    return run_cases(name, mod.TITLE, mod.cases(), parts, out=None if quiet else print)


def _misuse(name: str, title: str, problem: str, hint: str, quiet: bool) -> CheckResult:
    """A check cell called wrongly: a verdict like any other (no traceback), and no points."""
    result = CheckResult(name, title, 0, 1, "calling the check", problem, hint)
    if not quiet:
        print(result.message())
    if os.environ.get("NBGRADER_EXECUTION"):
        raise LabCheckFailed(result.message())
    return result


__all__ = ["EXERCISES", "CheckResult", "Exercise", "LabCheckFailed", "check"]
