"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): the datagram header on hostile input, and real
associations on loopback sockets (no root): a datagram relayed to a UDP echo server and its
answer wrapped back, strangers dropped, the end of the control connection closing the relay."""

import asyncio
import socket

import pytest

from vpnedu.events import EventBus
from vpnedu.proxy import socks5 as s5
from vpnedu.proxy import socks5_address as sa
from vpnedu.proxy import socks5_udp as su
from vpnedu.proxy.explicit import bind_listener
from vpnedu.proxy.flows import FlowTable


# ---------------------------------------------------------------------------- the header
def test_header_layout_and_round_trip():
    # RSV 00 00, FRAG 00, ATYP 01, 192.0.2.1, port 53, then the payload (section 7's table).
    assert su.build_udp("192.0.2.1", 53, b"q") == b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35q"
    v6 = su.build_udp("2001:db8:a::80", 7, b"hi")
    assert v6[:4] == b"\x00\x00\x00\x04" and v6[4:20] == socket.inet_pton(socket.AF_INET6, "2001:db8:a::80")
    assert su.build_udp("app.lab", 53, b"") == b"\x00\x00\x00\x03\x07app.lab\x00\x35"
    for host, atyp in (("192.0.2.1", 1), ("2001:db8:a::80", 4), ("app.socks.lab", 3)):
        payload = bytes(range(256)) * 3
        assert su.parse_udp(su.build_udp(host, 5353, payload)) == su.UdpDatagram(host, 5353, atyp, payload)
    assert su.parse_udp(su.build_udp("192.0.2.1", 9)).data == b""          # an empty datagram is one
    with pytest.raises(ValueError):
        su.build_udp("x" * 256, 53)


V4 = b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35"


@pytest.mark.parametrize("data,why", [
    (b"", "shorter than a header"),
    (b"\x00\x00\x00", "shorter than a header"),
    (b"\x00\x01" + V4[2:], "RSV is 0001"),
    (b"\xff\xff" + V4[2:], "RSV is ffff"),
    (b"\x00\x00\x01" + V4[3:], "FRAG 1: fragments are not supported"),
    (b"\x00\x00\x7f" + V4[3:], "FRAG 127"),
    (b"\x00\x00\x00\x02" + V4[4:], "address type 2"),
    (b"\x00\x00\x00\x09" + V4[4:], "address type 9"),
    (V4[:9], "truncated"),                                          # half a port
    (b"\x00\x00\x00\x04" + bytes(15), "truncated"),                 # 15 of an IPv6 address's 16 bytes
    (b"\x00\x00\x00\x03", "truncated: no name length"),
    (b"\x00\x00\x00\x03\x09app.lab\x00\x35", "truncated"),         # the name is 2 bytes short
    (b"\x00\x00\x00\x03\x00\x00\x35", "is not a domain name"),     # empty
    (b"\x00\x00\x00\x03\x03a b\x00\x35", "is not a domain name"),
    (b"\x00\x00\x00\x03\x02\xff\xfe\x00\x35", "is not a domain name"),
    (V4[:8] + b"\x00\x00payload", "destination port 0"),
])
def test_header_hostile(data, why):
    with pytest.raises(su.UdpHeaderError, match=why):
        su.parse_udp(data)


def test_normal_address():
    assert su.normal_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert su.normal_address("2001:DB8:0:0::1") == "2001:db8::1"


# ---------------------------------------------------------------------------- associations, on loopback
@pytest.fixture
def lift_rules(monkeypatch):
    """The loopback addresses stand for the outside here; 127.0.0.9 stays refused."""
    monkeypatch.setattr(sa, "allowed_destination", lambda a: not a.startswith("127.0.0.9"))


ECHO_AT = ("127.0.0.2", "127.0.0.1", "127.0.0.3", "127.0.0.4", "::1")


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        self.t.sendto(b"echo:" + data, addr)


class Harness:
    """A SOCKS5 server on 127.0.0.1 (its "tunnel address"), whose only peer source is 127.0.0.1,
    and a UDP echo server on one port of several loopback addresses (each socket bound to its
    address, so that it answers from the address it was asked at, as a real server does)."""

    def __init__(self, users=None):
        self.events = EventBus()
        self.seen: dict[str, list[dict]] = {"proxy.flow.closed": [], "proxy.socks5.udp.dropped": []}
        self.events.subscribe(lambda ev: self.seen[ev.kind].append(ev.fields), kinds=list(self.seen))
        self.table = FlowTable(self.events)
        sock = bind_listener("127.0.0.1", 0, "SocksPort")
        self.port = sock.getsockname()[1]
        self.server = s5.Socks5Server(self.table, [sock], peer_of=lambda a: "p1", users=users)

    async def start(self):
        await self.server.start()
        loop = asyncio.get_running_loop()
        for _ in range(20):
            socks = []
            try:
                for a in ECHO_AT:
                    socks.append(socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM))
                    socks[-1].bind((a, socks[0].getsockname()[1] if len(socks) > 1 else 0))
                break
            except OSError:                  # the port is taken on one of the addresses: another one
                for s in socks:
                    s.close()
        self.echo_port = socks[0].getsockname()[1]
        self.echo = [(await loop.create_datagram_endpoint(Echo, sock=s))[0] for s in socks]

    async def associate(self, port: int, login: bytes = b""):
        """A control connection with a UDP ASSOCIATE for client port ``port`` -> (reader, writer,
        the relay's address from the reply)."""
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        if login:
            w.write(b"\x05\x01\x02")
            assert await r.readexactly(2) == b"\x05\x02"
            w.write(login)
            assert await r.readexactly(2) == b"\x01\x00"
        else:
            w.write(b"\x05\x01\x00")
            assert await r.readexactly(2) == b"\x05\x00"
        w.write(b"\x05\x03\x00\x01" + bytes(4) + port.to_bytes(2, "big"))
        rep = await asyncio.wait_for(r.readexactly(10), 5)
        assert rep[:4] == b"\x05\x00\x00\x01"
        return r, w, (socket.inet_ntoa(rep[4:8]), int.from_bytes(rep[8:], "big"))

    async def close(self):
        await self.server.close()
        for t in self.echo:
            t.close()


def udp(address: str = "127.0.0.1", connect=None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 0))
    s.setblocking(False)
    if connect:
        s.connect(connect)
    return s


async def answer(s: socket.socket, wait: float = 2.0) -> bytes | None:
    """The next datagram on ``s``, or ``None`` if none comes within ``wait`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 70000), wait)
    except asyncio.TimeoutError:
        return None


async def until(pred, what: str, timeout: float = 5.0):
    for _ in range(int(timeout / 0.02)):
        if v := pred():
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_association_relays_both_ways_and_ends_with_the_control_connection(lift_rules):
    async def main():
        h = Harness()
        await h.start()
        client = udp()
        r, w, relay = await h.associate(client.getsockname()[1])
        assert relay[0] == "127.0.0.1"             # on the address the control connection arrived on
        client.connect(relay)
        client.send(su.build_udp("127.0.0.2", h.echo_port, b"ping"))
        assert await answer(client) == su.build_udp("127.0.0.2", h.echo_port, b"echo:ping")
        (row,) = h.table.snapshot()
        assert (row.proto, row.client, row.destination) == \
            ("socks5-udp", f"127.0.0.1:{client.getsockname()[1]}", f"127.0.0.2:{h.echo_port}")
        assert row.proxy.startswith("127.0.0.1:") and (row.bytes_up, row.bytes_down) == (4, 9)
        # IPv6 and a name (resolved by the server), from the same association.
        client.send(su.build_udp("::1", h.echo_port, b"six"))
        assert await answer(client) == su.build_udp("::1", h.echo_port, b"echo:six")
        client.send(su.build_udp("localhost", h.echo_port, b"name"))
        got = await answer(client)
        assert su.parse_udp(got).data == b"echo:name" and su.parse_udp(got).host in ("127.0.0.1", "::1")
        assert len(h.table.snapshot()) == 3
        # Strangers: another port of the client's address, another address, a reply from an
        # address the client has not sent to -- none is answered, each is dropped with a reason.
        other_port = udp(connect=relay)
        other_addr = udp("127.0.0.3", connect=relay)
        for s in (other_port, other_addr):
            s.send(su.build_udp("127.0.0.2", h.echo_port, b"sneak"))
        stranger = udp("127.0.0.2")
        stranger.sendto(b"unasked", ("127.0.0.1", int(row.proxy.rsplit(":", 1)[1])))
        # Hostile datagrams from the client itself: dropped, and the relay still works after them.
        for bad in (b"", b"\x00", b"\x00\x00\x01" + su.build_udp("127.0.0.2", h.echo_port, b"x")[3:],
                    b"\x01\x00" + su.build_udp("127.0.0.2", h.echo_port, b"x")[2:], b"\x00\x00\x00\x05" + bytes(64),
                    su.build_udp("127.0.0.9", h.echo_port, b"refused")):
            client.send(bad)
        client.send(su.build_udp("127.0.0.2", h.echo_port, b"still"))
        assert await answer(client) == su.build_udp("127.0.0.2", h.echo_port, b"echo:still")
        assert await answer(other_port, 0.3) is None and await answer(other_addr, 0.3) is None
        assert await answer(client, 0.3) is None
        reasons = [d["reason"] for d in h.seen["proxy.socks5.udp.dropped"]]
        for want in ("source port", "not the association's client (127.0.0.1)", "reply from an address the client has not",
                     "FRAG 1", "RSV is 0100", "address type 5", "shorter than a header", "not allowed: 127.0.0.9"):
            assert any(want in x for x in reasons), (want, reasons)
        # The end of the control connection ends the association: the flows close with their
        # counts, and the relay socket is gone (the kernel answers a datagram to it with ICMP
        # port unreachable, which a connected socket reads as ECONNREFUSED).
        w.close()
        await until(lambda: not h.table.flows, "the flows to close")
        closed = {c["destination"]: c for c in h.seen["proxy.flow.closed"]}
        c = closed[f"127.0.0.2:{h.echo_port}"]
        assert c["proto"] == "socks5-udp" and (c["bytes_up"], c["bytes_down"]) == (4 + 5, 9 + 10)
        assert c["reason"].startswith("control connection closed; ") and "dropped" in c["reason"]
        assert not h.server.associations
        client.send(su.build_udp("127.0.0.2", h.echo_port, b"late"))
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 100), 2)
        for s in (client, other_port, other_addr, stranger):
            s.close()
        await h.close()
    run(main())


def test_first_port_login_eviction_and_idle(lift_rules, monkeypatch):
    monkeypatch.setattr(su, "MAX_DESTINATIONS", 2)

    async def main():
        h = Harness(users={b"alice": b"secret"})
        h.server.udp_idle = 0.6
        await h.start()
        r, w, relay = await h.associate(0, login=b"\x01\x05alice\x06secret")   # no port: the first one counts
        client, second = udp(connect=relay), udp(connect=relay)
        client.send(su.build_udp("127.0.0.2", h.echo_port, b"a"))
        assert await answer(client) == su.build_udp("127.0.0.2", h.echo_port, b"echo:a")
        second.send(su.build_udp("127.0.0.2", h.echo_port, b"b"))
        assert await answer(second, 0.3) is None
        assert "is not the association's client port" in h.seen["proxy.socks5.udp.dropped"][-1]["reason"]
        # A third destination with room for two: the one silent longest is forgotten.
        for dst in ("127.0.0.3", "127.0.0.4"):
            client.send(su.build_udp(dst, h.echo_port, b"c"))
            assert su.parse_udp(await answer(client)).host == dst
        assert sorted(f.destination for f in h.table.snapshot()) == \
            [f"127.0.0.3:{h.echo_port}", f"127.0.0.4:{h.echo_port}"]
        assert "forgotten" in h.seen["proxy.flow.closed"][-1]["reason"]
        # Then silence: after udp_idle the server ends the association and closes the connection.
        assert await asyncio.wait_for(r.read(), 5) == b""
        await until(lambda: not h.table.flows, "the flows to close")
        assert h.seen["proxy.flow.closed"][-1]["reason"].startswith("idle 0.6 s")
        w.close()
        client.close()
        second.close()
        await h.close()
    run(main())


def test_association_limit_and_server_stop(lift_rules, monkeypatch):
    monkeypatch.setattr(su, "MAX_ASSOCIATIONS", 1)

    async def main():
        h = Harness()
        await h.start()
        client = udp()
        r, w, relay = await h.associate(client.getsockname()[1])
        client.connect(relay)
        client.send(su.build_udp("127.0.0.2", h.echo_port, b"x"))
        assert await answer(client)
        # One more association than the server allows: reply 01, then the connection closes.
        r2, w2 = await asyncio.open_connection("127.0.0.1", h.port)
        w2.write(b"\x05\x01\x00" + b"\x05\x03\x00\x01" + bytes(6))
        assert await asyncio.wait_for(r2.read(), 5) == b"\x05\x00" + s5.reply(s5.GENERAL_FAILURE)
        w2.close()
        assert len(h.server.associations) == 1
        await h.close()
        assert not h.table.flows and not h.server.associations
        assert h.seen["proxy.flow.closed"][-1]["reason"] == "server stopping"
        client.send(b"\x00")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 100), 2)
        client.close()
        w.close()
    run(main())


@pytest.mark.root
def test_a_name_takes_the_first_address_the_server_has_a_route_to():
    """In a network namespace with only loopback up: no route to 2001:db8::1 or 192.0.2.1, one
    to 127.0.0.1 -- what the association uses to skip an IPv6 answer on an IPv4-only server."""
    import subprocess
    import sys
    code = ("from vpnedu.proxy.socks5_udp import routable; "
            "print(routable('2001:db8::1'), routable('192.0.2.1'), routable('127.0.0.1'), routable('::1'))")
    r = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"', sys.executable, code],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["False", "False", "True", "True"], r.stdout + r.stderr
