"""The WireGuard protocol, sans-IO: pure code on bytes and an injected clock.

Modules, in the order a student meets them:

``keys``        X25519 keys in WireGuard's base64 form
``suites``      the cryptographic primitives (hash, MAC, HMAC, KDF, AEAD) per cipher suite
``messages``    the four message types, byte for byte
``tai64n``      the handshake's timestamps
``handshake``   Noise_IKpsk2, step by step
``cookie``      mac1, mac2 and cookie replies (DoS protection)
``replay``      the sliding replay window
``session``     transport keys and counters
``timers``      the timer constants
``allowedips``  cryptokey routing
``peer``        what we remember about a peer
``device``      the engine that ties it together: datagrams in, datagrams and packets out
"""

from .device import Datagram, Device, Received
from .peer import Peer

__all__ = ["Datagram", "Device", "Peer", "Received"]
