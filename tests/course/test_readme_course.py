"""The README's course commands, run as written from a fresh copy of the repository.

A student is a normal user: the first block runs as ``nobody`` (setpriv: another uid, no
groups), with a home of its own and nothing of root's environment but the machine's pip
configuration (where packages come from).  Each line of the block runs as written; the last one,
``jupyter lab``, is started like a student starts it, and the test then asks the running server
what a student would see: the notebooks, and the course's JupyterLab settings (no "Jupyter news"
pop-up).  Then notebook 00 runs headless in the student's own virtualenv -- the simulated lab,
chosen because this user is not root.  The root block runs the same way as root and gets the
real namespace lab.
"""

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.course.test_notebooks import check_newcomer, outputs_by_tag

ROOT = Path(__file__).resolve().parents[2]
NEWS_PLUGIN = "@jupyterlab/apputils-extension:announcements"

pytestmark = pytest.mark.slow


def readme_block(first_line: str) -> list[str]:
    """The command lines of the README course section's ```sh block whose first line is ``first_line``."""
    text = (ROOT / "README.md").read_text()
    course = text[text.index("\n## Course"):]
    course = course[:course.index("\n## ", 1)]
    for block in re.findall(r"```sh\n(.*?)```", course, re.S):
        lines = block.strip().splitlines()
        if lines[0].strip() == first_line:
            return [ln for ln in lines[1:] if ln.strip() and not ln.lstrip().startswith("#")]
    raise AssertionError(f"README.md's course section has no ```sh block starting {first_line!r}")


def fresh_copy(dest: Path) -> None:
    """What a fresh clone holds: the files git tracks (as they are in the work tree) and new ones
    not ignored -- no .venv, no build output, no test artifacts."""
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True)
    if r.returncode:
        pytest.skip("not a git checkout: cannot tell a fresh clone's files")
    for name in r.stdout.decode().split("\0"):
        src = ROOT / name
        if name and src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def pip_environment() -> dict:
    """This machine's pip configuration (index, mirrors, certificates) as PIP_* variables, so another
    user's pip finds packages where ours does.  Not part of the README's commands: the machine's."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        m = re.match(r"(?:global|install)\.([\w-]+)='(.*)'$", line.strip())
        if m:
            env.setdefault("PIP_" + m[1].upper().replace("-", "_"), m[2])
    return env


class Shell:
    """Runs README lines with bash in ``cwd`` as ``user`` (``None``: as ourselves)."""

    def __init__(self, cwd: Path, home: Path, user: str | None):
        self.cwd, self.user = cwd, user
        self.env = {"HOME": str(home), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG": "C.UTF-8", "BROWSER": "true",   # the student's browser: not opened here
                    **pip_environment()}

    def argv(self, line: str) -> list[str]:
        cmd = ["bash", "-ec", line]
        if self.user:
            cmd = ["setpriv", f"--reuid={self.user}", f"--regid={pwd.getpwnam(self.user).pw_gid}",
                   "--clear-groups", *cmd]
        return cmd

    def run(self, line: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(line), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, line: str, log: Path) -> subprocess.Popen:
        out = open(log, "wb")
        try:
            return subprocess.Popen(self.argv(line), cwd=self.cwd, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()


def serve_and_look(shell: Shell, line: str, log: Path) -> dict:
    """Start the README's ``jupyter lab`` line; once it prints its address, ask the server for
    the notebooks it serves and for the page config the browser would get.  Then stop it (Ctrl-C's
    SIGINT twice, as a user would, then SIGTERM to its process group if need be)."""
    proc = shell.start(line, log)
    try:
        end = time.time() + 120
        url = None
        while url is None:
            m = re.search(r"(http://(?:localhost|127\.0\.0\.1):\d+/)lab\?token=(\w+)", log.read_text(errors="replace"))
            if m:
                url = m[1], m[2]
                break
            if proc.poll() is not None or time.time() > end:
                raise AssertionError(f"'{line}' did not start JupyterLab:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        base, token = url

        def fetch(path: str) -> bytes:
            # The address is printed as the server starts; on a loaded machine the first request
            # may still be refused for a moment (seen once in CI): try again for a while.
            while True:
                try:
                    return urllib.request.urlopen(f"{base}{path}?token={token}", timeout=30).read()
                except urllib.error.URLError as e:
                    if proc.poll() is not None or time.time() > end:
                        raise AssertionError(f"JupyterLab at {base} does not answer ({e}):\n"
                                             f"{log.read_text()[-3000:]}") from None
                    time.sleep(0.5)
        contents = json.loads(fetch("api/contents"))
        page = fetch("lab").decode()
        config = json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                                      page, re.S)[1])
        return {"notebooks": sorted(c["name"] for c in contents["content"]), "config": config}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def follow_readme(block: str, user: str | None, env: dict | None = None):
    """Run a README course block in a fresh copy, as ``user``; return what the server showed and
    notebook 00 executed by the block's virtualenv."""
    import nbformat
    lines = readme_block(block)
    assert any("jupyter lab" in ln for ln in lines) and any(ln.startswith("/usr/bin/python3 -m venv") for ln in lines)
    assert not any("sudo" in ln for ln in lines), lines
    top = Path(tempfile.mkdtemp(prefix="vpnedu-readme-"))
    try:
        work, home = top / "vpnedu", top / "home"
        work.mkdir()
        home.mkdir()
        fresh_copy(work)
        if user:
            uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
            for p in [top, *top.rglob("*")]:
                os.lchown(p, uid, gid)
        shell = Shell(work, home, user)
        shell.env.update(env or {})
        seen = None
        for line in lines:
            if "jupyter lab" in line:
                seen = serve_and_look(shell, line, top / "jupyterlab.log")
            else:
                r = shell.run(line)
                assert r.returncode == 0, f"README line failed: {line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        assert seen is not None
        # The student's virtualenv runs the first notebook headless (what Run All does in the browser).
        r = shell.run(".venv/bin/jupyter execute --inplace --timeout=300 notebooks/00-setup.ipynb", timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        nb = nbformat.read(work / "notebooks" / "00-setup.ipynb", as_version=4)
        return seen, nb
    finally:
        shutil.rmtree(top, ignore_errors=True)


STUDENT_BLOCK, ROOT_BLOCK = "# student: a normal user, the simulated lab", "# root: the real namespace lab"


@pytest.fixture(scope="module")
def readme_runs(request):
    """Both README blocks at once, each in a fresh copy of its own (they share nothing but the
    machine): their pip installs and JupyterLab starts overlap, a minute less than one after the
    other.  Only the blocks whose tests were selected run."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to become another user with setpriv; the root block needs root)")
    from concurrent.futures import ThreadPoolExecutor

    from vpnedu.netns_lab.topology import Lab
    selected = {item.name for item in request.session.items}
    prefix = f"rm{os.getpid() % 10000}-"   # the root notebook's lab gets names of this test's own
    pool = ThreadPoolExecutor(2)
    runs = {}
    if "test_the_readme_course_commands_work_for_a_student_from_a_fresh_copy" in selected and shutil.which("setpriv"):
        runs["student"] = pool.submit(follow_readme, STUDENT_BLOCK, "nobody")
    if "test_the_readme_course_commands_work_for_root_from_a_fresh_copy" in selected:
        runs["root"] = pool.submit(follow_readme, ROOT_BLOCK, None, {"VPNEDU_LAB_PREFIX": prefix})
    try:
        yield runs
    finally:
        pool.shutdown(wait=True)
        Lab(prefix=prefix, log=lambda s: None).down()


def test_the_readme_course_commands_work_for_a_student_from_a_fresh_copy(readme_runs):
    if "student" not in readme_runs:
        pytest.skip("setpriv (util-linux) is not installed")
    seen, nb = readme_runs["student"].result()
    assert "00-setup.ipynb" in seen["notebooks"] and "06-performance.ipynb" in seen["notebooks"]
    assert NEWS_PLUGIN in seen["config"]["disabledExtensions"], seen["config"].get("disabledExtensions")
    out = outputs_by_tag(nb)
    assert "SIM MODE -- not root" in out["check-banner"], out["check-banner"]
    assert "latest handshake:" in out["check-status"] and "lab down" in out["check-down"]
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    check_newcomer(nb, "00-setup.ipynb (as a student)")


@pytest.mark.root
def test_the_readme_course_commands_work_for_root_from_a_fresh_copy(readme_runs):
    seen, nb = readme_runs["root"].result()
    assert NEWS_PLUGIN in seen["config"]["disabledExtensions"]
    out = outputs_by_tag(nb)
    assert "REAL MODE -- root and /dev/net/tun are available" in out["check-banner"], out["check-banner"]
    assert "latest handshake:" in out["check-status"] and "lab down" in out["check-down"]
    check_newcomer(nb, "00-setup.ipynb (as root)")
