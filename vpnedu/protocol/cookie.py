"""mac1, mac2 and cookies: WireGuard's defence against handshake floods (paper, section 5.3).

A handshake costs the responder several Curve25519 operations, so an attacker
could flood it with initiations.  Two 16-byte MACs at the end of every
handshake message stop that cheaply:

* **mac1** = MAC(HASH("mac1----" || receiver's public key), message up to mac1).
  Anyone who knows the receiver's *public* key can compute it, so it does not
  authenticate the sender; it only proves the sender knew whom it was talking
  to, and lets the receiver drop random garbage after one hash, before any
  Curve25519 work.  A responder never answers a message whose mac1 is wrong.
* **mac2** = MAC(cookie, message up to mac2), or zeros when the sender holds no
  cookie.  Only when the responder is *under load* does it insist on a valid
  mac2.  Without one it answers with a small **cookie reply** instead of doing
  the handshake: the cookie is MAC(secret, sender's IP address and port), with a
  secret that changes every two minutes, encrypted to the initiator.  A flood
  from spoofed addresses never receives its cookies, so it can never present a
  valid mac2, and the responder's CPU goes to peers that prove they can
  receive at their address.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from typing import Callable

from .suites import LABEL_COOKIE, LABEL_MAC1, MAC_LEN, AEADError, CipherSuite

#: A cookie secret (and a cookie received) is good for two minutes (paper, 6.1: COOKIE_REFRESH_TIME).
COOKIE_REFRESH_TIME = 120.0

#: Where a peer is: ``(host, port)``, host an IPv4 or IPv6 address as text.  The IO layer may
#: add a third element, opaque to the protocol: the local address the peer's packet arrived at,
#: so that replies leave from it ("sticky" source addresses, see :mod:`vpnedu.net.udp`).  The
#: protocol only compares endpoints and hands them back; cookies and roaming look at the first two.
Endpoint = tuple


def format_endpoint(endpoint: Endpoint) -> str:
    """``192.0.2.1:51820`` or ``[2001:db8::1]:51820``, as ``wg`` writes endpoints."""
    host, port = endpoint[0], endpoint[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoint_bytes(endpoint: Endpoint) -> bytes:
    """The bytes a cookie is computed over: the IP address (4 or 16 bytes) and the port."""
    host, port = endpoint[0], endpoint[1]
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        packed = str(host).encode()
    return packed + struct.pack("<H", port & 0xFFFF)


class MacKeys:
    """The two keys derived from one public key (precomputed: they never change).

    ``mac1_key`` = HASH("mac1----" || public), ``cookie_key`` = HASH("cookie--" || public).
    """

    __slots__ = ("mac1_key", "cookie_key")

    def __init__(self, suite: CipherSuite, public: bytes):
        self.mac1_key = suite.hash(LABEL_MAC1, public)
        self.cookie_key = suite.hash(LABEL_COOKIE, public)


def add_macs(suite: CipherSuite, message: bytes, receiver_keys: MacKeys,
             cookie: bytes | None) -> tuple[bytes, bytes, bytes]:
    """Fill in mac1 and mac2 of a handshake message whose last 32 bytes are the MACs.

    Returns ``(message, mac1, mac2)``.  mac2 is zeros when we hold no valid cookie.
    """
    body = message[:-2 * MAC_LEN]
    mac1 = suite.mac(receiver_keys.mac1_key, body)
    mac2 = suite.mac(cookie, body + mac1) if cookie is not None else bytes(MAC_LEN)
    return body + mac1 + mac2, mac1, mac2


def check_mac1(suite: CipherSuite, message: bytes, our_keys: MacKeys) -> bool:
    body, mac1 = message[:-2 * MAC_LEN], message[-2 * MAC_LEN:-MAC_LEN]
    return _eq(suite.mac(our_keys.mac1_key, body), mac1)


def _eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class CookieChecker:
    """The responder's side: checks mac2 and makes cookie replies.

    ``random(n)`` is the device's injected source of random bytes (the secret and the
    nonces come from it); ``now`` is the caller's monotonic time.  The secret rotates
    every :data:`COOKIE_REFRESH_TIME` seconds.
    """

    def __init__(self, suite: CipherSuite, our_public: bytes, random: Callable[[int], bytes]):
        self.suite = suite
        self.keys = MacKeys(suite, our_public)
        self._random = random
        self._secret = b""
        self._secret_time = float("-inf")

    def _current_secret(self, now: float) -> bytes:
        if now - self._secret_time >= COOKIE_REFRESH_TIME:
            self._secret = self._random(32)
            self._secret_time = now
        return self._secret

    def cookie_for(self, source: Endpoint, now: float) -> bytes:
        return self.suite.mac(self._current_secret(now), endpoint_bytes(source))

    def check_mac2(self, message: bytes, source: Endpoint, now: float) -> bool:
        body, mac2 = message[:-MAC_LEN], message[-MAC_LEN:]
        return _eq(self.suite.mac(self.cookie_for(source, now), body), mac2)

    def make_reply(self, message: bytes, receiver_index: int, source: Endpoint,
                   now: float) -> tuple[bytes, bytes]:
        """A cookie reply for a handshake message that had a valid mac1 but no valid mac2.

        The cookie is encrypted under HASH("cookie--" || our public key) with the
        message's mac1 as associated data, so only the real sender (who knows
        which mac1 it sent) can use it.  Returns ``(nonce, encrypted_cookie)``.
        """
        nonce = self._random(24)
        mac1 = message[-2 * MAC_LEN:-MAC_LEN]
        sealed = self.suite.cookie_seal(self.keys.cookie_key, nonce, self.cookie_for(source, now), mac1)
        return nonce, sealed


def open_cookie(suite: CipherSuite, responder_keys: MacKeys, nonce: bytes, sealed: bytes,
                our_last_mac1: bytes) -> bytes | None:
    """The initiator's side: decrypt a cookie reply, or None if it does not authenticate."""
    try:
        return suite.cookie_open(responder_keys.cookie_key, nonce, sealed, our_last_mac1)
    except AEADError:
        return None
