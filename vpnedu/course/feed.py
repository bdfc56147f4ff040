"""A real daemon's events, relayed into this process: what the widgets watch in real mode.

A daemon serves its events on its control socket (``{"cmd": "events"}``, see
:mod:`vpnedu.node.control`).  :class:`DaemonFeed` reads that stream in a thread and publishes
each event on a local :class:`~vpnedu.events.EventBus`, so a notebook's widgets draw a real
daemon's events exactly as they draw the simulated daemons' (whose buses are their own).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..errors import VpneduError
from ..events import CATALOGUE, PER_PACKET, Event, EventBus


class DaemonFeed:
    """Relays a daemon's control-socket event stream into a local :class:`EventBus` (a thread),
    so that the notebook's widgets draw a real daemon's events as they draw the simulation's.

    A feed keeps trying.  A daemon that is still starting (no socket yet, or one that does not
    accept yet) and one that restarted (its stream ends, a new daemon opens a new socket) are
    normal; the feed reconnects with a short back-off.  On each connection it asks for the
    daemon's recent history, and skips what it relayed before (an event is identified by its
    timestamp), so a late start or a reconnection loses nothing and repeats nothing.

    While it cannot reach the daemon, :attr:`problem` says why, and the bus gets one
    ``feed.lost`` event (``feed.connected`` when it is back): a widget shows a line instead of
    an empty table that looks like "nothing happened".

    ``kinds``: which events to relay.  By default every kind but the per-packet ones
    (:data:`~vpnedu.events.PER_PACKET`): a daemon builds those only when somebody subscribes,
    and one JSON line per packet costs it most of its speed (a transfer in the notebook ran at
    ~1/10 of its rate with them).  Name them in ``kinds`` to watch packets one by one.
    """

    def __init__(self, path: Path | str, bus: EventBus, name: str | None = None,
                 retry: float = 0.1, max_retry: float = 1.0, kinds: list[str] | None = None):
        self.path, self.bus = Path(path), bus
        self.kinds = kinds if kinds is not None else [k for k in CATALOGUE if k not in PER_PACKET]
        self.name = name or "daemon"
        self.retry, self.max_retry = retry, max_retry
        #: Why the feed is not connected now (None while connected, or once closed).
        self.problem: str | None = None
        self.connected = threading.Event()
        self.counts: dict[str, int] = {}
        self._cond = threading.Condition()
        self._last_time = float("-inf")
        self._stopping = threading.Event()
        self._sub = None
        self._said: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"events {self.path.name}")
        self.thread.start()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        from ..node import control
        delay = self.retry
        while not self._stopping.is_set():
            try:
                sub = control.EventSubscription(self.path, self.kinds, history=True)
            except VpneduError as e:
                self._lost(e.problem)
            except OSError as e:
                self._lost(f"{type(e).__name__}: {e}")
            else:
                with self._cond:
                    self._sub = sub
                if self._stopping.is_set():
                    sub.close()
                    break
                self._connected()
                delay = self.retry
                reason = "the daemon closed its event stream (it stopped)"
                try:
                    for n, d in enumerate(sub, 1):
                        ev = Event.from_dict(d)
                        if n <= sub.history and ev.time <= self._last_time:
                            continue   # history we relayed before reconnecting
                        self._relay(ev)
                except (VpneduError, OSError, ValueError, KeyError) as e:
                    reason = f"the event stream broke: {e}"
                finally:
                    sub.close()
                    with self._cond:
                        self._sub = None
                if self._stopping.is_set():
                    break
                self._lost(reason)
            self._stopping.wait(delay)
            delay = min(delay * 2, self.max_retry)

    def _relay(self, ev: Event) -> None:
        self.bus.publish(ev)
        with self._cond:
            self._last_time = max(self._last_time, ev.time)
            self.counts[ev.kind] = self.counts.get(ev.kind, 0) + 1
            self._cond.notify_all()

    def _connected(self) -> None:
        self.problem = None
        self.connected.set()
        if self._said is not None:
            self._said = None
            self.bus.publish(Event("feed.connected", time.time(), None, {"socket": str(self.path)}))

    def _lost(self, problem: str) -> None:
        self.connected.clear()
        self.problem = problem
        if problem != self._said:   # once per change, not once per retry
            self._said = problem
            self.bus.publish(Event("feed.lost", time.time(), None, {"socket": str(self.path), "problem": problem}))

    # ------------------------------------------------------------------ for the lab and widgets
    def _count(self, kind: str) -> int:
        return sum(n for k, n in self.counts.items() if k == kind or k.startswith(kind + "."))

    def count(self, kind: str) -> int:
        """How many events of ``kind`` (or of kinds under that prefix) it relayed so far."""
        with self._cond:
            return self._count(kind)

    def wait_for(self, kind: str, more_than: int = 0, timeout: float = 5.0) -> bool:
        """Wait until more than ``more_than`` events of ``kind`` were relayed (and delivered to the
        bus's subscribers): a barrier between a daemon doing something and a widget showing it."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count(kind) > more_than, timeout)

    def wait_connected(self, timeout: float = 5.0) -> bool:
        return self.connected.wait(timeout)

    def notice(self) -> str:
        """One line saying the feed cannot reach its daemon, or "" while all is well."""
        problem = self.problem
        if problem is None or self._stopping.is_set():
            return ""
        return f"not receiving the {self.name}'s events ({self.path}): {problem}; retrying"

    def close(self) -> None:
        """Stop relaying (at once: the thread is woken and joined, nothing is published after)."""
        self._stopping.set()
        with self._cond:
            sub = self._sub
        if sub is not None:
            sub.close()
        if self.thread is not threading.current_thread():
            self.thread.join(5)
        self.problem = None
