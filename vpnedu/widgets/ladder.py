"""The handshake as a ladder diagram: initiator on the left, responder on the right, every field.

WireGuard's handshake (paper section 5.4, Noise_IKpsk2) is one round trip:

1. **initiation** (148 bytes): the initiator's *sender index*, a fresh *ephemeral*
   public key in the clear, its *static* public key encrypted (AEAD, 32 + 16
   bytes) under a key only the responder can derive, a TAI64N *timestamp*
   encrypted the same way (12 + 16 bytes; the responder rejects one not newer than
   the last it saw, so a recorded initiation cannot be replayed), then *mac1*
   (keyed by the responder's public key: "this is for you") and *mac2* (zeros
   unless the initiator holds a fresh cookie: the responder sent one because it was under load).
2. **response** (92 bytes): the responder's *sender index*, the initiator's index
   as *receiver index*, its own *ephemeral* key, *encrypted nothing* (an empty
   AEAD: just the 16-byte tag, proving it derived the same keys), mac1 (keyed by
   the *initiator's* public key now: always the receiver's), mac2.
3. both sides derive the transport keys; the initiator's first data message (or
   an empty keepalive) *confirms* the session to the responder.

:class:`HandshakeLadder` draws this from the events both sides emit
(``handshake.*``, ``session.*``) as SVG, with each field's value and meaning.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

import ipywidgets as w

from ..events import Event, EventBus, format_value

#: What each field is, with the paper's section.
FIELD_NOTES = {
    "sender_index": "the sender's 32-bit name for this handshake/session (5.4.2)",
    "receiver_index": "echoes the initiator's sender index (5.4.3)",
    "ephemeral": "fresh X25519 public key, sent in the clear (5.4.2, 5.4.3)",
    "encrypted_static": "initiator's static public key, AEAD: 32 + 16-byte tag (5.4.2)",
    "static": "...which the responder decrypted: the initiator's static public key",
    "encrypted_timestamp": "TAI64N timestamp, AEAD: 12 + 16-byte tag; anti-replay (5.1, 5.4.2)",
    "timestamp": "the timestamp (must be newer than the last one seen from this peer)",
    "encrypted_nothing": "empty AEAD: only the 16-byte tag, proves the keys match (5.4.3)",
    "mac1": "MAC keyed by HASH(\"mac1----\" || the receiver's public key): 'meant for you' (5.4.4)",
    "mac2": "cookie MAC: zeros unless the sender holds a fresh (< 120 s) cookie from the receiver (5.4.4, 5.4.7)",
}


@dataclass
class LadderMessage:
    name: str
    direction: str  # "right" (initiator -> responder) or "left"
    fields: dict = field(default_factory=dict)
    sent: bool = False
    received: bool = False
    time: float = 0.0

    def shown(self) -> list[tuple[str, object]]:
        """The known fields in wire order (:data:`FIELD_NOTES`' order), whichever side's event
        filled them first: both daemons' events arrive on their own threads, in either order."""
        rank = {k: i for i, k in enumerate(FIELD_NOTES)}
        return sorted(((k, v) for k, v in self.fields.items() if v is not None),
                      key=lambda kv: rank.get(kv[0], len(rank)))


class HandshakeLadder(w.HTML):
    """A ladder diagram of the latest handshake between an initiator and a responder.

    Give it the initiator's bus and/or the responder's bus (a client is the initiator
    when it starts).  :attr:`completed` tells whether the handshake finished.
    """

    def __init__(self, initiator: EventBus | None = None, responder: EventBus | None = None,
                 initiator_name: str = "client (initiator)", responder_name: str = "server (responder)"):
        super().__init__()
        self.add_class("vpnedu-ladder")
        self.names = (initiator_name, responder_name)
        self._handshakes: dict = {}
        self._order: list = []
        self._responder_index: dict = {}
        self._subs = []
        self._two_sided = initiator is not None and responder is not None
        if initiator is not None:
            self._subs.append(initiator.subscribe(self._initiator_event, kinds=["handshake", "session"]))
        if responder is not None:
            self._subs.append(responder.subscribe(self._responder_event, kinds=["handshake", "session"]))
        self.render()

    # ------------------------------------------------------------------ events
    # Each handshake is keyed by the initiator's sender index: both sides' events name it
    # (the responder's response carries it as receiver index), so they can arrive in any order.
    def _handshake(self, key) -> dict:
        hs = self._handshakes.get(key)
        if hs is None:
            hs = self._handshakes[key] = {"initiation": LadderMessage("initiation", "right", time=time.time()),
                                          "response": None, "initiator": False, "responder": False,
                                          "confirmed": False}
            self._order.append(key)
            del self._order[:-8]
        return hs

    def _initiator_event(self, ev: Event) -> None:
        f = ev.fields
        if ev.kind == "handshake.initiation.sent":
            m = self._handshake(f.get("sender_index"))["initiation"]
            m.sent = True
            m.fields.update({k: f.get(k) for k in ("sender_index", "ephemeral", "encrypted_static",
                                                   "encrypted_timestamp", "timestamp", "mac1", "mac2")})
        elif ev.kind == "handshake.response.received":
            hs = self._handshake(f.get("receiver_index"))
            m = hs["response"] = hs["response"] or LadderMessage("response", "left", time=time.time())
            m.received = True
            m.fields.update({k: f.get(k) for k in ("sender_index", "receiver_index", "ephemeral", "mac1", "mac2")})
        elif ev.kind == "session.established" and f.get("role") == "initiator":
            self._handshake(f.get("local_index"))["initiator"] = True
        else:
            return
        self.render()

    def _responder_event(self, ev: Event) -> None:
        f = ev.fields
        if ev.kind == "handshake.initiation.received":
            m = self._handshake(f.get("sender_index"))["initiation"]
            m.received = True
            m.fields.update({k: f.get(k) for k in ("sender_index", "ephemeral", "static", "timestamp",
                                                   "mac1", "mac2")})
        elif ev.kind == "handshake.response.sent":
            hs = self._handshake(f.get("receiver_index"))
            m = hs["response"] = hs["response"] or LadderMessage("response", "left", time=time.time())
            m.sent = True
            m.fields.update({k: f.get(k) for k in ("sender_index", "receiver_index", "ephemeral", "mac1", "mac2")})
            m.fields["encrypted_nothing"] = "(16-byte tag)"
            self._responder_index[f.get("sender_index")] = f.get("receiver_index")
        elif ev.kind == "session.established" and f.get("role") == "responder":
            self._handshake(f.get("remote_index"))["responder"] = True
        elif ev.kind == "session.confirmed":
            key = self._responder_index.get(f.get("local_index"))
            if key is None:
                return
            self._handshake(key)["confirmed"] = True
        else:
            return
        self.render()

    @property
    def latest(self) -> dict | None:
        return self._handshakes[self._order[-1]] if self._order else None

    @property
    def messages(self) -> list[LadderMessage]:
        hs = self.latest
        return [] if hs is None else [m for m in (hs["initiation"], hs["response"]) if m is not None]

    @property
    def established(self) -> dict:
        hs = self.latest or {}
        return {"initiator": hs.get("initiator", False), "responder": hs.get("responder", False)}

    @property
    def confirmed(self) -> bool:
        return bool(self.latest and self.latest["confirmed"])

    @property
    def completed(self) -> bool:
        """Both messages crossed and the initiator has keys (and, if we watch it, the responder too)."""
        hs = self.latest
        if hs is None or hs["response"] is None or not hs["initiator"]:
            return False
        return hs["responder"] or not self._two_sided

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until the handshake completes (a real daemon's events arrive on another thread)."""
        end = time.monotonic() + timeout
        while not self.completed and time.monotonic() < end:
            time.sleep(0.05)
        self.render()
        return self.completed

    def field_table(self) -> "FieldTable":
        """Every field of the latest handshake's messages as a table: the value in full and what
        it is (the ladder above shows the same fields, cut short to fit the diagram)."""
        rows = [(m.name, k, _fmt(k, v, limit=None), FIELD_NOTES.get(k, ""))
                for m in self.messages for k, v in m.shown()]
        return FieldTable(rows)

    def summary(self) -> str:
        parts = [f"{m.name} {'sent' if m.sent else ''}{'+received' if m.received else ''}" for m in self.messages]
        state = "handshake complete" if self.completed else "handshake in progress"
        if self.confirmed:
            state += ", session confirmed by the initiator's first data"
        return f"{state}: " + "; ".join(parts)

    # ------------------------------------------------------------------ drawing
    def render(self) -> None:
        # Wide enough for the longest field line; the SVG scales down to fit the output area.
        width, left, right = 1200, 110, 1090
        y = 50
        parts = [f'<text x="{left}" y="20" text-anchor="middle" font-weight="bold">{html.escape(self.names[0])}</text>',
                 f'<text x="{right}" y="20" text-anchor="middle" font-weight="bold">{html.escape(self.names[1])}</text>']
        for m in self.messages:
            x1, x2 = (left, right) if m.direction == "right" else (right, left)
            lines = m.shown()
            size = {"initiation": 148, "response": 92}.get(m.name, 0)
            title = f"handshake {m.name} ({size} bytes)" + ("" if m.received else "  [not received yet]")
            parts.append(f'<g class="vpnedu-ladder-message" data-message="{m.name}">'
                         f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y + 24}" stroke="#2a6" stroke-width="2" '
                         f'marker-end="url(#vpnedu-arrow)"/>'
                         f'<text x="{(left + right) / 2}" y="{y + 8}" text-anchor="middle" font-weight="bold">'
                         f'{html.escape(title)}</text>')
            ty = y + 42
            for k, v in lines:
                val = _fmt(k, v)
                note = FIELD_NOTES.get(k, "")
                parts.append(f'<text x="{left + 20}" y="{ty}" font-family="monospace" font-size="11">'
                             f'<tspan font-weight="bold">{html.escape(k)}</tspan> = {html.escape(val)}'
                             f'<tspan fill="#666"> {html.escape(note)}</tspan></text>')
                ty += 15
            parts.append("</g>")
            y = ty + 14
        state = []
        if self.established["initiator"]:
            state.append("initiator derived transport keys")
        if self.established["responder"]:
            state.append("responder derived transport keys")
        if self.confirmed:
            state.append("responder got the first data: session confirmed")
        status = ("HANDSHAKE COMPLETE -- " if self.completed else "waiting for the handshake... ") + "; ".join(state)
        parts.append(f'<text x="{(left + right) / 2}" y="{y + 10}" text-anchor="middle" '
                     f'fill="{"#070" if self.completed else "#a60"}" font-weight="bold" '
                     f'class="vpnedu-ladder-status">{html.escape(status)}</text>')
        height = y + 30
        lifelines = (f'<line x1="{left}" y1="28" x2="{left}" y2="{height - 5}" stroke="#333"/>'
                     f'<line x1="{right}" y1="28" x2="{right}" y2="{height - 5}" stroke="#333"/>')
        defs = ('<defs><marker id="vpnedu-arrow" markerWidth="10" markerHeight="8" refX="9" refY="4" '
                'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#2a6"/></marker></defs>')
        self.value = (f'<svg class="vpnedu-ladder-svg" xmlns="http://www.w3.org/2000/svg" '
                      f'viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" '
                      f'font-family="sans-serif" font-size="12">{defs}{lifelines}'
                      + "".join(parts) + "</svg>")

    def close(self) -> None:
        for s in self._subs:
            s.close()
        super().close()


class FieldTable:
    """Rows of ``(message, field, value, meaning)``, shown as an HTML table in a notebook.

    Why not printed text: a field dump is four columns of very different widths (a 96-digit
    hex string next to a sentence), which the browser wraps mid-word into a wall of text.  In a
    table only the value column breaks (hex and base64 have no spaces, so it breaks anywhere) and
    the meaning wraps between words.  ``repr()`` is the same table as aligned text, for a terminal.
    """

    # Every cell has the class vpnedu-f: "table.vpnedu-fields tr td.vpnedu-f" (two classes, three
    # elements) outranks JupyterLab's rule for rendered tables, which aligns every cell to the right.
    STYLE = ("<style>table.vpnedu-fields { border-collapse: collapse; font-size: 12px; width: 100%; "
             "table-layout: fixed; }"
             "table.vpnedu-fields tr td.vpnedu-f, table.vpnedu-fields tr th.vpnedu-f { border: 1px solid #ccc; "
             "padding: 2px 6px; text-align: left; vertical-align: top; }"
             "table.vpnedu-fields tr th.vpnedu-f { background: #eef; }"
             "table.vpnedu-fields tr td.vpnedu-field-value { font-family: monospace; word-break: break-all; }"
             "table.vpnedu-fields tr td.vpnedu-field-name { font-family: monospace; overflow-wrap: anywhere; }"
             "</style>")

    def __init__(self, rows: list[tuple[str, str, str, str]]):
        self.rows = rows

    def _repr_html_(self) -> str:
        body = []
        for i, (msg, name, value, note) in enumerate(self.rows):
            first = i == 0 or self.rows[i - 1][0] != msg
            span = sum(1 for r in self.rows if r[0] == msg)
            head = f"<td class='vpnedu-f' rowspan='{span}'><b>{html.escape(msg)}</b></td>" if first else ""
            body.append(f"<tr>{head}<td class='vpnedu-f vpnedu-field-name'>{html.escape(name)}</td>"
                        f"<td class='vpnedu-f vpnedu-field-value'>{html.escape(value)}</td>"
                        f"<td class='vpnedu-f'>{html.escape(note)}</td></tr>")
        heads = ("message", "field", "value", "what it is (WireGuard paper section)")
        return (self.STYLE + "<table class='vpnedu-fields'><colgroup><col style='width:7em'>"
                "<col style='width:14em'><col style='width:40%'><col></colgroup>"
                "<tr>" + "".join(f"<th class='vpnedu-f'>{h}</th>" for h in heads) + "</tr>"
                + "".join(body) + "</table>")

    def __repr__(self) -> str:
        lines = []
        for msg, name, value, note in self.rows:
            lines.append(f"{msg:<10} {name:<19} {value}")
            if note:
                lines.append(f"{'':<30} {note}")
        return "\n".join(lines) or "(no handshake yet)"


def _fmt(key: str, v, limit: int | None = 50) -> str:
    if key == "timestamp" and isinstance(v, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(v)) + f" (+{v % 1:.6f}s)"
    s = format_value(key, v)
    return s if limit is None or len(s) <= limit else s[:limit - 3] + "..."
