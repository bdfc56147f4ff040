"""SOCKS5 (RFC 1928, RFC 1929): the pure parsers on hostile input, and the real server on
loopback sockets (no root): a CONNECT relayed to an echo server, the reply codes of failures,
the login, and a source outside every peer's AllowedIPs."""

import asyncio
import socket

import pytest

from vpnedu.events import EventBus
from vpnedu.proxy import socks5 as s5
from vpnedu.proxy.explicit import ExplicitProxies, bind_listener
from vpnedu.proxy.flows import FlowTable


# ---------------------------------------------------------------------------- the parsers
def test_greeting():
    assert s5.parse_greeting(b"\x05\x02\x00\x02") == [0, 2]
    for short in (b"", b"\x05", b"\x05\x02\x00"):
        assert s5.parse_greeting(short) is None
    for bad, why in ((b"\x04\x01\x00", "version 4"), (b"\x05\x00", "no methods"),
                     (b"\x05\x01\x00\x00", "bytes after")):
        with pytest.raises(s5.Socks5Error, match=why) as e:
            s5.parse_greeting(bad)
        assert e.value.reply == b"\x05\xff"


def test_choose_method():
    assert s5.choose_method([0], need_login=False) == s5.NO_AUTH
    assert s5.choose_method([0], need_login=True) == s5.NO_ACCEPTABLE   # no way around the login
    assert s5.choose_method([0, 2], need_login=True) == s5.USERPASS
    assert s5.choose_method([2], need_login=False) == s5.NO_ACCEPTABLE


def test_login():
    assert s5.parse_login(b"\x01\x05alice\x06secret") == (b"alice", b"secret")
    assert s5.parse_login(b"\x01\x01a\x00") == (b"a", b"")
    for short in (b"\x01", b"\x01\x05ali", b"\x01\x05alice", b"\x01\x05alice\x06sec"):
        assert s5.parse_login(short) is None
    for bad in (b"\x05\x01a\x01b", b"\x01\x00\x01b", b"\x01\x01a\x01bX"):
        with pytest.raises(s5.Socks5Error) as e:
            s5.parse_login(bad)
        assert e.value.reply == b"\x01\x01"
    users = {b"alice": b"secret", b"bob": b"pw"}
    assert s5.check_login(users, b"alice", b"secret") and s5.check_login(users, b"bob", b"pw")
    assert not s5.check_login(users, b"alice", b"pw") and not s5.check_login(users, b"eve", b"secret")
    assert not s5.check_login({}, b"alice", b"secret")


def test_request():
    port = (8080).to_bytes(2, "big")
    assert s5.parse_request(b"\x05\x01\x00\x01" + bytes([192, 0, 2, 80]) + port) == \
        s5.Request(1, "192.0.2.80", 8080, 1)
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8:a::80")
    assert s5.parse_request(b"\x05\x01\x00\x04" + v6 + port).host == "2001:db8:a::80"
    assert s5.parse_request(b"\x05\x01\x00\x03\x0bexample.org" + port).host == "example.org"
    assert s5.parse_request(b"\x05\x03\x00\x01" + bytes(4) + port).command == s5.UDP_ASSOCIATE
    full = b"\x05\x01\x00\x03\x0bexample.org" + port
    for i in range(len(full)):
        assert s5.parse_request(full[:i]) is None          # truncated: wait for more, never guess


@pytest.mark.parametrize("data,code", [
    (b"\x04\x01\x00\x01" + bytes(6), s5.GENERAL_FAILURE),              # wrong version
    (b"\x05\x01\x00\x02" + bytes(6), s5.ADDRESS_TYPE_NOT_SUPPORTED),   # no ATYP 2
    (b"\x05\x01\x00\x09" + bytes(6), s5.ADDRESS_TYPE_NOT_SUPPORTED),
    (b"\x05\x01\x00\x01" + bytes(7), s5.GENERAL_FAILURE),              # a byte too many
    (b"\x05\x01\x00\x03\x00\x00\x50", s5.HOST_UNREACHABLE),            # an empty name
    (b"\x05\x01\x00\x03\x03a b\x00\x50", s5.HOST_UNREACHABLE),         # not a host name
    (b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50", s5.HOST_UNREACHABLE),
])
def test_request_errors(data, code):
    with pytest.raises(s5.Socks5Error) as e:
        s5.parse_request(data)
    assert e.value.reply[:2] == bytes([5, code]) and len(e.value.reply) == 10


def test_reply_and_rules():
    assert s5.reply(0, ("203.0.113.2", 51044)) == b"\x05\x00\x00\x01" + bytes([203, 0, 113, 2]) + \
        (51044).to_bytes(2, "big")
    assert s5.reply(5) == b"\x05\x05\x00\x01" + bytes(6)
    assert s5.reply(0, ("2001:db8::2", 1))[3] == s5.ATYP_IPV6 and len(s5.reply(0, ("2001:db8::2", 1))) == 22
    for no in ("127.0.0.1", "::1", "0.0.0.0", "224.0.0.1", "fe80::1", "::ffff:127.0.0.1"):
        assert not s5.allowed_destination(no)
    assert s5.allowed_destination("192.0.2.80") and s5.allowed_destination("2001:db8:a::80")
    assert s5.error_reply(ConnectionRefusedError()) == s5.REFUSED
    assert s5.error_reply(asyncio.TimeoutError()) == s5.HOST_UNREACHABLE
    assert s5.error_reply(OSError(101, "Network is unreachable")) == s5.NETWORK_UNREACHABLE
    assert s5.error_reply(socket.gaierror(-2, "Name or service not known")) == s5.HOST_UNREACHABLE
    assert s5.error_reply(OSError(5, "EIO")) == s5.GENERAL_FAILURE


# ---------------------------------------------------------------------------- the server, on loopback
class Harness:
    """A SOCKS5 server on 127.0.0.1 whose only "peer" source is 127.0.0.1; an echo server on
    127.0.0.2 stands for the destination (the rules refuse loopback, so the test lifts them)."""

    def __init__(self, users=None, peer="p1"):
        self.events = EventBus()
        self.refused = []
        self.events.subscribe(lambda ev: self.refused.append(ev.fields), kinds="proxy.refused")
        self.table = FlowTable(self.events)
        self.sock = bind_listener("127.0.0.1", 0, "SocksPort")
        self.port = self.sock.getsockname()[1]
        self.server = s5.Socks5Server(self.table, [self.sock], peer_of=lambda a: peer, users=users)


@pytest.fixture
def lift_rules(monkeypatch):
    monkeypatch.setattr(s5, "allowed_destination", lambda a: not a.startswith("127.0.0.9"))


async def _echo_server():
    async def echo(r, w):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()
    srv = await asyncio.start_server(echo, "127.0.0.2", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def _talk(port, *messages, read=None):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    for m, n in messages:
        w.write(m)
        got += await asyncio.wait_for(r.readexactly(n), 5) if n else b""
    rest = await asyncio.wait_for(r.read(), 5) if read == "eof" else b""
    w.close()
    return got, rest


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_connect_relays_and_counts(lift_rules):
    async def main():
        h = Harness()
        await h.server.start()
        srv, eport = await _echo_server()
        r, w = await asyncio.open_connection("127.0.0.1", h.port)
        w.write(b"\x05\x01\x00")
        assert await r.readexactly(2) == b"\x05\x00"
        w.write(b"\x05\x01\x00\x01" + bytes([127, 0, 0, 2]) + eport.to_bytes(2, "big") + b"early bytes ")
        rep = await r.readexactly(10)
        # BND.ADDR:PORT is the server's own end towards the destination (what the destination sees).
        (f,) = h.table.snapshot()
        assert rep[:4] == b"\x05\x00\x00\x01" and f.proxy == f"127.0.0.1:{int.from_bytes(rep[8:], 'big')}"
        payload = bytes(range(256)) * 4096
        w.write(payload)
        got = await r.readexactly(len(b"early bytes ") + len(payload))
        assert got == b"early bytes " + payload              # bytes sent right after the request survive
        (f,) = h.table.snapshot()
        assert f.proto == "socks5" and f.peer == "p1" and f.bytes_up == len(got)
        w.write_eof()
        assert await r.read() == b""
        w.close()
        for _ in range(50):
            if not h.table.flows:
                break
            await asyncio.sleep(0.05)
        assert not h.table.flows and h.table.closed_total == 1
        await h.server.close()
        srv.close()
    run(main())


def test_failures_answer_the_rfc_code(lift_rules):
    async def main():
        h = Harness()
        await h.server.start()
        closed = socket.socket()
        closed.bind(("127.0.0.2", 0))
        cport = closed.getsockname()[1]
        closed.close()                                       # nobody listens there: a RST
        req = b"\x05\x01\x00\x01" + bytes([127, 0, 0, 2]) + cport.to_bytes(2, "big")
        got, rest = await _talk(h.port, (b"\x05\x01\x00", 2), (req, 10), read="eof")
        assert got[2:4] == b"\x05\x05" and rest == b""       # refused, then closed
        no = b"\x05\x01\x00\x01" + bytes([127, 0, 0, 9]) + b"\x00\x50"
        got, _ = await _talk(h.port, (b"\x05\x01\x00", 2), (no, 10), read="eof")
        assert got[2:4] == b"\x05\x02"                       # not allowed by the rules
        name = b"\x05\x01\x00\x03\x0fno-such.invalid\x00\x50"
        got, _ = await _talk(h.port, (b"\x05\x01\x00", 2), (name, 10), read="eof")
        assert got[2:4] == b"\x05\x04"                       # does not resolve: host unreachable
        for cmd in (2, 9):
            got, _ = await _talk(h.port, (b"\x05\x01\x00", 2), (bytes([5, cmd, 0, 1, 1, 2, 3, 4, 0, 80]), 10))
            assert got[2:4] == b"\x05\x07"                   # BIND, unknown (UDP ASSOCIATE: test_socks5_udp.py)
        got, _ = await _talk(h.port, (b"\x05\x01\x00", 2), (b"\x05\x01\x00\x07" + bytes(6), 10))
        assert got[2:4] == b"\x05\x08"
        got, rest = await _talk(h.port, (b"\x04\x01\x00\x50\x01\x02\x03\x04\x00", 2), read="eof")
        assert got == b"\x05\xff" and rest == b""            # SOCKS4 is answered, then closed
        await h.server.close()
    run(main())


def test_login_required(lift_rules):
    async def main():
        srv, eport = await _echo_server()
        h = Harness(users={b"alice": b"secret"})
        await h.server.start()
        got, _ = await _talk(h.port, (b"\x05\x01\x00", 2), read="eof")
        assert got == b"\x05\xff"                            # "no auth" alone is not enough
        got, rest = await _talk(h.port, (b"\x05\x02\x00\x02", 2), (b"\x01\x05alice\x05wrong", 2), read="eof")
        assert got == b"\x05\x02\x01\x01" and rest == b""    # RFC 1929 failure, then closed
        req = b"\x05\x01\x00\x01" + bytes([127, 0, 0, 2]) + eport.to_bytes(2, "big")
        got, _ = await _talk(h.port, (b"\x05\x02\x00\x02", 2), (b"\x01\x05alice\x06secret", 2), (req, 10),
                             (b"ping", 4))
        assert got[:4] == b"\x05\x02\x01\x00" and got[4:6] == b"\x05\x00" and got[-4:] == b"ping"
        await h.server.close()
        srv.close()
    run(main())


def test_outsider_and_slow_client(monkeypatch):
    monkeypatch.setattr(s5, "HANDSHAKE_TIMEOUT", 0.5)

    async def main():
        h = Harness(peer=None)                               # 127.0.0.1 is no peer's
        await h.server.start()
        r, w = await asyncio.open_connection("127.0.0.1", h.port)
        w.write(b"\x05\x01\x00")
        try:
            got = await asyncio.wait_for(r.read(), 5)
        except ConnectionResetError:
            got = b""
        assert got == b""                                    # closed at once, not a byte of SOCKS
        w.close()
        assert "AllowedIPs" in h.refused[0]["reason"]
        h.server.peer_of = lambda a: "p1"
        r, w = await asyncio.open_connection("127.0.0.1", h.port)
        w.write(b"\x05")                                     # one byte, then nothing
        assert await asyncio.wait_for(r.read(), 5) == b"\x05\xff"    # the greeting's refusal
        w.close()
        assert "greeting not done in 0.5 s" in h.refused[-1]["reason"]
        r, w = await asyncio.open_connection("127.0.0.1", h.port)
        w.write(b"\x05\x01\x00\x05\x01")                         # a greeting, half a request
        assert await asyncio.wait_for(r.read(), 5) == b"\x05\x00" + s5.reply(s5.GENERAL_FAILURE)
        w.close()
        assert "request not done" in h.refused[-1]["reason"]
        await h.server.close()
    run(main())


def test_port_in_use_names_the_key():
    s = bind_listener("127.0.0.1", 0, "SocksPort")
    try:
        with pytest.raises(Exception, match="SocksPort") as e:
            bind_listener("127.0.0.1", s.getsockname()[1], "SocksPort")
        assert "SocksPort = PORT" in e.value.fix
    finally:
        s.close()


def test_explicit_off():
    p = ExplicitProxies(EventBus(), ["127.0.0.1"], peer_of=lambda a: "p", socks_port=0)
    assert p.bind() == [] and p.services == []


# ---------------------------------------------------------------------------- the config keys
def _conf(body: str):
    import os as _os

    from vpnedu import config
    from vpnedu.protocol import keys
    return config.loads(f"[Interface]\nPrivateKey = {keys.encode(_os.urandom(32))}\nAddress = 10.0.0.1/24\n{body}\n",
                        "server.conf")


def test_config_keys():
    from vpnedu import config
    from vpnedu.errors import ConfigError
    c = _conf("")
    assert c.interface.socks_port is None and c.interface.proxy_users == []
    assert "SocksPort" not in config.dumps(c) and "ProxyUser" not in config.dumps(c)   # defaults: not written
    c = _conf("sockSPort = 1081\nProxyUser = alice:se:cret\nProxyUser = bob:pw")
    assert c.interface.socks_port == 1081 and c.interface.proxy_users == [("alice", "se:cret"), ("bob", "pw")]
    again = config.loads(config.dumps(c), "again.conf")
    assert again.interface.socks_port == 1081 and again.interface.proxy_users == c.interface.proxy_users
    assert _conf("SocksPort = off").interface.socks_port == 0
    assert "SocksPort = off" in config.dumps(_conf("SocksPort = off"))
    assert "SocksPort" not in config.dumps(_conf("SocksPort = 1080"))
    assert {"SocksPort", "HTTPProxyPort", "ProxyUser"} <= set(config.VPNEDU_KEYS)
    c = _conf("HTTPProxyPort = 8080")
    assert c.interface.http_proxy_port == 8080 and "HTTPProxyPort = 8080" in config.dumps(c)
    assert _conf("httpproxyport = OFF").interface.http_proxy_port == 0
    assert "HTTPProxyPort" not in config.dumps(_conf("HTTPProxyPort = 3128"))
    for body, words in (("SocksPort = 99999", "SocksPort: '99999' is not a port"), ("SocksPort = on", "SocksPort"),
                        ("HTTPProxyPort = 0", "HTTPProxyPort: '0' is not a port"),
                        ("ProxyUser = alice", "NAME:PASSWORD"), ("ProxyUser = :pw", "NAME:PASSWORD"),
                        ("ProxyUser = a:b\nProxyUser = a:c", "already defined"),
                        ("ProxyUser = a:" + "x" * 256, "255 bytes")):
        with pytest.raises(ConfigError) as e:
            _conf(body)
        assert words in str(e.value) and "\n" not in str(e.value) and e.value.fix
    with pytest.raises(ConfigError) as e:
        _conf("ProxyUser = alice")
    assert "alice" not in str(e.value)                    # a value that may hold a password is not shown
