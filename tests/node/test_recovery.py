"""Recovery after a server restart, for real in the namespace lab.

A client whose server restarted still holds keys the new server process never had: its packets
carry a receiver index the new server does not know, and an unknown index is unauthenticated, so
the server must not answer it.  Left to the protocol's timers the client starts a new handshake
only after KEEPALIVE_TIMEOUT + REKEY_TIMEOUT without an answer (~15 s).  The server knows better:
it remembers each peer's last authenticated endpoint (:mod:`vpnedu.node.peerstate`) and, when it
starts again, sends every such peer a normal handshake initiation.  These tests measure the gap a
user sees -- from the restarted server answering its control socket until a ping through the
client's tunnel device is answered again -- and check that the restarts never make the server
send more than one initiation per peer per REKEY_TIMEOUT.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from vpnedu import config
from vpnedu.events import EventBus
from vpnedu.netns_lab.wireguard_go import for_wg_quick, wg_quick
from vpnedu.node.peerstate import MAX_SIZE, PeerMemory, PeerRecord, PeerStateFile
from vpnedu.packet.ip import build_icmp_echo
from vpnedu.protocol.device import Device
from vpnedu.protocol.keys import encode
from vpnedu.protocol.timers import REKEY_ATTEMPT_TIME, REKEY_TIMEOUT

from ..conftest import require_tool
from ..lablib import provision, start_client, start_server, stop, wait_for

TUN = "vpnedu0"


class Pinger:
    """``ping -D -I vpnedu0 10.0.0.1`` in the client's namespace, every 0.1 s: bound to the tunnel
    device, so an answer proves the packet went through the tunnel.  Keeps each reply's time."""

    def __init__(self, lab, dst: str = "10.0.0.1", dev: str = TUN):
        self.dev = dev
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "ping", "-n", "-D", "-i", "0.1",
                                      "-W", "1", "-I", dev, dst],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.replies: list[float] = []
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
            if m:
                self.replies.append(float(m.group(1)))

    def first_reply_after(self, t: float, timeout: float) -> float:
        return wait_for(lambda: next((r for r in self.replies if r > t), None), timeout=timeout,
                        what=f"a ping reply through {self.dev}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._reader.join(5)


class Initiations:
    """tcpdump on the client's cable: the handshake initiations (message type 1) the server sends."""

    def __init__(self, lab):
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "tcpdump", "-i", "eth0", "-n",
                                      "-l", "--immediate-mode", "-tt", "udp and src port 51820 and udp[8] = 1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.times: list[float] = []
        self._err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_err, daemon=True).start()
        wait_for(lambda: any("listening on eth0" in x for x in self._err), timeout=10, what="tcpdump to listen")

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = re.match(r"(\d+\.\d+) IP ", line)
            if m:
                self.times.append(float(m.group(1)))

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self._err.append(line)

    def close(self) -> None:
        time.sleep(0.3)   # let tcpdump print what it has
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(5)
        self._reader.join(5)


def restart(lab, server, sig) -> tuple[subprocess.Popen, float]:
    """Stop the server with ``sig`` and start it again; returns the new server and the time its
    control socket answered."""
    stop(server, sig)
    server = start_server(lab)
    return server, time.time()


def state_file(lab) -> dict:
    """The server's peer state file as the server's namespace sees it: its mode and content."""
    probe = ("import json, os; from vpnedu.node.peerstate import default_path; p = default_path('vpnedu0'); "
             "print(json.dumps({'mode': oct(os.stat(p).st_mode & 0o777), 'doc': json.loads(p.read_text())}))")
    r = lab.run("server", sys.executable, "-c", probe)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.root
@pytest.mark.slow
def test_the_tunnel_is_back_at_once_after_a_server_restart(lab_factory):
    """kill -9 + start and SIGTERM + start: each time a ping through the client's tunnel device is
    answered again well within the ~15 s the protocol's timers alone take (KEEPALIVE_TIMEOUT +
    REKEY_TIMEOUT), because the new server initiates the handshake itself."""
    lab = lab_factory()
    provision(lab)
    server = start_server(lab)
    client = start_client(lab)
    client_key = encode(config.load(lab.dir / "client.conf").interface.public_key)
    pinger = Pinger(lab)
    gaps = {}
    try:
        pinger.first_reply_after(time.time(), timeout=10)
        # The running server wrote down where the client is, owner-only.
        st = state_file(lab)
        assert st["mode"] == "0o600"
        assert [(p["public_key"], p["endpoint"][0]) for p in st["doc"]["peers"]] == [(client_key, "198.51.100.2")]
        for name, sig in (("kill -9", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
            server, up = restart(lab, server, sig)
            gaps[name] = pinger.first_reply_after(up, timeout=30) - up
            time.sleep(REKEY_TIMEOUT)   # so that the next restart's greeting is not held back
    finally:
        pinger.close()
        print(f"tunnel back after a server restart: {gaps}")
        stop(client)
        stop(server)
    assert all(g < 3 for g in gaps.values()), gaps


@pytest.mark.root
@pytest.mark.slow
def test_two_restarts_within_rekey_timeout_send_one_initiation_per_rekey_timeout(lab_factory):
    """The rate limit holds across processes: a server killed and started twice in a row (well
    within REKEY_TIMEOUT) greets the client once, then -- the second process -- only when
    REKEY_TIMEOUT since the first greeting is up.  Counted on the client's cable with tcpdump:
    handshake initiations (type 1) from the server's port."""
    lab = lab_factory()
    provision(lab)
    server = start_server(lab)
    client = start_client(lab)
    pinger = Pinger(lab)
    try:
        pinger.first_reply_after(time.time(), timeout=10)
        capture = Initiations(lab)
        server, first_up = restart(lab, server, signal.SIGKILL)
        pinger.first_reply_after(first_up, timeout=10)     # the first greeting got the tunnel back
        server, second_up = restart(lab, server, signal.SIGKILL)
        assert second_up - first_up < REKEY_TIMEOUT - 1   # really two restarts within REKEY_TIMEOUT
        back = pinger.first_reply_after(second_up, timeout=30)
        time.sleep(1)
        capture.close()
    finally:
        pinger.close()
        stop(client)
        stop(server)
    sent = capture.times
    print(f"restarts {second_up - first_up:.2f} s apart; initiations from the server at "
          f"{[round(t - sent[0], 3) for t in sent]} s; tunnel back {back - second_up:.2f} s after the second restart")
    assert len(sent) == 2, sent
    assert sent[1] - sent[0] >= REKEY_TIMEOUT - 0.01, sent
    # ... and the held-back greeting still came well before the client's own ~15 s timer.
    assert back - second_up < REKEY_TIMEOUT + 1


@pytest.mark.root
@pytest.mark.slow
def test_a_wireguard_go_client_answers_the_greeting_and_its_tunnel_is_back(lab_factory):
    """The greeting is a plain WireGuard initiation: a wireguard-go client (through wg-quick, from
    the file add-client wrote, less DNS = without resolvconf), whose own timers would also wait ~15 s, answers it, and
    pings through its tunnel device are answered again at once after a kill -9 + start."""
    for tool in ("wg-quick", "wireguard-go", "wg"):
        require_tool(tool)
    lab = lab_factory()
    provision(lab)
    server = start_server(lab)
    ifname = lab.prefix.rstrip("-")     # wg-quick names the interface after the file
    conf = f"/tmp/{ifname}.conf"
    with open(conf, "w") as f:
        f.write(for_wg_quick((lab.dir / "client.conf").read_text()))   # without DNS = unless resolvconf is there
    os.chmod(conf, 0o600)
    r = wg_quick(lab, "client", "up", conf)
    assert r.returncode == 0, r.stderr
    pinger = Pinger(lab, dev=ifname)
    try:
        pinger.first_reply_after(time.time(), timeout=15)
        server, up = restart(lab, server, signal.SIGKILL)
        gap = pinger.first_reply_after(up, timeout=30) - up
    finally:
        pinger.close()
        wg_quick(lab, "client", "down", conf)
        os.unlink(conf)
        stop(server)
    print(f"wireguard-go client: tunnel back {gap:.2f} s after the server restart")
    assert gap < 3


# ---------------------------------------------------------------------------------------------
# The state file and the server's memory of its peers, without root: real files, the real
# protocol core on the in-memory network of vpnedu.sim.

def _file(tmp_path, key: bytes, **kw) -> PeerStateFile:
    kw.setdefault("boot", "boot-1")
    kw.setdefault("netns", 4026531840)
    return PeerStateFile(tmp_path / "vpnedu0@4026531840.peers", interface="vpnedu0", public_key=key, **kw)


def _records(n: int = 2) -> dict[bytes, PeerRecord]:
    return {bytes([i]) * 32: PeerRecord((f"198.51.100.{i + 2}", 40000 + i), 1000.5 + i if i % 2 else None)
            for i in range(n)}


def test_the_state_file_is_owner_only_and_reads_back_what_was_written(tmp_path):
    f = _file(tmp_path, b"\x07" * 32)
    f.save(_records(3))
    assert stat.S_IMODE(os.stat(f.path).st_mode) == 0o600
    assert f.load() == _records(3)
    f.save(_records(1))
    assert f.load() == _records(1)
    assert os.listdir(tmp_path) == [f.path.name]       # no temporary file left beside it


def test_a_write_that_fails_half_way_leaves_the_old_file_whole(tmp_path):
    """A real failed write: the kernel refuses to let the file grow past RLIMIT_FSIZE (EFBIG), as a
    full disk would (ENOSPC).  The old file must still be there, whole, and no temporary file."""
    f = _file(tmp_path, b"\x07" * 32)
    f.save(_records(2))
    before = f.path.read_bytes()
    script = f"""
import resource, signal, sys
from vpnedu.node.peerstate import PeerRecord, PeerStateFile
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
f = PeerStateFile({str(f.path)!r}, interface="vpnedu0", public_key=b"\\x07" * 32, netns=4026531840, boot="boot-1")
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
records = {{i.to_bytes(32, "big"): PeerRecord(("198.51.100.9", 1000 + i)) for i in range(500)}}
try:
    f.save(records)
except OSError as e:
    print(e.errno)
    sys.exit(0)
sys.exit("the write did not fail")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == errno.EFBIG
    assert f.path.read_bytes() == before
    assert os.listdir(tmp_path) == [f.path.name]


def _corruptions(f: PeerStateFile, good: str):
    doc = json.loads(good)

    def edit(**kw):
        return json.dumps({**doc, **kw})
    bad_peer = dict(doc["peers"][0], endpoint=["not-an-address", 1])
    return {
        "garbage bytes": b"\x00\xff garbage \x80",
        "truncated JSON": good[: len(good) // 2],
        "another format": json.dumps({"hello": 1}),
        "a newer format version": edit(version=99),
        "another interface": edit(interface="wg0"),
        "another network namespace": edit(netns=1),
        "another server key (another config)": edit(public_key=encode(b"\x08" * 32)),
        "a previous boot": edit(boot_id="boot-0"),
        "a malformed peer entry": edit(peers=[bad_peer]),
        "peers not a list": edit(peers={"a": 1}),
    }


def test_corrupt_foreign_and_stale_files_are_ignored_with_one_line(tmp_path):
    f = _file(tmp_path, b"\x07" * 32)
    good = f.dumps(_records(2))
    for what, content in _corruptions(f, good).items():
        data = content if isinstance(content, bytes) else content.encode()
        fd = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        os.close(fd)
        lines = []
        assert f.load(lines.append) == {}, what
        assert len(lines) == 1 and str(f.path) in lines[0] and "\n" not in lines[0], (what, lines)
    # Not a file of ours: readable or writable by others, a symlink, a directory, far too large.
    f.path.write_text(good)
    os.chmod(f.path, 0o644)
    others = {}
    lines = []
    assert f.load(lines.append) == {} and "0600" in lines[0]
    os.chmod(f.path, 0o600)
    assert f.load() == _records(2)
    target = tmp_path / "elsewhere"
    os.rename(f.path, target)
    os.symlink(target, f.path)
    others["a symlink"] = f.load(lines.append)
    f.path.unlink()
    f.path.mkdir()
    others["a directory"] = f.load(lines.append)
    f.path.rmdir()
    with open(f.path, "wb") as big:
        big.truncate(MAX_SIZE + 1)
    os.chmod(f.path, 0o600)
    others["too large"] = f.load(lines.append)
    assert all(v in (None, {}) for v in others.values()), others
    assert len(lines) == 4, lines
    f.path.unlink()
    assert f.load(lines.append) == {} and len(lines) == 4     # no file: nothing to say


def _restart(pair, old):
    """A new server process: the same key and config (the client as its peer), no sessions."""
    dev = Device(old.static.private, name="server", events=EventBus(clock=pair.net.clock.wall),
                 wall_offset=pair.net.clock.wall_offset)
    dev.add_peer(pair.client.public_key, allowed_ips=["10.0.0.2/32"], name="client")
    pair.net.attach(pair.server_ep, dev)
    return dev


def _ping() -> bytes:
    return build_icmp_echo("10.0.0.2", "10.0.0.1")


def test_a_restarted_server_greets_its_peer_and_both_have_a_fresh_session(tmp_path, pair_factory):
    """The whole exchange on the real protocol core: the server notes the client's endpoint from
    authenticated packets; a new server process reads it and sends a normal initiation; the
    client answers and its packets reach the new server at once, with no timer involved."""
    pair = pair_factory()
    f = _file(tmp_path, pair.server.public_key)
    mem = PeerMemory(pair.server, f, clock=pair.net.clock)
    mem.watch(pair.server.events)
    pair.handshake()
    pair.client_sends(_ping())
    assert f.load() == {pair.client.public_key: PeerRecord(pair.client_ep, None)}
    writes = mem.writes
    for _ in range(20):       # more packets on the same endpoint: no more writes
        pair.client_sends(_ping())
    assert mem.writes == writes

    new = _restart(pair, pair.server)
    # The client's packets under the old keys: unknown index, dropped, and never answered.
    before = len(pair.net.capture)
    pair.client_sends(_ping())
    assert [c.source for c in pair.net.capture[before:]] == [pair.client_ep]
    assert new.counters["dropped.unknown-index"] == 1

    mem2 = PeerMemory(new, f, clock=pair.net.clock)
    greet = mem2.restore()
    mem2.watch(new.events)
    assert [p.public_key for p in greet] == [pair.client.public_key]
    assert greet[0].endpoint == pair.client_ep
    pair.net.send(pair.server_ep, new.initiate(greet[0], pair.net.clock.now))
    mem2.update()
    pair.net.run()
    assert new.peers[pair.client.public_key].current is not None
    pair.client_sends(_ping())
    assert len(pair.net.delivered[pair.server_ep]) >= 1 and new.counters["dropped.unknown-index"] == 1
    assert f.load()[pair.client.public_key].initiated == pair.net.clock.now

    # A third process within REKEY_TIMEOUT may not initiate yet; it may when the time is up.
    pair.net.clock.advance(1.0)
    third = _restart(pair, new)
    mem3 = PeerMemory(third, f, clock=pair.net.clock)
    peer = mem3.restore()[0]
    assert third.initiate(peer, pair.net.clock.now) == []
    assert mem3.greet_at(peer) == pytest.approx(pair.net.clock.now - 1.0 + REKEY_TIMEOUT)
    pair.net.clock.advance(REKEY_TIMEOUT - 1.0)
    assert len(third.initiate(peer, pair.net.clock.now)) == 1


def test_only_configured_peers_are_greeted_and_an_unanswered_one_is_forgotten(tmp_path, pair_factory):
    pair = pair_factory()
    f = _file(tmp_path, pair.server.public_key)
    gone = b"\x09" * 32
    f.save({pair.client.public_key: PeerRecord(pair.client_ep, None),
            gone: PeerRecord(("198.51.100.77", 51820), None)})     # a peer no longer in the config
    mem = PeerMemory(pair.server, f, clock=pair.net.clock)
    greet = mem.restore()
    mem.watch(pair.server.events)
    assert [p.public_key for p in greet] == [pair.client.public_key]
    # The client does not answer (its machine is off): after REKEY_ATTEMPT_TIME of retries the
    # server gives up, and forgets that endpoint.
    pair.net.devices.pop(pair.client_ep)
    pair.net.send(pair.server_ep, pair.server.initiate(greet[0], pair.net.clock.now))
    pair.net.run()
    assert pair.client.public_key in f.load()
    pair.net.advance(REKEY_ATTEMPT_TIME + 2 * REKEY_TIMEOUT)
    assert pair.server.counters["handshake_timeouts"] == 1
    assert f.load() == {}
    # When it comes back by itself, it is remembered again.
    pair.net.attach(pair.client_ep, pair.client)
    pair.handshake()
    pair.client_sends(_ping())
    assert list(f.load()) == [pair.client.public_key]
