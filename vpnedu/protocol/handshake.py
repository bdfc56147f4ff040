"""The Noise_IKpsk2 handshake, step by step (WireGuard paper, section 5.4.2-5.4.5).

Two messages establish a session:

1. The **initiator** knows the responder's static public key in advance (the
   "K" in IK).  It sends an ephemeral public key, its own static public key
   encrypted (the "I": transmitted Immediately, but hidden), and an encrypted
   timestamp.
2. The **responder** answers with its own ephemeral public key and an empty
   encrypted payload that proves it derived the same keys.  The pre-shared key
   is mixed in at this point ("psk2"), so even a future quantum computer that
   breaks Curve25519 cannot read a session protected by a secret PSK.

Both sides keep two running values: the **chaining key** ``C``, from which
every encryption key is derived (``KDF``), and the **hash** ``H``, a running
transcript of everything sent so far that is used as the AEAD's associated
data, so any change to an earlier field makes every later AEAD fail.

The functions here are pure: keys, indices, timestamps and ephemeral keys are
passed in, messages and keys come out.  They never touch sockets or clocks.
Each step is commented with the paper's line it implements.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import tai64n
from .keys import DHError, X25519KeyPair
from .messages import HandshakeInitiation, HandshakeResponse
from .suites import AEADError, CipherSuite

#: Used when a peer has no PresharedKey: 32 zero bytes (paper, section 5.2).
NO_PSK = bytes(32)


class HandshakeError(Exception):
    """A handshake message that fails a cryptographic check.

    ``reason`` is the short word used in ``packet.dropped`` events.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class InitiatorState:
    """What the initiator must remember between sending message 1 and receiving message 2."""

    local_index: int
    remote_static: bytes
    psk: bytes
    ephemeral: X25519KeyPair
    chaining_key: bytes
    hash: bytes


@dataclass(slots=True)
class ConsumedInitiation:
    """What the responder learned from a valid message 1."""

    remote_index: int
    remote_static: bytes
    remote_ephemeral: bytes
    timestamp: bytes
    chaining_key: bytes
    hash: bytes


@dataclass(slots=True)
class SessionKeys:
    """The result of a handshake: one key per direction and the two indices.

    ``local_index`` is the index the peer puts in the messages it sends us;
    ``remote_index`` is the one we put in the messages we send it.
    """

    send_key: bytes
    recv_key: bytes
    local_index: int
    remote_index: int
    initiator: bool


def _dh(a: X25519KeyPair, public: bytes) -> bytes:
    try:
        return a.dh(public)
    except DHError as e:
        raise HandshakeError("low-order-key", str(e)) from None


def _open(suite: CipherSuite, key: bytes, ciphertext: bytes, ad: bytes, what: str) -> bytes:
    try:
        return suite.handshake_aead(key).open(0, ciphertext, ad)
    except AEADError:
        raise HandshakeError("bad-mac", f"{what} does not decrypt (wrong keys or altered message)") from None


def create_initiation(suite: CipherSuite, static: X25519KeyPair, remote_static: bytes, psk: bytes,
                      local_index: int, timestamp: bytes,
                      ephemeral: X25519KeyPair | None = None) -> tuple[HandshakeInitiation, InitiatorState]:
    """Build message 1 (its mac1/mac2 are filled in later by :mod:`.cookie`)."""
    e = ephemeral or X25519KeyPair()
    # Ci = HASH(CONSTRUCTION); Hi = HASH(Ci || IDENTIFIER)   (precomputed in the suite)
    # Hi = HASH(Hi || Spub_r)
    c = suite.initial_chain_key
    h = suite.hash(suite.initial_hash, remote_static)
    # (Epriv_i, Epub_i) = DH-GENERATE(); Ci = KDF1(Ci, Epub_i); msg.ephemeral = Epub_i
    (c,) = suite.kdf(c, e.public, 1)
    # Hi = HASH(Hi || msg.ephemeral)
    h = suite.hash(h, e.public)
    # (Ci, k) = KDF2(Ci, DH(Epriv_i, Spub_r)); msg.static = AEAD(k, 0, Spub_i, Hi)
    c, k = suite.kdf(c, _dh(e, remote_static), 2)
    enc_static = suite.handshake_aead(k).seal(0, static.public, h)
    # Hi = HASH(Hi || msg.static)
    h = suite.hash(h, enc_static)
    # (Ci, k) = KDF2(Ci, DH(Spriv_i, Spub_r)); msg.timestamp = AEAD(k, 0, TAI64N(), Hi)
    c, k = suite.kdf(c, _dh(static, remote_static), 2)
    enc_ts = suite.handshake_aead(k).seal(0, timestamp, h)
    # Hi = HASH(Hi || msg.timestamp)
    h = suite.hash(h, enc_ts)
    msg = HandshakeInitiation(local_index, e.public, enc_static, enc_ts)
    return msg, InitiatorState(local_index, remote_static, psk, e, c, h)


def consume_initiation(suite: CipherSuite, static: X25519KeyPair,
                       msg: HandshakeInitiation) -> ConsumedInitiation:
    """The responder's mirror of :func:`create_initiation`: learn who is calling.

    Raises :class:`HandshakeError` if any AEAD fails.  Checking that the peer is
    known and the timestamp is new is the caller's job (it needs peer state).
    """
    c = suite.initial_chain_key
    h = suite.hash(suite.initial_hash, static.public)
    (c,) = suite.kdf(c, msg.ephemeral, 1)
    h = suite.hash(h, msg.ephemeral)
    c, k = suite.kdf(c, _dh(static, msg.ephemeral), 2)
    remote_static = _open(suite, k, msg.encrypted_static, h, "encrypted static key")
    h = suite.hash(h, msg.encrypted_static)
    c, k = suite.kdf(c, _dh(static, remote_static), 2)
    timestamp = _open(suite, k, msg.encrypted_timestamp, h, "encrypted timestamp")
    if len(timestamp) != tai64n.SIZE:
        raise HandshakeError("malformed", "timestamp is not 12 bytes")
    h = suite.hash(h, msg.encrypted_timestamp)
    return ConsumedInitiation(msg.sender, remote_static, msg.ephemeral, timestamp, c, h)


def create_response(suite: CipherSuite, static: X25519KeyPair, init: ConsumedInitiation, psk: bytes,
                    local_index: int,
                    ephemeral: X25519KeyPair | None = None) -> tuple[HandshakeResponse, SessionKeys]:
    """Build message 2 and derive the session keys (responder side)."""
    e = ephemeral or X25519KeyPair()
    c, h = init.chaining_key, init.hash
    # (Epriv_r, Epub_r) = DH-GENERATE(); Cr = KDF1(Cr, Epub_r); msg.ephemeral = Epub_r
    (c,) = suite.kdf(c, e.public, 1)
    # Hr = HASH(Hr || msg.ephemeral)
    h = suite.hash(h, e.public)
    # Cr = KDF1(Cr, DH(Epriv_r, Epub_i)); Cr = KDF1(Cr, DH(Epriv_r, Spub_i))
    (c,) = suite.kdf(c, _dh(e, init.remote_ephemeral), 1)
    (c,) = suite.kdf(c, _dh(e, init.remote_static), 1)
    # (Cr, t, k) = KDF3(Cr, Q); Hr = HASH(Hr || t)      -- psk2: the pre-shared key Q
    c, t, k = suite.kdf(c, psk, 3)
    h = suite.hash(h, t)
    # msg.empty = AEAD(k, 0, empty, Hr); Hr = HASH(Hr || msg.empty)
    empty = suite.handshake_aead(k).seal(0, b"", h)
    h = suite.hash(h, empty)
    msg = HandshakeResponse(local_index, init.remote_index, e.public, empty)
    return msg, _split(suite, c, local_index, init.remote_index, initiator=False)


def consume_response(suite: CipherSuite, static: X25519KeyPair, state: InitiatorState,
                     msg: HandshakeResponse) -> SessionKeys:
    """The initiator's mirror of :func:`create_response`: finish the handshake."""
    c, h = state.chaining_key, state.hash
    (c,) = suite.kdf(c, msg.ephemeral, 1)
    h = suite.hash(h, msg.ephemeral)
    (c,) = suite.kdf(c, _dh(state.ephemeral, msg.ephemeral), 1)
    (c,) = suite.kdf(c, _dh(static, msg.ephemeral), 1)
    c, t, k = suite.kdf(c, state.psk, 3)
    h = suite.hash(h, t)
    _open(suite, k, msg.encrypted_nothing, h, "encrypted empty payload")
    return _split(suite, c, state.local_index, msg.sender, initiator=True)


def _split(suite: CipherSuite, c: bytes, local_index: int, remote_index: int, *,
           initiator: bool) -> SessionKeys:
    # (Tsend_i = Trecv_r, Trecv_i = Tsend_r) = KDF2(C, empty)   (paper 5.4.5; Noise Split())
    t1, t2 = suite.kdf(c, b"", 2)
    if initiator:
        return SessionKeys(t1, t2, local_index, remote_index, True)
    return SessionKeys(t2, t1, local_index, remote_index, False)
