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

The pure part -- :class:`Event`, the bus's subscribing and emitting, :class:`EventLog` -- lives
in :mod:`vpnedu.protocol.events`, which the sans-IO protocol core uses; this module adds what a
daemon needs on top: the catalogue, a lock for subscribers that come and go from other threads,
and asyncio streams.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable, Iterable

from .protocol.events import Event, EventLog, Subscription, layer_of
from .protocol.events import EventBus as _CoreBus
from .protocol.events import Filter, format_value  # noqa: F401  (re-exported: the views use it)

__all__ = ["CATALOGUE", "PER_PACKET", "Event", "EventBus", "EventLog", "EventStream", "Subscription", "layer_of"]

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
    "killswitch.added": "a client's kill switch or IPv6 block was installed: packets leaving outside the tunnel are dropped",
    "proxy.added": "the server's proxy mode was set up (TPROXY table, ports, policy routing)",
    "proxy.flow.opened": "the proxy opened a flow: client, the server's own end, destination",
    "proxy.flow.closed": "a proxied flow ended (closed, reset, refused, idle ...) with its byte counts",
    "proxy.refused": "an explicit proxy (SOCKS5, HTTP) closed a connection: a source outside every peer's AllowedIPs, "
                     "a malformed or unsupported request, a wrong password, too slow",
    "proxy.socks5.udp.dropped": "a SOCKS5 UDP association dropped a datagram: not from its client, a bad header, "
                                "FRAG not 0, a destination not allowed, a reply from where the client has not sent ...",
    "proxy.dns.listening": "the server's DNS forwarder listens on port 53 of the tunnel addresses (its upstreams)",
    "proxy.dns.dropped": "the DNS forwarder dropped a message: source outside every peer's AllowedIPs, too short, too long ...",
    "proxy.dns.servfail": "every upstream resolver failed or timed out: the client got SERVFAIL (rcode 2)",
    "device.up": "a TUN device was created and configured",
    "device.down": "a TUN device was removed",
    "config.set": "the configuration changed through the wg(8) configuration socket (wg set, setconf, syncconf)",
    "counters": "periodic snapshot of all counters",
    "feed.lost": "(in a notebook) the relay of a daemon's events cannot reach its control socket; it retries",
    "feed.connected": "(in a notebook) the relay of a daemon's events reached its control socket again",
}

#: Kinds that may fire once per packet: they are only built when wanted.
PER_PACKET = frozenset({"data.encrypted", "data.decrypted", "tun.read", "tun.write",
                        "udp.sent", "udp.received"})


class EventStream:
    """An async iterator of events, for asyncio code::

        async with bus.stream(kinds="handshake") as events:
            async for ev in events:
                print(ev)

    Events may be emitted from any thread.  The queue is bounded: when the
    consumer falls behind, the oldest events are discarded and counted in
    :attr:`missed`, so a slow notebook never makes the VPN run out of memory.
    """

    def __init__(self, bus: "EventBus", flt: Filter, maxsize: int):
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._closed = False
        self.missed = 0
        self._sub = Subscription(bus, self._deliver, flt)
        bus.attach(self._sub)

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


class EventBus(_CoreBus):
    """Delivers events to subscribers; one bus per daemon (or per simulated network).
    Safe to subscribe from any thread; :meth:`stream` gives asyncio code an async iterator."""

    def __init__(self, clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self._lock = threading.Lock()

    def stream(self, kinds: Iterable[str] | str | None = None,
               layers: Iterable[str] | str | None = None, maxsize: int = 10_000) -> EventStream:
        """An async iterator of matching events (call from inside a running event loop)."""
        return EventStream(self, Filter(kinds, layers), maxsize)

    def attach(self, sub: Subscription) -> None:
        with self._lock:
            super().attach(sub)

    def detach(self, sub: Subscription) -> None:
        with self._lock:
            super().detach(sub)
