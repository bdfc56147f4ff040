"""The lab exercises: every instructor notebook passes its checks, every student notebook fails them
kindly (no traceback), and ``vpnedu labs build`` is reproducible and leaks no solution."""

import json
import sys
from pathlib import Path

import pytest

from vpnedu.labs import EXERCISES, LabCheckFailed, check
from vpnedu.labs.build import STUB, build, make_versions, split_solutions
from vpnedu.labs.checking import FAIL_MARK, NOT_WRITTEN, PASS_MARK

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "exercises").glob("*.ipynb"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("labs")
    build(out)
    return out


# ------------------------------------------------------------------------------------------ the build
def test_every_exercise_has_a_source_notebook_with_a_graded_check_cell():
    assert len(EXERCISES) >= 5
    names = {p.name for p in SOURCES}
    for ex in EXERCISES.values():
        assert ex.notebook in names, ex.notebook
        nb = json.loads((ROOT / "exercises" / ex.notebook).read_text())
        checks = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
        assert checks and all(f'check("{ex.name}"' in "".join(c["source"]) for c in checks)
        for c in checks:
            g = c["metadata"]["nbgrader"]
            assert g["locked"] and g["points"] > 0 and g["schema_version"] == 3 and g["grade_id"]
        sols = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("solution")]
        assert sols and all("### BEGIN SOLUTION" in "".join(c["source"]) for c in sols)


def test_source_notebooks_are_committed_without_outputs():
    for p in SOURCES:
        nb = json.loads(p.read_text())
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                assert c["outputs"] == [] and c["execution_count"] is None, f"{p.name}: strip it"


def test_build_is_byte_for_byte_reproducible(built, tmp_path):
    build(tmp_path)
    files = sorted(p.relative_to(built) for p in built.rglob("*.ipynb"))
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.ipynb"))
    assert len(files) == 2 * len(SOURCES)
    for f in files:
        assert (built / f).read_bytes() == (tmp_path / f).read_bytes(), f


def _solution_lines(nb: dict) -> set[str]:
    """Lines of solution regions and instructor cells that appear nowhere else in the source."""
    _, _, solutions = make_versions(nb)
    student, _, _ = make_versions(nb)
    public = set()
    for c in student["cells"]:
        public.update(line.strip() for line in "".join(c["source"]).splitlines())
    return {line.strip() for s in solutions for line in s.splitlines()
            if len(line.strip()) >= 8 and line.strip() not in public}


def test_student_version_contains_no_solution_text(built):
    for p in SOURCES:
        nb = json.loads(p.read_text())
        text = (built / "student" / p.name).read_text()
        _, _, solutions = make_versions(nb)
        assert solutions
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text and "Instructor notes" not in text
        lines = _solution_lines(nb)
        assert lines, p.name
        for line in lines:
            assert line not in text, f"{p.name}: solution text in the student version: {line!r}"
        # the instructor version keeps the solutions (and nbgrader's markers)
        assert "### BEGIN SOLUTION" in (built / "instructor" / p.name).read_text()


def test_split_solutions_keeps_indentation_and_rejects_broken_markers():
    text = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    new, removed = split_solutions(text)
    assert new == f"def f(x):\n    {STUB}\n" and removed == ["    return x + 1\n"]
    from vpnedu.errors import VpneduError
    for bad in ("### BEGIN SOLUTION\nx\n", "x\n### END SOLUTION\n"):
        with pytest.raises(VpneduError):
            split_solutions(bad)


def test_cli_build_and_list(tmp_path):
    from vpnedu.cli import main
    assert main(["labs", "build", "--out", str(tmp_path)]) == 0
    assert len(list((tmp_path / "student").glob("*.ipynb"))) == len(SOURCES)
    assert main(["labs", "list"]) == 0


# ------------------------------------------------------------------------------------------ check()
def test_check_reports_a_wrong_window_kindly(capsys):
    class Naive:  # "counter must be greater than the last one": drops reordered packets
        def __init__(self):
            self.last = -1

        def check(self, c):
            return c > self.last

        def accept(self, c):
            ok = c > self.last
            self.last = max(self.last, c)
            return ok

    r = check("replay", Naive)
    out = capsys.readouterr().out
    assert not r and r.failed_case and "Traceback" not in out
    assert out.startswith(f"{FAIL_MARK} replay window: case '") and "hint:" in out


def test_check_catches_any_exception_and_not_written_yet(capsys):
    class Broken:
        def __init__(self):
            raise ZeroDivisionError("oops")

    assert not check("replay", Broken)
    assert "your code raised ZeroDivisionError: oops" in capsys.readouterr().out

    class Stub:
        def __init__(self):
            raise NotImplementedError("write this part")

    assert not check("replay", Stub)
    assert NOT_WRITTEN in capsys.readouterr().out


def test_a_failed_check_fails_the_cell_under_nbgrader(monkeypatch, capsys):
    from vpnedu.protocol.replay import ReplayWindow
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert check("replay", ReplayWindow)  # passing: no exception

    class Stub:
        def __init__(self):
            raise NotImplementedError

    with pytest.raises(LabCheckFailed):
        check("replay", Stub)


# ------------------------------------------------------------------------------------------ notebooks
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """A 'python3' kernel spec that runs this interpreter, first on JUPYTER_PATH."""
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (vpnedu tests)", "language": "python"}))
    return d


def _run(path: Path, kernel_path: Path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.setenv("VPNEDU_MODE", "sim")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=60,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o["text"])
        elif o.get("output_type") == "error":
            out.append("\n".join(o.get("traceback", [])) + o.get("ename", ""))
        elif "data" in o and "text/plain" in o["data"]:
            out.append(o["data"]["text/plain"])
    return "".join(out)


def _check_cells(nb):
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert cells
    return cells


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_instructor_version_passes_every_check(name, built, kernel_path, monkeypatch):
    ex = EXERCISES[name]
    nb = _run(built / "instructor" / ex.notebook, kernel_path, monkeypatch)
    for c in _check_cells(nb):
        text = _text(c)
        assert text.startswith(PASS_MARK) and "cases passed" in text and FAIL_MARK not in text, text
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_student_version_fails_every_check_kindly(name, built, kernel_path, monkeypatch):
    ex = EXERCISES[name]
    nb = _run(built / "student" / ex.notebook, kernel_path, monkeypatch)
    for c in _check_cells(nb):
        text = _text(c)
        assert text.startswith(f"{FAIL_MARK} {ex.title}: case '") and NOT_WRITTEN in text, text
    for c in nb.cells:
        assert "Traceback" not in _text(c)
        assert not [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
