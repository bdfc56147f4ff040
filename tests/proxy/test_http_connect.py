"""The HTTP proxy (CONNECT and absolute URIs): the pure parser on hostile input, the forwarded
head, and the real service on loopback sockets (no root) with its status codes."""

import asyncio
import base64
import socket

import pytest

from vpnedu.events import EventBus
from vpnedu.proxy import http_connect as hc
from vpnedu.proxy import socks5 as s5
from vpnedu.proxy.explicit import bind_listener
from vpnedu.proxy.flows import FlowTable


def test_parse_connect_and_absolute():
    h = hc.parse_head(b"CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n")
    assert (h.method, h.host, h.port) == ("CONNECT", "app.example", 443)
    h = hc.parse_head(b"CONNECT [2001:db8::80]:8443 HTTP/1.1\r\n\r\n")
    assert (h.host, h.port) == ("2001:db8::80", 8443)
    h = hc.parse_head(b"GET http://192.0.2.80/random/5?x=1 HTTP/1.1\r\nHost: 192.0.2.80\r\n\r\n")
    assert (h.host, h.port, h.path) == ("192.0.2.80", 80, "/random/5?x=1")
    h = hc.parse_head(b"GET http://[2001:db8:a::80]:8080 HTTP/1.0\r\n\r\n")
    assert (h.host, h.port, h.path) == ("2001:db8:a::80", 8080, "/")
    full = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"
    for i in range(len(full)):
        assert hc.parse_head(full[:i]) is None          # truncated: wait for the blank line


@pytest.mark.parametrize("data,status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),                            # origin form: not a proxy request
    (b"GET http://a/ HTTP/2.0\r\n\r\n", 400),
    (b"GET  http://a/ HTTP/1.1\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\r\n\r\n", 400),                  # TLS to the plain port
    (b"CONNECT app.example HTTP/1.1\r\n\r\n", 400),              # no port
    (b"CONNECT app.example:99999 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT a:1 HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"GET http://a/ HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n", 400),
    (b"GET http://u:p@a/ HTTP/1.1\r\n\r\n", 400),
    (b"POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET https://a/ HTTP/1.1\r\n\r\n", 405),
    (b"GET http://a/ HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n", 400),     # oversize
    (b"GET http://a/ HTTP/1.1\r\nX: " + b"y" * 20000, 400),                   # oversize, unfinished
])
def test_parse_errors(data, status):
    with pytest.raises(hc.HttpError) as e:
        hc.parse_head(data)
    assert e.value.status == status


def test_forwarded_head_drops_hop_by_hop():
    h = hc.parse_head(b"GET http://a:8080/p HTTP/1.1\r\nUser-Agent: t\r\nProxy-Authorization: Basic eDp5\r\n"
                      b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Connection: keep-alive\r\n"
                      b"Keep-Alive: 5\r\nTE: trailers\r\nAccept: */*\r\n\r\n")
    out = hc.forwarded_head(h).decode()
    assert out == "GET /p HTTP/1.1\r\nHost: a:8080\r\nUser-Agent: t\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    h = hc.parse_head(b"GET http://[2001:db8::80]/ HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
    assert hc.forwarded_head(h) == b"GET / HTTP/1.1\r\nHost: [2001:db8::80]\r\nConnection: close\r\n\r\n"


def test_basic_credentials():
    assert hc.basic_credentials("Basic " + base64.b64encode(b"alice:se:cret").decode()) == (b"alice", b"se:cret")
    for bad in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert hc.basic_credentials(bad) is None
    r = hc.response(407, "needs a login", ('Proxy-Authenticate: Basic realm="vpnedu"',))
    assert r.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n") and b"Proxy-Authenticate: Basic" in r


# ---------------------------------------------------------------------------- on loopback
async def _origin():
    async def handle(r, w):
        head = await r.readuntil(b"\r\n\r\n")
        body = head
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await w.drain()
        w.close()
    srv = await asyncio.start_server(handle, "127.0.0.2", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def _ask(port, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    out = await asyncio.wait_for(r.read(), 5)
    w.close()
    return out


def test_service(monkeypatch):
    monkeypatch.setattr(s5, "allowed_destination", lambda a: not a.startswith("127.0.0.9"))

    async def main():
        events = EventBus()
        table = FlowTable(events)
        sock = bind_listener("127.0.0.1", 0, "HTTPProxyPort")
        port = sock.getsockname()[1]
        users = {b"alice": b"secret"}
        svc = hc.HttpProxy(table, [sock], peer_of=lambda a: "p1", users=users)
        await svc.start()
        srv, oport = await _origin()
        auth = "Proxy-Authorization: Basic " + base64.b64encode(b"alice:secret").decode() + "\r\n"
        out = await _ask(port, f"GET http://127.0.0.2:{oport}/x HTTP/1.1\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 407 ") and b"Proxy-Authenticate: Basic" in out
        bad = "Proxy-Authorization: Basic " + base64.b64encode(b"alice:nope").decode() + "\r\n"
        out = await _ask(port, f"GET http://127.0.0.2:{oport}/x HTTP/1.1\r\n{bad}\r\n".encode())
        assert out.startswith(b"HTTP/1.1 407 ")
        out = await _ask(port, f"GET http://127.0.0.2:{oport}/x HTTP/1.1\r\n{auth}Keep-Alive: 1\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 200 OK") and b"GET /x HTTP/1.1\r\nHost: 127.0.0.2:" in out
        assert b"Proxy-Authorization" not in out and b"Keep-Alive" not in out      # not passed on
        # CONNECT: 200, then bytes both ways (the origin here answers the tunnelled request).
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"CONNECT 127.0.0.2:{oport} HTTP/1.1\r\n{auth}\r\nGET /in HTTP/1.1\r\n\r\n".encode())
        out = await asyncio.wait_for(r.read(), 5)
        assert out.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK") and b"GET /in" in out
        w.close()
        closed = socket.socket()
        closed.bind(("127.0.0.2", 0))
        cport = closed.getsockname()[1]
        closed.close()
        out = await _ask(port, f"CONNECT 127.0.0.2:{cport} HTTP/1.1\r\n{auth}\r\n".encode())
        assert out.startswith(b"HTTP/1.1 502 ")
        out = await _ask(port, f"CONNECT 127.0.0.9:80 HTTP/1.1\r\n{auth}\r\n".encode())
        assert out.startswith(b"HTTP/1.1 403 ")
        out = await _ask(port, f"CONNECT no-such.invalid:80 HTTP/1.1\r\n{auth}\r\n".encode())
        assert out.startswith(b"HTTP/1.1 502 ")
        out = await _ask(port, b"GET / HTTP/1.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")
        out = await _ask(port, b"GET http://a/ HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")
        monkeypatch.setattr(hc, "HEAD_TIMEOUT", 0.3)
        out = await _ask(port, b"GET http://a/")
        assert out.startswith(b"HTTP/1.1 408 ")
        for _ in range(50):
            if not table.flows:
                break
            await asyncio.sleep(0.05)
        assert not table.flows and table.closed_total == 5     # 2 relayed, 2 x 502, a 403: each closed
        assert table.opened_total == 2
        await svc.close()
        srv.close()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_504(monkeypatch):
    """A destination that does not answer: 504.  (The timeout itself is asyncio's; here the
    connect step raises it at once, so the test needs no unroutable network.)"""
    async def slow(host, port, timeout):
        raise asyncio.TimeoutError
    monkeypatch.setattr(hc, "open_upstream", slow)

    async def main():
        sock = bind_listener("127.0.0.1", 0, "HTTPProxyPort")
        svc = hc.HttpProxy(FlowTable(EventBus()), [sock], peer_of=lambda a: "p1")
        await svc.start()
        out = await _ask(sock.getsockname()[1], b"CONNECT 192.0.2.1:80 HTTP/1.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 504 ")
        await svc.close()
    asyncio.run(asyncio.wait_for(main(), 30))
