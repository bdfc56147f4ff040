"""Is a daemon ready?  Only an answer on its control socket says so (vpnedu.node.control.wait_ready).

A socket file proves nothing: a daemon binds it a moment before it listens, and a killed daemon
leaves its file behind -- under a name the next network namespace can inherit, since the socket
is named after the namespace's inode and the kernel reuses inodes.  These tests drive real
processes: a socket that exists but does not accept yet, the real daemon exiting at once, the real
daemon refusing another user, and the course lab starting over a dead daemon's socket file.
"""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from vpnedu.errors import VpneduError
from vpnedu.node import control

# A process that binds the socket at once but listens only when told (a line on stdin), then
# answers one status request the way a daemon does: what "still starting" looks like from outside.
SLOW_LISTENER = textwrap.dedent("""
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sys.argv[1])
    print("bound, not listening yet", flush=True)
    sys.stdin.readline()
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
    c.makefile("rb").readline()
    c.sendall(json.dumps({"role": "server", "pid": 1}).encode() + b"\\n")
    c.close()
""")


def _listener(path, log):
    return subprocess.Popen([sys.executable, "-c", SLOW_LISTENER, str(path)], stdin=subprocess.PIPE,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _wait_bound(path, p):
    while not path.exists():
        assert p.poll() is None


def test_a_socket_that_does_not_accept_yet_is_still_starting_not_dead(tmp_path):
    path, log = tmp_path / "vpnedu0@1.sock", tmp_path / "daemon.log"
    p = _listener(path, log)
    try:
        _wait_bound(path, p)
        # The old check (the file exists, so ask it) got "nobody answers ... not running" here.
        with pytest.raises(control.NotListening):
            control.request(path, {"cmd": "status"})
        err = None
        try:
            control.wait_ready(path, p, log, timeout=0.5, what="the test daemon")
        except VpneduError as e:
            err = str(e)
        assert err is not None and "the test daemon is still starting after 0.5 s" in err
        assert "exists but nobody accepts connections on it" in err
        assert "bound, not listening yet" in err          # the last lines of its log
        assert "not running" not in err
        # Now it listens: the same call, with time to spare, returns the status it answered.
        p.stdin.write(b"go\n")
        p.stdin.flush()
        assert control.wait_ready(path, p, log, timeout=30) == {"role": "server", "pid": 1}
    finally:
        p.kill()
        p.wait()


def test_a_daemon_that_exits_at_once_is_reported_with_its_status_and_log(tmp_path):
    """The real daemon with a config it cannot read: it exits with status 1; the error says so and
    quotes its log, instead of waiting for a socket that will never come."""
    conf = tmp_path / "server.conf"
    conf.write_text("[Interface]\nPrivateKey = not-a-key\n")
    conf.chmod(0o600)
    log = tmp_path / "vpn-server.log"
    p = subprocess.Popen([sys.executable, "-m", "vpnedu", "server", "-c", str(conf)],
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        with pytest.raises(VpneduError) as e:
            control.wait_ready(tmp_path / "vpnedu0@1.sock", p, log, timeout=60, what="the vpnedu server")
    finally:
        p.kill()
        p.wait()
    msg = str(e.value)
    assert "the vpnedu server exited with status 1 before it answered" in msg, msg
    last = [line for line in log.read_text().splitlines() if line.strip()][-1]
    assert last.startswith("vpnedu: error:") and last in msg, msg
    assert "still starting" not in msg


@pytest.mark.root
def test_a_daemon_that_refuses_us_is_reported_at_once_as_refused(lab_factory):
    """A student's (unprivileged) process asking root's daemon: permission denied, said at once
    (no retrying until the deadline), and not mistaken for a daemon that is starting."""
    from tests.lablib import provision, start_server, stop
    lab = lab_factory()
    provision(lab)
    server = start_server(lab, "--forwarding", "none")
    try:
        path = control.netns_socket_path(lab.ns("server"))
        code = ("import sys; from vpnedu.node import control; from vpnedu.errors import VpneduError\n"
                "try:\n"
                f"    control.wait_ready(control.Path({str(path)!r}), timeout=600, what='the vpnedu server')\n"
                "except VpneduError as e:\n"
                "    print(e); sys.exit(3)\n")
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                            "-c", code], capture_output=True, text=True, cwd="/", timeout=120,
                           env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(__file__)))})
        assert r.returncode == 3, r.stdout + r.stderr
        assert "the vpnedu server refused us" in r.stdout and "permission denied" in r.stdout, r.stdout
        assert "still starting" not in r.stdout
    finally:
        stop(server)


@pytest.mark.root
def test_the_course_lab_starts_over_a_socket_file_a_killed_daemon_left(tmp_path):
    """The namespaces' inodes are reused, so a fresh lab can find a dead daemon's socket file at its
    daemon's path.  start_server must wait for the real answer (it used to fail with "nobody
    answers ... the daemon is not running"), and the event feed must be live, so the proxy's flow
    shows in the flow table (it used to stay "no flows": the feed had died on the dead file)."""
    from tests.lablib import plant_dead_sockets, remove_planted
    from vpnedu.course import RealLab
    from vpnedu.widgets import FlowTableView
    lab = RealLab(prefix=f"rd{os.getpid() % 10000}-")
    planted = []
    try:
        lab.up()
        planted = plant_dead_sockets(lab.socket_path(host) for host in ("server", "client"))
        assert planted
        st = lab.start_server(forwarding="proxy")
        assert st["role"] == "server"
        lab.start_client()
        table = FlowTableView(bus=lab.server_events, title="proxy flows")
        assert "203.0.113.2" in str(lab.app_request())
        text = table.as_text()
        assert "client 10.0.0.2:" in text and "-> 192.0.2.80:80" in text and "closed" in text, text
        assert "not receiving" not in text
    finally:
        lab.down()
        remove_planted(planted)


@pytest.mark.root
def test_the_course_lab_says_how_a_daemon_that_exits_at_once_failed():
    from vpnedu.course import RealLab
    lab = RealLab(prefix=f"rx{os.getpid() % 10000}-")
    try:
        lab.up()
        lab.provision()
        (lab.dir / "server.conf").write_text("[Interface]\nPrivateKey = not-a-key\n")
        with pytest.raises(VpneduError) as e:
            lab.start_server()
        msg = str(e.value)
        assert "the vpnedu server exited with status 1" in msg and "vpnedu: error:" in msg, msg
    finally:
        lab.down()


def test_status_skips_a_dead_daemons_socket_and_finds_the_live_one(tmp_path, monkeypatch):
    """A daemon killed with SIGKILL leaves its socket file; ``vpnedu status`` must still find
    the daemon that is running in this namespace, not stop at the dead one's file."""
    from vpnedu.net import journal
    from vpnedu.net.journal import netns_id
    monkeypatch.setattr(journal, "RUN_DIR", tmp_path)
    dead = tmp_path / f"aaa0@{netns_id()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))                         # closed with the file left: a killed daemon
    live = tmp_path / f"zzz0@{netns_id()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(live))
        s.listen(8)                               # a running daemon: connections are accepted
        assert dead.exists() and control.find_sockets() == [live]
        assert control.pick_socket() == live
        assert control.find_sockets("aaa0") == []
