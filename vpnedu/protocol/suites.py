"""Cipher suites: the cryptographic primitives the handshake and the tunnel use.

A Noise protocol name spells out its primitives.  WireGuard's is
``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s``: the IK handshake pattern with a
pre-shared key mixed in after the second message (psk2), Curve25519 for
Diffie-Hellman, ChaCha20-Poly1305 as the AEAD cipher and BLAKE2s as the hash
(WireGuard paper, section 5.4; Noise spec, sections 4, 5 and 12).

vpnedu ships three suites with the *same message layout*:

``wireguard`` (default)
    Exactly WireGuard: interoperates with wireguard-go and the Linux kernel.
``aes256gcm``
    ``Noise_IKpsk2_25519_AESGCM_SHA256``: AES-256-GCM and SHA-256, which are
    fast on CPUs with AES-NI.  vpnedu-only: both ends must choose it.
``null-teaching``
    The WireGuard handshake, but transport data is sent *in the clear* with
    only a Poly1305 authentication tag, so students can read the inner packets
    in Wireshark and see that integrity and confidentiality are different
    promises.  It refuses to run unless explicitly enabled.

Each suite's prologue (WireGuard calls it the IDENTIFIER) or construction
string differs, so two peers that chose different suites can never complete a
handshake: mac1 and the first AEAD already fail.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct
import warnings
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from ..errors import SuiteError

try:
    # The compiled call (vpnedu/protocol/openssl_aead.c): OpenSSL's same cipher with less glue
    # per packet.  Absent when the install had no C compiler; then `cryptography` does it all.
    from .openssl_aead import OPENSSL_VERSION as OPENSSL_AEAD_VERSION
    from .openssl_aead import Cipher as OpenSSLCipher
except ImportError:
    OpenSSLCipher = None
    OPENSSL_AEAD_VERSION = None

#: WireGuard's prologue (paper, section 5.4: "IDENTIFIER").
WIREGUARD_IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
#: Labels for the keys of mac1 and of the cookie reply (paper, section 5.4.4 and 5.4.7).
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

#: Length of every key, hash and DH output in all suites (Noise's HASHLEN/DHLEN = 32).
KEY_LEN = 32
#: Length of an AEAD authentication tag (Poly1305 and GCM both give 16 bytes).
TAG_LEN = 16
#: Length of mac1 / mac2 / cookies.
MAC_LEN = 16


class AEADError(Exception):
    """Authentication failed: the ciphertext, the tag or the associated data was altered,
    or the wrong key was used.  The core turns this into a ``packet.dropped`` event."""


#: What the raw batch methods (:meth:`AEAD.decrypt`) raise when a tag does not verify.  The
#: readable methods (:meth:`AEAD.open`) turn it into :class:`AEADError`.
TagMismatch = InvalidTag


class AEAD:
    """An AEAD cipher bound to one key, with Noise's nonce rule for the suite.

    Noise (section 5.1) uses a 64-bit counter ``n`` as the nonce.  ChaChaPoly
    encodes it as 32 zero bits followed by ``n`` little-endian; AESGCM as 32 zero
    bits followed by ``n`` big-endian (Noise spec, section 12).

    Two levels of the same operation:

    * :meth:`seal` / :meth:`open` take a counter and return new bytes -- what the
      handshake and a reader of the code use;
    * :attr:`nonce`, :attr:`encrypt_into` and :attr:`decrypt` are the cipher's own
      (C-level) calls, bound once, for the transport engine's batch loops
      (:mod:`vpnedu.protocol.transport`): ``encrypt_into(nonce, plaintext, None, out)``
      writes ciphertext and tag into a buffer the caller owns, ``decrypt(nonce, data, None)``
      raises :data:`TagMismatch`.  No Python frame sits between the loop and the cipher.
    """

    __slots__ = ("nonce", "encrypt_into", "decrypt")

    def __init__(self, cipher, big_endian: bool):
        self.nonce = struct.Struct(">4xQ" if big_endian else "<4xQ").pack
        self.encrypt_into = cipher.encrypt_into
        self.decrypt = cipher.decrypt

    def seal(self, counter: int, plaintext: bytes, ad: bytes | None = None) -> bytes:
        out = bytearray(len(plaintext) + TAG_LEN)
        self.encrypt_into(self.nonce(counter), plaintext, ad, out)
        return bytes(out)

    def open(self, counter: int, ciphertext: bytes, ad: bytes | None = None) -> bytes:
        try:
            return self.decrypt(self.nonce(counter), ciphertext, ad)
        except InvalidTag:
            raise AEADError("authentication tag does not match") from None


class NullAEAD(AEAD):
    """Authentication without encryption, for the ``null-teaching`` suite.

    The "ciphertext" is the plaintext followed by a Poly1305 tag computed with
    ChaCha20-Poly1305 over an empty message and the plaintext as associated data:
    anyone on the path can read the packet, nobody can change it unnoticed.  It has
    the same batch calls as :class:`AEAD` (in Python, so slower), so the one transport
    engine serves it too.
    """

    __slots__ = ("_tag",)

    def __init__(self, key: bytes):
        inner = ChaCha20Poly1305(key)
        self.nonce = struct.Struct("<4xQ").pack
        self._tag = inner
        self.encrypt_into = self._encrypt_into
        self.decrypt = self._decrypt

    def _encrypt_into(self, nonce: bytes, plaintext, ad, out) -> None:
        n = len(plaintext)
        out[:n] = plaintext
        out[n:n + TAG_LEN] = self._tag.encrypt(nonce, b"", bytes(ad or b"") + bytes(plaintext))

    def _decrypt(self, nonce: bytes, ciphertext, ad) -> bytes:
        if len(ciphertext) < TAG_LEN:
            raise InvalidTag()
        plaintext, tag = bytes(ciphertext[:-TAG_LEN]), bytes(ciphertext[-TAG_LEN:])
        self._tag.decrypt(nonce, tag, bytes(ad or b"") + plaintext)
        return plaintext


#: The libraries that can make the AEAD calls (:func:`choose_aead`).
AEAD_BACKENDS = ("openssl", "cryptography")
_backend = "openssl" if OpenSSLCipher is not None else "cryptography"


def aead_backend() -> str:
    """Which library seals and opens: ``"openssl"`` or ``"cryptography"``.

    Both run OpenSSL's ChaCha20-Poly1305 and AES-GCM and give the same bytes (the tests check
    it); they differ in the cost of a call.  ``cryptography``'s classes cost about 1.1 us per call
    beyond the cipher's own work, and a tunnel makes one call per packet; vpnedu's own small C
    module (``openssl_aead``, built at install time when a compiler is there) makes the same
    OpenSSL calls for about half of that.  It is the default when it was built.
    """
    return _backend


def choose_aead(name: str | None) -> None:
    """Make the keys set from now on use library ``name`` (:data:`AEAD_BACKENDS`); ``None`` or
    ``""`` keeps the default.

    The command lines call it with ``VPNEDU_AEAD``: ``cryptography`` to compare the two or to
    rule the compiled module out, ``openssl`` to insist on it."""
    global _backend
    if not name:
        return
    want = name.strip().lower()
    if want not in AEAD_BACKENDS:
        raise SuiteError(f"VPNEDU_AEAD={name!r} is not an AEAD library vpnedu knows",
                         "set it to 'openssl' or 'cryptography', or unset it")
    if want == "openssl" and OpenSSLCipher is None:
        raise SuiteError("VPNEDU_AEAD=openssl, but vpnedu's openssl_aead module was not built",
                         "install gcc, python3-dev and libssl-dev and reinstall vpnedu "
                         "(pip install -e .), or unset VPNEDU_AEAD")
    _backend = want


@dataclass(frozen=True)
class CipherSuite:
    """One suite: a hash, an AEAD for the handshake and one for the tunnel.

    The functions are named as in the WireGuard paper (section 5.4): ``hash``,
    ``mac`` (keyed hash, 16 bytes), ``hmac``, ``kdf`` (HKDF as Noise defines it)
    and the AEADs.
    """

    name: str
    construction: bytes
    identifier: bytes
    hash_name: str
    aes: bool
    insecure: bool = False
    summary: str = ""
    initial_chain_key: bytes = field(init=False, repr=False)
    initial_hash: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Paper 5.4.2: Ci = HASH(CONSTRUCTION), Hi = HASH(Ci || IDENTIFIER).  Both are
        # constants, so compute them once.  Noise (section 5.2, InitializeSymmetric) hashes
        # the protocol name only when it is longer than HASHLEN; a name of 32 bytes or less is
        # used as it is, zero-padded.  WireGuard's name is 37 bytes, so the paper always
        # hashes; "Noise_IKpsk2_25519_AESGCM_SHA256" is exactly 32 bytes and is not hashed.
        if len(self.construction) <= KEY_LEN:
            ck = self.construction.ljust(KEY_LEN, b"\0")
        else:
            ck = self.hash(self.construction)
        object.__setattr__(self, "initial_chain_key", ck)
        object.__setattr__(self, "initial_hash", self.hash(ck, self.identifier))

    # -- hashing -----------------------------------------------------------
    def hash(self, *parts: bytes) -> bytes:
        """HASH(input): BLAKE2s-256 or SHA-256 over the concatenated parts."""
        h = hashlib.new(self.hash_name)
        for p in parts:
            h.update(p)
        return h.digest()

    def mac(self, key: bytes, data: bytes) -> bytes:
        """MAC(key, input): a 16-byte keyed hash, used for mac1, mac2 and cookies.

        WireGuard uses keyed BLAKE2s with a 16-byte output; the SHA-256 suite uses
        HMAC-SHA-256 truncated to 16 bytes.
        """
        if self.hash_name == "blake2s":
            return hashlib.blake2s(data, key=key, digest_size=MAC_LEN).digest()
        return _hmac.new(key, data, self.hash_name).digest()[:MAC_LEN]

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC(key, input): the standard HMAC construction over the suite's hash."""
        return _hmac.new(key, data, self.hash_name).digest()

    def kdf(self, key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
        """KDFn(key, input): HKDF with the chaining key as salt and no info (Noise 4.3).

        ``t0 = HMAC(key, input)``, ``t1 = HMAC(t0, 0x1)``, ``t(i) = HMAC(t0, t(i-1) || i)``.
        """
        t0 = self.hmac(key, data)
        out: list[bytes] = []
        prev = b""
        for i in range(1, n + 1):
            prev = self.hmac(t0, prev + bytes([i]))
            out.append(prev)
        return tuple(out)

    # -- AEADs ---------------------------------------------------------------
    def handshake_aead(self, key: bytes) -> AEAD:
        """The AEAD used inside the handshake (always real encryption), from the library
        :func:`aead_backend` names."""
        if aead_backend() == "openssl":
            return AEAD(OpenSSLCipher("aes-256-gcm" if self.aes else "chacha20-poly1305", key),
                        big_endian=self.aes)
        if self.aes:
            return AEAD(AESGCM(key), big_endian=True)
        return AEAD(ChaCha20Poly1305(key), big_endian=False)

    def transport_aead(self, key: bytes) -> AEAD:
        """The AEAD used for transport data messages (section 5.4.6)."""
        if self.insecure:
            return NullAEAD(key)
        return self.handshake_aead(key)

    def cookie_seal(self, key: bytes, nonce: bytes, cookie: bytes, ad: bytes) -> bytes:
        """XAEAD of the cookie reply (paper 5.4.7): XChaCha20-Poly1305 with a random
        24-byte nonce; the AES suite uses AES-256-GCM with the same 24-byte nonce."""
        if self.aes:
            return AESGCM(key).encrypt(nonce, cookie, ad)
        return crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, ad, nonce, key)

    def cookie_open(self, key: bytes, nonce: bytes, sealed: bytes, ad: bytes) -> bytes:
        try:
            if self.aes:
                return AESGCM(key).decrypt(nonce, sealed, ad)
            return crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, ad, nonce, key)
        except (InvalidTag, CryptoError):
            raise AEADError("cookie reply does not authenticate") from None


WIREGUARD = CipherSuite(
    name="wireguard",
    construction=b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
    identifier=WIREGUARD_IDENTIFIER,
    hash_name="blake2s",
    aes=False,
    summary="WireGuard's own suite: ChaCha20-Poly1305 + BLAKE2s; interoperates with WireGuard",
)

AES256GCM = CipherSuite(
    name="aes256gcm",
    construction=b"Noise_IKpsk2_25519_AESGCM_SHA256",
    identifier=WIREGUARD_IDENTIFIER,
    hash_name="sha256",
    aes=True,
    summary="AES-256-GCM + SHA-256 (vpnedu only: both ends must choose it)",
)

NULL_TEACHING = CipherSuite(
    name="null-teaching",
    construction=b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
    # A different prologue binds the choice into the handshake: a WireGuard peer
    # or a vpnedu peer on another suite can never complete a handshake with us.
    identifier=b"vpnedu null-teaching v1: transport NOT encrypted",
    hash_name="blake2s",
    aes=False,
    insecure=True,
    summary="NO ENCRYPTION of tunnel data (authenticated only) - for teaching with Wireshark",
)

SUITES: dict[str, CipherSuite] = {s.name: s for s in (WIREGUARD, AES256GCM, NULL_TEACHING)}

NULL_WARNING = (
    "cipher suite 'null-teaching' is in use: tunnel traffic is NOT encrypted and anyone "
    "on the path can read it. Use it only in a lab."
)


class InsecureSuiteWarning(UserWarning):
    """Issued every time the null-teaching suite is selected."""


def get_suite(name: str, *, allow_insecure: bool = False) -> CipherSuite:
    """Look a suite up by name.

    ``null-teaching`` is refused unless ``allow_insecure`` is true, and warns
    every time it is selected.
    """
    suite = SUITES.get(name.strip().lower())
    if suite is None:
        raise SuiteError(
            f"unknown cipher suite {name!r}",
            "choose one of: " + ", ".join(SUITES),
        )
    if suite.insecure:
        if not allow_insecure:
            raise SuiteError(
                "cipher suite 'null-teaching' does not encrypt the tunnel and is disabled",
                "enable it explicitly with --allow-null-teaching (or AllowNullTeaching = true) "
                "and only in a lab",
            )
        warnings.warn(NULL_WARNING, InsecureSuiteWarning, stacklevel=2)
    return suite
