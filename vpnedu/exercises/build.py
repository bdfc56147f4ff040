"""One source, two versions: ``vpnedu labs build`` makes the student and instructor notebooks.

The source notebooks in ``exercises/`` follow nbgrader's conventions, so an
instructor who uses nbgrader can put them in its ``source/`` folder as they are:

* the student's part of a code cell is marked ``### BEGIN SOLUTION`` ...
  ``### END SOLUTION``; the student version replaces each region with
  ``raise NotImplementedError("write this part")`` at the same indentation;
* such a cell carries ``metadata.nbgrader`` with ``solution: true``; a check
  cell carries ``grade: true, locked: true`` and its ``points``;
* a cell tagged ``instructor`` (notes, common mistakes) exists only in the
  instructor version (the ``nbgrader/source`` copy leaves it out too, since
  nbgrader would release it to students).

Both versions are written without outputs, with sorted keys and one-space
indentation (how nbformat writes), so building twice gives the same bytes and
a diff of the built files shows only real changes.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from ..errors import VpneduError
from ..files import NOTEBOOK_LIMIT, read_text

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = 'raise NotImplementedError("write this part")'
ANSWER_STUB = "YOUR ANSWER HERE"
INSTRUCTOR_TAG = "instructor"
_BEGIN_RE = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
_END_RE = re.compile(r"^\s*### END SOLUTION\s*$")


def default_source() -> Path:
    """``exercises/`` next to the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "exercises"


def _source_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell: dict, text: str) -> None:
    # nbformat's on-disk form: a list of lines, each keeping its newline.
    cell["source"] = text.splitlines(keepends=True)


def split_solutions(text: str, where: str = "cell") -> tuple[str, list[str]]:
    """Replace every solution region by the stub; return the new text and the removed regions."""
    out, removed, region, indent = [], [], None, ""
    for line in text.splitlines(keepends=True):
        if region is None:
            m = _BEGIN_RE.match(line)
            if m:
                region, indent = [], m.group(1)
            elif _END_RE.match(line):
                raise VpneduError(f"{where}: '{END}' without '{BEGIN}'")
            else:
                out.append(line)
        elif _END_RE.match(line):
            removed.append("".join(region))
            out.append(f"{indent}{STUB}\n")
            region = None
        elif _BEGIN_RE.match(line):
            raise VpneduError(f"{where}: nested '{BEGIN}'")
        else:
            region.append(line)
    if region is not None:
        raise VpneduError(f"{where}: '{BEGIN}' without '{END}'")
    new = "".join(out)
    if not text.endswith("\n"):
        new = new.rstrip("\n")
    return new, removed


def strip_outputs(nb: dict) -> dict:
    """No outputs, execution counts, execution timings or widget state (they hold time and noise)."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def nbgrader_source(nb: dict) -> dict:
    """The source without instructor-only cells: what goes into nbgrader's ``source/<assignment>/``.

    nbgrader strips the solution regions itself but releases every other cell, so the instructor's
    notes must not be in what it is given."""
    out = strip_outputs(copy.deepcopy(nb))
    out["cells"] = [c for c in out.get("cells", []) if INSTRUCTOR_TAG not in _tags(c)]
    return out


def make_versions(nb: dict, where: str = "notebook") -> tuple[dict, dict, list[str]]:
    """(student, instructor, solution texts) from one source notebook (a dict as in the .ipynb)."""
    instructor = strip_outputs(copy.deepcopy(nb))
    student = copy.deepcopy(instructor)
    cells, solutions = [], []
    for i, cell in enumerate(student.get("cells", [])):
        text = _source_text(cell)
        grader = cell.get("metadata", {}).get("nbgrader", {})
        if INSTRUCTOR_TAG in _tags(cell):
            solutions.append(text)
            continue
        new, removed = split_solutions(text, f"{where}, cell {i}")
        if removed and not grader.get("solution"):
            raise VpneduError(f"{where}, cell {i}: has a solution region but no nbgrader 'solution: true' "
                              "metadata", "mark it as a solution cell (see docs/instructor.md)")
        if cell.get("cell_type") == "markdown" and removed:
            new = new.replace(STUB, ANSWER_STUB)
        if removed:
            _set_source(cell, new)
        solutions.extend(removed)
        cells.append(cell)
    student["cells"] = cells
    return student, instructor, solutions


def dumps(nb: dict) -> str:
    """Stable JSON: what nbformat writes (sorted keys, indent 1, UTF-8 kept), ending in a newline."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def sources(source: Path | None = None) -> list[Path]:
    src = Path(source) if source else default_source()
    paths = sorted(src.glob("*.ipynb"))
    if not paths:
        raise VpneduError(f"no exercise notebooks in {src}", "pass --source DIR (the exercises/ folder)")
    return paths


def build(out: Path, source: Path | None = None) -> dict[str, list[Path]]:
    """Write ``out/student/*.ipynb``, ``out/instructor/*.ipynb`` and, for nbgrader,
    ``out/nbgrader/source/<exercise>/<exercise>.ipynb``; return the written paths."""
    out = Path(out)
    written: dict[str, list[Path]] = {"student": [], "instructor": [], "nbgrader": []}
    for path in sources(source):
        nb = json.loads(read_text(path, "notebook", NOTEBOOK_LIMIT))   # a regular file, bounded
        student, instructor, _ = make_versions(nb, path.name)
        for kind, version, d in (("student", student, out / "student"),
                                 ("instructor", instructor, out / "instructor"),
                                 ("nbgrader", nbgrader_source(nb), out / "nbgrader" / "source" / path.stem)):
            d.mkdir(parents=True, exist_ok=True)
            target = d / path.name
            target.write_text(dumps(version), encoding="utf-8")
            written[kind].append(target)
    return written
