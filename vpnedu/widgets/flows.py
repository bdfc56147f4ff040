"""The server's flow table: which client connection goes where, under which address.

With **NAT** (the kernel's masquerade) the server rewrites each packet's source to
its own public address and remembers the flow (``conntrack``).  With the **proxy**
forwarding mode the server's own process ends each client connection and opens a
new one to the destination.  The "server end" column is the address the destination sees:
with NAT the server's public address with the client's port (as conntrack rewrote it), with
the proxy a socket of the server's own.  Either way the app server sees the *server's*
address, never the client's.  (The key in the flow dicts is ``proxy``, as in ``vpnedu status
--json``; the heading says what it is in both modes, as ``vpnedu status --flows`` does.)

The table takes the daemon's status ``flows`` list (dicts with ``proto``,
``client``, ``proxy``, ``destination``, ``state``, ``bytes_up``, ``bytes_down``,
``age``) and/or follows ``proxy.flow.opened`` / ``proxy.flow.closed`` events.
"""

from __future__ import annotations

import html

import ipywidgets as w

from ..events import Event, EventBus
from .live import STYLE, feed_notices, feed_notices_html

COLUMNS = ("proto", "client", "proxy", "destination", "state", "bytes_up", "bytes_down", "age")
#: What each column is headed (the server's end is a proxy socket only in proxy mode).
HEADINGS = {"proxy": "server end", "bytes_up": "bytes up", "bytes_down": "bytes down", "age": "age (s)"}


class FlowTableView(w.HTML):
    """A flow table, from a list of flow dicts and/or a bus's ``proxy.flow.*`` events."""

    def __init__(self, flows: list[dict] | None = None, bus: EventBus | None = None, title: str = "flow table"):
        super().__init__()
        self.add_class("vpnedu-flows")
        self.title = title
        self.flows: dict[tuple, dict] = {}
        self.bus = bus
        # "feed": a relay that cannot reach the daemon says so above the table (never a silent "no flows").
        self._sub = bus.subscribe(self._event, kinds=["proxy.flow", "feed"]) if bus is not None else None
        self.update(flows or [])

    @staticmethod
    def _key(f: dict) -> tuple:
        return (f.get("proto"), f.get("client"), f.get("destination"))

    def update(self, flows: list[dict]) -> None:
        """Replace the table with a fresh status list (flows absent from it are gone)."""
        self.flows = {self._key(f): dict(f) for f in flows}
        self.render()

    def _event(self, ev: Event) -> None:
        f = {k: ev.fields.get(k) for k in COLUMNS if k in ev.fields}
        key = self._key(f)
        if ev.kind == "proxy.flow.opened":
            self.flows[key] = {**f, "state": "open", "bytes_up": 0, "bytes_down": 0}
        elif ev.kind == "proxy.flow.closed":
            # The reason says how it ended: "closed" (both ends finished: nothing to add),
            # "reset", "refused", "idle", "server stopping".
            reason = ev.fields.get("reason")
            self.flows[key] = {**self.flows.get(key, {}), **f,
                               "state": f"closed ({reason})" if reason and reason != "closed" else "closed"}
        elif not ev.kind.startswith("feed."):
            return
        self.render()

    def as_text(self) -> str:
        """The table as lines of text, one flow each (what a notebook prints under the widget)."""
        notices = "".join(f"({line})\n" for line in feed_notices(self.bus)) if self.bus is not None else ""
        if not self.flows:
            return notices + "(no flows)"
        return notices + "\n".join(f"{f.get('proto') or '':<5} client {f.get('client') or '':<21} as {f.get('proxy') or '':<21} "
                         f"-> {f.get('destination') or ''}  ({f.get('state') or ''})" for f in self.flows.values())

    def render(self) -> None:
        if not self.flows:
            body = f"<tr><td colspan='{len(COLUMNS)}'><i>no flows</i></td></tr>"
        else:
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(f.get(c, '') if f.get(c) is not None else ''))}</td>"
                                            for c in COLUMNS) + "</tr>" for f in self.flows.values())
        head = "".join(f"<th>{HEADINGS.get(c, c)}</th>" for c in COLUMNS)
        notices = feed_notices_html(self.bus) if self.bus is not None else ""
        self.value = (STYLE + f"<b>{html.escape(self.title)}</b>{notices}<table class='vpnedu-table'><tr>{head}</tr>"
                      f"{body}</table>")

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
        super().close()
