"""Events: the hooks through which every layer of vpnedu can be watched.

Every layer reports what it does as an :class:`Event`: a ``kind`` such as
``handshake.initiation.sent``, the ``layer`` it came from (the first word of the
kind), a timestamp, the peer it concerns and a dict of fields.  The catalogue
below lists every kind with one line saying what it means; ``vpnedu events
--list`` prints it.

Subscribers are plain callbacks (:meth:`EventBus.subscribe`) or async
iterators (:meth:`EventBus.stream`), each with an optional filter by kind (a
kind or a prefix of one, such as ``handshake``) and by layer.

Per-packet events cost almost nothing when nobody listens: the code that
would emit ``data.encrypted`` first asks :meth:`EventBus.wants`, a set lookup,
and builds no event at all when the answer is no.  Counters (packets, bytes,
drops by reason) are kept by the protocol core whether or not anyone listens.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

#: Every event kind vpnedu emits, with what it means.  Layers are the first word.
CATALOGUE: dict[str, str] = {
    "handshake.initiation.sent": "we sent handshake message 1 (indices, ephemeral key, timestamp, MACs)",
    "handshake.initiation.received": "a valid handshake message 1 arrived from a known peer",
    "handshake.response.sent": "we answered with handshake message 2",
    "handshake.response.received": "a valid handshake message 2 arrived",
    "handshake.cookie.sent": "we are under load and answered with a cookie reply instead of a handshake",
    "handshake.cookie.received": "a cookie reply arrived; our next handshake message will carry mac2",
    "handshake.under-load": "a backlog of handshakes: for a while, only those with a valid mac2 (cookie) are served",
    "handshake.timeout": "no handshake response for REKEY_ATTEMPT_TIME: we gave up and dropped queued packets",
    "session.established": "a handshake completed and new transport keys were derived",
    "session.confirmed": "the responder received the first data with new keys and starts using them",
    "session.expired": "keys are too old (REJECT_AFTER_TIME) or used too often (REJECT_AFTER_MESSAGES)",
    "session.zeroed": "no new handshake for 3 x REJECT_AFTER_TIME: all key material was erased",
    "data.encrypted": "an IP packet (or empty keepalive) was encrypted into a transport message",
    "data.decrypted": "a transport message authenticated and was decrypted",
    "data.queued": "a packet waits for a handshake to finish before it can be encrypted",
    "packet.dropped": "a datagram or packet was dropped; 'reason' says why",
    "peer.roamed": "a peer's authenticated packets now come from a new address",
    "timer.retransmit": "no handshake response within REKEY_TIMEOUT: sending a new initiation",
    "timer.rekey": "keys are due for renewal (REKEY_AFTER_TIME / REKEY_AFTER_MESSAGES / no reply)",
    "timer.keepalive": "sending an empty keepalive (passive or persistent)",
    "tun.read": "an IP packet was read from the TUN device",
    "tun.write": "an IP packet was written to the TUN device",
    "udp.sent": "a datagram was sent on the UDP socket",
    "udp.received": "a datagram arrived on the UDP socket",
    "route.added": "a route was added",
    "route.removed": "a route was removed",
    "nat.added": "a NAT rule or table was installed",
    "nat.removed": "a NAT rule or table was removed",
    "proxy.added": "the server's proxy mode was set up (TPROXY table, ports, policy routing)",
    "proxy.flow.opened": "the proxy opened a flow: client, the server's own end, destination",
    "proxy.flow.closed": "a proxied flow ended (closed, reset, refused, idle ...) with its byte counts",
    "device.up": "a TUN device was created and configured",
    "device.down": "a TUN device was removed",
    "counters": "periodic snapshot of all counters",
    "feed.lost": "(in a notebook) the relay of a daemon's events cannot reach its control socket; it retries",
    "feed.connected": "(in a notebook) the relay of a daemon's events reached its control socket again",
}

#: Kinds that may fire once per packet: they are only built when wanted.
PER_PACKET = frozenset({"data.encrypted", "data.decrypted", "tun.read", "tun.write",
                        "udp.sent", "udp.received"})


def layer_of(kind: str) -> str:
    return kind.split(".", 1)[0]


@dataclass(slots=True)
class Event:
    """One thing that happened.  ``fields`` holds JSON-friendly values."""

    kind: str
    time: float
    peer: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def layer(self) -> str:
        return layer_of(self.kind)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "time": self.time,
                "peer": self.peer, "fields": self.fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_jsonable, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        return cls(d["kind"], d["time"], d.get("peer"), dict(d.get("fields") or {}))

    def __str__(self) -> str:
        # ``peer=`` names the peer the event is about, not who reports it: a server's
        # ``packet.dropped peer=alice`` is the server dropping a packet from alice.
        clock = time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time * 1000) % 1000:03d}"
        who = f" peer={self.peer}" if self.peer else ""
        body = " ".join(f"{k}={format_value(k, v)}" for k, v in self.fields.items())
        return f"{clock} {self.kind}{who} {body}".rstrip()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)


def format_value(key: str, v: Any) -> str:
    """A field's value as every view shows it (``vpnedu events``, the notebooks' event log, the
    handshake ladder): session indices (``sender_index``, ``local_index`` ...) in hex with ``0x``,
    eight digits, as ``vpnedu handshake-demo`` and Wireshark print them; long bytes cut short."""
    if key.endswith("index") and isinstance(v, int) and not isinstance(v, bool):
        return f"{v:#010x}"
    if isinstance(v, (bytes, bytearray)):
        h = bytes(v).hex()
        return h if len(h) <= 16 else h[:16] + "..."
    return str(v)


class _Filter:
    __slots__ = ("kinds", "layers")

    def __init__(self, kinds: Iterable[str] | str | None, layers: Iterable[str] | str | None):
        self.kinds = _as_tuple(kinds)
        self.layers = _as_tuple(layers)

    def matches(self, kind: str) -> bool:
        if self.layers and layer_of(kind) not in self.layers:
            return False
        if self.kinds:
            return any(kind == k or kind.startswith(k + ".") for k in self.kinds)
        return True


def _as_tuple(x: Iterable[str] | str | None) -> tuple[str, ...]:
    if x is None:
        return ()
    if isinstance(x, str):
        return tuple(p.strip() for p in x.split(",") if p.strip())
    return tuple(x)


class Subscription:
    """A callback subscription; call :meth:`close` (or use ``with``) to stop it."""

    def __init__(self, bus: "EventBus", callback: Callable[[Event], Any], flt: _Filter):
        self._bus = bus
        self.callback = callback
        self.filter = flt

    def close(self) -> None:
        self._bus._remove(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream:
    """An async iterator of events, for asyncio code::

        async with bus.stream(kinds="handshake") as events:
            async for ev in events:
                print(ev)

    Events may be emitted from any thread.  The queue is bounded: when the
    consumer falls behind, the oldest events are discarded and counted in
    :attr:`missed`, so a slow notebook never makes the VPN run out of memory.
    """

    def __init__(self, bus: "EventBus", flt: _Filter, maxsize: int):
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._closed = False
        self.missed = 0
        self._sub = Subscription(bus, self._deliver, flt)
        bus._add(self._sub)

    def _deliver(self, ev: Event) -> None:
        if threading.get_ident() == self._thread:
            self._put(ev)
        else:
            try:
                self._loop.call_soon_threadsafe(self._put, ev)
            except RuntimeError:  # loop closed
                pass

    def _put(self, ev: Event | None) -> None:
        q = self._queue
        if ev is not None and self._closed:
            return
        if q.full():
            q.get_nowait()
            self.missed += 1
        q.put_nowait(ev)

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        ev = await self._queue.get()
        if ev is None:
            raise StopAsyncIteration
        return ev

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sub.close()
            self._put(None)

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Delivers events to subscribers; one bus per daemon (or per simulated network)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._subs: tuple[Subscription, ...] = ()
        self._wants: dict[str, bool] = {}
        self._lock = threading.Lock()
        #: How many events of each kind were delivered to at least one subscriber.
        self.delivered: Counter[str] = Counter()
        #: Exceptions raised by subscriber callbacks (they never reach the datapath).
        self.subscriber_errors = 0

    # -- subscribing ---------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], Any], kinds: Iterable[str] | str | None = None,
                  layers: Iterable[str] | str | None = None) -> Subscription:
        """Call ``callback(event)`` for each matching event, in the emitting thread."""
        sub = Subscription(self, callback, _Filter(kinds, layers))
        self._add(sub)
        return sub

    def stream(self, kinds: Iterable[str] | str | None = None,
               layers: Iterable[str] | str | None = None, maxsize: int = 10_000) -> EventStream:
        """An async iterator of matching events (call from inside a running event loop)."""
        return EventStream(self, _Filter(kinds, layers), maxsize)

    def _add(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = self._subs + (sub,)
            self._wants = {}

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
            self._wants = {}

    # -- emitting --------------------------------------------------------------
    def wants(self, kind: str) -> bool:
        """Does anyone listen to ``kind``?  Cheap: a dict lookup after the first call."""
        w = self._wants.get(kind)
        if w is None:
            w = any(s.filter.matches(kind) for s in self._subs)
            self._wants[kind] = w
        return w

    def emit(self, kind: str, peer: str | None = None, /, **fields: Any) -> Event | None:
        """Build and deliver an event if anyone wants it; returns it (or None)."""
        if not self.wants(kind):
            return None
        ev = Event(kind, self.clock(), peer, fields)
        self.publish(ev)
        return ev

    def publish(self, ev: Event) -> None:
        """Deliver an already-built event (e.g. one relayed from a control socket)."""
        delivered = False
        for s in self._subs:
            if s.filter.matches(ev.kind):
                delivered = True
                try:
                    s.callback(ev)
                except Exception:
                    self.subscriber_errors += 1
        if delivered:
            self.delivered[ev.kind] += 1


class EventLog:
    """A subscriber that keeps every matching event in a list (handy in tests and notebooks)."""

    def __init__(self, bus: EventBus, kinds: Iterable[str] | str | None = None,
                 layers: Iterable[str] | str | None = None, limit: int | None = None):
        self.events: list[Event] = []
        self._limit = limit
        self._sub = bus.subscribe(self._add, kinds, layers)

    def _add(self, ev: Event) -> None:
        self.events.append(ev)
        if self._limit and len(self.events) > self._limit:
            del self.events[0]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind or e.kind.startswith(kind + ".")]

    def drops(self, reason: str | None = None) -> list[Event]:
        return [e for e in self.of("packet.dropped") if reason is None or e.get("reason") == reason]

    def clear(self) -> None:
        self.events.clear()

    def close(self) -> None:
        self._sub.close()
