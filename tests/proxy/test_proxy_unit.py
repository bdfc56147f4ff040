"""The proxy's decisions without root: which packets it takes, what it answers a SYN with
(connect first: refused -> RST, open -> the SYN goes on to the kernel), the flow table's events,
and the packets it builds, checked with the Internet checksum -- for IPv4 and IPv6 (whose checksums
also cover a pseudo-header: recomputed here, and by Wireshark's dissector)."""

import asyncio
import socket
import struct
import subprocess

import pytest

from vpnedu.errors import VpneduError
from vpnedu.events import EventBus
from vpnedu.packet.ip import (TCP_ACK, TCP_RST, TCP_SYN, IPv4Packet, build_icmp_echo, build_icmp_unreachable,
                              build_tcp, build_tcp_reset_for, build_udp, checksum)
from vpnedu.proxy import DEFAULT_IDLE, Proxy, parse_idle
from vpnedu.proxy.flows import FlowTable, sweep_idle

from ..conftest import require_tool


def tcp_checksum_ok(packet: bytes) -> bool:
    ip = IPv4Packet.parse(packet)
    pseudo = ip.src.packed + ip.dst.packed + struct.pack("!BBH", 0, 6, len(ip.payload))
    return checksum(pseudo + ip.payload) == 0 and checksum(packet[:20]) == 0


def make_proxy(delivered, injected, events=None):
    return Proxy(events or EventBus(), subnet="10.0.0.0/24", local_addresses={"203.0.113.2"},
                 deliver=delivered.append, inject=injected.append, connect_timeout=2)


async def until(cond, timeout: float = 2.0) -> None:
    """Let the event loop run until ``cond()`` holds (or ``timeout`` seconds pass)."""
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)


def test_the_proxy_takes_only_syns_and_echo_requests_to_the_outside():
    p = make_proxy([], [])
    ack = build_tcp("10.0.0.2", 40000, "192.0.2.80", 80, seq=5, ack=9, flags=TCP_ACK)
    assert not p.intercept("c", ack)                                       # mid-connection: kernel's
    assert not p.intercept("c", build_udp("10.0.0.2", 5000, "192.0.2.80", 53, b"q"))  # TPROXY's
    assert not p.intercept("c", build_icmp_echo("10.0.0.2", "10.0.0.3"))   # client to client
    assert not p.intercept("c", build_icmp_echo("10.0.0.2", "203.0.113.2"))  # the server itself
    assert not p.intercept("c", build_tcp("10.0.0.2", 1, "10.0.0.1", 22, flags=TCP_SYN))
    assert not p.intercept("c", b"\x60" + bytes(39))                        # IPv6: not ours
    assert not p.intercept("c", b"\x45\x00")                                # truncated


def test_syn_to_a_closed_port_is_answered_with_a_reset():
    async def go():
        delivered, injected = [], []
        events = EventBus()
        seen = []
        events.subscribe(seen.append, kinds=["proxy.flow"])
        p = make_proxy(delivered, injected, events)
        with socket.socket() as s:   # a port that is certainly closed: bound, never listening
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            syn = build_tcp("10.0.0.2", 40000, "127.0.0.1", port, seq=1000, flags=TCP_SYN, window=64240)
            assert p.intercept("client", syn)
            assert p.intercept("client", syn)          # a retransmission while connecting: held too
            await until(lambda: injected)
        return delivered, injected, seen, p
    delivered, injected, seen, p = asyncio.run(go())
    assert delivered == []
    [rst] = injected
    ip = IPv4Packet.parse(rst)
    assert (str(ip.src), str(ip.dst)) == ("127.0.0.1", "10.0.0.2")
    _sport, _dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", ip.payload)
    assert flags == TCP_RST | TCP_ACK and ack == 1001 and seq == 0
    assert tcp_checksum_ok(rst)
    assert [e.fields["reason"] for e in seen if e.kind == "proxy.flow.closed"] == ["refused"]
    assert len(p.table) == 0


def test_syn_to_an_open_port_goes_on_to_the_kernel_after_connecting():
    async def go():
        delivered, injected = [], []
        p = make_proxy(delivered, injected)
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        syn = build_tcp("10.0.0.2", 40001, "127.0.0.1", port, seq=7, flags=TCP_SYN)
        assert p.intercept("client", syn)
        await until(lambda: delivered)
        # Once connected, a retransmitted SYN is the kernel's business.
        assert not p.intercept("client", syn)
        flows = p.flows()
        await p.tcp.close()
        server.close()
        await server.wait_closed()
        return delivered, injected, flows, syn
    delivered, injected, flows, syn = asyncio.run(go())
    assert delivered == [syn]     # the client's own SYN, unchanged, released to the kernel
    assert injected == []
    assert flows[0].state == "syn-released" and flows[0].proxy.startswith("127.0.0.1:")


def test_icmp_unreachable_quotes_the_original_packet():
    syn = build_tcp("10.0.0.2", 40000, "192.0.2.99", 80, seq=1, flags=TCP_SYN)
    icmp = build_icmp_unreachable(syn, "192.0.2.99")
    ip = IPv4Packet.parse(icmp)
    assert ip.payload[0] == 3 and ip.payload[1] == 1 and checksum(ip.payload) == 0
    assert ip.payload[8:8 + 28] == syn[:28]
    assert str(ip.dst) == "10.0.0.2"


def test_flow_table_events_and_idle():
    now = [100.0]
    events = EventBus()
    got = []
    events.subscribe(got.append)
    t = FlowTable(events, clock=lambda: now[0])
    f = t.new("udp", ("10.0.0.2", 5353), ("192.0.2.80", 53), "client")
    t.opened(f, ("203.0.113.2", 40000))
    t.touch(f, up=20, down=60)
    now[0] += 31
    assert t.idle(DEFAULT_IDLE) == [f]
    t.close(f, "idle")
    t.close(f, "idle")     # closing twice announces once
    assert [e.kind for e in got] == ["proxy.flow.opened", "proxy.flow.closed"]
    closed = got[1].fields
    assert closed["bytes_up"] == 20 and closed["bytes_down"] == 60 and closed["age"] == 31
    assert closed["proxy"] == "203.0.113.2:40000" and closed["reason"] == "idle"
    assert t.snapshot() == []


def test_usage_keeps_each_peers_counts_after_its_flows_close():
    t = FlowTable(EventBus(), clock=lambda: 0.0)
    a = t.new("socks5", ("10.0.0.2", 40000), ("192.0.2.80", 80), "alice")
    t.touch(a, up=100, down=20_000)
    t.close(a, "done")
    b = t.new("socks5", ("10.0.0.2", 40002), ("192.0.2.80", 80), "alice")   # still open
    t.touch(b, up=5, down=7)
    c = t.new("dns", ("10.0.0.3", 5353), ("192.0.2.53", 53), "bob")
    t.touch(c, up=40, down=90)
    t.close(c, "answered")
    assert t.usage() == {"alice": {"socks5": {"flows": 2, "bytes_up": 105, "bytes_down": 20_007}},
                         "bob": {"dns": {"flows": 1, "bytes_up": 40, "bytes_down": 90}}}
    t.close(b, "done")
    assert t.usage()["alice"]["socks5"] == {"flows": 2, "bytes_up": 105, "bytes_down": 20_007}   # not counted twice


def test_the_sweeper_aborts_a_silent_flow_and_leaves_a_busy_one():
    now = [0.0]
    t = FlowTable(EventBus(), clock=lambda: now[0])
    silent, busy = (t.new("socks5", ("10.0.0.2", p), ("192.0.2.80", 80), "c") for p in (1, 2))
    aborted = []
    silent.abort = lambda reason: (aborted.append(reason), t.close(silent, reason))

    async def main():
        task = asyncio.ensure_future(sweep_idle(t, {"tcp": 0.4}))
        for _ in range(8):             # 0.8 s of the real loop; the table's clock moves 0.1 s a step
            await asyncio.sleep(0.1)
            now[0] += 0.1
            t.touch(busy)
        task.cancel()
    asyncio.run(main())
    assert aborted == ["idle"] and list(t.flows.values()) == [busy]


def test_parse_idle():
    assert parse_idle("udp=5") == {**DEFAULT_IDLE, "udp": 5.0}
    with pytest.raises(VpneduError, match="PROTOCOL=SECONDS"):
        parse_idle("sctp=5")
    with pytest.raises(VpneduError):
        parse_idle("tcp=-1")


def test_reset_for_a_syn_matches_the_rfc():
    syn = build_tcp("10.0.0.2", 1234, "192.0.2.80", 81, seq=0xFFFFFFFF, flags=TCP_SYN)
    rst = build_tcp_reset_for(syn)
    sport, dport, seq, ack = struct.unpack_from("!HHII", rst, 20)
    assert (sport, dport, seq, ack) == (81, 1234, 0, 0)   # the ack wraps around 2**32
    assert tcp_checksum_ok(rst)


# ---------------------------------------------------------------------- the TCP relay on loopback
class _Spoofed:
    """A StreamWriter whose addresses read like TPROXY's: the peer is the tunnel client and the
    local address the original destination (what an accepted transparent socket reports)."""

    def __init__(self, writer, peername, sockname):
        self._w, self._names = writer, {"peername": peername, "sockname": sockname}

    def get_extra_info(self, name, default=None):
        return self._names.get(name) or self._w.get_extra_info(name, default)

    def __getattr__(self, name):
        return getattr(self._w, name)


async def _relay_pair(app_handler):
    """A relayed flow on loopback: (relay, flow, task, the client's end, the proxy's upstream writer,
    the app server); the test holds the client's end, ``app_handler`` the application's."""
    from vpnedu.proxy.tcp import TcpRelay
    from vpnedu.proxy.tcp import relay as relay_flow
    app = await asyncio.start_server(app_handler, "127.0.0.1", 0)
    relay = TcpRelay(FlowTable(EventBus()), deliver=lambda p: None, inject=lambda p: None)
    u_r, u_w = await asyncio.open_connection(*app.sockets[0].getsockname()[:2])
    accepted = asyncio.get_running_loop().create_future()
    front = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    client = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
    c_r, c_w = await accepted
    front.close()
    flow = relay.table.new("tcp", ("10.0.0.2", 40000), ("192.0.2.80", 80))
    relay.table.opened(flow, u_w.get_extra_info("sockname")[:2])
    task = asyncio.ensure_future(relay_flow(relay.table, flow, c_r, c_w, u_r, u_w))
    return relay, flow, task, client, u_w, app


def _rst(writer):
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_relay_passes_a_reset_from_the_destination_to_an_idle_client():
    """The application resets an established connection while the client only listens: the
    client's read fails with a reset at once (not after the idle timeout)."""
    async def go():
        async def app(r, w):
            w.write(b"hello")
            await w.drain()
            await asyncio.sleep(0.2)
            _rst(w)
        relay, flow, task, (cr, cw), _u_w, srv = await _relay_pair(app)
        got = b""
        try:
            async with asyncio.timeout(3):
                while chunk := await cr.read(100):
                    got += chunk
            outcome = "eof"
        except ConnectionResetError:
            outcome = "reset"
        await asyncio.wait_for(task, 3)
        cw.close()
        srv.close()
        return got, outcome, relay
    got, outcome, relay = asyncio.run(go())
    assert (got, outcome) == (b"hello", "reset")
    assert len(relay.table) == 0


def test_relay_resets_the_destination_when_the_client_resets_during_a_download(monkeypatch):
    """A client that half-closed (sent its request) then resets mid-download: the error shows up
    writing towards the client, and the reset must go to the destination, not back to the client."""
    from vpnedu.proxy import tcp
    resets = []
    real_reset = tcp._reset
    monkeypatch.setattr(tcp, "_reset", lambda w: (resets.append(w), real_reset(w)))

    async def go():
        app_saw = asyncio.get_running_loop().create_future()

        async def app(r, w):
            await r.read()               # the request, up to the client's FIN
            try:
                while True:
                    w.write(bytes(65536))
                    await w.drain()
            except (ConnectionResetError, BrokenPipeError) as e:
                app_saw.set_result(type(e).__name__)
        relay, flow, task, (cr, cw), u_w, srv = await _relay_pair(app)
        cw.write(b"GET /big\r\n")
        cw.write_eof()
        while flow.bytes_down < 1 << 20:
            await cr.read(65536)
        await asyncio.sleep(0.2)        # stop reading: the relay's writes to the client back up
        _rst(cw)
        await asyncio.wait_for(task, 3)
        saw = await asyncio.wait_for(app_saw, 3)
        srv.close()
        return u_w, saw, relay
    u_w, saw, relay = asyncio.run(go())
    assert resets == [u_w]
    assert saw in ("ConnectionResetError", "BrokenPipeError")
    assert len(relay.table) == 0


def test_a_syn_retransmitted_after_the_accept_opens_no_second_upstream_connection():
    async def go():
        upstream_conns = []

        async def app(r, w):
            upstream_conns.append(w)
            await r.read()
            w.close()
        srv = await asyncio.start_server(app, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        delivered = []
        p = make_proxy(delivered, [])
        syn = build_tcp("10.0.0.2", 40002, "127.0.0.1", port, seq=7, flags=TCP_SYN)
        assert p.intercept("client", syn)
        await until(lambda: delivered)
        # The released SYN reaches the (here: plain) listener; its socket reads like TPROXY's.
        front = await asyncio.start_server(
            lambda r, w: p.tcp._accepted(r, _Spoofed(w, ("10.0.0.2", 40002), ("127.0.0.1", port))),
            "127.0.0.1", 0)
        cr, cw = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
        await until(lambda: p.flows() and p.flows()[0].state == "established")
        # A late copy of the client's SYN: the kernel's (challenge ACK), not a new flow.
        taken = p.intercept("client", syn)
        await asyncio.sleep(0.2)
        flows = p.flows()
        cw.close()
        await p.tcp.close()
        front.close()
        srv.close()
        return taken, flows, len(upstream_conns)
    taken, flows, conns = asyncio.run(go())
    assert not taken
    assert [f.state for f in flows] == ["established"]
    assert conns == 1


# ---------------------------------------------------------------------------- IPv6
TUNNEL6 = "fd00:76:70::/64"


def make_proxy6(delivered, injected, events=None):
    return Proxy(events or EventBus(), subnet="10.0.0.0/24", subnet6=TUNNEL6,
                 local_addresses={"203.0.113.2", "2001:db8:5::2"},
                 deliver=delivered.append, inject=injected.append, connect_timeout=2)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")


def test_the_proxy_takes_ipv6_syns_and_echo_requests_to_the_outside_only():
    p = make_proxy6([], [])
    client = "fd00:76:70::2"
    ack = build_tcp(client, 40000, "2001:db8:a::80", 80, seq=5, ack=9, flags=TCP_ACK)
    assert not p.intercept("c", ack)                                                # mid-connection
    assert not p.intercept("c", build_udp(client, 5000, "2001:db8:a::80", 53, b"q"))  # TPROXY's
    assert not p.intercept("c", build_icmp_echo(client, "fd00:76:70::3"))            # client to client
    assert not p.intercept("c", build_icmp_echo(client, "2001:db8:5::2"))            # the server itself
    assert not p.intercept("c", build_icmp_echo(client, "ff02::1"))                  # multicast
    assert not p.intercept("c", build_icmp_echo(client, "fe80::1"))                  # link-local
    assert not p.intercept("c", build_icmp_echo(client, "2001:db8:a::80", reply=True))   # a reply
    assert not p.intercept("c", build_tcp(client, 1, "fd00:76:70::1", 22, flags=TCP_SYN))
    # A proxy for an IPv4-only tunnel leaves IPv6 to the kernel (whose forward chain drops it).
    assert not make_proxy([], []).intercept("c", build_icmp_echo(client, "2001:db8:a::80"))


@needs_ipv6
def test_an_ipv6_syn_to_a_closed_port_is_answered_with_an_ipv6_reset():
    async def go():
        delivered, injected = [], []
        p = make_proxy6(delivered, injected)
        with socket.socket(socket.AF_INET6) as s:   # bound, never listening: certainly closed
            s.bind(("::1", 0))
            port = s.getsockname()[1]
            syn = build_tcp("fd00:76:70::2", 40000, "::1", port, seq=1000, flags=TCP_SYN, window=64240)
            assert p.intercept("client", syn)
            await until(lambda: injected)
        return delivered, injected, p, port
    delivered, injected, p, port = asyncio.run(go())
    assert delivered == []
    [rst] = injected
    assert rst[0] >> 4 == 6 and rst[6] == 6                         # IPv6, next header TCP
    assert (socket.inet_ntop(socket.AF_INET6, rst[8:24]), socket.inet_ntop(socket.AF_INET6, rst[24:40])) \
        == ("::1", "fd00:76:70::2")
    sport, dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", rst, 40)
    assert (sport, dport, seq, ack, flags) == (port, 40000, 0, 1001, TCP_RST | TCP_ACK)
    assert checksum6_ok(rst)
    assert len(p.table) == 0


@needs_ipv6
def test_an_ipv6_syn_to_an_open_port_goes_on_to_the_kernel_and_the_flow_reads_bracketed():
    async def go():
        delivered, events = [], EventBus()
        seen = []
        events.subscribe(seen.append, kinds=["proxy.flow"])
        p = make_proxy6(delivered, [], events)
        server = await asyncio.start_server(lambda r, w: w.close(), "::1", 0)
        port = server.sockets[0].getsockname()[1]
        syn = build_tcp("fd00:76:70::2", 40001, "::1", port, seq=7, flags=TCP_SYN)
        assert p.intercept("client", syn)
        await until(lambda: delivered)
        flows = p.flows()
        await p.tcp.close()
        server.close()
        await server.wait_closed()
        return delivered, flows, syn, port, seen
    delivered, flows, syn, port, seen = asyncio.run(go())
    assert delivered == [syn]
    [f] = flows
    assert (f.client, f.destination) == ("[fd00:76:70::2]:40001", f"[::1]:{port}")
    assert f.state == "syn-released" and f.proxy.startswith("[::1]:")
    assert [e.fields["destination"] for e in seen if e.kind == "proxy.flow.closed"] == [f"[::1]:{port}"]


def checksum6_ok(packet: bytes) -> bool:
    """An IPv6 packet's upper-layer checksum, recomputed here from RFC 8200 8.1's pseudo-header
    (source, destination, 32-bit length, three zero bytes, next header): the sum comes to zero."""
    length = struct.unpack_from("!H", packet, 4)[0]
    pseudo = packet[8:40] + struct.pack("!I", length) + bytes(3) + packet[6:7]
    return checksum(pseudo + packet[40:40 + length]) == 0


def test_ipv6_packets_the_proxy_builds_carry_the_pseudo_header_checksum():
    syn = build_tcp("fd00:76:70::2", 1234, "2001:db8:a::80", 81, seq=0xFFFFFFFF, flags=TCP_SYN)
    reply = build_icmp_echo("2001:db8:a::80", "fd00:76:70::2", ident=7, seq=3, payload=b"x" * 57, reply=True)
    unreachable = build_icmp_unreachable(syn, "2001:db8:5::2")
    udp = build_udp("fd00:76:70::2", 5353, "2001:db8:a::80", 53, b"query")
    for pkt in (syn, build_tcp_reset_for(syn), reply, unreachable, udp):
        assert pkt[0] >> 4 == 6 and len(pkt) == 40 + struct.unpack_from("!H", pkt, 4)[0]
        assert checksum6_ok(pkt), pkt.hex()
    assert reply[6] == 58 and reply[40:42] == bytes([129, 0])            # ICMPv6 echo reply
    assert struct.unpack_from("!HH", reply, 44) == (7, 3) and reply[48:] == b"x" * 57
    assert build_icmp_echo("fd00:76:70::2", "2001:db8:a::80")[40] == 128  # ... and request
    # Destination unreachable, address unreachable (type 1, code 3), from the server, to the
    # client, quoting the whole SYN (it is far below the 1280-byte minimum MTU).
    assert unreachable[40:42] == bytes([1, 3]) and unreachable[48:] == syn
    assert unreachable[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8:5::2")
    assert unreachable[24:40] == socket.inet_pton(socket.AF_INET6, "fd00:76:70::2")


def test_ipv6_checksums_agree_with_wiresharks_dissector(tmp_path):
    """tshark (not our code) verifies the checksums of what the proxy builds."""
    tshark = require_tool("tshark")
    syn = build_tcp("fd00:76:70::2", 1234, "2001:db8:a::80", 81, seq=41, flags=TCP_SYN)
    packets = [build_tcp_reset_for(syn),
               build_icmp_echo("2001:db8:a::80", "fd00:76:70::2", 9, 4, b"abc", reply=True),
               build_icmp_unreachable(syn, "2001:db8:5::2"),
               build_udp("fd00:76:70::2", 5353, "2001:db8:a::80", 53, b"query")]
    pcap = tmp_path / "v6.pcap"
    with open(pcap, "wb") as f:   # pcap, link type 101: raw IP packets, no link-layer header
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for i, pkt in enumerate(packets):
            f.write(struct.pack("=IIII", i, 0, len(pkt), len(pkt)) + pkt)
    r = subprocess.run([tshark, "-r", str(pcap), "-o", "tcp.check_checksum:TRUE",
                        "-o", "udp.check_checksum:TRUE", "-T", "fields", "-e", "tcp.checksum.status",
                        "-e", "icmpv6.checksum.status",
                        "-e", "udp.checksum.status", "-e", "icmpv6.type"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    # Status 1 is "Good": the reset's TCP, the echo reply's ICMPv6 (type 129), the unreachable's
    # ICMPv6 (type 1) -- and the SYN it quotes, dissected too -- and the UDP datagram's.
    assert rows == [["1", "", "", ""], ["", "1", "", "129"], ["1", "1", "", "1"], ["", "", "1", ""]], rows


def test_the_icmpv6_filter_passes_only_echo_replies():
    from vpnedu.proxy.icmp import icmp6_filter
    words = struct.unpack("=8I", icmp6_filter(129))
    # 256 bits, one per type, a set bit blocks: only bit 129 (word 4, bit 1) is clear.
    assert words == (0xFFFFFFFF,) * 4 + (0xFFFFFFFD,) + (0xFFFFFFFF,) * 3
    passing = [t for t in range(256) if not words[t >> 5] >> (t & 31) & 1]
    assert passing == [129]
