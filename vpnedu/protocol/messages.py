"""WireGuard's four messages, byte for byte (paper, section 5.4).

Every message starts with a 4-byte header: a 1-byte type followed by three
reserved zero bytes.  All integers are little-endian.

=================  ====  =========================================================
message            size  fields
=================  ====  =========================================================
initiation (1)      148  sender(4) ephemeral(32) static(32+16) timestamp(12+16)
                         mac1(16) mac2(16)
response (2)         92  sender(4) receiver(4) ephemeral(32) empty(0+16) mac1 mac2
cookie reply (3)     64  receiver(4) nonce(24) cookie(16+16)
transport data (4)  16+  receiver(4) counter(8) packet(n+16), n a multiple of 16
=================  ====  =========================================================

``encrypted_static`` and the other ``encrypted_*`` fields are AEAD outputs:
the plaintext followed by a 16-byte authentication tag.

Parsers raise :class:`~vpnedu.errors.MessageError` -- and nothing else -- for
bytes that do not fit, naming what is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import MessageError
from . import transport as _transport

INITIATION = 1
RESPONSE = 2
COOKIE_REPLY = 3
TRANSPORT_DATA = _transport.TYPE

TYPE_NAMES = {
    INITIATION: "handshake initiation",
    RESPONSE: "handshake response",
    COOKIE_REPLY: "cookie reply",
    TRANSPORT_DATA: "transport data",
}

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
#: Transport data is defined, sealed and opened in :mod:`vpnedu.protocol.transport`.
TRANSPORT_HEADER_SIZE = _transport.HEADER_SIZE
#: The smallest transport message: header + an empty (keepalive) payload's tag.
TRANSPORT_MIN_SIZE = _transport.MIN_SIZE
#: Largest datagram we accept (an IP packet of 65535 bytes + overhead is never more).
MAX_DATAGRAM_SIZE = 65535

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE = struct.Struct("<II24s32s")
_TRANSPORT_HEADER = _transport.HEADER

#: Offsets used by mac1/mac2: mac1 covers everything before it, mac2 everything before mac2.
INITIATION_MAC1_OFFSET = INITIATION_SIZE - 32
RESPONSE_MAC1_OFFSET = RESPONSE_SIZE - 32


@dataclass(slots=True)
class HandshakeInitiation:
    """Message 1, initiator -> responder."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    type = INITIATION
    SIZE = INITIATION_SIZE

    def to_bytes(self) -> bytes:
        return _INITIATION.pack(INITIATION, self.sender, self.ephemeral, self.encrypted_static,
                                self.encrypted_timestamp, self.mac1, self.mac2)

    @classmethod
    def from_bytes(cls, data: bytes) -> "HandshakeInitiation":
        _check(data, INITIATION, INITIATION_SIZE, exact=True)
        _, sender, e, s, ts, m1, m2 = _INITIATION.unpack(data)
        return cls(sender, e, s, ts, m1, m2)


@dataclass(slots=True)
class HandshakeResponse:
    """Message 2, responder -> initiator."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    type = RESPONSE
    SIZE = RESPONSE_SIZE

    def to_bytes(self) -> bytes:
        return _RESPONSE.pack(RESPONSE, self.sender, self.receiver, self.ephemeral,
                              self.encrypted_nothing, self.mac1, self.mac2)

    @classmethod
    def from_bytes(cls, data: bytes) -> "HandshakeResponse":
        _check(data, RESPONSE, RESPONSE_SIZE, exact=True)
        _, sender, receiver, e, empty, m1, m2 = _RESPONSE.unpack(data)
        return cls(sender, receiver, e, empty, m1, m2)


@dataclass(slots=True)
class CookieReply:
    """Message 3: sent instead of a response when the responder is under load."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    type = COOKIE_REPLY
    SIZE = COOKIE_REPLY_SIZE

    def to_bytes(self) -> bytes:
        return _COOKIE.pack(COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie)

    @classmethod
    def from_bytes(cls, data: bytes) -> "CookieReply":
        _check(data, COOKIE_REPLY, COOKIE_REPLY_SIZE, exact=True)
        _, receiver, nonce, cookie = _COOKIE.unpack(data)
        return cls(receiver, nonce, cookie)


@dataclass(slots=True)
class TransportData:
    """Message 4: an encrypted IP packet (or an empty keepalive)."""

    receiver: int
    counter: int
    encrypted_packet: bytes

    type = TRANSPORT_DATA

    def to_bytes(self) -> bytes:
        return _TRANSPORT_HEADER.pack(TRANSPORT_DATA, self.receiver, self.counter) + self.encrypted_packet

    @classmethod
    def from_bytes(cls, data: bytes) -> "TransportData":
        _check(data, TRANSPORT_DATA, TRANSPORT_MIN_SIZE, exact=False)
        _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
        return cls(receiver, counter, bytes(data[TRANSPORT_HEADER_SIZE:]))


def transport_header(receiver: int, counter: int) -> bytes:
    """The 16-byte header of a transport message."""
    return _TRANSPORT_HEADER.pack(TRANSPORT_DATA, receiver, counter)


Message = HandshakeInitiation | HandshakeResponse | CookieReply | TransportData
_CLASSES = {INITIATION: HandshakeInitiation, RESPONSE: HandshakeResponse,
            COOKIE_REPLY: CookieReply, TRANSPORT_DATA: TransportData}


def message_type(data: bytes) -> int:
    """The type of a datagram (1-4), or :class:`MessageError`."""
    if len(data) < 4:
        raise MessageError(f"datagram of {len(data)} bytes is too short for a WireGuard header")
    t = data[0]
    if t not in _CLASSES:
        raise MessageError(f"unknown message type {t} (WireGuard has types 1-4)")
    if data[1] or data[2] or data[3]:
        raise MessageError(f"{TYPE_NAMES[t]} with non-zero reserved header bytes")
    return t


def parse(data: bytes) -> Message:
    """Parse any WireGuard datagram into its message object."""
    return _CLASSES[message_type(data)].from_bytes(data)


def _check(data: bytes, mtype: int, size: int, *, exact: bool) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected bytes, got {type(data).__name__}")
    t = message_type(data)
    if t != mtype:
        raise MessageError(f"expected a {TYPE_NAMES[mtype]}, got a {TYPE_NAMES[t]}")
    n = len(data)
    if exact and n != size:
        raise MessageError(f"{TYPE_NAMES[mtype]} must be {size} bytes, got {n}")
    if not exact:
        if n < size:
            raise MessageError(f"{TYPE_NAMES[mtype]} must be at least {size} bytes, got {n}")
        if n > MAX_DATAGRAM_SIZE:
            raise MessageError(f"{TYPE_NAMES[mtype]} of {n} bytes is larger than any IP packet")
