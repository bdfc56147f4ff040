"""The server's flow table: which client connection goes where, under which address.

With **NAT** (the kernel's masquerade) the server rewrites each packet's source to
its own public address and remembers the flow (``conntrack``).  With the **proxy**
forwarding mode the server's own process ends each client connection and opens a
new one to the destination.  The "server end" column is the address the destination sees:
with NAT the server's public address with the client's port (as conntrack rewrote it), with
the proxy a socket of the server's own.  Either way the app server sees the *server's*
address, never the client's.

The table takes rows (:class:`~vpnedu.flows.FlowRow`: what ``lab.flows()`` returns) and/or
follows ``proxy.flow.opened`` / ``proxy.flow.closed`` events.  Its cells, headings and its
text form are those of :mod:`vpnedu.report`, so it reads as ``vpnedu status --flows`` does.
"""

from __future__ import annotations

import html

import ipywidgets as w

from ..events import Event, EventBus
from ..flows import FlowRow
from ..report import FLOW_COLUMNS, FLOW_HEADINGS, flow_cells, flow_line
from .live import STYLE, feed_notices, feed_notices_html


class FlowTableView(w.HTML):
    """A flow table, from a list of rows and/or a bus's ``proxy.flow.*`` events."""

    def __init__(self, flows: list[FlowRow] | None = None, bus: EventBus | None = None,
                 title: str = "flow table"):
        super().__init__()
        self.add_class("vpnedu-flows")
        self.title = title
        #: The rows shown, by :meth:`FlowRow.key <vpnedu.flows.FlowRow.key>`.
        self.flows: dict[tuple, FlowRow] = {}
        self.bus = bus
        # "feed": a relay that cannot reach the daemon says so above the table (never a silent "no flows").
        self._sub = bus.subscribe(self._event, kinds=["proxy.flow", "feed"]) if bus is not None else None
        self.update(flows or [])

    def update(self, flows: list[FlowRow]) -> None:
        """Replace the table with fresh rows (flows absent from them are gone)."""
        self.flows = {f.key(): f for f in flows}
        self.render()

    def _event(self, ev: Event) -> None:
        if ev.kind in ("proxy.flow.opened", "proxy.flow.closed"):
            f = FlowRow.from_event(ev.kind, ev.fields, ev.peer)
            self.flows[f.key()] = f
        elif not ev.kind.startswith("feed."):
            return
        self.render()

    def as_text(self) -> str:
        """The table as lines of text, one flow each (what a notebook prints under the widget)."""
        notices = "".join(f"({line})\n" for line in feed_notices(self.bus)) if self.bus is not None else ""
        if not self.flows:
            return notices + "(no flows)"
        return notices + "\n".join(flow_line(f) for f in self.flows.values())

    def render(self) -> None:
        if not self.flows:
            body = f"<tr><td colspan='{len(FLOW_COLUMNS)}'><i>no flows</i></td></tr>"
        else:
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in flow_cells(f)) + "</tr>"
                           for f in self.flows.values())
        head = "".join(f"<th>{FLOW_HEADINGS.get(c, c)}</th>" for c in FLOW_COLUMNS)
        notices = feed_notices_html(self.bus) if self.bus is not None else ""
        self.value = (STYLE + f"<b>{html.escape(self.title)}</b>{notices}<table class='vpnedu-table'><tr>{head}</tr>"
                      f"{body}</table>")

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
        super().close()
