"""``vpnedu handshake-demo``: a student's first look at the protocol, no root needed.

Two peers -- a client and a server -- run the real protocol core on an
in-memory network.  Every datagram that crosses the simulated wire is parsed
and printed field by field: the two handshake messages, then an ICMP echo
request and its reply as transport data messages.
"""

from __future__ import annotations

import time
from typing import Callable

from .events import EventLog
from .packet.ip import build_icmp_echo, describe
from .protocol import messages as m
from .protocol import tai64n
from .protocol.keys import encode
from .sim import Captured, FakeClock, make_pair


def _hex(b: bytes, n: int = 16) -> str:
    h = b.hex()
    return h if len(h) <= 2 * n else h[: 2 * n] + f"... ({len(b)} bytes)"


def describe_datagram(c: Captured, who: dict) -> list[str]:
    """Field-by-field description of one captured datagram."""
    msg = m.parse(c.data)
    head = (f"{who.get(c.source, c.source)} -> {who.get(c.destination, c.destination)}: "
            f"{m.TYPE_NAMES[msg.type]} ({len(c.data)} bytes)")
    rows: list[tuple[str, str]] = []
    if isinstance(msg, m.HandshakeInitiation):
        rows = [("sender index", f"{msg.sender:#010x}  (the initiator's name for this handshake)"),
                ("ephemeral", f"{encode(msg.ephemeral)}  (fresh X25519 key, sent in clear)"),
                ("encrypted static", f"{_hex(msg.encrypted_static)}  (initiator's public key + tag)"),
                ("encrypted timestamp", f"{_hex(msg.encrypted_timestamp)}  (TAI64N + tag: anti-replay)"),
                ("mac1", f"{msg.mac1.hex()}  (keyed by the responder's public key)"),
                ("mac2", f"{msg.mac2.hex()}  ({'cookie' if any(msg.mac2) else 'zeros: no cookie'})")]
    elif isinstance(msg, m.HandshakeResponse):
        rows = [("sender index", f"{msg.sender:#010x}  (the responder's index)"),
                ("receiver index", f"{msg.receiver:#010x}  (echoes the initiator's index)"),
                ("ephemeral", f"{encode(msg.ephemeral)}"),
                ("encrypted nothing", f"{msg.encrypted_nothing.hex()}  (empty payload: only a tag, "
                                      "proving the keys match)"),
                ("mac1", msg.mac1.hex()), ("mac2", msg.mac2.hex())]
    elif isinstance(msg, m.CookieReply):
        rows = [("receiver index", f"{msg.receiver:#010x}"), ("nonce", _hex(msg.nonce)),
                ("encrypted cookie", _hex(msg.encrypted_cookie))]
    elif isinstance(msg, m.TransportData):
        body = len(msg.encrypted_packet)
        rows = [("receiver index", f"{msg.receiver:#010x}  (selects the session keys)"),
                ("counter", f"{msg.counter}  (the AEAD nonce; checked by the replay window)"),
                ("encrypted packet", f"{_hex(msg.encrypted_packet)}  ({body - 16} padded bytes + 16-byte tag)"
                 if body > 16 else "(empty: a keepalive, only the 16-byte tag)")]
    return [head] + [f"    {k:<20} {v}" for k, v in rows]


def handshake_demo(suite: str = "wireguard", allow_insecure: bool = False,
                   out: Callable[[str], None] = print) -> bool:
    """Run the demo, printing as it goes; returns True when both pings arrived."""
    pair = make_pair(suite, allow_insecure=allow_insecure, clock=FakeClock(wall_start=time.time()))
    log = EventLog(pair.events)
    who = {pair.client_ep: "client", pair.server_ep: "server"}
    s = pair.client.suite
    out(f"vpnedu handshake demo: cipher suite {s.name!r} ({s.construction.decode()})")
    if s.insecure:
        out("WARNING: null-teaching does NOT encrypt tunnel data; for teaching only.")
    out(f"  client {pair.client_ep[0]}:{pair.client_ep[1]}  tunnel address 10.0.0.2  "
        f"public key {encode(pair.client.public_key)}")
    out(f"  server {pair.server_ep[0]}:{pair.server_ep[1]}  tunnel address 10.0.0.1  "
        f"public key {encode(pair.server.public_key)}")
    out("")

    shown = 0

    def show_new(title: str) -> None:
        nonlocal shown
        out(f"== {title}")
        for c in pair.net.capture[shown:]:
            for line in describe_datagram(c, who):
                out(line)
        shown = len(pair.net.capture)
        out("")

    pair.handshake()
    show_new("Handshake (Noise_IKpsk2): 1-RTT, then the initiator confirms with its first data")
    ini = log.of("handshake.initiation.received")
    if ini:
        out(f"    the server decrypted the client's static key and the timestamp "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ini[0]['timestamp']))} UTC "
            f"(TAI64N {tai64n.encode(ini[0]['timestamp']).hex()})")
    client_kp = pair.server_peer.current  # the client's session with the server
    server_kp = pair.client_peer.current or pair.client_peer.next
    if client_kp and server_kp:
        same = (client_kp.keys.send_key == server_kp.keys.recv_key
                and client_kp.keys.recv_key == server_kp.keys.send_key)
        out(f"    both sides derived the same transport keys: {same} "
            f"(client->server key starts {client_kp.keys.send_key.hex()[:12]}...)")
    out("")

    ping = build_icmp_echo("10.0.0.2", "10.0.0.1", ident=7, seq=1, payload=b"hello through the tunnel")
    pair.client_sends(ping)
    show_new(f"Client sends: {describe(ping)}")
    got_server = [p for _, p in pair.net.delivered[pair.server_ep]]
    reply = build_icmp_echo("10.0.0.1", "10.0.0.2", ident=7, seq=1, payload=b"hello through the tunnel",
                            reply=True)
    pair.server_sends(reply)
    show_new(f"Server replies: {describe(reply)}")
    got_client = [p for _, p in pair.net.delivered[pair.client_ep]]
    ok = got_server == [ping] and got_client == [reply]
    out(f"server's TUN received: {describe(got_server[0]) if got_server else 'nothing'}")
    out(f"client's TUN received: {describe(got_client[0]) if got_client else 'nothing'}")
    out("")
    out("Events emitted: " + ", ".join(dict.fromkeys(log.kinds())))
    out("Result: " + ("ping delivered both ways" if ok else "FAILED"))
    return ok
