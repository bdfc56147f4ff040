"""Exercise: the Noise KDF chain of the handshake (WireGuard paper, sections 5.4.2-5.4.5).

Both peers keep two running values through the handshake: the **chaining key**
``C``, from which every key is derived with ``KDF``, and the **hash** ``H``, a
transcript of everything sent, used as the AEAD's associated data.  After the
two messages, ``KDF2(C, empty)`` gives the two transport keys (Noise's Split()).

The student writes ``kdf(key, data, n)`` (HKDF as Noise defines it, on
HMAC-BLAKE2s) and ``handshake_chain(rec)``, which replays the key schedule of a
*recorded* real handshake.  The record (:class:`HandshakeRecord`) holds what the
initiator's key schedule consumed -- the public keys and ciphertexts seen on the
wire, the pre-shared key and the four Diffie-Hellman results (X25519, RFC 7748)
computed from the initiator's key log -- so students need no Curve25519 code.
The check compares the student's ``C`` and ``H`` after message 1 with what the
real responder computed, the transport keys with the keys the two real
``Device`` objects derived, and finally decrypts a real transport message with
the student's key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..packet import ip as _ip
from ..protocol import handshake as _hs
from ..protocol import keys as _keys
from ..protocol import messages as _msgs
from ..protocol.suites import WIREGUARD, AEADError
from .checking import Case, CaseFailed, expect

TITLE = "Noise KDF chain"
PARTS = ("kdf", "chain")


@dataclass(frozen=True)
class HandshakeRecord:
    """What the initiator's key schedule consumed in one real handshake.

    ``dh_es = DH(Epriv_i, Spub_r)``, ``dh_ss = DH(Spriv_i, Spub_r)``,
    ``dh_ee = DH(Epriv_i, Epub_r)``, ``dh_se = DH(Spriv_i, Epub_r)`` (the paper
    writes the last two from the responder's side; X25519 gives both sides the
    same value, which is the whole point of Diffie-Hellman).
    """

    construction: bytes
    identifier: bytes
    responder_static: bytes
    initiator_ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    responder_ephemeral: bytes
    encrypted_nothing: bytes
    psk: bytes
    dh_es: bytes
    dh_ss: bytes
    dh_ee: bytes
    dh_se: bytes

    def __repr__(self) -> str:
        rows = [f"  {k:<20} {v[:40]!r}" if k in ("construction", "identifier") else f"  {k:<20} {v.hex()[:16]}... "
                f"({len(v)} bytes)" for k, v in self.__dict__.items()]
        return "HandshakeRecord(\n" + "\n".join(rows) + "\n)"


@dataclass
class RecordedHandshake:
    """A record and the truth the check compares with (never shown to the student's code)."""

    record: HandshakeRecord
    chaining_key_1: bytes
    hash_1: bytes
    send_key: bytes
    recv_key: bytes
    responder_send_key: bytes
    responder_recv_key: bytes
    reply: bytes           # a transport message the responder sent, on the wire
    reply_plain: bytes     # the IP packet inside it


def _keylog_value(lines: list[str], name: str) -> bytes:
    for line in "".join(lines).splitlines():
        k, _, v = line.partition(" = ")
        if k.strip() == name:
            return _keys.decode(v.strip(), name)
    raise KeyError(name)


def record_handshake(psk: bytes | None = None) -> RecordedHandshake:
    """Run a real handshake between two devices on the simulated wire and record it."""
    from ..sim import make_pair
    pair = make_pair(psk=psk)
    log: list[str] = []
    pair.client.keylog = log.append
    pair.handshake()
    ping = _ip.build_icmp_echo("10.0.0.2", "10.0.0.1", seq=1, payload=b"lab 3 ping")
    reply = _ip.build_icmp_echo("10.0.0.1", "10.0.0.2", seq=1, payload=b"lab 3 reply", reply=True)
    pair.client_sends(ping)
    pair.server_sends(reply)
    wire = [c.data for c in pair.net.capture]
    m1 = _msgs.HandshakeInitiation.from_bytes(next(d for d in wire if d[0] == _msgs.INITIATION))
    m2 = _msgs.HandshakeResponse.from_bytes(next(d for d in wire if d[0] == _msgs.RESPONSE))
    data = [d for d in wire if d[0] == _msgs.TRANSPORT_DATA]
    s_i = _keys.X25519KeyPair(_keylog_value(log, "LOCAL_STATIC_PRIVATE_KEY"))
    e_i = _keys.X25519KeyPair(_keylog_value(log, "LOCAL_EPHEMERAL_PRIVATE_KEY"))
    suite = WIREGUARD
    rec = HandshakeRecord(
        suite.construction, suite.identifier, pair.server.public_key, m1.ephemeral, m1.encrypted_static,
        m1.encrypted_timestamp, m2.ephemeral, m2.encrypted_nothing, psk or _hs.NO_PSK,
        e_i.dh(pair.server.public_key), s_i.dh(pair.server.public_key), e_i.dh(m2.ephemeral),
        s_i.dh(m2.ephemeral))
    consumed = _hs.consume_initiation(suite, pair.server.static, m1)   # the real responder's C and H
    mine = pair.server_peer.current.keys       # the client's (initiator's) keys
    theirs = (pair.client_peer.current or pair.client_peer.next).keys
    return RecordedHandshake(rec, consumed.chaining_key, consumed.hash, mine.send_key, mine.recv_key,
                             theirs.send_key, theirs.recv_key, data[-1], reply)


# -------------------------------------------------------------------- cases
def _as_bytes(v, what: str) -> bytes:
    expect(isinstance(v, (bytes, bytearray)) and len(v) == 32,
           f"{what} should be 32 bytes, got {type(v).__name__}"
           + (f" of length {len(v)}" if hasattr(v, "__len__") else ""),
           "HMAC-BLAKE2s gives 32 bytes: hmac.new(key, data, 'blake2s').digest()")
    return bytes(v)


def _kdf_cases(kdf):
    rng = random.Random(5869)
    for n in (1, 2, 3):
        for data_len in (0, 32, 7):
            key, data = rng.randbytes(32), rng.randbytes(data_len)
            want = WIREGUARD.kdf(key, data, n)
            got = kdf(key, data, n)
            expect(isinstance(got, (tuple, list)) and len(got) == n,
                   f"kdf(key, {data_len}-byte input, {n}) should return a tuple of {n} keys, got {got!r:.60}")
            for i, (g, w) in enumerate(zip(got, want), 1):
                g = _as_bytes(g, f"output {i} of KDF{n}")
                expect(g == w, f"KDF{n} on a {data_len}-byte input: output {i} is {g.hex()[:16]}..., expected "
                       f"{w.hex()[:16]}...", "t0 = HMAC(key, input); t1 = HMAC(t0, 0x01); "
                       "t2 = HMAC(t0, t1 || 0x02); t3 = HMAC(t0, t2 || 0x03) -- HMAC's key comes first")


def _chain(chain, rh: RecordedHandshake) -> dict:
    got = chain(rh.record)
    expect(isinstance(got, dict), f"handshake_chain returned {type(got).__name__}, expected a dict")
    missing = [k for k in ("chaining_key_1", "hash_1", "send_key", "recv_key") if k not in got]
    expect(not missing, "handshake_chain's dict lacks " + ", ".join(missing))
    return {k: _as_bytes(got[k], k) for k in ("chaining_key_1", "hash_1", "send_key", "recv_key")}


def _message1(kdf, chain, rh=None):
    rh = rh or record_handshake()
    got = _chain(chain, rh)
    expect(got["hash_1"] == rh.hash_1, "after message 1 your hash H differs from the real responder's",
           "H starts as HASH(HASH(C0 || IDENTIFIER) || Spub_r) with C0 = HASH(CONSTRUCTION); then it absorbs "
           "msg.ephemeral, msg.static and msg.timestamp (the ciphertexts), in that order")
    expect(got["chaining_key_1"] == rh.chaining_key_1,
           "after message 1 your chaining key C differs from the real responder's (your H is right)",
           "C = KDF1(C, Epub_i); (C, k) = KDF2(C, dh_es); (C, k) = KDF2(C, dh_ss)")


def _transport(kdf, chain, rh=None, what="the handshake"):
    rh = rh or record_handshake()
    got = _chain(chain, rh)
    _message1(kdf, chain, rh)
    hint = ("message 2: C = KDF1(C, Epub_r); C = KDF1(C, dh_ee); C = KDF1(C, dh_se); (C, t, k) = KDF3(C, psk); "
            "then (send, recv) = KDF2(C, empty) for the initiator")
    if {got["send_key"], got["recv_key"]} == {rh.send_key, rh.recv_key} and got["send_key"] != rh.send_key:
        raise CaseFailed(f"{what}: your send and receive keys are swapped",
                         "the initiator sends with the first output of the final KDF2 and receives with the second")
    expect(got["send_key"] == rh.send_key == rh.responder_recv_key,
           f"{what}: your send key is not the key the real devices derived", hint)
    expect(got["recv_key"] == rh.recv_key == rh.responder_send_key,
           f"{what}: your receive key is not the key the real devices derived", hint)
    return rh, got


def _decrypt(kdf, chain):
    rh, got = _transport(kdf, chain)
    msg = _msgs.TransportData.from_bytes(rh.reply)
    try:
        plain = WIREGUARD.transport_aead(got["recv_key"]).open(msg.counter, msg.encrypted_packet)
    except AEADError:
        raise CaseFailed("your receive key does not decrypt the server's real transport message") from None
    expect(plain[:_ip.ip_length(plain)] == rh.reply_plain, "the decrypted packet is not the server's reply")


def _psk(kdf, chain):
    _transport(kdf, chain, record_handshake(psk=bytes(range(32))), "a handshake with a pre-shared key")


def _hidden(kdf, chain):
    rng = random.Random(7748)
    for i in range(3):
        psk = rng.randbytes(32) if i % 2 == 0 else None
        _transport(kdf, chain, record_handshake(psk=psk), f"hidden handshake {i + 1}")


def cases() -> list[Case]:
    return [
        Case("KDF1, KDF2 and KDF3 on hidden inputs", lambda kdf, chain: _kdf_cases(kdf),
             "Noise section 4.3: HKDF with the chaining key as HMAC key and no 'info'"),
        Case("C and H after message 1 match the real responder", _message1,
             "follow the paper, section 5.4.2, line by line"),
        Case("the transport keys match the keys the real Devices derived", _transport,
             "section 5.4.3 (message 2) and 5.4.5 (the transport keys)"),
        Case("your key decrypts a real transport message", _decrypt,
             "the transport AEAD is ChaCha20-Poly1305 with the counter as nonce"),
        Case("a handshake with a pre-shared key (psk2)", _psk,
             "the psk goes in with KDF3 after the DH results of message 2; t is hashed into H"),
        Case("hidden handshakes", _hidden, "fresh keys each time: nothing may be hard-coded"),
    ]
