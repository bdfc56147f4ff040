"""Test doubles for the protocol engine and the datapath (used by the tests and the fuzz targets).

``SeededRandom``
    a deterministic source of "random" bytes: a :class:`~vpnedu.protocol.device.Device` given
    one produces the same handshake, byte for byte, every run (the protocol takes all its
    randomness from the ``random`` it is given);
``LoopbackTun``
    a TUN device stand-in: a datagram socket pair keeps packet boundaries, as a TUN fd does;
``RecordingSocket``
    a real UDP socket that also keeps a copy of every datagram sent through it (GSO sends
    split into their datagrams, as the kernel does);
``LoopbackNode``
    a :class:`~vpnedu.datapath.Host` over real sockets on 127.0.0.1: the real
    :class:`~vpnedu.datapath.Datapath` drives a ``RecordingSocket`` and a ``LoopbackTun``.

None of this is used by the daemons.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from typing import Callable

from .datapath import Datapath, Options
from .net import offload, udp


class SeededRandom:
    """``random(n)`` -> n bytes of BLAKE2b in counter mode over a seed: the same seed gives the
    same bytes, in the same order.  Deterministic and so never for real keys."""

    def __init__(self, seed: bytes | str = b"vpnedu"):
        self._seed = seed.encode() if isinstance(seed, str) else bytes(seed)
        self._block = 0
        self._pool = b""

    def __call__(self, n: int) -> bytes:
        while len(self._pool) < n:
            self._pool += hashlib.blake2b(self._block.to_bytes(8, "little"), key=self._seed[:64]).digest()
            self._block += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out


class LoopbackTun:
    """A TUN device stand-in: a datagram socket pair keeps packet boundaries, as a TUN fd does.
    The datapath reads and writes one end; :meth:`inject` and :meth:`written` use the other."""

    def __init__(self, vnet_hdr: bool = False):
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sk in (self._ours, self._theirs):
            sk.setblocking(False)
        self.fd = self._theirs.fileno()
        self.vnet_hdr = vnet_hdr
        self.tso = False

    def fileno(self) -> int:
        return self.fd

    def readv(self, buffers) -> int:
        return os.readv(self.fd, buffers)

    def write(self, packet: bytes) -> None:
        os.writev(self.fd, (offload.PLAIN_HDR, packet) if self.vnet_hdr else (packet,))

    def write_parts(self, parts) -> None:
        os.writev(self.fd, parts)

    def inject(self, packet: bytes) -> None:
        """What the kernel would route into the device: the next read returns it."""
        self._ours.send(offload.PLAIN_HDR + packet if self.vnet_hdr else packet)

    def written(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._ours.recv(70000))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self._ours.close()
        self._theirs.close()


class RecordingSocket:
    """A real UDP socket bound to 127.0.0.1 that also records, in :attr:`sent`, every datagram
    sent through it (a UDP GSO ``sendmsg`` as the datagrams the kernel cuts it into)."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data, address) -> int:
        self.sent.append((bytes(data), address))
        return self._sock.sendto(data, address)

    def sendmsg(self, buffers, ancdata=(), flags: int = 0, address=None) -> int:
        data = b"".join(bytes(b) for b in buffers)
        size = next((int.from_bytes(d, sys.byteorder) for level, kind, d in ancdata
                     if (level, kind) == (udp.SOL_UDP, udp.UDP_SEGMENT)), len(data)) or len(data)
        self.sent.extend((data[off:off + size], address) for off in range(0, len(data), size))
        return self._sock.sendmsg(buffers, ancdata, flags, address)

    def __getattr__(self, name):   # recvmsg_into, getsockname, setsockopt, fileno, close ...
        return getattr(self._sock, name)


class LoopbackNode:
    """A :class:`~vpnedu.datapath.Host` over real sockets: a :class:`RecordingSocket` and a
    :class:`LoopbackTun`, moved by the real :class:`~vpnedu.datapath.Datapath` (``datapath``).
    Everything it sent is in ``sent``."""

    def __init__(self, device, opts: Options | None = None, clock: Callable[[], float] = time.monotonic):
        opts = opts or Options.parse("fast,no-tun-gro")
        self.device, self.events, self.intercept = device, device.events, None
        self.clock = clock
        self.tun = LoopbackTun(opts.vnet_hdr)
        self.sock = RecordingSocket()
        self.ticks = 0
        self.datapath = Datapath(self, opts)

    @property
    def sent(self) -> list[tuple[bytes, tuple]]:
        return self.sock.sent

    def schedule_tick(self) -> None:
        self.ticks += 1

    def close(self) -> None:
        self.sock.close()
        self.tun.close()
