"""Stopping runs to its end: a second SIGTERM (or SIGINT) while a daemon restores the host is
logged and ignored, and so is a signal to the daemon's whole process group, which also reaches
the ``nft`` processes the restore starts.  Supervisors do exactly that: coreutils ``timeout``
signals its child and then the child's process group, systemd signals every process of the
unit, a terminal's Ctrl-C goes to the foreground process group.

Each check compares what a user would compare (``tests.lablib.snapshot``: routes, policy rules,
addresses, links, the nftables ruleset, ``ip_forward``, the proxy's routing table) with the
host before the daemon started, and the daemon's exit status with its normal one."""

import os
import signal
import time

import pytest

from ..lablib import provision, snapshot, status, vpnedu, wait_for

pytestmark = pytest.mark.root

#: Seconds between the first SIGTERM and the second.
DELAYS = (0.0, 0.005, 0.05, 0.5)


def _spawn(lab, host: str, name: str, *args: str, env: dict | None = None):
    p = lab.spawn(host, name, *vpnedu(*args), env=env)
    wait_for(lambda: status(lab, host), what=f"{name} up", proc=p, log=lab.dir / f"{name}.log")
    return p


def _two_sigterms(p, delay: float, second_to: str) -> int:
    """SIGTERM to the daemon, ``delay`` seconds later a second one -- to the daemon, or to its
    process group (the lab starts each daemon as a process group leader, as a service manager
    does) -- and wait for its exit status."""
    p.send_signal(signal.SIGTERM)
    time.sleep(delay)
    try:
        if second_to == "group":
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass   # not reaped yet, so only if the group is empty: nothing to signal
    return p.wait(30)


def _shim(tmp_path, when: str):
    """A directory holding an ``nft`` that first sends SIGTERM to the process group of its
    parent (the daemon) and then runs the real nft: a supervisor's group-wide signal that
    arrives exactly while vpnedu's nft child runs.  ``when`` is a shell pattern for nft's first
    argument (``delete``: the tear-down's ``nft delete table``; ``*``: every nft call).  If nft
    were in the daemon's process group, the signal would kill it before it did its work.
    Returns the daemon's environment and the file where each signal sent is noted."""
    real = next(p for p in ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft") if os.path.exists(p))
    d = tmp_path / f"shim-{'all' if when == '*' else when}"
    d.mkdir()
    sent = d / "signals-sent"
    (d / "nft").write_text(
        "#!/bin/sh\n"
        f'case "$1" in {when})\n'
        '  pgid=$(cut -d" " -f5 /proc/$PPID/stat)\n'
        f'  echo "SIGTERM to process group $pgid before nft $*" >> {sent}\n'
        '  kill -TERM -"$pgid" ;;\n'
        "esac\n"
        f'exec {real} "$@"\n')
    (d / "nft").chmod(0o755)
    return {"PATH": f"{d}:{os.environ['PATH']}"}, sent


def test_second_sigterm_during_shutdown_leaves_the_host_as_before(lab_factory, tmp_path):
    """Two SIGTERMs 0, 5, 50 and 500 ms apart, the second to the daemon or to its process group:
    a server in nat mode, a server in proxy mode, and a client.  Each time the daemon exits 0
    after "stopped; host restored", and the host is exactly as before it started.  Then, with an
    ``nft`` that signals the daemon's group while it runs, exactly when it is needed: during
    the tear-down's ``nft delete table`` (exit 0), and during set-up as well as during the
    tear-down (the daemon finishes set-up, tears down and exits 130, "interrupted")."""
    lab = lab_factory()
    provision(lab)
    before = {h: snapshot(lab, h) for h in ("server", "client")}
    conf = f"{lab.dir}/server.conf"
    said = 0            # "already stopping" lines: the second signal came during the restore
    runs = []
    n = 0
    for mode in ("nat", "proxy"):
        for delay in DELAYS:
            for second_to in (("pid", "group") if mode == "nat" else ("group",)):
                n += 1
                name = f"srv{n}"
                p = _spawn(lab, "server", name, "server", "-c", conf, "--forwarding", mode)
                rc = _two_sigterms(p, delay, second_to)
                log = (lab.dir / f"{name}.log").read_text()
                runs.append((mode, delay, second_to, rc))
                assert snapshot(lab, "server") == before["server"], (mode, delay, second_to, rc, log[-1500:])
                assert rc == 0, (mode, delay, second_to, rc, log[-1500:])
                assert "vpnedu server stopped; host restored" in log, (mode, delay, log[-1500:])
                said += log.count("already stopping; restoring the host")
    server = _spawn(lab, "server", "srv-for-clients", "server", "-c", conf)
    try:
        for delay, second_to in zip(DELAYS, ("group", "pid", "group", "pid")):
            n += 1
            name = f"cli{n}"
            p = lab.spawn("client", name, *vpnedu("client", "-c", f"{lab.dir}/client.conf"))
            wait_for(lambda: (st := status(lab, "client")) and st["peers"][0].get("latest_handshake"),
                     what="client handshake", proc=p, log=lab.dir / f"{name}.log")
            rc = _two_sigterms(p, delay, second_to)
            log = (lab.dir / f"{name}.log").read_text()
            runs.append(("client", delay, second_to, rc))
            assert snapshot(lab, "client") == before["client"], (delay, second_to, rc, log[-1500:])
            assert rc == 0, ("client", delay, second_to, rc, log[-1500:])
            assert "vpnedu client stopped; host restored" in log, log[-1500:]
            said += log.count("already stopping; restoring the host")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    print(f"{len(runs)} daemons stopped by two SIGTERMs (role, delay, second to, exit): {runs}; "
          f"'already stopping' said {said} times")
    assert said >= 3, said     # at least some second signals did arrive during a restore

    # Deterministic: the group-wide signal arrives while the tear-down's nft runs.
    env, sent = _shim(tmp_path, "delete")
    p = _spawn(lab, "server", "srv-shim-delete", "server", "-c", conf, env=env)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(30)
    log = (lab.dir / "srv-shim-delete.log").read_text()
    # One signal before each table's delete: the IPv6 masquerade table, then the IPv4 one.
    assert sent.read_text().count("SIGTERM to process group") == 2, sent.read_text()
    assert "nft delete table ip6 vpnedu_vpnedu0" in sent.read_text(), sent.read_text()
    assert snapshot(lab, "server") == before["server"], (rc, log[-1500:])
    assert rc == 0 and "already stopping; restoring the host" in log, (rc, log[-1500:])

    # A signal during set-up (nft installing the table), and a second one during the tear-down
    # that follows: set-up finishes, the node never serves, the host is restored.
    env, sent = _shim(tmp_path, "*")
    p = lab.spawn("server", "srv-shim-all", *vpnedu("server", "-c", conf), env=env)
    rc = p.wait(60)
    log = (lab.dir / "srv-shim-all.log").read_text()
    assert snapshot(lab, "server") == before["server"], (rc, sent.read_text(), log[-1500:])
    # Before each nft: the IPv4 and IPv6 masquerade tables' installs, then their deletes.
    assert sent.read_text().count("SIGTERM to process group") == 4, sent.read_text() + log[-1500:]
    assert rc == 130 and "interrupted" in log, (rc, log[-1500:])
    assert "vpnedu server up" not in log and "already stopping; restoring the host" in log, log[-1500:]
