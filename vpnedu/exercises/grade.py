"""Grading without nbgrader: run a student's notebook headless and read its check cells.

``vpnedu labs check NOTEBOOK...`` executes each notebook in a fresh kernel (as
nbgrader's autograder would), finds the cells marked as grade cells
(``metadata.nbgrader.grade``), and reads the verdict that
:func:`vpnedu.exercises.check` printed there.  A cell that raised, or printed no
verdict, scores nothing.  The student's code runs in the kernel, never in this
process.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import VpneduError
from ..files import NOTEBOOK_LIMIT, read_text
from .checking import PASS_MARK


@dataclass
class Grade:
    notebook: str
    grade_id: str
    points: float
    verdict: str

    @property
    def ok(self) -> bool:
        return self.verdict.startswith(PASS_MARK)

    @property
    def score(self) -> float:
        return self.points if self.ok else 0.0


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o["text"])
        elif o.get("output_type") == "error":
            out.append(f"the cell raised {o.get('ename')}: {o.get('evalue')}")
    return "".join(out).strip()


def grade_notebook(path: str | Path, kernel_name: str | None = None, timeout: int = 300) -> list[Grade]:
    """Execute ``path`` (a copy in memory; the file is not changed) and grade its check cells."""
    try:
        import nbclient
        import nbformat
        from traitlets.config import Config
    except ImportError:
        raise VpneduError("grading needs nbclient and nbformat", "pip install 'vpnedu[notebooks]'") from None
    path = Path(path)
    try:
        nb = nbformat.reads(read_text(path, "notebook", NOTEBOOK_LIMIT), as_version=4)
    except (ValueError, KeyError, AttributeError, TypeError, nbformat.ValidationError) as e:  # not a notebook
        raise VpneduError(f"{path}: not a Jupyter notebook ({str(e).splitlines()[0][:120]})",
                          "give the path of an .ipynb file") from None
    kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name", "python3")
    # The kernel talks to us over Unix sockets in a private folder (ZeroMQ's IPC transport), not
    # over TCP on localhost: other users on the machine cannot connect to it, and the kernel has
    # no reason to warn that it "is running over TCP without encryption".
    with tempfile.TemporaryDirectory(prefix="vpnedu-kernel-") as sockets:
        conf = Config()
        conf.KernelManager.transport = "ipc"
        conf.KernelManager.ip = os.path.join(sockets, "kernel")
        client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=timeout, allow_errors=True, config=conf,
                                         resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            client.execute()
        except Exception as e:  # the kernel could not start or died: say so in one line
            raise VpneduError(f"{path}: could not run the notebook ({type(e).__name__}: {str(e).splitlines()[0]})",
                              "is the kernel installed? see 'jupyter kernelspec list', or pass --kernel NAME") from None
    grades = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            grades.append(Grade(path.name, meta.get("grade_id", "?"), float(meta.get("points", 0)),
                                _text(cell) or "no verdict (was the check cell run?)"))
    if not grades:
        raise VpneduError(f"{path}: no check cells", "is this a lab exercise notebook?")
    return grades
