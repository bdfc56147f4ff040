"""The kill switch's table on the host (vpnedu.net.killswitch), in the namespace lab: there before
the first handshake and before any route, there while the client waits for a server that does not
answer, and gone after every way a client ends -- Ctrl-C, ``stop`` on the control socket, giving
up on the handshake, SIGTERM -- and after ``kill -9`` once the next start (with or without the
kill switch) or ``vpnedu cleanup`` has run; the same for the IPv6 block of an IPv4-only tunnel.
Each check compares what a user would compare (``tests.lablib.snapshot``, ``nft list tables``)
with the host before the client started.  And a bad value is refused in one line before the host
is touched."""

from __future__ import annotations

import json
import os
import signal

import pytest

from vpnedu.net.journal import RUN_DIR
from vpnedu.node import control

from ..lablib import provision, snapshot, start_client, start_server, stop, vpnedu, wait_for

pytestmark = pytest.mark.root

TABLE = "vpnedu-killswitch-vpnedu0"


def with_lines(lab, name: str, *lines: str, allowed: str | None = None):
    text = (lab.dir / "client.conf").read_text().replace(
        "[Interface]\n", "[Interface]\n" + "".join(f"{x}\n" for x in lines), 1)
    if allowed:
        text = "\n".join(f"AllowedIPs = {allowed}" if x.startswith("AllowedIPs") else x
                         for x in text.splitlines()) + "\n"
    path = lab.dir / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def tables(lab) -> str:
    return lab.run("client", "nft", "list", "tables").stdout


def spawn_client(lab, conf, name: str, *extra: str):
    return lab.spawn("client", name, *vpnedu("client", "-c", str(conf), *extra))


def journal_entries(lab) -> list[dict]:
    ino = os.stat(f"/run/netns/{lab.ns('client')}").st_ino
    lines = (RUN_DIR / f"vpnedu0@{ino}.journal").read_text().splitlines()
    return [json.loads(x) for x in lines[1:]]


def test_the_table_is_there_first_and_gone_after_every_exit(lab_factory):
    lab = lab_factory()
    provision(lab)
    ks = with_lines(lab, "ks.conf", "KillSwitch = true")
    before = snapshot(lab, "client")
    assert TABLE not in tables(lab)

    # No server yet: the client waits for a handshake that never comes, behind its kill switch,
    # then gives up (exit 1) and restores the host.
    p = spawn_client(lab, ks, "cli-timeout", "--handshake-timeout", "4", "--show", "handshake.initiation.sent")
    wait_for(lambda: TABLE in tables(lab), what="the kill switch table", proc=p)
    # (The routes and rules follow the table a moment later: wait for the rules, the last of them.)
    wait_for(lambda: "rule" in [e["kind"] for e in journal_entries(lab)], what="the rules", proc=p)
    # In the journal the table comes before every route and rule: it was made first.
    kinds = [e["kind"] for e in journal_entries(lab)]
    assert kinds.index("nft-table") < kinds.index("route") < kinds.index("rule"), kinds
    assert p.wait(30) == 1
    log = (lab.dir / "cli-timeout.log").read_text()
    assert "no handshake response" in log, log
    assert log.index(f"added nftables table inet {TABLE}") < log.index("handshake.initiation.sent"), log
    assert snapshot(lab, "client") == before and TABLE not in tables(lab)

    srv = start_server(lab)
    try:
        # Ctrl-C, the control socket's stop, SIGTERM: each a normal exit, the host as before.
        for how in ("SIGINT", "stop", "SIGTERM"):
            p = start_client(lab, "client", str(ks))
            assert TABLE in tables(lab), how
            if how == "stop":
                control.request(control.netns_socket_path(lab.ns("client")), {"cmd": "stop"})
                rc = p.wait(30)
            else:
                rc = stop(p, getattr(signal, how))
            assert rc == 0, (how, rc)
            assert snapshot(lab, "client") == before, how
            assert TABLE not in tables(lab), how

        # kill -9: the table stays -- the crashed client fails closed: nothing gets out by eth0 ...
        p = start_client(lab, "client", str(ks))
        stop(p, signal.SIGKILL)
        assert TABLE in tables(lab)
        r = lab.run("client", "ping", "-c", "1", "-W", "1", "198.51.100.1")
        assert r.returncode != 0, r.stdout
        # ... until the next start takes it over (same config) and removes it on its exit,
        p = start_client(lab, "client", str(ks))
        assert TABLE in tables(lab)
        assert stop(p) == 0
        assert snapshot(lab, "client") == before and TABLE not in tables(lab)
        # ... or a next start without the kill switch removes it at once,
        p = start_client(lab, "client", str(ks))
        stop(p, signal.SIGKILL)
        p = start_client(lab)
        assert TABLE not in tables(lab)
        assert lab.run("client", "ping", "-c", "1", "-W", "2", "198.51.100.1").returncode == 0
        assert stop(p) == 0
        assert snapshot(lab, "client") == before
        # ... or 'vpnedu cleanup' does.
        p = start_client(lab, "client", str(ks))
        stop(p, signal.SIGKILL)
        assert TABLE in tables(lab)
        r = lab.run("client", *vpnedu("cleanup"))
        assert r.returncode == 0 and "undid" in r.stdout, r.stdout + r.stderr
        assert snapshot(lab, "client") == before and TABLE not in tables(lab)
    finally:
        stop(srv)


def test_the_ipv6_block_is_gone_after_sigterm_and_after_kill_9_and_cleanup(lab_factory):
    lab = lab_factory()
    provision(lab)
    v4 = with_lines(lab, "v4.conf", allowed="0.0.0.0/0")
    before = snapshot(lab, "client")
    srv = start_server(lab)
    try:
        p = start_client(lab, "client", str(v4))
        nft = lab.run("client", "nft", "list", "table", "inet", TABLE).stdout
        assert "meta nfproto ipv6 counter" in nft, nft
        assert stop(p) == 0
        assert snapshot(lab, "client") == before and TABLE not in tables(lab)
        p = start_client(lab, "client", str(v4))
        stop(p, signal.SIGKILL)
        assert TABLE in tables(lab)
        r = lab.run("client", *vpnedu("cleanup"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert snapshot(lab, "client") == before and TABLE not in tables(lab)
    finally:
        stop(srv)


@pytest.mark.parametrize("line, key", [("KillSwitch = maybe", "KillSwitch"), ("BlockIPv6 = perhaps", "BlockIPv6")])
def test_a_bad_value_is_one_line_and_changes_nothing(lab_factory, line, key):
    lab = lab_factory()
    provision(lab)
    bad = with_lines(lab, "bad.conf", line)
    before = snapshot(lab, "client")
    r = lab.run("client", *vpnedu("client", "-c", str(bad)))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vpnedu: error: {bad}:2: {key}: "), r.stderr
    assert f"write {key} = " in lines[0] and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert snapshot(lab, "client") == before
    assert TABLE not in tables(lab)
