"""The primitives against published vectors and an independent implementation (OpenSSL)."""

import hashlib
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as ossl_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnedu.protocol.keys import X25519KeyPair
from vpnedu.protocol.suites import AES256GCM, NULL_TEACHING, WIREGUARD


def test_blake2s_rfc7693_vector():
    # RFC 7693, Appendix B: BLAKE2s-256("abc")
    assert WIREGUARD.hash(b"abc").hex() == "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"


def test_initial_chaining_key_and_hash_match_published_constants():
    # The constants hard-coded in boringtun (src/noise/handshake.rs): HASH(CONSTRUCTION) and
    # HASH(HASH(CONSTRUCTION) || IDENTIFIER) for WireGuard.
    ck = bytes([96, 226, 109, 174, 243, 39, 239, 192, 46, 195, 53, 226, 160, 37, 210, 208, 22, 235, 66,
                6, 248, 114, 119, 245, 45, 56, 209, 152, 139, 120, 205, 54])
    h = bytes([34, 17, 179, 97, 8, 26, 197, 102, 105, 18, 67, 219, 69, 138, 213, 50, 45, 156, 108, 102,
               34, 147, 232, 183, 14, 225, 156, 101, 186, 7, 158, 243])
    assert WIREGUARD.initial_chain_key == ck
    assert WIREGUARD.initial_hash == h


def test_null_teaching_differs_from_wireguard_only_in_prologue():
    assert NULL_TEACHING.initial_chain_key == WIREGUARD.initial_chain_key
    assert NULL_TEACHING.initial_hash != WIREGUARD.initial_hash


def test_hkdf_sha256_rfc5869_case3():
    # RFC 5869 test case 3: SHA-256, IKM = 0x0b * 22, salt and info empty, L = 42.
    t1, t2 = AES256GCM.kdf(b"", bytes([0x0B]) * 22, 2)
    assert (t1 + t2)[:42].hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                                    "9d201395faa4b61a96c8")


@settings(max_examples=50, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=300))
def test_hmac_blake2s_matches_openssl(key, data):
    h = ossl_hmac.HMAC(key, hashes.BLAKE2s(32))
    h.update(data)
    assert WIREGUARD.hmac(key, data) == h.finalize()


@settings(max_examples=30, deadline=None)
@given(ck=st.binary(min_size=32, max_size=32), ikm=st.binary(max_size=64), n=st.integers(1, 3))
def test_kdf_matches_openssl_hkdf(ck, ikm, n):
    for suite, algo in ((WIREGUARD, hashes.BLAKE2s(32)), (AES256GCM, hashes.SHA256())):
        expected = HKDF(algorithm=algo, length=32 * n, salt=ck, info=b"").derive(ikm)
        assert b"".join(suite.kdf(ck, ikm, n)) == expected


def test_mac_is_keyed_blake2s_128():
    key, data = os.urandom(32), b"message"
    assert WIREGUARD.mac(key, data) == hashlib.blake2s(data, key=key, digest_size=16).digest()
    assert len(AES256GCM.mac(key, data)) == 16


def test_x25519_rfc7748_vector():
    alice = X25519KeyPair(bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = X25519KeyPair(bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob.public.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.dh(bob.public).hex() == shared == bob.dh(alice.public).hex()


def test_aead_nonce_rules_and_tamper():
    key = os.urandom(32)
    for suite in (WIREGUARD, AES256GCM):
        a = suite.transport_aead(key)
        ct = a.seal(5, b"hello", b"ad")
        assert a.open(5, ct, b"ad") == b"hello"
        import pytest
        from vpnedu.protocol.suites import AEADError
        with pytest.raises(AEADError):
            a.open(6, ct, b"ad")
        with pytest.raises(AEADError):
            a.open(5, ct[:-1] + bytes([ct[-1] ^ 1]), b"ad")


def test_null_teaching_sends_plaintext_but_authenticates():
    import pytest
    from vpnedu.protocol.suites import AEADError
    a = NULL_TEACHING.transport_aead(os.urandom(32))
    ct = a.seal(0, b"secret inner packet")
    assert ct.startswith(b"secret inner packet") and len(ct) == len(b"secret inner packet") + 16
    with pytest.raises(AEADError):
        a.open(0, b"Secret" + ct[6:])
