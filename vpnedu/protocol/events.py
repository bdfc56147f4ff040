"""Events, the protocol's side: how the sans-IO core reports what it does.

An :class:`Event` is a ``kind`` such as ``handshake.initiation.sent``, a time, the peer it
concerns and a dict of fields.  The core asks :meth:`EventBus.wants` (a dict lookup) before it
builds a per-packet event, so events cost nothing when nobody listens.

This module is what :mod:`vpnedu.protocol` uses, and it is pure: no threads, no event loop, no
clock of its own (the bus is given one).  :mod:`vpnedu.events` builds on it for the daemons:
the catalogue of every kind, a lock for subscribers that come and go from other threads, and
asyncio streams.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable


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
        clock = datetime.fromtimestamp(self.time).strftime("%H:%M:%S") + f".{int(self.time * 1000) % 1000:03d}"
        # ``peer=`` names the peer the event is about, not who reports it: a server's
        # ``packet.dropped peer=alice`` is the server dropping a packet from alice.
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


class Filter:
    """Which events a subscriber wants: kinds (a kind or a prefix such as ``handshake``) and layers."""

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

    def __init__(self, bus: "EventBus", callback: Callable[[Event], Any], flt: Filter):
        self._bus = bus
        self.callback = callback
        self.filter = flt

    def close(self) -> None:
        self._bus.detach(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Delivers events to subscribers, in the emitting thread.  ``clock`` gives the time stamped
    on each event (Unix seconds).  Subscribing replaces the tuple of subscribers (copy on write),
    so emitting never takes a lock."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._subs: tuple[Subscription, ...] = ()
        self._wants: dict[str, bool] = {}
        #: How many events of each kind were delivered to at least one subscriber.
        self.delivered: Counter[str] = Counter()
        #: Exceptions raised by subscriber callbacks (they never reach the datapath).
        self.subscriber_errors = 0

    # -- subscribing ---------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], Any], kinds: Iterable[str] | str | None = None,
                  layers: Iterable[str] | str | None = None) -> Subscription:
        """Call ``callback(event)`` for each matching event, in the emitting thread."""
        sub = Subscription(self, callback, Filter(kinds, layers))
        self.attach(sub)
        return sub

    def attach(self, sub: Subscription) -> None:
        self._subs = self._subs + (sub,)
        self._wants = {}

    def detach(self, sub: Subscription) -> None:
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
