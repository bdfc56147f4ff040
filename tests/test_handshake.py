"""The handshake is a function of its inputs: with a seeded source of randomness (keys,
ephemeral keys, indices) and a fake clock, two runs put the same bytes on the wire, and those
bytes are pinned here.  And Noise_IKpsk2 step by step (vpnedu.protocol.handshake)."""

import hashlib

import pytest

from vpnedu.protocol import handshake as hs
from vpnedu.protocol import messages as m
from vpnedu.protocol import tai64n
from vpnedu.protocol.keys import X25519KeyPair, generate_private_key
from vpnedu.protocol.suites import WIREGUARD
from vpnedu.sim import FakeClock, make_pair
from vpnedu.testing import SeededRandom

PING = bytes.fromhex("45000054000040004001263e0a0000020a000001") + bytes(64)


def seeded_wire(seed: bytes) -> list[bytes]:
    pair = make_pair(random=SeededRandom(seed), clock=FakeClock(), psk=bytes(range(32)))
    pair.handshake()
    pair.net.clock.advance(1)
    pair.client_sends(PING)
    return [c.data for c in pair.net.capture]


def test_a_seeded_handshake_reproduces_fixed_bytes():
    wire = seeded_wire(b"vpnedu-fixed")
    assert [d[0] for d in wire] == [m.INITIATION, m.RESPONSE, m.TRANSPORT_DATA, m.TRANSPORT_DATA]
    assert wire == seeded_wire(b"vpnedu-fixed")             # run twice: byte for byte the same
    assert wire != seeded_wire(b"another seed")
    # Pinned: initiation, response, the confirming keepalive and one data message.  A change
    # to any step (key schedule, MACs, padding, counters, where randomness is drawn) shows here.
    assert hashlib.sha256(b"".join(wire)).hexdigest() == PINNED


PINNED = "1f13a7f50e044263983e4f89aa8a988aad5ef68c8e94b00ee921b787e5666216"


def test_seeded_random_is_deterministic_and_sized():
    a, b = SeededRandom("x"), SeededRandom("x")
    assert [a(n) for n in (1, 7, 32, 100)] == [b(n) for n in (1, 7, 32, 100)]
    assert [len(SeededRandom("y")(n)) for n in (0, 1, 65, 200)] == [0, 1, 65, 200]
    assert SeededRandom("x")(32) != SeededRandom("z")(32)


def run_handshake(psk=bytes(32)):
    i_static, r_static = X25519KeyPair(generate_private_key()), X25519KeyPair(generate_private_key())
    stamp = tai64n.encode(1_800_000_000.0)
    msg, state = hs.create_initiation(WIREGUARD, i_static, r_static.public, psk, 0x11, stamp, X25519KeyPair())
    return i_static, r_static, stamp, msg, state


def test_both_sides_derive_the_same_transport_keys():
    i_static, r_static, stamp, msg, state = run_handshake()
    init = hs.consume_initiation(WIREGUARD, r_static, msg)
    assert init.remote_static == i_static.public and init.timestamp == stamp
    resp, r_keys = hs.create_response(WIREGUARD, r_static, init, bytes(32), 0x22, X25519KeyPair())
    i_keys = hs.consume_response(WIREGUARD, i_static, state, resp)
    assert (i_keys.send_key, i_keys.recv_key) == (r_keys.recv_key, r_keys.send_key)
    assert (i_keys.local_index, i_keys.remote_index) == (0x11, 0x22) and i_keys.initiator
    assert (r_keys.local_index, r_keys.remote_index) == (0x22, 0x11) and not r_keys.initiator


@pytest.mark.parametrize("field", ["ephemeral", "encrypted_static", "encrypted_timestamp"])
def test_an_altered_initiation_fails_with_a_reason(field):
    _, r_static, _, msg, _ = run_handshake()
    value = bytearray(getattr(msg, field))
    value[5] ^= 1
    setattr(msg, field, bytes(value))
    with pytest.raises(hs.HandshakeError) as e:
        hs.consume_initiation(WIREGUARD, r_static, msg)
    assert e.value.reason


def test_a_different_psk_fails_the_response():
    i_static, r_static, _, msg, state = run_handshake(psk=bytes(32))
    init = hs.consume_initiation(WIREGUARD, r_static, msg)
    resp, _ = hs.create_response(WIREGUARD, r_static, init, b"\x01" * 32, 0x22, X25519KeyPair())
    with pytest.raises(hs.HandshakeError):
        hs.consume_response(WIREGUARD, i_static, state, resp)
