"""Long steps say what they are doing: the first scripts/demo.sh while pip installs (vpnedu bench
says which round, path and test it is on: tests/lab/test_bench.py)."""

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.course.test_readme_course import Shell, fresh_copy

pytestmark = pytest.mark.slow


def test_the_first_demo_sh_says_what_it_does_while_pip_installs():
    """scripts/demo.sh from a fresh copy, as a normal user: before pip's long silent install
    (nothing of vpnedu is in .venv yet) it has said what it is doing; then the no-root demo runs."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the script as a normal user")
    top = Path(tempfile.mkdtemp(prefix="vpnedu-demo-sh-"))
    try:
        work, home = top / "vpnedu", top / "home"
        work.mkdir()
        home.mkdir()
        fresh_copy(work)
        nobody = pwd.getpwnam("nobody")
        for p in [top, *top.rglob("*")]:
            os.lchown(p, nobody.pw_uid, nobody.pw_gid)
        shell = Shell(work, home, "nobody")
        proc = subprocess.Popen(shell.argv("bash scripts/demo.sh"), cwd=work, env=shell.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines, said_while_installing = [], None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if said_while_installing is None and "installing vpnedu" in line:
                # Said before the install, not after: pip has not put vpnedu into .venv yet.
                said_while_installing = not (work / ".venv" / "bin" / "vpnedu").exists()
        assert proc.wait(900) == 0, "\n".join(lines[-40:])
        out = "\n".join(lines)
        assert said_while_installing, out[:3000]
        assert out.index("setup: creating the virtualenv .venv") < out.index("installing vpnedu")
        assert "(pip install -e '.';" in out and "up to a minute the first time" in out and "setup: done" in out
        assert "needs root" in out and "handshake" in out      # then the no-root demo ran
    finally:
        shutil.rmtree(top, ignore_errors=True)
