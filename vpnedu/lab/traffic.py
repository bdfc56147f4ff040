"""Traffic a lab client makes to try the server's forwarding, one protocol at a time.

``python -m vpnedu.lab.traffic download URL``
    stream an HTTP download; print its size and SHA-256.
``python -m vpnedu.lab.traffic echo HOST PORT --connections 500 --size 65536``
    open many TCP connections at once to an echo service; each sends SIZE
    pseudo-random bytes, half-closes, and checks that exactly the same bytes come back.
``python -m vpnedu.lab.traffic query HOST PORT NAME``
    one UDP request/response (the lab's DNS-like service); print the answer.
``python -m vpnedu.lab.traffic connect HOST PORT``
    try a TCP connection; print "connected" or the error and how long it took.

Each prints one JSON line, so tests and the notebook can read the result.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vpnedu.lab.traffic")
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
    a = ap.parse_args(argv)
    try:
        if a.cmd == "download":
            out = download(a.url)
        elif a.cmd == "echo":
            out = echo(a.host, a.port, a.connections, a.size)
        elif a.cmd == "query":
            out = query(a.host, a.port, a.name)
        else:
            out = connect(a.host, a.port)
    except OSError as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
