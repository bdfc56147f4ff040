"""Traffic a lab client makes to try the server's forwarding, one protocol at a time.

``python -m vpnedu.netns_lab.traffic download URL``
    stream an HTTP download; print its size and SHA-256.
``python -m vpnedu.netns_lab.traffic echo HOST PORT --connections 500 --size 65536``
    open many TCP connections at once to an echo service; each sends SIZE
    pseudo-random bytes, half-closes, and checks that exactly the same bytes come back.
``python -m vpnedu.netns_lab.traffic query HOST PORT NAME``
    one UDP request/response (the lab's DNS-like service); print the answer.
``python -m vpnedu.netns_lab.traffic connect HOST PORT``
    try a TCP connection; print "connected" or the error and how long it took.
``python -m vpnedu.netns_lab.traffic hold HOST PORT --seconds 10 [--then-echo]``
    open a TCP connection, send nothing and read until the other end closes it
    (end-of-file), resets it, or SECONDS pass; with ``--then-echo`` a connection still
    open afterwards sends a line and expects it back (is it really alive?).
``python -m vpnedu.netns_lab.traffic reset-server PORT``
    (on the app host) a TCP service that greets each connection, then resets it
    (``SO_LINGER`` 0): a server aborting an established connection mid-stream.

Each prints one JSON line, so tests and the notebook can read the result.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.request


def download(url: str, timeout: float = 60.0) -> dict:
    h = hashlib.sha256()
    n = 0
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        while chunk := r.read(1 << 16):
            h.update(chunk)
            n += len(chunk)
    return {"bytes": n, "sha256": h.hexdigest(), "seconds": round(time.monotonic() - t0, 3)}


async def _echo_one(host: str, port: int, size: int, timeout: float) -> bool:
    data = os.urandom(size)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        async def send():
            for i in range(0, size, 16384):
                writer.write(data[i:i + 16384])
                await writer.drain()
            writer.write_eof()
        sender = asyncio.ensure_future(send())
        got = await asyncio.wait_for(reader.read(-1), timeout)
        await sender
        return got == data
    finally:
        writer.close()


async def _echo_many(host: str, port: int, connections: int, size: int, timeout: float) -> dict:
    t0 = time.monotonic()
    results = await asyncio.gather(*(_echo_one(host, port, size, timeout) for _ in range(connections)),
                                   return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    errors = sorted({f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)})
    return {"connections": connections, "ok": ok, "wrong": sum(1 for r in results if r is False),
            "errors": errors[:5], "seconds": round(time.monotonic() - t0, 3)}


def echo(host: str, port: int, connections: int, size: int, timeout: float = 60.0) -> dict:
    return asyncio.run(_echo_many(host, port, connections, size, timeout))


def query(host: str, port: int, name: str, timeout: float = 3.0, tries: int = 3) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        ident = int.from_bytes(os.urandom(2), "big")
        for _ in range(tries):
            t0 = time.monotonic()
            s.sendto(f"{ident} {name}".encode(), (host, port))
            try:
                data, src = s.recvfrom(2048)
            except socket.timeout:
                continue
            return {"answer": data.decode(errors="replace"), "from": f"{src[0]}:{src[1]}",
                    "ms": round((time.monotonic() - t0) * 1000, 3), "local": "%s:%d" % s.getsockname()}
    return {"answer": None, "error": "no answer"}


def connect(host: str, port: int, timeout: float = 10.0) -> dict:
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            result = "connected"
    except OSError as e:
        result = e.strerror or type(e).__name__
    return {"result": result, "seconds": round(time.monotonic() - t0, 3)}


def hold(host: str, port: int, seconds: float, then_echo: bool = False,
         connect_timeout: float = 10.0) -> dict:
    t0 = time.monotonic()
    with socket.create_connection((host, port), timeout=connect_timeout) as s:
        local = "%s:%d" % s.getsockname()
        print(json.dumps({"connected": local}), flush=True)
        got, result = 0, "open"
        end = t0 + seconds
        try:
            while (left := end - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    result = "eof"
                    break
                got += len(data)
        except ConnectionResetError:
            result = "reset"
        out = {"result": result, "bytes": got, "seconds": round(time.monotonic() - t0, 3), "local": local}
        if then_echo and result == "open":
            s.settimeout(5)
            line = b"still there?\n"
            s.sendall(line)
            back = b""
            try:
                while len(back) < len(line) and (data := s.recv(65536)):
                    back += data
            except OSError:
                pass
            out["echo"] = back == line
    return out


def reset_server(port: int, greeting: bytes = b"hello\n", after: float = 0.3) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        conn, _ = srv.accept()
        try:
            conn.sendall(greeting)
            time.sleep(after)
        except OSError:
            pass
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()   # with a zero linger time: a RST, not a FIN


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vpnedu.netns_lab.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download")
    d.add_argument("url")
    e = sub.add_parser("echo")
    e.add_argument("host")
    e.add_argument("port", type=int)
    e.add_argument("--connections", type=int, default=1)
    e.add_argument("--size", type=int, default=65536)
    q = sub.add_parser("query")
    q.add_argument("host")
    q.add_argument("port", type=int)
    q.add_argument("name")
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    h = sub.add_parser("hold")
    h.add_argument("host")
    h.add_argument("port", type=int)
    h.add_argument("--seconds", type=float, default=10.0)
    h.add_argument("--then-echo", action="store_true")
    r = sub.add_parser("reset-server")
    r.add_argument("port", type=int)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "download":
            out = download(a.url)
        elif a.cmd == "echo":
            out = echo(a.host, a.port, a.connections, a.size)
        elif a.cmd == "query":
            out = query(a.host, a.port, a.name)
        elif a.cmd == "hold":
            out = hold(a.host, a.port, a.seconds, a.then_echo)
        elif a.cmd == "reset-server":
            reset_server(a.port)
            return 0
        else:
            out = connect(a.host, a.port)
    except OSError as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
