"""Notebook 03's attacker, for real: catch one data packet to the server and send it again.

The WireGuard transport rejects both attacks a network attacker can make with a captured
packet: a *replay* (the same counter twice: the replay window, RFC 6479 style) and a
*tampered* copy (the Poly1305 tag no longer matches: ``bad-mac``).  :func:`attack` is what
``vpnedu course attack`` runs in the lab's client namespace (root: a packet socket); the
simulated lab does the same on its simulated wire.
"""

from __future__ import annotations

import socket
import struct
import time

from ..errors import VpneduError
from ..packet import ip as iplib


def attack(mode: str, server: tuple[str, int], timeout: float = 10.0) -> dict:
    """Wait for one transport-data datagram leaving for ``server`` on this host, then send the
    server a copy: unchanged (``replay``) or with its counter moved on and one ciphertext bit
    flipped (``tamper``: the AEAD tag no longer matches).  Needs root (a packet socket)."""
    ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
    # Only ETH_P_ALL sockets see outgoing packets (the kernel's transmit tap); keep the IPv4 ones.
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sniff.settimeout(0.5)
    end = time.time() + timeout
    try:
        while time.time() < end:
            try:
                frame, addr = sniff.recvfrom(65536)
            except socket.timeout:
                continue
            if (addr[1] != ETH_P_IP or addr[2] != socket.PACKET_OUTGOING or len(frame) < 28
                    or frame[9] != iplib.PROTO_UDP):
                continue
            p = iplib.IPv4Packet.parse(frame)
            dport = struct.unpack_from("!H", p.payload, 2)[0]
            data = p.payload[8:]
            if str(p.dst) != server[0] or dport != server[1] or len(data) <= 32 or data[0] != 4:
                continue
            counter = struct.unpack_from("<Q", data, 8)[0]
            if mode == "tamper":
                d = bytearray(data)
                d[8:16] = struct.pack("<Q", counter + 100_000)
                d[-1] ^= 0x01
                data = bytes(d)
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out.sendto(data, server)
            out.close()
            return {"mode": mode, "counter": counter, "size": len(data)}
        raise VpneduError(f"no data packet to {server[0]}:{server[1]} seen in {timeout:g} s",
                          "is the client running, and is there traffic (ping 10.0.0.1)?")
    finally:
        sniff.close()
