"""What vpnedu prints about a running VPN: a daemon's status, the flow table, text tables.

One module, so that ``vpnedu status``, ``vpnedu lab demo``, ``vpnedu course sim`` and the
notebook's widgets say the same thing the same way: a flow reads alike wherever it is shown,
a byte count is written alike, and a change of wording is made once.

* :func:`format_status` -- a daemon's status (the ``status`` reply of its control socket),
  laid out like ``wg show``;
* :func:`format_flows` -- the server's flow table under a line saying who keeps it (the
  kernel's conntrack with NAT, the server's own sockets with the proxy);
* :func:`flow_table` / :func:`flow_line` -- rows of :class:`~vpnedu.flows.FlowRow` as a
  table, or one sentence each (what a notebook prints under its flow-table widget);
* :func:`text_table`, :func:`human_bytes`, :func:`ago` -- the pieces.

The widgets draw HTML from the same rows and the same column headings
(:data:`FLOW_COLUMNS`, :data:`FLOW_HEADINGS`).
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

from .flows import FlowRow

#: The flow table's columns (FlowRow fields), and what each is headed where the field's own
#: name would mislead: with NAT the "proxy" is the server's public address, not a proxy.
FLOW_COLUMNS = ("proto", "client", "proxy", "destination", "state", "bytes_up", "bytes_down", "age")
FLOW_HEADINGS = {"proxy": "server end", "bytes_up": "up", "bytes_down": "down", "age": "age"}


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.50 KiB"`` (binary units, as ``wg show`` writes transfer)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def ago(t: float | None, now: float | None = None) -> str:
    """How long ago Unix time ``t`` was, in words ("never" for none)."""
    if not t:
        return "never"
    s = int((time.time() if now is None else now) - t)
    return f"{s} second{'s' if s != 1 else ''} ago" if s < 120 else f"{s // 60} minutes ago"


def text_table(rows: Iterable[Sequence], head: Sequence[str] | None = None) -> list[str]:
    """Rows as lines of left-aligned columns two spaces apart (a heading row first, if given)."""
    table = ([list(map(str, head))] if head else []) + [[str(c) for c in r] for r in rows]
    if not table:
        return []
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]


# ---------------------------------------------------------------------------- status
def format_status(st: dict) -> str:
    """A daemon's status as ``vpnedu status`` prints it: the interface, then each peer."""
    lines = [f"interface: {st['interface']} ({st['role']}, pid {st['pid']})",
             f"  public key: {st['public_key']}",
             f"  listening port: {st['listen_port']}"]
    if st.get("fwmark"):
        lines.append(f"  fwmark: {st['fwmark']:#x}")
    if st.get("table") not in (None, "auto"):
        lines.append(f"  routing table: {st['table']}")
    if st.get("kill_switch"):
        ks = st["kill_switch"]
        lines.append(f"  kill switch: {' and '.join(ks['families'])} outside the tunnel dropped ({ks['reason']}; "
                     f"nft list table {ks['table']})")
    lines += [f"  address: {', '.join(st['addresses'])}",
              f"  cipher suite: {st['suite']}"]
    if st.get("mtu"):
        lines.append(f"  mtu: {st['mtu']}" + (f" ({st['mtu_source']})" if st.get("mtu_source") else ""))
    for p in st["peers"]:
        lines.append("")
        lines.append(f"peer: {p['public_key']}" + (f" ({p['name']})" if p.get("name") else ""))
        if p.get("endpoint"):
            lines.append(f"  endpoint: {p['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(p['allowed_ips']) or '(none)'}")
        lines.append(f"  latest handshake: {ago(p.get('latest_handshake'))}")
        lines.append(f"  transfer: {human_bytes(p['transfer_rx'])} received, {human_bytes(p['transfer_tx'])} sent")
        if p.get("proxied"):
            lines.append(f"  proxied: {proxied_line(p['proxied'])}")
        if p.get("persistent_keepalive"):
            lines.append(f"  persistent keepalive: every {p['persistent_keepalive']} seconds")
    drops = {k[8:]: v for k, v in st.get("counters", {}).items() if k.startswith("dropped.")}
    if drops:
        lines.append("")
        lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- flows
def flow_cells(f: FlowRow) -> tuple[str, ...]:
    """One row's cells in :data:`FLOW_COLUMNS` order, as text (bytes in binary units)."""
    return (f.proto, f.client, f.proxy, f.destination, f.state, human_bytes(f.bytes_up),
            human_bytes(f.bytes_down), "" if f.age is None else f"{f.age:.0f}s")


def flow_table(rows: Iterable[FlowRow], indent: str = "  ") -> list[str]:
    """Rows as a table with a heading: protocol, both legs, state, bytes each way, age."""
    head = [FLOW_HEADINGS.get(c, c) for c in FLOW_COLUMNS]
    return [indent + line for line in text_table((flow_cells(f) for f in rows), head)]


def flow_line(f: FlowRow) -> str:
    """One flow as a sentence: ``tcp   client 10.0.0.2:40312 as 203.0.113.2:51044 -> 192.0.2.80:80 (established)``
    -- who talks to whom, and as whom the destination sees it."""
    return f"{f.proto:<5} client {f.client:<21} as {f.proxy:<21} -> {f.destination}  ({f.state})"


def proxied_line(by_proto: dict[str, dict[str, int]]) -> str:
    """A peer's use of the server's own services in ``wg show``'s words, "received" being what
    came from the peer: ``2 flows (socks5 1, http-connect 1), 1.20 KiB received, 20.00 MiB sent``."""
    n = sum(c["flows"] for c in by_proto.values())
    each = ", ".join(f"{proto} {c['flows']}" for proto, c in sorted(by_proto.items()))
    up = sum(c["bytes_up"] for c in by_proto.values())
    down = sum(c["bytes_down"] for c in by_proto.values())
    return (f"{n} flow{'s' if n != 1 else ''} ({each}), {human_bytes(up)} received, "
            f"{human_bytes(down)} sent")


def usage_table(usage: dict[str, dict[str, dict[str, int]]], indent: str = "  ") -> list[str]:
    """Per peer and protocol: flows, bytes up and down, since the server started."""
    rows = [(peer or "(no peer)", proto, str(c["flows"]), human_bytes(c["bytes_up"]), human_bytes(c["bytes_down"]))
            for peer, by in sorted(usage.items()) for proto, c in sorted(by.items())]
    return [indent + line for line in text_table(rows, ("peer", "proto", "flows", "up", "down"))]


#: The protocols of the kernel's conntrack rows (vpnedu.net.conntrack).
KERNEL_PROTOS = ("tcp", "udp", "icmp", "icmpv6")


def format_flows(st: dict) -> str:
    """The flow table of a daemon's status (``vpnedu status --flows``): who keeps it, then the rows."""
    mode = st.get("forwarding")
    if mode is None:
        return "flows: this daemon is a client; flows are kept by the server"
    if mode == "none":
        return "flows: forwarding is off (--forwarding none)"
    if st.get("flows_error"):
        return f"flows: cannot read the kernel's conntrack table: {st['flows_error']}"
    rows = [FlowRow.from_dict(d) for d in st.get("flows", [])]
    if mode == "proxy":
        head = f"flows: {len(rows)} via proxy (the server's own connections)"
    else:
        # The kernel's conntrack rows are tcp/udp/icmp; the server's own services (SOCKS5, the
        # HTTP proxy, the DNS forwarder) keep theirs beside them, named by their protocol.
        own = sum(1 for r in rows if r.proto not in KERNEL_PROTOS)
        head = f"flows: {len(rows) - own} via nat (the kernel's conntrack entries)"
        if own:
            head += f", {own} of the server's own services"
    lines = [head, *(flow_table(rows) if rows else [])]
    if st.get("proxy_usage"):
        lines += ["", "per peer, since the server started (its own services: proxy, SOCKS5, HTTP, DNS):",
                  *usage_table(st["proxy_usage"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- wg show
def hex_to_base64(hexkey: str) -> str:
    """A key as the configuration protocol writes it (64 hex digits) -> as ``wg`` and the config
    files write it (44 characters of base64): the same 32 bytes, two spellings."""
    import base64
    return base64.b64encode(bytes.fromhex(hexkey)).decode("ascii")


def wg_ago(seconds: int) -> str:
    """A duration the way ``wg show`` words it: "1 minute, 5 seconds ago", "Now" for none."""
    if seconds <= 0:
        return "Now"
    parts = []
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return ", ".join(parts) + " ago"


def format_wg_show(reply: dict, interface: str, now: float | None = None) -> str:
    """A parsed ``get=1`` reply (:func:`vpnedu.uapi.parse_get`) laid out like ``wg show IFNAME``:
    vpnedu's own rendering, for where there is no ``wg`` binary (the simulated lab).

    Everything comes from the reply, as it does for ``wg``: the interface's public key is not in
    it -- only the private key is -- so it is computed from that (X25519); keys are turned from
    hex into base64; handshake times are Unix seconds, shown as an age."""
    from .protocol.keys import public_key
    now = time.time() if now is None else now
    iface = reply["interface"]
    lines = [f"interface: {interface}"]
    if "private_key" in iface:
        pub = public_key(bytes.fromhex(iface["private_key"]))
        lines += [f"  public key: {hex_to_base64(pub.hex())}", "  private key: (hidden)"]
    if iface.get("listen_port"):
        lines.append(f"  listening port: {iface['listen_port']}")
    if iface.get("fwmark"):
        lines.append(f"  fwmark: {int(iface['fwmark']):#x}")
    for p in reply["peers"]:
        lines += ["", f"peer: {hex_to_base64(p['public_key'])}"]
        if p.get("preshared_key", "0" * 64) != "0" * 64:
            lines.append("  preshared key: (hidden)")
        if p.get("endpoint"):
            lines.append(f"  endpoint: {p['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(p['allowed_ip']) or '(none)'}")
        sec = int(p.get("last_handshake_time_sec", 0))
        if sec:
            lines.append(f"  latest handshake: {wg_ago(int(now) - sec)}")
        rx, tx = int(p.get("rx_bytes", 0)), int(p.get("tx_bytes", 0))
        if rx or tx:
            lines.append(f"  transfer: {human_bytes(rx)} received, {human_bytes(tx)} sent")
        keepalive = int(p.get("persistent_keepalive_interval", 0))
        if keepalive:
            lines.append(f"  persistent keepalive: every {keepalive} second{'s' if keepalive != 1 else ''}")
    return "\n".join(lines)


#: Which ``get=1`` line each ``wg show`` line comes from (wg show's words -> the protocol's keys).
WG_SHOW_SOURCES = (
    ("public key", "private_key", "derived (X25519)"),
    ("listening port", "listen_port", "the same number"),
    ("peer", "public_key", "hex -> base64"),
    ("endpoint", "endpoint", "the same text"),
    ("allowed ips", "allowed_ip", "lines -> one list"),
    ("latest handshake", "last_handshake_time_sec", "Unix time -> age"),
    ("transfer", "rx_bytes, tx_bytes", "received, sent"),
    ("persistent keepalive", "persistent_keepalive_interval", "shown if not 0"),
)


def wg_show_sources() -> list[str]:
    """:data:`WG_SHOW_SOURCES` as a table: where each line of ``wg show`` is in the raw reply."""
    return text_table(WG_SHOW_SOURCES, ("wg show", "get=1 key", "how"))
