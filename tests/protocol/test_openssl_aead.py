"""vpnedu's compiled AEAD call (vpnedu/protocol/openssl_aead.c) against `cryptography`'s.

Both run OpenSSL's ciphers; what is checked is the glue: the same bytes out for every size, with
and without associated data, the same exception for anything that does not authenticate, and a
clear error for arguments the engine must never pass.  The RFC 8439 vector pins the cipher
itself.  Real peers check the rest: the interop tests run wireguard-go against vpnedu, which
uses this module by default.
"""

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnedu.protocol import suites
from vpnedu.protocol.suites import AEAD, AEADError, TagMismatch

from ..conftest import run_cli

try:
    from vpnedu.protocol import openssl_aead
except ImportError:
    openssl_aead = None
REFERENCE = {"chacha20-poly1305": ChaCha20Poly1305, "aes-256-gcm": AESGCM}


def test_the_module_is_built_and_is_the_default():
    # scripts/setup.sh installs gcc, python3-dev and libssl-dev, so the install builds it; without
    # them vpnedu still works through cryptography, but this machine should not be one of those.
    assert openssl_aead is not None, ("vpnedu/protocol/openssl_aead.c was not built: install gcc, python3-dev "
                                      "and libssl-dev, then pip install -e .")
    assert "OpenSSL" in openssl_aead.OPENSSL_VERSION
    if not os.environ.get("VPNEDU_AEAD"):
        assert suites.aead_backend() == "openssl"
        assert isinstance(suites.WIREGUARD.transport_aead(bytes(32)).decrypt.__self__, openssl_aead.Cipher)


def test_rfc8439_aead_vector():
    # RFC 8439, section 2.8.2: the "sunscreen" example.
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    ad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    text = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
            b"sunscreen would be it.")
    out = bytearray(len(text) + 16)
    openssl_aead.Cipher("chacha20-poly1305", key).encrypt_into(nonce, text, ad, out)
    assert out[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert out[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(REFERENCE)), key=st.binary(min_size=32, max_size=32),
       counter=st.integers(0, 2**64 - 1), data=st.binary(max_size=2000),
       ad=st.none() | st.binary(max_size=64))
def test_same_bytes_as_cryptography(name, key, counter, data, ad):
    ours, theirs = openssl_aead.Cipher(name, key), REFERENCE[name](key)
    nonce = counter.to_bytes(12, "little")
    out = bytearray(len(data) + 16)
    ours.encrypt_into(nonce, data, ad, out)
    assert bytes(out) == theirs.encrypt(nonce, data, ad)
    assert ours.decrypt(nonce, memoryview(out), ad) == data
    assert theirs.decrypt(nonce, bytes(out), ad) == data


def test_every_size_up_to_two_blocks_past_a_jumbo_packet():
    for name, ref in REFERENCE.items():
        key = os.urandom(32)
        ours, theirs = openssl_aead.Cipher(name, key), ref(key)
        for n in (*range(0, 70), 1420, 1500, 9000, 65535):
            data = os.urandom(n)
            out = bytearray(n + 16)
            ours.encrypt_into(bytes(12), data, None, out)
            assert bytes(out) == theirs.encrypt(bytes(12), data, None), (name, n)


def test_anything_altered_raises_the_engines_tag_mismatch():
    key = os.urandom(32)
    c = openssl_aead.Cipher("chacha20-poly1305", key)
    nonce = bytes(4) + (7).to_bytes(8, "little")
    out = bytearray(100 + 16)
    c.encrypt_into(nonce, bytes(100), b"ad", out)
    sealed = bytes(out)
    assert c.decrypt(nonce, sealed, b"ad") == bytes(100)
    flipped = bytearray(sealed)
    flipped[3] ^= 1
    tag_flipped = sealed[:-1] + bytes([sealed[-1] ^ 0x80])
    other_nonce = bytes(4) + (8).to_bytes(8, "little")
    for args in ((nonce, bytes(flipped), b"ad"), (nonce, tag_flipped, b"ad"), (nonce, sealed, b"AD"),
                 (nonce, sealed, None), (other_nonce, sealed, b"ad"), (nonce, sealed[:15], b"ad")):
        with pytest.raises(TagMismatch):
            c.decrypt(*args)
    # The context is fine after a failure (the engine goes on opening the next message).
    assert c.decrypt(nonce, sealed, b"ad") == bytes(100)
    # And a wrong key: another Cipher.
    with pytest.raises(TagMismatch):
        openssl_aead.Cipher("chacha20-poly1305", os.urandom(32)).decrypt(nonce, sealed, b"ad")
    # The readable layer turns it into AEADError, as with cryptography.
    a = AEAD(c, big_endian=False)
    with pytest.raises(AEADError):
        a.open(8, a.seal(7, b"x"))


def test_arguments_the_engine_never_passes_are_refused_clearly():
    c = openssl_aead.Cipher("aes-256-gcm", bytes(32))
    with pytest.raises(ValueError, match="nonce must be 12 bytes"):
        c.encrypt_into(bytes(8), b"abc", None, bytearray(19))
    with pytest.raises(ValueError, match="exactly len"):
        c.encrypt_into(bytes(12), b"abc", None, bytearray(20))
    with pytest.raises(BufferError, match="not writable"):
        c.encrypt_into(bytes(12), b"abc", None, bytes(19))
    with pytest.raises(TypeError, match="4 arguments"):
        c.encrypt_into(bytes(12), b"abc", None)
    with pytest.raises(TypeError, match="3 arguments"):
        c.decrypt(bytes(12), b"abc")
    with pytest.raises(ValueError, match="unknown cipher 'rot13'"):
        openssl_aead.Cipher("rot13", bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        openssl_aead.Cipher("chacha20-poly1305", bytes(16))
    unkeyed = openssl_aead.Cipher.__new__(openssl_aead.Cipher)
    with pytest.raises(ValueError, match="no key"):
        unkeyed.encrypt_into(bytes(12), b"abc", None, bytearray(19))
    with pytest.raises(ValueError, match="no key"):
        unkeyed.decrypt(bytes(12), bytes(32), None)


def _backend_in_a_fresh_process(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VPNEDU_AEAD"}
    if value is not None:
        env["VPNEDU_AEAD"] = value
    # What the command line does with VPNEDU_AEAD (vpnedu.cli.main).
    code = ("import os\nfrom vpnedu.protocol import suites\n"
            "suites.choose_aead(os.environ.get('VPNEDU_AEAD'))\n"
            "a = suites.WIREGUARD.transport_aead(bytes(32))\n"
            "print(suites.aead_backend(), type(a.decrypt.__self__).__module__)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_vpnedu_aead_chooses_the_library():
    r = _backend_in_a_fresh_process("cryptography")
    assert r.returncode == 0 and r.stdout.split()[0] == "cryptography", r.stderr
    assert r.stdout.split()[1].startswith("cryptography."), r.stdout
    r = _backend_in_a_fresh_process("OpenSSL")
    assert r.returncode == 0 and r.stdout.split() == ["openssl", "vpnedu.protocol.openssl_aead"], r.stdout + r.stderr
    r = _backend_in_a_fresh_process(None)
    assert r.returncode == 0 and r.stdout.split()[0] == "openssl", r.stderr


def test_a_bad_vpnedu_aead_is_one_line_naming_it():
    env = {**os.environ, "VPNEDU_AEAD": "fastest"}
    r = run_cli("handshake-demo", env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "VPNEDU_AEAD='fastest'" in lines[0] and "'openssl' or 'cryptography'" in lines[0], r.stderr
