"""Keys interchangeable with Debian's `wg`, and the CLI's behaviour for users."""

import subprocess

import pytest

from vpnedu.errors import KeyFormatError
from vpnedu.protocol import keys

from ..conftest import require_tool, run_cli


def wg(*args, input=None):
    return subprocess.run([require_tool("wg"), *args], input=input, capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()


def test_wg_keys_work_with_vpnedu_and_back():
    for _ in range(5):
        wg_priv = wg("genkey")
        assert run_cli("pubkey", input=wg_priv + "\n").stdout.strip() == wg("pubkey", input=wg_priv)
        ours = run_cli("genkey").stdout.strip()
        assert keys.clamp(keys.decode(ours)) == keys.decode(ours)  # clamped, like wg genkey
        assert wg("pubkey", input=ours) == run_cli("pubkey", input=ours).stdout.strip()
        psk = run_cli("genpsk").stdout.strip()
        assert len(keys.decode(psk)) == 32
        wg("pubkey", input=psk)  # wg accepts it as a key (it checks the base64 form)
        assert len(keys.decode(wg("genpsk"))) == 32


def test_decode_rejects_bad_keys():
    for bad in ("", "abc", "A" * 44, keys.encode(bytes(31)), keys.encode(bytes(33)), "!" * 43 + "="):
        with pytest.raises(KeyFormatError, match="not 32 bytes of base64"):
            keys.decode(bad)


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and "vpnedu" in r.stdout
    r = run_cli("--help")
    assert r.returncode == 0 and "handshake-demo" in r.stdout


def test_bad_input_is_one_line_without_traceback():
    for args, stdin in ((("pubkey",), "not-a-key\n"), (("pubkey",), ""), (("no-such-command",), None),
                        (("handshake-demo", "--suite", "null-teaching"), None)):
        r = run_cli(*args, input=stdin)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vpnedu: error: "), r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("suite", ["wireguard", "aes256gcm"])
def test_handshake_demo_prints_each_message(suite):
    r = run_cli("handshake-demo", "--suite", suite)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for words in ("handshake initiation (148 bytes)", "handshake response (92 bytes)", "sender index",
                  "receiver index", "ephemeral", "encrypted static", "encrypted timestamp", "mac1", "mac2",
                  "transport data", "counter", "echo request", "echo reply", "ping delivered both ways"):
        assert words in out, words


def test_handshake_demo_null_teaching_warns():
    r = run_cli("handshake-demo", "--suite", "null-teaching", "--allow-null-teaching")
    assert r.returncode == 0
    assert "NOT encrypted" in r.stderr and "WARNING" in r.stdout


def test_course_commands_show_what_the_notebooks_show():
    """'vpnedu course ...' is the course without Jupyter: the same simulated lab, as text."""
    import json

    from vpnedu.packet.ip import IPv4Packet
    r = run_cli("course", "sim")
    assert r.returncode == 0, r.stderr
    for words in ("SIMULATED MODE", "handshake.initiation.sent", "session.established",
                  "ping 192.0.2.80 from 10.0.0.2: 3 packets transmitted, 3 received, 0% packet loss",
                  "the app server logged the request from 203.0.113.2", "reason=bad-mac", "reason=replay",
                  "the journey of one ping:", "masquerade: source 10.0.0.2",
                  "+ ip -6 rule priority 32765 not fwmark 0xca6c table 51820",
                  "the app server logged the request from 2001:db8:5::2"):
        assert words in r.stdout, words
    r = run_cli("course", "tun", "--sim", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    ip = IPv4Packet.parse(bytes.fromhex(got["raw"]))
    assert got["mode"] == "simulated" and ip.protocol == 1 and str(ip.dst).startswith("10.")
    r = run_cli("course", "suites")
    assert r.returncode == 0 and "DOES NOT ENCRYPT" in r.stdout and "AESGCM_SHA256" in r.stdout, r.stderr


# ------------------------------------------------------------------------- a newcomer's first steps
def test_a_bare_vpnedu_prints_the_help_and_succeeds():
    for args in ((), ("conf",), ("lab",), ("labs",)):
        r = run_cli(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.startswith("Usage: vpnedu") and "Commands:" in r.stdout, r.stdout
        assert r.stderr == "" and "error" not in r.stdout


def _as_user(folder, *args: str) -> subprocess.CompletedProcess:
    """The CLI run in ``folder`` as a normal user: nobody when the tests run as root (a daemon
    then stops at 'needs root' and changes nothing), else the user running the tests."""
    import os
    import sys
    cmd = [sys.executable, "-m", "vpnedu", *args]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=60)


@pytest.fixture
def user_folder():
    """A folder a normal user owns (the configs in it are theirs, mode 0600)."""
    import os
    import pwd
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="vpnedu-test-")
    os.chmod(d, 0o755)
    uid = gid = None
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
        os.chown(d, uid, gid)
    yield d, uid, gid
    shutil.rmtree(d)


def _provision(folder, uid, gid, *names: str) -> None:
    import os
    assert run_cli("server", "init", "--endpoint", "203.0.113.2", cwd=folder).returncode == 0
    for n in names:
        r = run_cli("server", "add-client", n, cwd=folder)
        assert r.returncode == 0, r.stderr
    if uid is not None:
        for f in os.listdir(folder):
            os.chown(os.path.join(folder, f), uid, gid)


def test_server_and_client_find_the_files_init_and_add_client_wrote(user_folder):
    folder, uid, gid = user_folder
    r = _as_user(folder, "server")
    assert "no config given, and no server.conf in" in r.stderr and "vpnedu server init" in r.stderr, r.stderr
    r = _as_user(folder, "client")
    assert "no config given, and no client config in" in r.stderr and "add-client" in r.stderr, r.stderr

    _provision(folder, uid, gid, "alice")
    r = _as_user(folder, "server")
    assert r.stdout.startswith("using ./server.conf (no -c given)"), r.stdout + r.stderr
    assert "no config given" not in r.stderr
    r = _as_user(folder, "client")
    assert r.stdout.startswith("using ./alice.conf (the only client config here"), r.stdout + r.stderr
    if uid is not None:   # as nobody: the file was read (no 'permission denied'), then the root check
        assert "needs root" in r.stderr and r.stderr.count("\n") == 1, r.stderr

    # A second client: which one is meant is no longer clear, so the client lists them.
    assert run_cli("server", "add-client", "bob", cwd=folder).returncode == 0
    if uid is not None:
        import os
        os.chown(os.path.join(folder, "bob.conf"), uid, gid)
    r = _as_user(folder, "client")
    assert r.returncode == 1 and "holds 2 client configs: alice.conf, bob.conf" in r.stderr, r.stderr
    assert "vpnedu client -c alice.conf" in r.stderr and r.stderr.count("\n") == 1
    # -c always wins.
    r = _as_user(folder, "client", "-c", "bob.conf")
    assert "using" not in r.stdout and "holds 2" not in r.stderr


def test_labs_check_shows_no_kernel_transport_warning(tmp_path, kernel_path, monkeypatch):
    """The grading kernel talks over private Unix sockets, so Jupyter has nothing to warn about,
    and no socket files are left in the student's folder."""
    from vpnedu.exercises import EXERCISES
    from vpnedu.exercises.build import build
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    build(tmp_path / "b")
    student = tmp_path / "b" / "student"
    before = sorted(p.name for p in student.iterdir())
    r = run_cli("labs", "check", EXERCISES["replay"].notebook, cwd=student, timeout=300)
    assert r.returncode == 1 and "0/5 points" in r.stdout, r.stdout + r.stderr
    assert "without encryption" not in r.stderr + r.stdout and "[IPKernelApp]" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == ["vpnedu: error: 1 check(s) did not pass; the verdicts above name "
                                             "the case and give a hint"], r.stderr
    assert sorted(p.name for p in student.iterdir()) == before
