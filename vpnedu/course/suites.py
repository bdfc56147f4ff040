"""The cipher suites side by side: how fast each one's AEAD runs here, and what it adds.

vpnedu speaks WireGuard's suite (ChaCha20-Poly1305, BLAKE2s) and two of its own
(:mod:`vpnedu.protocol.suites`): ``aes256gcm`` and ``null-teaching``, which does not encrypt
at all (a capture shows the plaintext).  The handshake and the transport framing are the same
for all three; the AEAD is the only thing that differs, so encrypting and decrypting packets
between two in-memory devices measures just that (notebook 03, ``vpnedu course suites``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from ..packet import ip as iplib
from ..protocol.suites import SUITES
from ..sim import make_pair


@dataclass
class SuiteSpeed:
    """One suite's row: its name and construction, whether it encrypts, MB/s of payload
    through one encrypt + decrypt, and the bytes a transport message adds to a packet."""

    suite: str
    construction: str
    encrypts: bool
    mb_per_s: float
    overhead_bytes: int

    def __str__(self) -> str:
        return (f"{self.suite:<14} {self.mb_per_s:>7} MB/s  overhead {self.overhead_bytes} bytes  "
                f"{'encrypts' if self.encrypts else 'DOES NOT ENCRYPT'}  {self.construction}")


def compare_suites(packets: int = 2000, size: int = 1400) -> list[SuiteSpeed]:
    """Encrypt and decrypt ``packets`` packets of ``size`` bytes with each cipher suite, in this
    process: how fast, and how big the overhead."""
    rows = []
    payload = iplib.build_udp("10.0.0.2", 40000, "10.0.0.1", 9, bytes(size - 28))
    for name, suite in SUITES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair = make_pair(name, allow_insecure=suite.insecure)
        pair.handshake()
        start = time.perf_counter()
        wire = 0
        for _ in range(packets):
            out = pair.client.send_packet(payload, pair.now)
            for data, ep in out:
                wire += len(data)
                pair.server.receive(data, pair.client_ep, pair.now)
        secs = time.perf_counter() - start
        rows.append(SuiteSpeed(name, suite.construction.decode(), not suite.insecure,
                               round(packets * size / secs / 1e6, 1), wire // packets - len(payload)))
    return rows
