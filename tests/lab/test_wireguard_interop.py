"""vpnedu against real WireGuard peers nobody here wrote: wireguard-go (configured with wg, and
through wg-quick), and Wireshark's dissector (tshark) reading our captures with our key log."""

import os
import subprocess
import sys
import time

import pytest

from vpnedu import capture as cap
from vpnedu import config
from vpnedu.netns_lab.topology import APP_ADDRESS, SERVER_PUBLIC
from vpnedu.netns_lab.wireguard_go import WireGuardGo, for_wg_quick, wg_quick
from vpnedu.protocol.keys import encode

from ..conftest import require_tool
from ..lablib import iperf, ping_count, provision, start_client, start_server, status, stop, vpnedu, wait_for

pytestmark = pytest.mark.root
MB50 = 50 * 1024 * 1024


def tcp_checksum_errors(lab, host: str) -> int:
    """TCP segments that arrived corrupted on a lab host (InCsumErrors in /proc/net/snmp)."""
    lines = [line.split() for line in lab.run(host, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1]))["InCsumErrors"])


def moved_50mb(result: dict, lab=None) -> None:
    """iperf3 sent 50 MiB over TCP, the receiver had counted (nearly) all of it when the sender
    stopped the clock (TCP delivers the rest), and nothing arrived corrupted. Retransmissions are
    not held against the tunnel: Debian's wireguard-go reads one datagram per system call, and
    when vpnedu's fast path outruns it, its socket buffer overflows and TCP slows down, as TCP
    should; a tunnel that garbled packets would show checksum errors instead."""
    end = result["end"]
    assert end["sum_sent"]["bytes"] >= MB50
    assert end["sum_received"]["bytes"] >= 0.9 * MB50
    if lab is not None:
        assert tcp_checksum_errors(lab, "client") == 0 and tcp_checksum_errors(lab, "server") == 0


def counter(counters: dict, name: str) -> int:
    return counters.get(name, 0)


def we_initiated_rekeys(before: dict, after: dict, n: int) -> None:
    """Between two snapshots of a vpnedu daemon's counters, at least ``n`` handshakes completed,
    each started by vpnedu (initiations sent) and none by the wireguard-go peer (vpnedu neither
    received an initiation nor sent a response)."""
    for name in ("handshake_initiations_sent", "handshakes_completed"):
        assert counter(after, name) >= counter(before, name) + n, (name, before, after)
    for name in ("handshake_initiations_received", "handshake_responses_sent"):
        assert counter(after, name) == counter(before, name), (name, before, after)


def idle_keepalives(lab, host: str, seconds: float = 3.5) -> int:
    """Transport messages a vpnedu daemon received from its only peer during ``seconds`` of
    silence; each must be a keepalive (32 bytes: header, counter and the 16-byte tag of nothing)."""
    p0 = status(lab, host)["peers"][0]
    time.sleep(seconds)
    p1 = status(lab, host)["peers"][0]
    packets, nbytes = p1["packets_rx"] - p0["packets_rx"], p1["transfer_rx"] - p0["transfer_rx"]
    assert nbytes == 32 * packets, (packets, nbytes)
    return packets


def no_router_solicitations(lab, host: str) -> None:
    """wireguard-go's TUN device gets an IPv6 link-local address like any Linux interface (the
    kernel's WireGuard and vpnedu turn that off; wireguard-go does not), so its host's kernel
    sends router solicitations through the tunnel for a few seconds after the device comes up: an
    80-byte transport message that :func:`idle_keepalives` would count as traffic.  Turned off
    for devices made from now on in that namespace (the test's own)."""
    lab.run(host, "sysctl", "-qw", "net.ipv6.conf.default.router_solicitations=0", check=True)


@pytest.fixture(autouse=True)
def _tools():
    for t in ("wireguard-go", "wg", "wg-quick", "iperf3", "tshark", "tcpdump"):
        require_tool(t)


def pings_across_rekeys(lab, host: str) -> dict:
    """Two rounds of 100 pings (about 10 s) from the client to 10.0.0.1, both without loss, while
    ``host`` (the vpnedu end, with REKEY_AFTER_TIME shortened) starts at least two rekeys that
    wireguard-go answers; returns ``host``'s status afterwards."""
    before = status(lab, host)["counters"]
    for _ in range(2):
        assert ping_count(lab, "client", "10.0.0.1", count=100) == (100, 100)  # ~5 s of traffic
        time.sleep(0.5)
    st = status(lab, host)
    we_initiated_rekeys(before, st["counters"], 2)
    assert st["peers"][0]["session"]["initiator"] is True
    return st


def test_vpnedu_client_with_wireguard_go_server(lab_factory):
    lab = lab_factory()
    provision(lab)
    # The client keeps itself alive every second; the rest of its config is what add-client wrote.
    conf = (lab.dir / "client.conf").read_text().replace("PersistentKeepalive = 25", "PersistentKeepalive = 1")
    (lab.dir / "client.conf").write_text(conf)
    no_router_solicitations(lab, "server")
    wg = WireGuardGo(lab, "server", lab.dir / "server.conf").up()
    client = start_client(lab, "client", None, "--timers", "rekey_after_time=4")
    try:
        assert ping_count(lab, "client", "10.0.0.1") == (20, 20)
        assert ping_count(lab, "server", "10.0.0.2") == (20, 20)
        moved_50mb(iperf(lab, "server", "10.0.0.1", "client"), lab)
        moved_50mb(iperf(lab, "server", "10.0.0.1", "client", reverse=True), lab)

        # Keepalives both ways. WireGuard restarts the persistent-keepalive timer on every packet
        # either way, so with both sides at 1 s only one would ever send: test one side at a time.
        # First ours (PersistentKeepalive = 1 in our config): wireguard-go receives them.
        rx0 = int(wg.show("transfer").split()[1])
        time.sleep(3.5)
        assert int(wg.show("transfer").split()[1]) > rx0
        # Then turn ours off with a live reload, and wireguard-go's on: we receive its keepalives.
        (lab.dir / "client.conf").write_text(conf.replace("PersistentKeepalive = 1\n", ""))
        r = lab.run("client", *vpnedu("reload"))
        assert "1 updated" in r.stdout, r.stdout + r.stderr
        client_key = config.load(lab.dir / "client.conf").interface.public_key
        wg.set("peer", encode(client_key), "persistent-keepalive", "1")
        assert idle_keepalives(lab, "client") >= 2

        # Rekeys: our shortened REKEY_AFTER_TIME makes us initiate; wireguard-go answers each time.
        pings_across_rekeys(lab, "client")

        # `wg showconf` of the wireguard-go interface is accepted by vpnedu conf import.
        shown = lab.run("server", "wg", "showconf", "wg0").stdout
        r = subprocess.run(vpnedu("conf", "import", "-", "--address", "10.0.0.1/24"), input=shown,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        imported = config.loads(r.stdout)
        assert imported.interface.listen_port == 51820 and imported.peers[0].public_key == client_key
        assert str(imported.interface.addresses[0]) == "10.0.0.1/24"
    finally:
        stop(client)
        wg.down()


def test_wireguard_go_client_from_an_add_client_file(lab_factory):
    lab = lab_factory()
    provision(lab)
    # Our timers, shortened: keys expire after 20 s (not 180 s) and are renewed after 4 s (not
    # 120 s). wireguard-go starts the first handshake, and in WireGuard only the initiator of a
    # session renews it on time, so as its responder we rekey only once our keys have expired and
    # we have something to send; from then on we are the initiator and rekey every few seconds.
    # Every optimisation of the fast datapath on, TSO split included: the wire format stays WireGuard's.
    start_server(lab, "--timers", "rekey_after_time=4,reject_after_time=20", "--datapath", "fast,tso")
    # wg-quick names the interface after the file; it must be a valid name.
    ifname = lab.prefix.rstrip("-")
    conf = f"/tmp/{ifname}.conf"
    with open(conf, "w") as f:
        f.write(for_wg_quick((lab.dir / "client.conf").read_text()))   # without DNS = unless resolvconf is there
    no_router_solicitations(lab, "client")
    try:
        r = wg_quick(lab, "client", "up", conf)
        assert r.returncode == 0, r.stderr
        assert ping_count(lab, "client", "10.0.0.1") == (20, 20)
        st = status(lab, "server")
        first = st["counters"]
        assert counter(first, "handshake_initiations_received") >= 1
        assert counter(first, "handshake_initiations_sent") == 0
        assert st["peers"][0]["session"]["initiator"] is False  # wireguard-go started it

        # Our keys of that session expire, unused; the server's next packet needs a new handshake:
        # vpnedu initiates, wireguard-go answers, and the ping waiting for it goes out.
        time.sleep(max(0.0, st["peers"][0]["latest_handshake"] + 20.5 - time.time()))
        assert ping_count(lab, "server", "10.0.0.2") == (20, 20)
        st = status(lab, "server")
        we_initiated_rekeys(first, st["counters"], 1)
        assert st["peers"][0]["session"]["initiator"] is True

        # wireguard-go sends a keepalive after every second without traffic from now on (the new
        # interval takes effect when the timer is next restarted: at the next packet either way).
        server_key = config.load(lab.dir / "server.conf").interface.public_key
        lab.run("client", "wg", "set", ifname, "peer", encode(server_key), "persistent-keepalive", "1",
                check=True)

        moved_50mb(iperf(lab, "server", "10.0.0.1", "client"), lab)
        moved_50mb(iperf(lab, "server", "10.0.0.1", "client", reverse=True), lab)
        st = status(lab, "server")
        stats = st["datapath_stats"]
        # ... and they were really used: TSO super-packets split, GSO sends, TCP segments coalesced.
        assert st["datapath"] == "fast" and stats["tso_packets"] > 0 and stats["gso_sends"] > 0, stats
        assert stats["coalesced"] > 0, stats
        # The 100 MB above were sealed and opened by vpnedu's compiled AEAD call (openssl_aead.c),
        # and wireguard-go took every message: the real peer judges its bytes.
        assert st["aead"] == "openssl", st["aead"]

        # Keepalives: wireguard-go's, every second, reach us while nothing else moves.
        assert idle_keepalives(lab, "server") >= 2

        # Rekeys: our REKEY_AFTER_TIME of 4 s makes us initiate; wireguard-go answers each time.
        st = pings_across_rekeys(lab, "server")
        assert st["peers"][0]["latest_handshake"] and counter(st["counters"], "dropped.bad-mac") == 0
        assert counter(st["counters"], "dropped.expired-session") == 0  # no session ran out under load
    finally:
        wg_quick(lab, "client", "down", conf)
        os.unlink(conf)


def inner(rows: list[dict], *fields: str) -> list[tuple[str, ...]]:
    """Each row's ``fields``, of the inner (decrypted) packet: for an IP field, which the outer
    packet has too, tshark lists the outer value first."""
    return [tuple(r[f].split(",")[-1] if f.startswith("ip.") else r[f] for f in fields) for r in rows]


def test_tshark_decodes_our_packets_and_decrypts_with_our_keylog(lab_factory):
    lab = lab_factory()
    provision(lab)
    client_keys, server_keys = lab.dir / "client.keys", lab.dir / "server.keys"
    # The default datapath, UDP GSO on: a burst (e.g. the two segments of the HTTP answer) crosses
    # the lab's veth cables as one super-datagram; 'vpnedu capture -w' splits it into the datagrams
    # a real cable carries, or tshark would decode only its first message.
    start_server(lab, "--keylog", str(server_keys))
    # Record the client's outer link with the CLI, for a fixed time: a normal, timed stop.
    pcap, log = lab.dir / "outer.pcap", lab.dir / "capture.log"
    seconds = 5  # what follows takes about 1 s
    rec = lab.spawn("client", "capture", *vpnedu("capture", "-i", "eth0", "-w", str(pcap),
                                                 "--duration", str(seconds)))
    wait_for(lambda: "listening on eth0" in log.read_text(), what="tcpdump", proc=rec, log=log)
    started = time.monotonic()
    client = start_client(lab, "client", None, "--keylog", str(client_keys))
    assert ping_count(lab, "client", "10.0.0.1", count=3) == (3, 3)
    r = lab.run("client", sys.executable, "-m", "vpnedu.netns_lab.app", "fetch", f"http://{APP_ADDRESS}/")
    assert f"your address is {SERVER_PUBLIC}" in r.stdout, r.stdout + r.stderr  # through the tunnel
    stop(client)
    assert time.monotonic() - started < seconds - 1, "the session took longer than the capture"
    assert rec.wait(seconds + 10) == 0, log.read_text()
    assert f"-w {pcap}" in log.read_text()  # the CLI says what it runs, and where the file went
    assert f"wrote {pcap}: {cap.count_packets(pcap)} packet(s); read it with: vpnedu capture -r" in log.read_text()

    plain = cap.decode(pcap)
    types = [r["wg.type"] for r in plain]
    assert types[:3] == ["1", "2", "4"] and set(types) <= {"1", "2", "4"}
    assert all(r["ip.src"] in ("198.51.100.2", SERVER_PUBLIC) for r in plain)
    assert cap.count_packets(pcap) == len(plain)
    assert not any(p in r["_ws.col.Protocol"] for r in plain for p in ("ICMP", "HTTP", "TCP"))  # opaque

    # Either side's key log decrypts the session: the initiator's (client) and the responder's.
    for keylog in (client_keys, server_keys):
        decrypted = cap.decode(pcap, keylog=keylog, display_filter="icmp")
        pings = inner(decrypted, "ip.src", "ip.dst", "_ws.col.Info")
        requests = [i for i in pings if i[2].startswith("Echo (ping) request")]
        replies = [i for i in pings if i[2].startswith("Echo (ping) reply")]
        assert len(requests) == 3 and len(replies) == 3, (keylog, pings)
        assert all(i[:2] == ("10.0.0.2", "10.0.0.1") for i in requests)
        assert all(i[:2] == ("10.0.0.1", "10.0.0.2") for i in replies)

        http_fields = ("ip.src", "ip.dst", "http.request.method", "http.host", "http.request.uri",
                       "http.response.code")
        gets = inner(cap.decode(pcap, keylog=keylog, display_filter="http.request", fields=http_fields),
                     *http_fields)
        assert gets == [("10.0.0.2", APP_ADDRESS, "GET", APP_ADDRESS, "/", "")], (keylog, gets)
        answers = inner(cap.decode(pcap, keylog=keylog, display_filter="http.response", fields=http_fields),
                        *http_fields)
        assert answers == [(APP_ADDRESS, "10.0.0.2", "", "", "", "200")], (keylog, answers)

    # The CLI shows the same.
    r = subprocess.run(vpnedu("capture", "-r", str(pcap), "--keylog", str(client_keys)), capture_output=True,
                       text=True)
    assert "handshake initiation" in r.stdout and "inner: 10.0.0.2 -> 10.0.0.1 ICMP" in r.stdout, r.stdout
    assert f"inner: 10.0.0.2 -> {APP_ADDRESS} HTTP GET / HTTP/1.1" in r.stdout, r.stdout
