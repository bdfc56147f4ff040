"""The leak test: with ``KillSwitch = true`` nothing leaves the client but the tunnel's own UDP --
while connected, while the server is dead and the client keeps trying, and after it is back --
and an IPv4-only tunnel on the dual-stack lab leaks no IPv6 (:mod:`vpnedu.net.killswitch`).

The capture is taken where a leak would be seen: on ``c0``, the internet router's end of the
client's cable, so it holds what actually left the client's namespace, and tshark (Wireshark's
dissector, not vpnedu's) reads it.  Every frame whose Ethernet source is the client's ``eth0``
must be ARP, IPv6 neighbour discovery (ICMPv6 133-136) or UDP to the server's endpoint that
tshark decodes as WireGuard.  Each capture also records, before the client starts, the very
commands the kill switch must stop -- a ping and a curl bound to ``eth0`` -- so that it is
shown to see them when nothing stops them (the test can fail).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from vpnedu import capture as cap
from vpnedu.netns_lab.topology import APP_ADDRESS, APP_ADDRESS6, SERVER_PUBLIC, SERVER_PUBLIC6, Lab

from ..conftest import require_tool
from ..lablib import provision, snapshot, start_client, start_server, status, stop, vpnedu, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

TABLE = "vpnedu-killswitch-vpnedu0"
LAN_ROUTER, LAN_ROUTER6 = "198.51.100.1", "2001:db8:c::1"
CLIENT_OWN6 = "2001:db8:c::2"
FIELDS = ("frame.time_epoch", "eth.src", "eth.type", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
          "udp.dstport", "icmpv6.type", "wg.type", "_ws.col.Protocol", "_ws.col.Info")
ND = {"133", "134", "135", "136"}


_labs = [0]


@pytest.fixture
def lab():
    require_tool("tcpdump")
    require_tool("tshark")
    require_tool("curl")
    _labs[0] += 1       # a name of its own per test: a namespace of the last test may still be going away
    lab = Lab(prefix=f"leak{os.getpid() % 1000}x{_labs[0]}-", log=lambda s: None)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


class Capture:
    """tcpdump on the internet router's end of the client's cable (``c0``), to a pcap file."""

    def __init__(self, lab, name: str):
        self.lab, self.path = lab, lab.dir / f"{name}.pcap"
        self.log = lab.dir / f"{name}-tcpdump.log"
        self.proc = lab.spawn("internet", f"{name}-tcpdump", "tcpdump", "-i", "c0", "-n", "-U",
                              "--immediate-mode", "-s", "0",
                              "-w", str(self.path))
        wait_for(lambda: "listening on c0" in self.log.read_text(), what="tcpdump", proc=self.proc, log=self.log)
        self.mac = lab.run("client", "cat", "/sys/class/net/eth0/address").stdout.strip()

    def frames(self) -> list[dict]:
        """The client's frames (Ethernet source: its eth0), each with its time as a float."""
        # --immediate-mode: each frame reaches tcpdump as it comes.  Without it libpcap reads the
        # kernel's ring a block at a time (a block is handed over when full or after a timeout),
        # and a SIGINT before the timeout loses the last block: the frames of the last second.
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        rows = cap.decode(self.path, fields=FIELDS)
        for r in rows:
            r["t"] = float(r["frame.time_epoch"])
        return [r for r in rows if r["eth.src"] == self.mac]


def allowed(r: dict, endpoints=((SERVER_PUBLIC, "51820"),)) -> bool:
    """ARP, neighbour discovery, or WireGuard to the server's endpoint."""
    if r["eth.type"] == "0x0806":
        return True
    if r["icmpv6.type"] and set(r["icmpv6.type"].split(",")) <= ND:
        return True
    dst = r["ip.dst"] or r["ipv6.dst"]
    return bool(r["wg.type"]) and (dst.split(",")[0], r["udp.dstport"].split(",")[0]) in endpoints


def show(rows) -> str:
    return "\n".join(f"{r['t']:.3f} {r['ip.src'] or r['ipv6.src']} -> {r['ip.dst'] or r['ipv6.dst']} "
                     f"{r['_ws.col.Protocol']} {r['_ws.col.Info'][:100]}" for r in rows[:30])


def run(lab, *cmd: str) -> subprocess.CompletedProcess:
    return lab.run("client", *cmd, timeout=30)


def curl(lab, family: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    return run(lab, "curl", family, "-sS", "--max-time", "2", *extra, url)


def traffic(lab, phase: str, seconds: float) -> dict[str, list[int]]:
    """For ``seconds``: curl and ping through the normal routing (into the tunnel), and the usual
    ways around it -- curl and ping bound to eth0 (SO_BINDTODEVICE, as WebRTC and some apps do),
    dig to the LAN's resolver (the main table's LAN route answers for it) -- and dig to an
    outside name server.  Returns each kind's exit statuses."""
    out: dict[str, list[int]] = {}
    end, i = time.time() + seconds, 0
    while time.time() < end:
        i += 1
        steps = {
            "tunnel4": curl(lab, "-4", f"http://{APP_ADDRESS}/{phase}-v4-{i}"),
            "tunnel6": curl(lab, "-6", f"http://[{APP_ADDRESS6}]/{phase}-v6-{i}"),
            "bypass4": curl(lab, "-4", f"http://{APP_ADDRESS}/{phase}-bypass4-{i}", "--interface", "eth0"),
            "bypass6": curl(lab, "-6", f"http://[{APP_ADDRESS6}]/{phase}-bypass6-{i}", "--interface", "eth0"),
            "ping4": run(lab, "ping", "-c", "1", "-W", "1", "-I", "eth0", APP_ADDRESS),
            "ping6": run(lab, "ping", "-6", "-c", "1", "-W", "1", "-I", "eth0", APP_ADDRESS6),
            "lan-dns": run(lab, "dig", "+time=1", "+tries=1", f"@{LAN_ROUTER}", "vpnedu.test"),
            "lan-dns6": run(lab, "dig", "+time=1", "+tries=1", f"@{LAN_ROUTER6}", "vpnedu.test"),
            "outside-dns": run(lab, "dig", "+time=1", "+tries=1", f"@{APP_ADDRESS}", "vpnedu.test"),
        }
        for k, r in steps.items():
            out.setdefault(k, []).append(r.returncode)
    return out


def test_kill_switch_no_packet_leaves_outside_the_tunnel_connected_server_dead_and_back(lab):
    require_tool("dig")
    provision(lab)
    conf = lab.dir / "ks.conf"
    conf.write_text((lab.dir / "client.conf").read_text().replace("[Interface]\n", "[Interface]\nKillSwitch = true\n", 1))
    conf.chmod(0o600)
    srv = start_server(lab)
    capture = Capture(lab, "leak")
    # Without the kill switch these leave by eth0: the capture must see them.
    assert run(lab, "ping", "-c", "1", "-W", "2", "-I", "eth0", APP_ADDRESS).returncode == 0
    assert curl(lab, "-6", f"http://[{APP_ADDRESS6}]/control", "--interface", "eth0").returncode == 0
    t_control = time.time()
    cli = start_client(lab, "client", str(conf))
    pings = [lab.spawn("client", f"ping{f}", "ping", f"-{f}", "-i", "0.3", "-W", "1", a)
             for f, a in (("4", APP_ADDRESS), ("6", APP_ADDRESS6))]
    try:
        t1 = time.time()
        assert f"table inet {TABLE}" in run(lab, "nft", "list", "tables").stdout
        assert status(lab, "client")["kill_switch"]["families"] == ["IPv4", "IPv6"]
        one = traffic(lab, "p1", 4)
        # Phase 2: the server dies (SIGKILL); the client keeps sending and retrying.
        t2 = time.time()
        stop(srv, signal.SIGKILL)
        two = traffic(lab, "p2", 4)
        # Phase 3: the server is back; the client reconnects on its own.
        t3 = time.time()
        srv = start_server(lab)
        wait_for(lambda: curl(lab, "-4", f"http://{APP_ADDRESS}/p3-back").returncode == 0, timeout=30,
                 what="the tunnel back after the server restarted")
        three = traffic(lab, "p3", 4)
        t4 = time.time()
        nft = run(lab, "nft", "list", "table", "inet", TABLE).stdout
        frames = capture.frames()
    finally:
        for p in pings:
            p.terminate()
        stop(cli)
        stop(srv)

    # What the programs saw: the tunnel worked in phases 1 and 3 and not in 2; nothing around it.
    for phase, res in (("1", one), ("3", three)):
        assert all(rc == 0 for rc in res["tunnel4"] + res["tunnel6"]), (phase, res)
    assert not any(rc == 0 for rc in two["tunnel4"] + two["tunnel6"] + two["outside-dns"]), two
    for res in (one, two, three):
        for k in ("bypass4", "bypass6", "ping4", "ping6", "lan-dns", "lan-dns6"):
            assert all(rc != 0 for rc in res[k]), (k, res)
    # The app server saw the VPN server's addresses in phases 1 and 3, nothing of phase 2, and the
    # client's own address only for the control request made before the client started.
    log = lab.app_log()
    for phase in ("p1", "p3"):
        assert f"{SERVER_PUBLIC} GET /{phase}-v4-1" in log and f"{SERVER_PUBLIC6} GET /{phase}-v6-1" in log, log
    assert not [x for x in log if "/p2-" in x or "bypass" in x], log
    assert [x for x in log if x.startswith(("198.51.100.2 ", CLIENT_OWN6))] == [f"{CLIENT_OWN6} GET /control"], log
    # The table stopped them: its counters moved.
    counts = [int(n) for n in re.findall(r"counter packets (\d+)", nft)]
    assert counts and counts[0] > 0, nft

    # The wire: before the client, the control ping and curl went out of eth0 ...
    before = [r for r in frames if r["t"] < t_control]
    assert any(r["ip.dst"] == APP_ADDRESS and "ICMP" in r["_ws.col.Protocol"] for r in before), show(before)
    assert any(r["ipv6.dst"] == APP_ADDRESS6 and "TCP" in r["_ws.col.Protocol"] for r in before), show(before)
    # ... while the client ran, nothing but ARP, neighbour discovery and WireGuard to the endpoint,
    during = [r for r in frames if t1 <= r["t"] <= t4]
    leaked = [r for r in during if not allowed(r)]
    assert not leaked, "packets left the client outside the tunnel:\n" + show(leaked)
    # ... and WireGuard in every phase: the client kept sending to its server while it was dead.
    for a, b in ((t1, t2), (t2, t3), (t3, t4)):
        assert any(r["wg.type"] and a <= r["t"] < b for r in during), (a, b, show(during))


def test_an_ipv4_only_tunnel_blocks_ipv6_and_block_ipv6_false_lets_it_out(lab):
    """AllowedIPs = 0.0.0.0/0 on the dual-stack lab: curl -6 to the app fails and no IPv6 packet
    leaves the client but neighbour discovery (and the tunnel's own: its endpoint is IPv4); with
    BlockIPv6 = false the same curl goes out directly, from the client's own address -- proof
    that the block is what stopped it."""
    d = lab.dir
    subprocess.run(vpnedu("server", "init", "-c", f"{d}/server.conf", "--endpoint", SERVER_PUBLIC, "--ipv4-only",
                          "--force"), check=True, capture_output=True)
    subprocess.run(vpnedu("server", "add-client", "client", "-c", f"{d}/server.conf"), check=True, capture_output=True)
    text = (d / "client.conf").read_text()
    assert re.search(r"^AllowedIPs = 0\.0\.0\.0/0$", text, re.M), text
    off = d / "v6direct.conf"
    off.write_text(text.replace("[Interface]\n", "[Interface]\nBlockIPv6 = false\n", 1))
    off.chmod(0o600)
    before = snapshot(lab, "client")
    srv = start_server(lab)
    capture = Capture(lab, "v4only")
    try:
        cli = start_client(lab)
        t1 = time.time()
        nft = run(lab, "nft", "list", "table", "inet", TABLE).stdout
        assert "meta nfproto ipv6 counter" in nft and "meta nfproto ipv4" not in nft, nft
        assert f"{SERVER_PUBLIC}" in curl(lab, "-4", f"http://{APP_ADDRESS}/v4-through").stdout
        blocked = curl(lab, "-6", f"http://[{APP_ADDRESS6}]/v6-blocked")
        assert blocked.returncode != 0, blocked.stdout
        assert run(lab, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", APP_ADDRESS6).returncode != 0
        t2 = time.time()
        assert stop(cli) == 0
        assert snapshot(lab, "client") == before

        cli = start_client(lab, "client", str(off))
        t3 = time.time()
        assert TABLE not in run(lab, "nft", "list", "tables").stdout
        direct = curl(lab, "-6", f"http://[{APP_ADDRESS6}]/v6-direct")
        assert direct.returncode == 0 and f"your address is {CLIENT_OWN6}" in direct.stdout, direct
        t4 = time.time()
        assert stop(cli) == 0
        frames = capture.frames()
    finally:
        stop(srv)
    assert snapshot(lab, "client") == before
    log = lab.app_log()
    assert f"{SERVER_PUBLIC} GET /v4-through" in log and f"{CLIENT_OWN6} GET /v6-direct" in log, log
    assert not [x for x in log if "v6-blocked" in x], log
    v6 = [r for r in frames if r["ipv6.src"] or r["ipv6.dst"]]
    leaked = [r for r in v6 if t1 <= r["t"] <= t2 and not (r["icmpv6.type"] and set(r["icmpv6.type"].split(",")) <= ND)]
    assert not leaked, "IPv6 left the client beside its IPv4-only tunnel:\n" + show(leaked)
    assert any(r["ipv6.dst"] == APP_ADDRESS6 and t3 <= r["t"] <= t4 for r in v6), show(v6)
    # ... and IPv4 went only through the tunnel all along: WireGuard to the endpoint.
    assert all(allowed(r) for r in frames if t1 <= r["t"] <= t2 and r["ip.dst"]), show(frames)
