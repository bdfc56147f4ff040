"""Transport data: the message that carries every tunnelled IP packet (paper, section 5.4.6).

::

    type = 4 (1) | reserved = 0 (3) | receiver index (4, LE) | counter (8, LE) | AEAD(packet || padding)

The *receiver index* names the session at the receiving end (it chose the index in the
handshake), the *counter* is the AEAD nonce -- never reused under one key -- and the packet is
padded with zeros to a multiple of 16 bytes, which hides its exact length, but never past the
interface MTU (a 1420-byte packet stays 1420).  The tag adds 16 bytes: a datagram is the packet
plus :data:`OVERHEAD` (32) bytes, plus padding.

This module is the one place that writes transport messages.  Its design follows boringtun's
``noise/`` and wireguard-go's ``device/send.go``: **the caller owns the buffers**.  An
:class:`Output` holds a preallocated buffer; :func:`seal_batch` encrypts a batch of packets
straight into it, back to back, and records them as *runs* -- consecutive datagrams of equal
length to one endpoint (only the last of a run may be shorter), which is exactly the layout one
UDP GSO ``sendmsg`` takes.  A caller without GSO sets ``max_run = 1`` and sends each run as one
datagram.  Nothing is allocated per packet beyond the padding of an odd-sized one, and no event
object is built unless someone subscribed (``report``).

Opening is the other half: :class:`~vpnedu.protocol.device.Device` reads :data:`HEADER`, finds
the session by its index, checks the replay window and calls the session's
:attr:`~vpnedu.protocol.suites.AEAD.decrypt` on ``datagram[16:]``.

:class:`~vpnedu.protocol.device.Device` decides *whether* to send (a session, its age and
counters, the timers); this module only does the byte work.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .cookie import Endpoint
    from .session import TransportSession

#: The message type byte of transport data.
TYPE = 4
#: ``type, receiver index, counter``: the 16-byte header, all little-endian (the reserved
#: bytes are the upper three of the first ``uint32``).
HEADER = struct.Struct("<IIQ")
HEADER_SIZE = HEADER.size
#: The AEAD tag at the end of every message.
TAG_SIZE = 16
#: Header plus tag: what a datagram adds to the (padded) packet.
OVERHEAD = HEADER_SIZE + TAG_SIZE
#: The smallest transport message: an empty keepalive (header + tag).
MIN_SIZE = OVERHEAD
_ZEROS = bytes(16)


class Output:
    """What one call of the engine produced, in buffers the caller owns and reuses.

    ``runs``
        Sealed transport messages as ``(view, size, endpoint)``: ``view`` is a memoryview of
        consecutive datagrams of ``size`` bytes (the last may be shorter) for ``endpoint``.
        ``len(view) <= size`` means a single datagram.
    ``datagrams``
        Every other message to send (handshake messages, cookie replies), as ``(bytes, endpoint)``.
    ``packets``
        Decrypted IP packets to hand to the TUN device, as ``(peer, packet)``.

    ``max_run`` and ``max_run_bytes`` bound a run (the kernel's UDP GSO limits: 64 segments,
    64 KiB); ``max_run = 1`` gives one run per datagram.  The buffer grows by adding a new area
    when a batch does not fit (earlier views stay valid); :meth:`clear` returns to the first one.
    """

    __slots__ = ("runs", "datagrams", "packets", "buf", "mv", "end", "max_run", "max_run_bytes", "_first")

    def __init__(self, capacity: int = 0, *, max_run: int = 1, max_run_bytes: int = 65000):
        self.runs: list[tuple[memoryview, int, "Endpoint"]] = []
        self.datagrams: list[tuple[bytes, "Endpoint"]] = []
        self.packets: list = []
        self.buf = bytearray(capacity)
        self.mv = memoryview(self.buf)
        self._first = (self.buf, self.mv)
        self.end = 0
        self.max_run = max_run
        self.max_run_bytes = max_run_bytes

    def clear(self) -> None:
        """Forget what was produced (after the caller sent and delivered it)."""
        self.runs.clear()
        self.datagrams.clear()
        self.packets.clear()
        self.buf, self.mv = self._first
        self.end = 0

    def grow(self, need: int) -> None:
        """Start a new buffer area of at least ``need`` bytes (the engine calls this)."""
        self.buf = bytearray(max(need, 4096))
        self.mv = memoryview(self.buf)
        self.end = 0

    def transport_datagrams(self) -> list[tuple[bytes, "Endpoint"]]:
        """The sealed messages one by one, as bytes (for the one-packet calls and for tests)."""
        out = []
        for view, size, ep in self.runs:
            for off in range(0, len(view), size):
                out.append((bytes(view[off:off + size]), ep))
        return out

    def all_datagrams(self) -> list[tuple[bytes, "Endpoint"]]:
        """Every datagram to send: the sealed transport messages, then the others."""
        return self.transport_datagrams() + self.datagrams


#: ``report(counter, packet, padded_len, datagram_len)``, called per sealed packet when someone
#: subscribed to ``data.encrypted``.
Report = Callable[[int, bytes, int, int], None]


def seal_batch(kp: "TransportSession", packets, mtu: int, endpoint: "Endpoint", out: Output,
               report: Report | None = None) -> tuple[int, int]:
    """Encrypt ``packets`` (bytes-like IP packets; ``b""`` is a keepalive) with the next counters
    of ``kp`` into ``out``, as runs for ``endpoint``.  Returns ``(wire_bytes, data_packets)``:
    the bytes of all datagrams, and how many packets were not keepalives.

    The caller has checked that ``kp`` may send ``len(packets)`` more messages."""
    ridx = kp.remote_index
    counter = kp.send_counter
    aead = kp.sender
    seal = aead.encrypt_into
    nonce = aead.nonce
    hdr = HEADER.pack_into
    runs = out.runs
    max_run = out.max_run
    max_bytes = out.max_run_bytes
    buf, mv, off = out.buf, out.mv, out.end
    cap = len(buf)
    start = off       # where the open run begins
    size = 0          # the length of the open run's datagrams
    count = 0         # datagrams in the open run
    closed = False    # the run ended with a shorter datagram: nothing may follow it
    nbytes = 0
    data = 0
    left = len(packets)
    for p in packets:
        left -= 1
        n = plain = len(p)
        if n & 15 or n > mtu:
            # Pad to a multiple of 16 (hides exact sizes), never past the MTU (paper 5.4.6): a
            # packet longer than the MTU (only when the MTU is odd-sized) pads its remainder.
            unit = n % mtu if mtu and n > mtu else n
            padded = -(-unit // 16) * 16
            if mtu and padded > mtu:
                padded = mtu
            if padded > unit:
                p = bytes(p) + _ZEROS[:padded - unit]
                n += padded - unit
        if plain:
            data += 1
        dlen = n + OVERHEAD
        if count and (closed or dlen > size or count >= max_run or off - start + dlen > max_bytes):
            runs.append((mv[start:off], size, endpoint))
            start = off
            count = 0
            closed = False
        if off + dlen > cap:   # the buffer is full: go on in a new one
            if count:
                runs.append((mv[start:off], size, endpoint))
                count = 0
                closed = False
            out.grow(dlen + left * (mtu + OVERHEAD if mtu else dlen))
            buf, mv, off = out.buf, out.mv, 0
            cap = len(buf)
            start = 0
        if not count:
            size = dlen
        elif dlen < size:
            closed = True
        hdr(buf, off, TYPE, ridx, counter)
        seal(nonce(counter), p, None, mv[off + HEADER_SIZE:off + dlen])
        if report is not None:
            report(counter, p if n == plain else p[:plain], n, dlen)
        counter += 1
        off += dlen
        count += 1
        nbytes += dlen
    if count:
        runs.append((mv[start:off], size, endpoint))
    kp.send_counter = counter
    out.end = off
    return nbytes, data
