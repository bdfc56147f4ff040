"""X25519 keys in WireGuard's text form.

WireGuard writes every key -- private, public, pre-shared -- as 32 bytes in
standard base64 (44 characters ending in ``=``).  ``wg genkey`` draws 32
random bytes and *clamps* them as Curve25519 requires (clear the 3 low bits,
clear the top bit, set bit 254: RFC 7748 section 5), ``wg pubkey`` computes
the X25519 public key, and ``wg genpsk`` draws 32 random bytes.  These
functions do the same, so their output is interchangeable with ``wg``'s.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ..errors import KeyFormatError

KEY_SIZE = 32


def clamp(secret: bytes) -> bytes:
    """Curve25519 clamping (RFC 7748, section 5), as ``wg genkey`` does."""
    b = bytearray(secret)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key(random: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """32 random bytes, clamped: a WireGuard private key.  ``random(n)`` is the source of
    randomness (the operating system's CSPRNG unless a caller injects another)."""
    return clamp(random(KEY_SIZE))


def generate_psk(random: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """32 random bytes: a pre-shared key (mixed in as Noise's psk2)."""
    return random(KEY_SIZE)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a private key."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def encode(key: bytes) -> str:
    """Raw 32 bytes -> WireGuard's base64 text."""
    return base64.b64encode(key).decode("ascii")


def decode(text: str, what: str = "key") -> bytes:
    """WireGuard's base64 text -> raw 32 bytes, or a :class:`KeyFormatError`.

    The error says what is wrong with the text -- its length, or that it is not base64 --
    but never shows it: the text may be a private or pre-shared key, and an error message
    ends up on screens, in terminal scroll-back and in logs."""
    s = text.strip()
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != KEY_SIZE or len(s) != 44:
        if not s:
            why = "it is empty"
        elif len(s) != 44:
            why = f"{len(s)} characters, not 44"
        else:
            why = "characters other than A-Z a-z 0-9 + / and a final ="
        raise KeyFormatError(
            f"{what} is not 32 bytes of base64 ({why}; not shown here: keys are secret)",
            "a WireGuard key is 44 characters ending in '=', as printed by "
            "'vpnedu genkey' or 'wg genkey'",
        )
    return raw


#: A run of base64 characters long enough to be (part of) a key.  Text that holds one is never
#: echoed in an error (see :func:`shown`).
_KEYISH = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def looks_like_key(text: str) -> bool:
    """True if ``text`` holds a long run of base64: it may be (part of) a key."""
    return _KEYISH.search(text) is not None


def shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error message -- unless it may hold a key, or is long.

    Used wherever a message would echo what the user wrote (an unknown setting, a bad address):
    a private key pasted into the wrong field must not come back on the terminal."""
    if looks_like_key(text):
        return "(a value that looks like a key; not shown)"
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def redact(text: str) -> str:
    """``text`` with every run that may be a key replaced by ``(key hidden)`` (for log lines that
    quote user text, e.g. a hook's command line)."""
    return _KEYISH.sub("(key hidden)", text)


class X25519KeyPair:
    """A static or ephemeral X25519 key pair, with Diffie-Hellman.  (The transport keys a
    handshake derives are a :class:`~.session.TransportSession`.)

    ``dh`` refuses an all-zero shared secret (a low-order public key), as the
    Noise spec allows and WireGuard does: such a result would give an attacker a
    known key.
    """

    __slots__ = ("private", "public", "_key")

    def __init__(self, private: bytes | None = None):
        self.private = private if private is not None else generate_private_key()
        self._key = X25519PrivateKey.from_private_bytes(self.private)
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def dh(self, public: bytes) -> bytes:
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            # cryptography refuses an all-zero result: a low-order point.
            raise DHError("Diffie-Hellman with a low-order public key") from None

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={encode(self.public)})"


class DHError(Exception):
    """X25519 produced an all-zero shared secret."""
