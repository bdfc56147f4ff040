"""The lab exercises: every instructor notebook passes its checks, every student notebook fails them
kindly (no traceback), and ``vpnedu labs build`` is reproducible and leaks no solution."""

import json
from pathlib import Path

import pytest

from vpnedu.exercises import EXERCISES, LabCheckFailed, check
from vpnedu.exercises.build import STUB, build, make_versions, split_solutions
from vpnedu.exercises.checking import FAIL_MARK, NOT_WRITTEN, PASS_MARK

ROOT = Path(__file__).resolve().parents[2]
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
    assert len(files) == 3 * len(SOURCES)
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
        # the instructor version keeps the solutions (and nbgrader's markers) and the notes
        instructor = (built / "instructor" / p.name).read_text()
        assert "### BEGIN SOLUTION" in instructor and "Instructor notes" in instructor
        # nbgrader's source keeps the solutions (nbgrader strips them) but not the notes (it would release them)
        nbg = (built / "nbgrader" / "source" / p.stem / p.name).read_text()
        assert "### BEGIN SOLUTION" in nbg and "Instructor notes" not in nbg


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


def test_cli_build_is_the_same_from_any_process_and_folder(tmp_path):
    """Two 'vpnedu labs build' runs in separate processes (other hash seeds, other working folders)
    write the same bytes: the build can be committed or diffed."""
    import os
    import subprocess
    import sys
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        (tmp_path / f"cwd{seed}").mkdir()
        r = subprocess.run([sys.executable, "-m", "vpnedu", "labs", "build", "--out", str(out),
                            "--source", str(ROOT / "exercises")], cwd=tmp_path / f"cwd{seed}",
                           env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


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


def test_a_check_called_wrongly_says_so_without_a_traceback(capsys):
    assert not check("replay")
    assert not check("kdf", len)
    assert not check("no-such-lab", len)
    out = capsys.readouterr().out
    assert out.count(FAIL_MARK) == 3 and "takes 2 piece(s): kdf, chain" in out and "'no-such-lab'" in out


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


def test_labs_check_grades_a_students_notebook(built, kernel_path, monkeypatch, tmp_path, capsys):
    """``vpnedu labs check`` runs a notebook headless: full points for the solution, none for the stub."""
    from vpnedu.cli import main
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    name = EXERCISES["replay"].notebook
    assert main(["labs", "check", str(built / "instructor" / name)]) == 0
    out = capsys.readouterr().out
    assert "5/5 points" in out and "[check-replay] " + PASS_MARK in out
    assert main(["labs", "check", str(built / "student" / name)]) == 1
    captured = capsys.readouterr()
    assert "0/5 points" in captured.out and NOT_WRITTEN in captured.out and "did not pass" in captured.err


# ------------------------------------------------------------------------------------------ mistakes
def _mistakes():
    """A typical wrong answer per exercise, and the case that must catch it."""
    import ipaddress
    import struct

    from vpnedu.errors import MessageError
    from vpnedu.protocol.suites import WIREGUARD

    def parse_no_options(packet):  # payload from byte 20: ignores IHL and the padding
        if len(packet) < 20 or packet[0] >> 4 != 4:
            raise MessageError("bad")
        total = struct.unpack_from("!H", packet, 2)[0]
        if total > len(packet) or total < 20:
            raise MessageError("bad")
        ff = struct.unpack_from("!H", packet, 6)[0]
        return {"version": 4, "header_length": (packet[0] & 15) * 4, "total_length": total,
                "ident": struct.unpack_from("!H", packet, 4)[0], "dont_fragment": bool(ff & 0x4000),
                "more_fragments": bool(ff & 0x2000), "fragment_offset": (ff & 0x1FFF) * 8, "ttl": packet[8],
                "protocol": packet[9], "src": str(ipaddress.IPv4Address(packet[12:16])),
                "dst": str(ipaddress.IPv4Address(packet[16:20])), "payload": packet[20:total]}

    class OffByOne:  # accepts a counter exactly WINDOW_SIZE behind
        def __init__(self):
            from vpnedu.protocol.replay import WINDOW_SIZE
            self.seen, self.top, self.size = set(), -1, WINDOW_SIZE

        def check(self, c):
            return c > self.top or (self.top - c <= self.size and c not in self.seen)

        def accept(self, c):
            if not self.check(c):
                return False
            self.seen.add(c)
            self.top = max(self.top, c)
            return True

    def kdf_swapped(key, data, n):  # HMAC's arguments the wrong way round
        return WIREGUARD.kdf(data if len(data) == 32 else key, key if len(data) == 32 else data, n)

    def chain_unused(rec):
        raise AssertionError("not reached")

    def plan_zero(cfg, route_to):  # one 0.0.0.0/0 route into the tunnel, no host route
        return [("0.0.0.0/0", cfg.gateway, cfg.ifname)]

    class PortKeyed:  # keys mappings by the client's port only
        def __init__(self, ip, ports, timeout):
            self.ip, self.ports, self.map, self.remotes = ip, ports, {}, set()

        def outbound(self, client, remote, now):
            self.map.setdefault(client[1], (client, len(self.map) + self.ports.start))
            self.remotes.add(remote)
            return (self.ip, self.map[client[1]][1])

        def inbound(self, port, remote, now):
            if remote not in self.remotes:
                return None
            return next((c for c, p in self.map.values() if p == port), None)

    def dissect_big_endian(d):  # network byte order, as in IP -- but WireGuard's fields are little-endian
        if len(d) < 32 or d[0] != 4 or d[1:4] != bytes(3):
            raise MessageError("not transport data")
        t, r, c = struct.unpack_from(">B3xIQ", d)
        return {"type": t, "receiver": r, "counter": c, "encrypted_length": len(d) - 16}

    return [
        ("capture", (dissect_big_endian, lambda d, suite: None), "the header of a real message (wireguard)"),
        ("ipv4", (parse_no_options,), "options (IHL > 5)"),
        ("replay", (OffByOne,), "the window edge"),
        ("kdf", (kdf_swapped, chain_unused), "KDF1, KDF2 and KDF3 on hidden inputs"),
        ("routes", (plan_zero, lambda plan: plan[::-1]), "full tunnel: the lab's config"),
        ("nat", (PortKeyed,), "two clients with the same source port"),
    ]


@pytest.mark.parametrize("name,parts,case", _mistakes(), ids=[m[0] for m in _mistakes()])
def test_each_check_catches_a_typical_mistake(name, parts, case, capsys):
    r = check(name, *parts)
    out = capsys.readouterr().out
    assert not r and r.failed_case == case, out
    assert f"case '{case}' failed" in out and "Traceback" not in out and "hint:" in out


@pytest.mark.parametrize("name", ["ipv4", "replay", "routes"])
def test_the_real_implementations_pass_where_the_exercise_mirrors_one(name, capsys):
    """The checks accept vpnedu's own code where it has the student's interface (no hidden bias)."""
    from vpnedu.exercises import routes
    from vpnedu.exercises.ipv4 import reference
    from vpnedu.protocol.replay import ReplayWindow
    real = {"ipv4": (reference,), "replay": (ReplayWindow,),
            "routes": (routes.real_plan, lambda plan: list(reversed(plan)))}
    assert check(name, *real[name]), capsys.readouterr().out


# ------------------------------------------------------------------------------------------ nbgrader
@pytest.mark.slow
def test_nbgrader_releases_and_autogrades_every_exercise(built, tmp_path, kernel_path):
    """The instructor's real nbgrader round trip on 'vpnedu labs build' output: generate_assignment
    releases each exercise without its solutions, and autograde gives a submission of the solved
    notebook full marks and the untouched release zero."""
    import csv
    import os
    import shutil
    import subprocess
    import sys
    pytest.importorskip("nbgrader")
    bindir = Path(sys.executable).parent
    course = tmp_path / "course"
    shutil.copytree(built / "nbgrader", course)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",   # nbgrader runs alembic
           "JUPYTER_PATH": str(kernel_path), "VPNEDU_MODE": "sim"}

    def nbgrader(*args):
        r = subprocess.run([str(bindir / "nbgrader"), *args, f"--CourseDirectory.root={course}"], cwd=course,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return r

    labs = sorted(p.name for p in (course / "source").iterdir())
    assert len(labs) == len(SOURCES)
    for student in ("solved", "untouched"):
        nbgrader("db", "student", "add", student)
    nbgrader("generate_assignment", "*", "--force")      # every exercise, in one run
    for lab in labs:
        released = course / "release" / lab / f"{lab}.ipynb"
        secret = _solution_lines(json.loads((ROOT / "exercises" / f"{lab}.ipynb").read_text()))
        text = released.read_text()
        assert secret and not [s for s in secret if s in text], lab
        for student, nb in (("solved", built / "instructor" / f"{lab}.ipynb"), ("untouched", released)):
            (course / "submitted" / student / lab).mkdir(parents=True)
            shutil.copy(nb, course / "submitted" / student / lab / f"{lab}.ipynb")
    nbgrader("autograde", "*", "--force")
    nbgrader("export", "--to", str(tmp_path / "grades.csv"))
    grades = {(row["assignment"], row["student_id"]): (float(row["score"]), float(row["max_score"]))
              for row in csv.DictReader((tmp_path / "grades.csv").open())}
    for lab in labs:
        score, top = grades[(lab, "solved")]
        assert top > 0 and score == top, (lab, grades)
        assert grades[(lab, "untouched")][0] == 0, (lab, grades)
