"""WireGuard's timers: the constants (paper, section 6.1) and the whole state machine.

The protocol has no "connection" to tear down: everything -- renewing keys, retrying lost
handshakes, keeping NAT mappings open, forgetting old keys -- follows from a handful of
timeouts.  As in wireguard-go (``device/timers.go``) and the Linux module (``timers.c``), the
state machine is a list of **hooks**, "call this after that", which the one send path and the
one receive path of :class:`~vpnedu.protocol.device.Device` call at the named moments, and five
**deadlines** per peer (``Peer.t_*``, ``None`` when not armed) whose expiry
:meth:`Device.tick <vpnedu.protocol.device.Device.tick>` handles.  Nothing here reads a clock:
every hook gets ``now`` (monotonic seconds) from the caller.

The hooks, and what they arm (+) or disarm (-):

=================================  =========================================================
hook (called by Device ...)         effect
=================================  =========================================================
:func:`handshake_initiated`         + retransmit at REKEY_TIMEOUT + jitter
  (after sending an initiation)
:func:`handshake_complete`          - retransmit; attempts = 0 (a response arrived, or the
  (session confirmed or rotated)    responder saw the first data on the new keys)
:func:`session_derived`             + zero_keys at 3 x REJECT_AFTER_TIME; the last-minute
  (new keys, either role)           rekey may happen again
:func:`authenticated_sent`          - keepalive (anything we send tells the peer we are alive);
  (any message we send)             + persistent keepalive, if configured
:func:`authenticated_received`      - new_handshake (the peer is alive); + persistent keepalive
  (any message that authenticated)
:func:`data_sent`                   + new_handshake at KEEPALIVE + REKEY_TIMEOUT, unless armed:
  (non-empty data sent)             if nothing comes back by then, the session may be dead
:func:`data_received`               + keepalive at KEEPALIVE_TIMEOUT, unless armed (then one
  (non-empty data received)         more keepalive is owed after it): we owe the peer a sign of life
=================================  =========================================================

Two checks decide a rekey outside the deadlines ("keep the key fresh"):

* :func:`rekey_due_sending`: after sending data, an *initiator* whose keys are older than
  REKEY_AFTER_TIME (120 s) or have sent more than REKEY_AFTER_MESSAGES starts a handshake;
  the responder never does, so that both ends do not start one at once;
* :func:`rekey_due_receiving`: after receiving, an initiator whose keys are older than
  REJECT_AFTER_TIME - KEEPALIVE - REKEY_TIMEOUT (165 s) starts one, once, even if it sends
  nothing -- the keys must be renewed before they expire at 180 s.

What happens when a deadline passes (:func:`expired` yields the names in this order):

=====================  ====================================================================
``retransmit``          no response: send a new initiation; after REKEY_ATTEMPT_TIME
                        (90 s, 18 tries) give up: ``give-up`` (drop the queued packets,
                        arm zero_keys)
``keepalive``           send an empty keepalive (re-armed once if one more was owed)
``new-handshake``       sent data, heard nothing for 15 s: start a new handshake
``zero-keys``           3 x REJECT_AFTER_TIME without a new session: erase every key
``persistent``          PersistentKeepalive seconds of silence: send a keepalive (keeps NAT
                        mappings on the path open)
=====================  ====================================================================

Batches: the hooks are idempotent for one ``now``, so a batch of packets calls each once with
the batch's counts (as wireguard-go's sender does per batch); ``data_received(count=k)`` is what
``k`` calls would have done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .peer import Peer
    from .session import TransportSession

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
#: Handshake messages in one received batch that mean "under load": a backlog of handshakes,
#: like wireguard-go's handshake queue filling up (device/receive.go, IsUnderLoad).  While under
#: load, and for UNDER_LOAD_HOLD seconds after, handshakes without a valid mac2 get a cookie
#: reply instead of the expensive Diffie-Hellman work (paper, section 5.3).
UNDER_LOAD_BATCH = 16
UNDER_LOAD_HOLD = 1.0


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


# ---------------------------------------------------------------------- the hooks
def handshake_initiated(peer: "Peer", now: float, t: Timers, jitter: float) -> None:
    """After sending an initiation: retry it if no response comes."""
    peer.t_retransmit = now + t.rekey_timeout + jitter


def handshake_complete(peer: "Peer") -> None:
    """A handshake finished (response received, or the new keys confirmed by data)."""
    peer.t_retransmit = None
    peer.handshake_attempts = 0


def session_derived(peer: "Peer", now: float, t: Timers) -> None:
    """New transport keys: erase everything if no newer ones come within 3 x REJECT_AFTER_TIME."""
    peer.t_zero_keys = now + 3 * t.reject_after_time
    peer.sent_last_minute_handshake = False


def authenticated_sent(peer: "Peer", now: float) -> None:
    """We sent something the peer can authenticate: it counts as our keepalive."""
    peer.t_keepalive = None
    peer.need_another_keepalive = False
    if peer.persistent_keepalive:
        peer.t_persistent = now + peer.persistent_keepalive


def authenticated_received(peer: "Peer", now: float) -> None:
    """Something from the peer authenticated: it is alive."""
    peer.t_new_handshake = None
    if peer.persistent_keepalive:
        peer.t_persistent = now + peer.persistent_keepalive


def data_sent(peer: "Peer", now: float, t: Timers) -> None:
    """We sent data: expect something back within KEEPALIVE + REKEY_TIMEOUT."""
    if peer.t_new_handshake is None:
        peer.t_new_handshake = now + t.keepalive_timeout + t.rekey_timeout


def data_received(peer: "Peer", now: float, t: Timers, count: int = 1) -> None:
    """We received ``count`` data packets: owe the peer a keepalive if we send nothing back."""
    if peer.t_keepalive is None:
        peer.t_keepalive = now + t.keepalive_timeout
        if count > 1:
            peer.need_another_keepalive = True
    else:
        peer.need_another_keepalive = True


def rekey_due_sending(kp: "TransportSession", now: float, t: Timers) -> bool:
    """After sending on ``kp``: is it time for new keys (initiator only)?"""
    return kp.initiator and (kp.send_counter > t.rekey_after_messages or now - kp.created >= t.rekey_after_time)


def rekey_due_receiving(peer: "Peer", now: float, t: Timers) -> bool:
    """After receiving: must an initiator renew keys that are about to expire?  True once
    per session (it marks the peer)."""
    cur = peer.current
    if (cur is not None and cur.initiator and not peer.sent_last_minute_handshake
            and now - cur.created >= t.receive_rekey_age):
        peer.sent_last_minute_handshake = True
        return True
    return False


# ---------------------------------------------------------------------- the deadlines
def expired(peer: "Peer", now: float, t: Timers) -> Iterator[str]:
    """Say what is due for ``peer``, one deadline after the other, in this order: ``retransmit``
    or ``give-up``, ``keepalive``, ``new-handshake``, ``zero-keys``, ``persistent``.  Each
    deadline is disarmed (and the timer state updated) just before its name is yielded, and
    checked only after the Device acted on the previous one: sending a retry counts as a
    keepalive, so a keepalive due at the same moment is no longer sent."""
    if peer.t_retransmit is not None and now >= peer.t_retransmit:
        peer.t_retransmit = None
        if peer.handshake_attempts + 1 >= t.max_handshake_attempts:
            peer.t_keepalive = None
            if peer.t_zero_keys is None:
                peer.t_zero_keys = now + 3 * t.reject_after_time
            yield "give-up"
        else:
            peer.handshake_attempts += 1
            yield "retransmit"
    if peer.t_keepalive is not None and now >= peer.t_keepalive:
        peer.t_keepalive = None
        yield "keepalive"
    if peer.t_new_handshake is not None and now >= peer.t_new_handshake:
        peer.t_new_handshake = None
        yield "new-handshake"
    if peer.t_zero_keys is not None and now >= peer.t_zero_keys:
        yield "zero-keys"
    if peer.t_persistent is not None and now >= peer.t_persistent:
        peer.t_persistent = None
        if peer.persistent_keepalive:
            yield "persistent"
