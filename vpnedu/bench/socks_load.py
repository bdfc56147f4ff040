"""Many SOCKS5 connections at once, each echoing a block: the load of ``vpnedu bench --proxies``.

Run inside the client's namespace::

    python -m vpnedu.bench.socks_load PROXY_HOST:PORT ECHO_HOST:PORT CONNECTIONS BYTES

Every connection is opened at the same time (asyncio, one process): the RFC 1928 greeting
("no authentication"), a CONNECT to the echo service (RFC 862), then ``BYTES`` of random data
sent and the same bytes expected back, then a close.  The proxy must hold all of them open
together -- ``CONNECTIONS`` client sockets and as many upstream ones -- which is what this
measures besides the time: whether every connection gets through, and how long the slowest
takes.  Prints one JSON object: how many succeeded, why the others failed, the wall time and
the per-connection times (median, 99th percentile, max).

The client side of SOCKS5 is a few lines here on purpose: a load generator, not the thing
under test (the tests drive the server with clients nobody here wrote: curl, httpx, PySocks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import statistics
import sys
import time
from collections import Counter


async def one(proxy: tuple[str, int], echo: tuple[str, int], block: bytes, timeout: float) -> float:
    """One connection through the proxy to the echo service; returns its time in seconds."""
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy), timeout)
    try:
        writer.write(b"\x05\x01\x00")                                   # VER, 1 method: no auth
        if await asyncio.wait_for(reader.readexactly(2), timeout) != b"\x05\x00":
            raise ConnectionError("method refused")
        addr = ipaddress.ip_address(echo[0])
        atyp = b"\x01" if addr.version == 4 else b"\x04"
        writer.write(b"\x05\x01\x00" + atyp + addr.packed + echo[1].to_bytes(2, "big"))
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        if head[1] != 0:
            raise ConnectionError(f"reply {head[1]:#04x}")
        await reader.readexactly(4 + 2 if head[3] == 1 else 16 + 2)    # BND.ADDR, BND.PORT
        writer.write(block)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(block)), timeout)
        if got != block:
            raise ConnectionError("echo differs")
        return time.perf_counter() - start
    finally:
        writer.close()


async def main(proxy: tuple[str, int], echo: tuple[str, int], n: int, size: int, timeout: float = 60.0) -> dict:
    block = os.urandom(size)
    start = time.perf_counter()
    results = await asyncio.gather(*(one(proxy, echo, block, timeout) for _ in range(n)), return_exceptions=True)
    wall = time.perf_counter() - start
    times = sorted(r for r in results if isinstance(r, float))
    failed = Counter(f"{type(r).__name__}: {r}"[:80] for r in results if not isinstance(r, float))
    return {"connections": n, "bytes_each": size, "ok": len(times), "failed": dict(failed),
            "wall_s": round(wall, 3),
            "median_s": round(statistics.median(times), 3) if times else None,
            "p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3) if times else None,
            "max_s": round(times[-1], 3) if times else None}


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


if __name__ == "__main__":
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))      # one socket per connection
    p, e, count, nbytes = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(_endpoint(p), _endpoint(e), int(count), int(nbytes)))))
