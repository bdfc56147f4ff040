"""The live event log and the counters, plus :func:`daemon_bus` for watching a real daemon."""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import ipywidgets as w

from ..course.feed import DaemonFeed
from ..events import CATALOGUE, Event, EventBus, format_value, layer_of

STYLE = """<style>
.vpnedu-table { border-collapse: collapse; font-family: monospace; font-size: 12px; }
.vpnedu-table td, .vpnedu-table th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
.vpnedu-table th { background: #eef; }
.vpnedu-added { background: #d4f7d4; }
.vpnedu-removed { background: #f7d4d4; text-decoration: line-through; }
.vpnedu-drop { color: #b00; font-weight: bold; }
.vpnedu-feed-problem { color: #b00; font-weight: bold; margin: 2px 0; }
</style>"""


def daemon_bus(socket_path: str | Path, name: str | None = None) -> EventBus:
    """An EventBus fed, in a background thread, by a daemon's control socket (its recent history
    first, then live).  Pass it to any widget.  The daemon need not be running yet: the feed
    keeps trying (and reconnects when the daemon restarts), and the widgets say so meanwhile."""
    bus = EventBus()
    bus.feed = DaemonFeed(Path(socket_path), bus, name=name)  # keep it alive with the bus
    return bus


def feed_notices(*buses: EventBus) -> list[str]:
    """For each bus fed by a daemon (:func:`daemon_bus`, the real course lab) that cannot reach
    it now, the line saying so.  Empty when every feed is connected (or a bus has no feed:
    the simulation's buses are the daemons' own)."""
    out = []
    for bus in buses:
        feed = getattr(bus, "feed", None)
        line = feed.notice() if feed is not None else ""
        if line:
            out.append(line)
    return out


def feed_notices_html(*buses: EventBus) -> str:
    return "".join(f"<div class='vpnedu-feed-problem'>{html.escape(line)}</div>" for line in feed_notices(*buses))


class _Throttle:
    """Call ``render`` at most every ``interval`` seconds, and always once after the last change.

    Events can arrive thousands of times a second; redrawing a widget that often would
    swamp the browser, so changes are batched (the render happens on a timer thread).
    """

    def __init__(self, render: Callable[[], None], interval: float = 0.4):
        self.render, self.interval = render, interval
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def changed(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            delay = max(0.0, self._last + self.interval - time.monotonic())
            if delay == 0.0:
                self._last = time.monotonic()
                do_now = True
            else:
                do_now = False
                self._timer = threading.Timer(delay, self._fire)
                self._timer.daemon = True
                self._timer.start()
        if do_now:
            self.render()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self.render()


class EventLogView(w.VBox):
    """The latest events from one or more buses, newest last, filtered as you type.

    ``kinds`` (a prefix such as ``handshake`` or ``packet.dropped``, comma-separated) and
    ``layer`` filter what is *shown*; everything subscribed is kept, up to ``limit`` events
    (a bounded deque: a long-running notebook does not grow without end).
    """

    def __init__(self, *buses: EventBus, names: tuple[str, ...] = (), subscribe: str | None = None,
                 kinds: str = "", limit: int = 300, show: int = 40):
        self.events: deque[tuple[str, Event]] = deque(maxlen=limit)
        self.show = show
        self.kind_filter = w.Text(value=kinds, description="kinds", placeholder="e.g. handshake, packet.dropped")
        layers = sorted({layer_of(k) for k in CATALOGUE} | {"proxy"})
        self.layer_filter = w.Dropdown(options=["(all)"] + layers, value="(all)", description="layer")
        self.table = w.HTML()
        self.table.add_class("vpnedu-eventlog")
        self.kind_filter.observe(lambda _: self.refresh(), "value")
        self.layer_filter.observe(lambda _: self.refresh(), "value")
        self._throttle = _Throttle(self.refresh)
        self.buses = buses
        self._subs = []
        for i, bus in enumerate(buses):
            name = names[i] if i < len(names) else f"bus{i}"
            self._subs.append(bus.subscribe(lambda ev, name=name: self._add(name, ev), kinds=subscribe))
            # A feed that loses (or regains) its daemon changes the notice line above the table.
            self._subs.append(bus.subscribe(lambda ev: self._throttle.changed(), kinds="feed"))
        super().__init__([w.HBox([self.kind_filter, self.layer_filter]), self.table])
        self.refresh()

    def _add(self, name: str, ev: Event) -> None:
        self.events.append((name, ev))
        self._throttle.changed()

    def visible(self) -> list[tuple[str, Event]]:
        kinds = [k.strip() for k in self.kind_filter.value.split(",") if k.strip()]
        layer = self.layer_filter.value
        out = [(n, e) for n, e in list(self.events)
               if (not kinds or any(e.kind == k or e.kind.startswith(k + ".") or e.kind.startswith(k)
                                    for k in kinds))
               and (layer == "(all)" or e.layer == layer)]
        return out[-self.show:]

    def refresh(self) -> None:
        rows = []
        for name, ev in self.visible():
            t = time.strftime("%H:%M:%S", time.localtime(ev.time)) + f".{int(ev.time * 1000) % 1000:03d}"
            body = " ".join(f"{k}={_short(format_value(k, v))}" for k, v in ev.fields.items())
            cls = ' class="vpnedu-drop"' if ev.kind == "packet.dropped" else ""
            rows.append(f"<tr{cls}><td>{t}</td><td>{html.escape(name)}</td><td>{html.escape(ev.kind)}</td>"
                        f"<td>{html.escape(ev.peer or '')}</td><td>{html.escape(body)}</td></tr>")
        self.table.value = (STYLE + feed_notices_html(*self.buses)
                            + f"<div>{len(self.events)} event(s) kept, {len(rows)} shown</div>"
                            "<table class='vpnedu-table'><tr><th>time</th><th>who</th><th>kind</th>"
                            "<th>peer</th><th>fields</th></tr>" + "".join(rows) + "</table>")

    def close(self) -> None:
        for s in self._subs:
            s.close()
        super().close()


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= 48 else s[:45] + "..."


class CountersView(w.HTML):
    """Counters from ``source()`` (a dict, e.g. a daemon's status or a Device's counters).

    A status dict is flattened: its ``counters`` plus each peer's transfer and packets.
    Call :meth:`refresh` (or ``auto=True``: on every event of ``bus``, throttled).
    """

    def __init__(self, source: Callable[[], dict], bus: EventBus | None = None, title: str = "counters"):
        super().__init__()
        self.add_class("vpnedu-counters")
        self.source, self.title = source, title
        self.values: dict[str, int] = {}
        self._throttle = _Throttle(self.refresh)
        self._sub = bus.subscribe(lambda ev: self._throttle.changed()) if bus is not None else None
        self.refresh()

    @staticmethod
    def flatten(st: dict) -> dict[str, int]:
        if "peers" not in st:
            return dict(st)
        out = dict(st.get("counters", {}))
        for p in st["peers"]:
            who = p.get("name") or p["public_key"][:8]
            for k in ("transfer_tx", "transfer_rx", "packets_tx", "packets_rx"):
                out[f"{who}.{k}"] = p.get(k, 0)
        return out

    def refresh(self) -> None:
        try:
            self.values = self.flatten(self.source())
        except Exception as e:  # a stopped daemon: say so instead of failing
            self.value = f"<i>{html.escape(self.title)}: {html.escape(str(e))}</i>"
            return
        rows = "".join(f"<tr{' class=vpnedu-drop' if k.startswith('dropped.') else ''}><td>{html.escape(k)}</td>"
                       f"<td>{v}</td></tr>" for k, v in sorted(self.values.items()))
        self.value = (STYLE + f"<b>{html.escape(self.title)}</b><table class='vpnedu-table'>"
                      f"<tr><th>counter</th><th>value</th></tr>{rows}</table>")
