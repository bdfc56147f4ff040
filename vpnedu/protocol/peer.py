"""Everything one side remembers about one peer.

A :class:`Peer` is mostly state: its public key and pre-shared key, where it
was last heard from (its *endpoint*: WireGuard follows a peer that moves),
the handshake in flight, up to three transport sessions, packets waiting for a
handshake, counters, and the deadlines of its five timers.  The
:class:`~vpnedu.protocol.device.Device` drives it.

Its five timer deadlines (``t_retransmit``, ``t_keepalive``, ``t_new_handshake``,
``t_zero_keys``, ``t_persistent``) are armed and disarmed only by the hooks in
:mod:`vpnedu.protocol.timers`, whose docstring tells the whole state machine.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from . import keys as _keys
from .cookie import Endpoint, MacKeys, format_endpoint
from .handshake import NO_PSK, InitiatorState
from .session import TransportSession
from .timers import MAX_STAGED_PACKETS

if TYPE_CHECKING:
    from .device import Device

NEVER = float("-inf")


class Peer:
    """One remote peer, as seen from one device."""

    def __init__(self, device: "Device", public_key: bytes, *, preshared_key: bytes | None = None,
                 endpoint: Endpoint | None = None, persistent_keepalive: int = 0,
                 name: str | None = None):
        self.device = device
        self.public_key = public_key
        self.psk = preshared_key or NO_PSK
        self.endpoint = endpoint
        self.persistent_keepalive = int(persistent_keepalive or 0)
        self.name = name
        #: Short label used in events and status: the name, else the key's first characters.
        self.label = name or _keys.encode(public_key)[:10]
        #: mac1/cookie keys for messages *we send to this peer* (derived from its public key).
        self.mac_keys = MacKeys(device.suite, public_key)

        # handshake state
        self.handshake: InitiatorState | None = None
        self.last_initiation_sent = NEVER
        self.handshake_attempts = 0
        self.last_received_timestamp: bytes | None = None
        self.last_initiation_consumed = NEVER
        self.cookie: bytes | None = None
        self.cookie_time = NEVER
        self.last_mac1: bytes | None = None

        # sessions
        self.current: TransportSession | None = None
        self.previous: TransportSession | None = None
        self.next: TransportSession | None = None
        self.staged: deque[bytes] = deque()
        self.max_staged = MAX_STAGED_PACKETS

        # timer deadlines (None = not armed)
        self.t_retransmit: float | None = None
        self.t_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        self.t_zero_keys: float | None = None
        self.t_persistent: float | None = None
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False

        # counters (always kept, for `vpnedu status`)
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.rx_packets = 0
        #: Wall-clock time of the latest completed handshake (like `wg show`'s "latest handshake").
        self.last_handshake: float | None = None

    @property
    def allowed_ips(self) -> list:
        """The prefixes cryptokey routing gives this peer (the Device's table is the one truth:
        a prefix another peer took over is no longer listed here)."""
        return self.device.routes.networks(self)

    @property
    def public_key_b64(self) -> str:
        return _keys.encode(self.public_key)

    def sessions(self) -> list[TransportSession]:
        """The peer's transport sessions that exist: current, previous, next."""
        return [k for k in (self.current, self.previous, self.next) if k is not None]

    def deadlines(self) -> list[float]:
        return [t for t in (self.t_retransmit, self.t_keepalive, self.t_new_handshake,
                            self.t_zero_keys, self.t_persistent) if t is not None]

    def status(self) -> dict:
        """A `wg show`-like summary (JSON-friendly)."""
        cur = self.current
        return {
            "name": self.name,
            "label": self.label,
            "public_key": self.public_key_b64,
            "endpoint": format_endpoint(self.endpoint) if self.endpoint else None,
            "allowed_ips": [str(n) for n in self.allowed_ips],
            "latest_handshake": self.last_handshake,
            "transfer_rx": self.rx_bytes,
            "transfer_tx": self.tx_bytes,
            "packets_rx": self.rx_packets,
            "packets_tx": self.tx_packets,
            "persistent_keepalive": self.persistent_keepalive or None,
            "session": None if cur is None else {
                "local_index": cur.local_index, "remote_index": cur.remote_index,
                "initiator": cur.initiator, "sent": cur.send_counter,
                "received_up_to": cur.replay.greatest,
            },
            "staged_packets": len(self.staged),
        }

    def __repr__(self) -> str:
        return f"Peer({self.label}, endpoint={self.endpoint})"
