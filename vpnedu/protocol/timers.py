"""WireGuard's timer constants (paper, section 6.1) and the knobs to shorten them.

The protocol has no "connection" to tear down: everything -- renewing keys,
retrying lost handshakes, keeping NAT mappings open, forgetting old keys --
follows from a handful of timeouts.  The state machine that uses them lives in
:mod:`vpnedu.protocol.peer`; here are the numbers and why they are what they are.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Start a new handshake after this many messages on one key (far before the nonce could wrap).
REKEY_AFTER_MESSAGES = 2**60
#: Never use a key for more messages than this (leaves room below 2**64 for the replay window).
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
#: The initiator renews its keys after two minutes, for forward secrecy.
REKEY_AFTER_TIME = 120.0
#: Keys older than three minutes are never used again, for sending or receiving.
REJECT_AFTER_TIME = 180.0
#: Keep retrying a handshake for at most 90 seconds, then give up and drop queued packets.
REKEY_ATTEMPT_TIME = 90.0
#: Retry an unanswered handshake initiation after 5 seconds (plus up to 1/3 s of jitter).
REKEY_TIMEOUT = 5.0
#: Reply with an empty keepalive if we received data but had nothing to send for 10 seconds.
KEEPALIVE_TIMEOUT = 10.0
#: wireguard-go refuses initiations from one peer that arrive less than 20 ms apart.
HANDSHAKE_INITIATION_RATE = 0.020
#: At most this many packets wait for a handshake (wireguard-go's QueueStagedSize).
MAX_STAGED_PACKETS = 128
#: Retransmit jitter: up to a third of a second, so peers do not retry in lockstep.
MAX_JITTER = 1 / 3


@dataclass(frozen=True)
class Timers:
    """The timer values a device uses.  The defaults are WireGuard's; tests and the
    reliability lab may shorten them (e.g. rekey every 2 s) to watch rekeys happen.
    A peer with shortened timers still speaks the same wire format."""

    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    initiation_rate: float = HANDSHAKE_INITIATION_RATE
    max_jitter: float = MAX_JITTER

    @property
    def max_handshake_attempts(self) -> int:
        """How many initiations fit in REKEY_ATTEMPT_TIME (18 with the defaults)."""
        return int(self.rekey_attempt_time // self.rekey_timeout)

    @property
    def receive_rekey_age(self) -> float:
        """An initiator whose keys reach this age when receiving starts a handshake
        (REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT = 165 s), so the keys are
        renewed before they expire even if it sends nothing."""
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout


DEFAULT_TIMERS = Timers()
