"""How many handshakes per second a running vpnedu server completes, from many clients at once.

The load generator is itself vpnedu's sans-IO core: one :class:`~vpnedu.protocol.device.Device`
per simulated client, each with its own key known to the server, all sharing one UDP socket.
Each client sends a handshake initiation, waits for the response (which completes its
handshake), and starts again -- never faster than the 20 ms per peer that WireGuard's
flood protection allows.  The rate is the number of completed handshakes per second.

So many handshakes at once put the server *under load* (WireGuard paper, 5.3): it answers an
initiation without a valid mac2 with a cookie reply instead.  A client then does what a real
one does -- keeps the cookie and sends its initiation again, now with mac2 -- only at once rather
than after REKEY_TIMEOUT, so the rate measures the server, not the clients' timers.  The
cookie replies are counted too.

Run inside the client's namespace:
``python -m vpnedu.bench.handshakes [rate] HOST:PORT SERVER_PUBKEY KEYFILE SECONDS`` (prints JSON), or
``python -m vpnedu.bench.handshakes flood HOST:PORT SERVER_PUBKEY SECONDS [RATE]`` (an attacker's flood,
RATE initiations per second, 20,000 by default: fifteen times what the server can answer with
real handshakes).
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time

from ..config import PeerConfig, load, save
from ..protocol.device import Device
from ..protocol.keys import decode, encode, generate_private_key, public_key

#: A peer may not start handshakes more often than this (wireguard-go's flood limit, 20 ms).
MIN_INTERVAL = 0.021


def make_configs(server_conf: str, clients: int, keyfile: str) -> None:
    """Add ``clients`` fresh peers to a server config and write their private keys (JSON)."""
    cfg = load(server_conf)
    keys = [generate_private_key() for _ in range(clients)]
    for i, k in enumerate(keys):
        cfg.peers.append(PeerConfig(public_key=public_key(k), name=f"load{i}"))
    save(cfg, server_conf)
    with open(keyfile, "w") as f:
        json.dump([encode(k) for k in keys], f)


def run(endpoint: tuple[str, int], server_pub: bytes, keys: list[bytes], seconds: float) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(endpoint)
    sock.setblocking(False)
    devs = []
    by_index: dict[int, int] = {}
    for k in keys:
        d = Device(k)
        p = d.add_peer(server_pub, endpoint=endpoint)
        devs.append((d, p))
    virtual = [0.0] * len(devs)      # each device's own clock, moved past REKEY_TIMEOUT per attempt
    next_at = [0.0] * len(devs)
    waiting = [False] * len(devs)
    completed = sent = timeouts = cookies = 0
    sent_at = [0.0] * len(devs)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    t0 = time.monotonic()
    end = t0 + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for i, (d, p) in enumerate(devs):
            if waiting[i] and now - sent_at[i] > 2.0:
                waiting[i] = False          # lost: try again
                timeouts += 1
            if not waiting[i] and now >= next_at[i]:
                virtual[i] += 10.0
                for data, _ep in d.initiate(p, now=virtual[i]):
                    try:
                        sock.send(data)
                    except BlockingIOError:
                        continue
                    by_index[int.from_bytes(data[4:8], "little")] = i
                    sent += 1
                    waiting[i] = True
                    sent_at[i] = now
                    next_at[i] = now + MIN_INTERVAL
        for _key, _ev in sel.select(timeout=0.005):
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                if len(data) == 92 and data[0] == 2:
                    i = by_index.pop(int.from_bytes(data[8:12], "little"), None)
                    if i is None:
                        continue
                    d, p = devs[i]
                    d.receive(data, endpoint, now=virtual[i])
                    if p.current is not None:
                        completed += 1
                    waiting[i] = False
                elif len(data) == 64 and data[0] == 3:   # a cookie reply: store it, retry with mac2
                    i = by_index.pop(int.from_bytes(data[4:8], "little"), None)
                    if i is None:
                        continue
                    d, p = devs[i]
                    d.receive(data, endpoint, now=virtual[i])
                    cookies += 1
                    waiting[i] = False
                    next_at[i] = max(next_at[i], time.monotonic())
    elapsed = time.monotonic() - t0
    return {"clients": len(keys), "seconds": round(elapsed, 2), "initiations_sent": sent,
            "handshakes_completed": completed, "cookie_replies": cookies, "lost": timeouts,
            "handshakes_per_second": round(completed / elapsed, 1)}


def flood(endpoint: tuple[str, int], server_pub: bytes, seconds: float, rate: float = 20000,
          distinct: int = 256) -> dict:
    """A handshake flood, as an attacker who knows only the server's public key would send it:
    initiations with a valid mac1 from keys the server has never heard of, as fast as possible.
    Each would cost the server two Diffie-Hellman operations -- unless, under load, it answers
    with a 64-byte cookie reply instead (never more bytes than it received: no amplification)."""
    msgs = []
    for _ in range(distinct):
        d = Device(generate_private_key())
        p = d.add_peer(server_pub, endpoint=endpoint)
        msgs.extend(data for data, _ep in d.initiate(p, now=10.0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(endpoint)
    sock.setblocking(False)
    sent = cookies = other = reply_bytes = 0
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    while (now := time.monotonic()) < end:
        behind = int((now - t0) * rate) - sent      # pace the flood at `rate` initiations per second
        if behind <= 0:
            time.sleep(0.0005)
        for _ in range(min(64, max(0, behind))):
            try:
                sock.send(msgs[i % len(msgs)])
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                break
            i += 1
        while True:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            reply_bytes += len(data)
            if len(data) == 64 and data[0] == 3:
                cookies += 1
            else:
                other += 1
    return {"seconds": round(time.monotonic() - t0, 2), "rate": rate, "initiations_sent": sent,
            "bytes_sent": sent * 148,
            "cookie_replies": cookies, "other_replies": other, "bytes_received": reply_bytes}


def main(argv: list[str] | None = None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    mode, argv = (argv[0], argv[1:]) if argv and argv[0] in ("rate", "flood") else ("rate", argv)
    host, _, port = argv[0].rpartition(":")
    server_pub = decode(argv[1], "public key")
    if mode == "flood":
        rate = float(argv[3]) if len(argv) > 3 else 20000
        print(json.dumps(flood((host, int(port)), server_pub, float(argv[2]), rate)))
        return 0
    with open(argv[2]) as f:
        keys = [decode(k, "private key") for k in json.load(f)]
    print(json.dumps(run((host, int(port)), server_pub, keys, float(argv[3]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
