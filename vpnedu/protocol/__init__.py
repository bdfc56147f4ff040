"""The WireGuard protocol, sans-IO: pure code on bytes, a caller's ``now`` and injected randomness.

Nothing here reads a socket, a TUN device or a clock, or draws its own random numbers
(``tests/protocol/test_imports.py`` reads the imports to make sure): the IO layer
(:mod:`vpnedu.datapath`, the simulation) passes datagrams, packets and the time in, and sends
and writes what comes out.  Modules, in the order a student meets them:

``keys``        X25519 keys in WireGuard's base64 form
``suites``      the cryptographic primitives (hash, MAC, HMAC, KDF, AEAD) per cipher suite
``messages``    the four message types, byte for byte
``tai64n``      the handshake's timestamps
``handshake``   Noise_IKpsk2, step by step
``cookie``      mac1, mac2 and cookie replies (DoS protection)
``replay``      the sliding replay window
``session``     transport keys and counters
``transport``   transport data: header, padding, sealing a batch into caller-owned buffers
``timers``      the timer constants and the whole timer state machine, as hooks
``allowedips``  cryptokey routing
``peer``        what we remember about a peer
``events``      how the core reports what it does (``vpnedu.events`` builds on it)
``device``      the engine that ties it together: datagrams in, datagrams and packets out
"""

from .device import Datagram, Device, Received
from .peer import Peer
from .transport import Output

__all__ = ["Datagram", "Device", "Output", "Peer", "Received"]
