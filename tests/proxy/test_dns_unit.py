"""The DNS forwarder without root: the header rules, the TCP framing, SERVFAIL, hostile input, and
the forwarder itself on loopback with a fake upstream (127.0.0.1, ports chosen by the kernel)."""

import asyncio
import socket
import struct

import pytest

from vpnedu.events import CATALOGUE, EventBus, EventLog
from vpnedu.proxy import dns
from vpnedu.proxy.flows import FlowTable


def query(qid=0x1234, name=b"app.lab.test", flags=0x0100, qdcount=1) -> bytes:
    q = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0" + struct.pack("!HH", 1, 1)
    return struct.pack("!HHHHHH", qid, flags, qdcount, 0, 0, 0) + q


def answer(q: bytes, tc=False, pad=0) -> bytes:
    flags = 0x8180 | (0x0200 if tc else 0)
    return q[:2] + struct.pack("!H", flags) + q[4:] + b"\0" * pad


def test_check_query_refuses_short_long_and_responses():
    assert dns.check_query(query()) is None
    assert "too short" in dns.check_query(b"\x12\x34\x01")
    assert "too long" in dns.check_query(query() + b"\0" * dns.MAX_QUERY)
    assert "response" in dns.check_query(answer(query()))


def test_id_and_tc():
    q = query(0xBEEF)
    assert dns.query_id(q) == 0xBEEF
    assert not dns.truncated(answer(q)) and dns.truncated(answer(q, tc=True))


def test_servfail_keeps_id_opcode_rd_and_question():
    q = query(0xABCD)
    r = dns.servfail(q)
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", r)
    assert qid == 0xABCD and flags & 0x8000 and flags & 0x0100 and flags & 0x0F == 2
    assert (qd, an, ns, ar) == (1, 0, 0, 0) and r[12:] == q[12:]
    # No RD in the query: none in the answer; a question that does not parse: header only.
    assert not struct.unpack_from("!H", dns.servfail(query(flags=0)), 2)[0] & 0x0100
    broken = query()[:15]
    r = dns.servfail(broken)
    assert len(r) == 12 and struct.unpack_from("!H", r, 4)[0] == 0 and r[:2] == broken[:2]


def test_tcp_framing():
    m = query()
    framed = dns.frame(m)
    assert framed[:2] == struct.pack("!H", len(m))
    assert dns.unframe(framed + framed[:5]) == (m, framed[:5])
    assert dns.unframe(framed[:-1]) == (None, framed[:-1])
    assert dns.unframe(b"\x00") == (None, b"\x00")
    with pytest.raises(ValueError):
        dns.frame(b"\0" * 65536)


def test_upstreams_skip_the_tunnel_and_default_to_localhost(tmp_path):
    f = tmp_path / "resolv.conf"
    f.write_text("# c\nnameserver 10.0.0.1\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nsearch x\n"
                 "nameserver bogus\nnameserver 192.0.2.1\n")
    assert dns.upstreams(f, skip=["10.0.0.1"]) == ["192.0.2.1", "fe80::1"]
    f.write_text("search x\n")
    assert dns.upstreams(f) == ["127.0.0.1"]
    assert dns.upstreams(tmp_path / "missing") == ["127.0.0.1"]
    f.write_text("nameserver 10.0.0.1\n")
    assert dns.upstreams(f, skip=["10.0.0.1"]) == []


def test_event_kinds_are_in_the_catalogue():
    for k in ("proxy.dns.listening", "proxy.dns.dropped", "proxy.dns.servfail"):
        assert k in CATALOGUE


class FakeUpstream:
    """A resolver on 127.0.0.1 over UDP and TCP: answers each query (TC set if ``tc``), or nothing."""

    def __init__(self, tc=False, silent=False, wrong_id_first=False):
        self.tc, self.silent, self.wrong_id_first = tc, silent, wrong_id_first
        self.seen: list[tuple[str, bytes]] = []

    async def start(self, port=0):
        loop = asyncio.get_running_loop()
        up = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, t):
                self.t = t

            def datagram_received(self, data, addr):
                up.seen.append(("udp", data))
                if up.silent:
                    return
                if up.wrong_id_first:
                    self.t.sendto(answer(b"\0\0" + data[2:]), addr)
                self.t.sendto(answer(data, tc=up.tc), addr)

        self.udp = self.tcp = None

        async def on_tcp(r, w):
            while True:
                try:
                    n = struct.unpack("!H", await r.readexactly(2))[0]
                    data = await r.readexactly(n)
                except asyncio.IncompleteReadError:
                    break
                up.seen.append(("tcp", data))
                w.write(dns.frame(answer(data, pad=1000)))
                await w.drain()
            w.close()
        # One port number for both: the kernel picks a free UDP port, which another program may
        # hold for TCP -- then pick again.
        for _ in range(50):
            self.udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", port))
            self.port = self.udp.get_extra_info("sockname")[1]
            try:
                self.tcp = await asyncio.start_server(on_tcp, "127.0.0.1", self.port)
                return
            except OSError:
                self.udp.close()
                if port:
                    raise
        raise OSError("no port free for both UDP and TCP on 127.0.0.1")

    def close(self):
        self.udp.close()
        self.tcp.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _forwarder(upstream_port, allowed=lambda a: "alice", timeout=1.0):
    bus = EventBus()
    log = EventLog(bus)
    table = FlowTable(bus)
    fw = dns.DnsForwarder(table, addresses=["127.0.0.1"], servers=["127.0.0.1"], allowed=allowed, port=0,
                          timeout=timeout)
    fw.bind()
    await fw.start()
    return fw, log


async def _udp_ask(port, data, wait=3.0):
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect(("127.0.0.1", port))
    s.send(data)
    try:
        return await asyncio.wait_for(loop.sock_recv(s, 65535), wait)
    except asyncio.TimeoutError:
        return None
    finally:
        s.close()


@pytest.fixture
def upstream_port(monkeypatch):
    """The forwarder asks port 53 of its upstreams: here the fake upstream's port instead."""
    box = {}

    def set_port(p):
        monkeypatch.setattr(dns, "PORT", p)
        box["port"] = p
    return set_port


def _kinds(log):
    return log.kinds()


def test_udp_query_relayed_with_its_id_and_tc_passed_on(upstream_port):
    async def main():
        up = FakeUpstream(tc=True, wrong_id_first=True)
        await up.start()
        upstream_port(up.port)
        fw, log = await _forwarder(up.port)
        port = fw.udp[0].getsockname()[1]
        q = query(0x4242)
        r = await _udp_ask(port, q)
        assert r == answer(q, tc=True)            # the right id (the wrong-id datagram ignored), TC kept
        assert up.seen == [("udp", q)]            # sent upstream unchanged
        closed = [e for e in log.events if e.kind == "proxy.flow.closed"]
        assert closed and closed[-1].fields["proto"] == "dns" and "TC set" in closed[-1].fields["reason"]
        assert closed[-1].fields["bytes_up"] == len(q) and closed[-1].fields["bytes_down"] == len(r)
        await fw.close()
        up.close()
    run(main())


def test_tcp_queries_go_upstream_over_tcp_with_length_prefix(upstream_port):
    async def main():
        up = FakeUpstream()
        await up.start()
        upstream_port(up.port)
        fw, log = await _forwarder(up.port)
        port = fw.tcp[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        q1, q2 = query(1), query(2, b"other.lab.test")
        w.write(dns.frame(q1) + dns.frame(q2)[:3])     # the second query in two pieces
        await w.drain()
        await asyncio.sleep(0.1)
        w.write(dns.frame(q2)[3:])
        for q in (q1, q2):
            n = struct.unpack("!H", await r.readexactly(2))[0]
            assert await r.readexactly(n) == answer(q, pad=1000)
        assert up.seen == [("tcp", q1), ("tcp", q2)]
        w.close()
        await fw.close()
        up.close()
    run(main())


def test_servfail_when_every_upstream_is_silent(upstream_port):
    async def main():
        up = FakeUpstream(silent=True)
        await up.start()
        upstream_port(up.port)
        fw, log = await _forwarder(up.port, timeout=0.3)
        q = query(0x7777)
        r = await _udp_ask(fw.udp[0].getsockname()[1], q)
        assert r == dns.servfail(q) and dns.rcode(r) == 2 and dns.query_id(r) == 0x7777
        assert "proxy.dns.servfail" in _kinds(log) and fw.counters["servfail"] == 1
        await fw.close()
        up.close()
    run(main())


def test_hostile_and_outside_queries_get_nothing_and_an_event(upstream_port):
    async def main():
        up = FakeUpstream()
        await up.start()
        upstream_port(up.port)
        fw, log = await _forwarder(up.port, allowed=lambda a: None)
        port = fw.udp[0].getsockname()[1]
        assert await _udp_ask(port, query(), wait=0.5) is None            # not a tunnel peer
        fw.allowed = lambda a: "alice"
        assert await _udp_ask(port, b"\x01\x02\x03", wait=0.5) is None     # short
        assert await _udp_ask(port, query() + b"\0" * 5000, wait=0.5) is None   # oversize
        assert await _udp_ask(port, answer(query()), wait=0.5) is None    # a response, not a query
        reasons = [e.fields["reason"] for e in log.events if e.kind == "proxy.dns.dropped"]
        assert len(reasons) == 4 and "AllowedIPs" in reasons[0] and "too short" in reasons[1]
        assert "too long" in reasons[2] and "response" in reasons[3]
        # Over TCP: an oversize length prefix closes the connection, with the event.
        r, w = await asyncio.open_connection("127.0.0.1", fw.tcp[0].getsockname()[1])
        w.write(struct.pack("!H", 60000))
        await w.drain()
        assert await asyncio.wait_for(r.read(), 3) == b""
        assert "too long" in [e for e in log.events if e.kind == "proxy.dns.dropped"][-1].fields["reason"]
        assert up.seen == []
        await fw.close()
        up.close()
    run(main())


def test_a_taken_port_is_one_line_naming_the_key():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        fw = dns.DnsForwarder(FlowTable(EventBus()), addresses=["127.0.0.1"], servers=[], allowed=lambda a: "x",
                              port=s.getsockname()[1])
        with pytest.raises(Exception) as e:
            fw.bind()
        text = str(e.value)
        assert "DNSForwarder = false" in text and "\n" not in text
        assert fw.sockets() == [] or all(x.fileno() < 0 for x in fw.sockets())
    finally:
        s.close()


def test_an_ipv6_listener_answers_too(upstream_port):
    """recvfrom on an IPv6 socket gives (host, port, flowinfo, scope_id): the flow takes host and port."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main():
        up = FakeUpstream()
        await up.start()
        upstream_port(up.port)
        fw = dns.DnsForwarder(FlowTable(EventBus()), addresses=["::1"], servers=["127.0.0.1"],
                              allowed=lambda a: "alice", port=0, timeout=1.0)
        try:
            fw.bind()
        except Exception as e:
            pytest.skip(f"no ::1 here: {e}")
        await fw.start()
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(("::1", fw.udp[0].getsockname()[1]))
        q = query(0x6666)
        s.send(q)
        assert await asyncio.wait_for(loop.sock_recv(s, 65535), 3) == answer(q)
        s.close()
        await fw.close()
        up.close()
    run(main())
