"""TAI64N timestamps: the anti-replay clock of the handshake (paper, section 5.1).

The initiator encrypts the current time into every handshake initiation.  The
responder remembers the greatest timestamp it has accepted from each peer and
rejects any initiation that is not newer, so a recorded initiation cannot be
replayed to knock the real peer's session over.

The format is 12 bytes, big-endian: 8 bytes of seconds since 1970 plus
2**62 + 10 (TAI64's label for "this is a TAI second", and the 10-second
TAI-UTC offset of 1970), then 4 bytes of nanoseconds.  Like wireguard-go, we
round the nanoseconds down to a multiple of 2**24 ns (about 16.8 ms) so that
the timestamp does not leak a precise clock reading of the initiator.
"""

from __future__ import annotations

import struct

TAI64_BASE = (1 << 62) + 10
#: Nanosecond bits cleared so the timestamp is no finer than ~16.8 ms.
WHITENER_MASK = (1 << 24) - 1
SIZE = 12
_FMT = struct.Struct(">QI")


def encode(unix_time: float) -> bytes:
    """A TAI64N timestamp for a Unix time in seconds."""
    seconds = int(unix_time)
    nanos = int(round((unix_time - seconds) * 1e9))
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    return _FMT.pack(TAI64_BASE + seconds, nanos & ~WHITENER_MASK)


def decode(stamp: bytes) -> float:
    """The Unix time of a TAI64N timestamp (for display)."""
    secs, nanos = _FMT.unpack(stamp)
    return (secs - TAI64_BASE) + nanos / 1e9


def is_newer(stamp: bytes, than: bytes | None) -> bool:
    """Big-endian fixed-width encoding compares like the numbers it encodes."""
    return than is None or stamp > than
