"""A routing table before and after, the change highlighted.

A full-tunnel client (see :mod:`vpnedu.node.client`) does as wg-quick(8): a table of its
own holding ``default dev vpnedu0`` and two ``ip rule`` per family, so the main table is
not changed at all -- the widget then shows the tunnel's table (and the rules) as the rows
added.  A split tunnel, or the classic method of lab 4 (a host route to the server via the
old gateway, and ``0.0.0.0/1`` + ``128.0.0.0/1``, more specific than ``default`` so they win
without deleting it), adds its routes to the main table.  Either way the widget shows the
change: added rows green, removed rows struck through, unchanged rows plain.
"""

from __future__ import annotations

import html

import ipywidgets as w

from .live import STYLE


def diff_routes(before: list[str], after: list[str]) -> list[tuple[str, str]]:
    """``[(state, route)]`` with state "added", "removed" or "kept", in a stable order."""
    rows = [("kept" if r in after else "removed", r) for r in before]
    rows += [("added", r) for r in after if r not in before]
    return rows


class RouteTableView(w.HTML):
    """Two routing tables (lists of ``ip route`` lines) as one table with the change highlighted."""

    def __init__(self, before: list[str], after: list[str] | None = None, title: str = "routing table"):
        super().__init__()
        self.add_class("vpnedu-routes")
        self.title = title
        self.update(before, after if after is not None else before)

    def update(self, before: list[str], after: list[str]) -> None:
        self.before, self.after = list(before), list(after)
        self.rows = diff_routes(self.before, self.after)
        mark = {"added": "+", "removed": "-", "kept": ""}
        body = "".join(f"<tr class='vpnedu-{state}'><td>{mark[state]}</td><td>{html.escape(r)}</td>"
                       f"<td>{'' if state == 'kept' else state}</td></tr>" for state, r in self.rows)
        self.value = (STYLE + f"<b>{html.escape(self.title)}</b><table class='vpnedu-table'>"
                      f"<tr><th></th><th>route</th><th>change</th></tr>{body}</table>")

    @property
    def added(self) -> list[str]:
        return [r for s, r in self.rows if s == "added"]

    @property
    def removed(self) -> list[str]:
        return [r for s, r in self.rows if s == "removed"]
