"""What a course lab is: the calls every notebook makes, and what they return.

There are two labs, and a notebook never needs to know which one it has:

* :class:`~vpnedu.course.real.RealLab` -- network namespaces on this machine, real TUN
  devices, the real ``vpnedu server`` / ``vpnedu client`` processes (root);
* :class:`~vpnedu.course.simulated.SimLab` -- the same hosts and addresses simulated in this
  Python process, running the same daemon and protocol code (no root).

:class:`CourseLab` declares what both provide, as a :class:`typing.Protocol`: a class is a
course lab by having these methods, not by inheriting from anything
(``tests/course/test_course_interface.py`` checks both against it, signature by signature).  A
widget or a notebook written against :class:`CourseLab` works in either mode.

The results are small dataclasses (and named tuples where a notebook unpacks them), each
printing as a sentence a student can read:

=======================  ===============================================================
:class:`PingResult`       ``lab.ping(...)``: sent, received, from which address
:class:`AppResult`        ``lab.app_request()``: the reply, and whom the app server saw
:class:`TunReading`       ``lab.tun_demo()``: one raw packet from a TUN device, decoded
:class:`MarkerOnWire`     ``lab.marker_on_wire()``: is the marker readable on the client's link?
:class:`ExplicitProxyFetch`  ``lab.explicit_proxy_fetch(via)``: a page through SOCKS5 or HTTP
                          CONNECT: the proxy's flow, the app's log, the client's link
:class:`TrafficSample`    ``lab.traffic(...)`` yields them: bytes each way so far
:class:`~vpnedu.flows.FlowRow`  ``lab.flows()``: the server's flow table
:class:`WgShow`           ``lab.wg_show(host)``: ``wg show`` on a daemon's interface
:class:`WgGet`            ``lab.wg_get(host)``: the raw ``get=1`` reply behind it
:class:`WgSet`            ``lab.wg_set(host, ...)`` / ``lab.wg_send(host, text)``: a change, its
                          ``errno``, what changed and the ``config.set`` event
=======================  ===============================================================

A daemon's status (``lab.status(host)``) is the ``status`` reply of its control socket, a
dict, the same that ``vpnedu status --json`` prints; events are :class:`~vpnedu.events.Event`.
"""

from __future__ import annotations

import os
import re
import struct
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Protocol

from .. import uapi
from ..errors import VpneduError
from ..events import Event, EventBus
from ..flows import FlowRow
from ..packet import ip as iplib
from ..report import hex_to_base64


# ---------------------------------------------------------------------------- results
@dataclass
class PingResult:
    """``ping -c N`` from a host: how many echo requests went out, how many replies came back."""

    sent: int
    received: int
    destination: str
    source: str

    @classmethod
    def from_ping_output(cls, destination: str, output: str, source: str = "") -> "PingResult":
        """The result as iputils' ``ping`` summarised it ("3 packets transmitted, 3 received")."""
        m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
        sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        return cls(sent, got, destination, source)

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent

    def __str__(self) -> str:
        loss = 100 * (self.sent - self.received) // max(self.sent, 1)
        return (f"ping {self.destination} from {self.source}: {self.sent} packets transmitted, "
                f"{self.received} received, {loss}% packet loss")


@dataclass
class AppResult:
    """An app request through the VPN: what came back, and who the app server says asked."""

    reply: str
    sources: list[str]

    def __str__(self) -> str:
        return f"reply: {self.reply!r}; the app server logged the request from {', '.join(self.sources) or 'nobody'}"


@dataclass
class TunReading:
    """One raw packet read from a TUN device, and what its bytes mean."""

    device: str
    raw: bytes
    mode: str

    @classmethod
    def from_packet(cls, device: str, raw: bytes, mode: str) -> "TunReading":
        return cls(device, bytes(raw), mode)

    @property
    def fields(self) -> list[tuple[str, str, str]]:
        """(bytes, field, value) rows: the IPv4 header (RFC 791), then the ICMP header (RFC 792)."""
        p = self.raw
        rows = [("0", "version / IHL", f"{p[0] >> 4} / {(p[0] & 15) * 4} bytes"),
                ("2-3", "total length", str(struct.unpack_from("!H", p, 2)[0])),
                ("8", "TTL", str(p[8])),
                ("9", "protocol", f"{p[9]} ({iplib.PROTO_NAMES.get(p[9], '?')})"),
                ("10-11", "header checksum", f"{struct.unpack_from('!H', p, 10)[0]:#06x}"),
                ("12-15", "source", ".".join(map(str, p[12:16]))),
                ("16-19", "destination", ".".join(map(str, p[16:20])))]
        ihl = (p[0] & 15) * 4
        if p[9] == iplib.PROTO_ICMP and len(p) >= ihl + 8:
            t, c, _, ident, seq = struct.unpack_from("!BBHHH", p, ihl)
            rows += [(f"{ihl}", "ICMP type", f"{t} ({ {8: 'echo request', 0: 'echo reply'}.get(t, '?') })"),
                     (f"{ihl + 4}-{ihl + 5}", "ICMP identifier", str(ident)),
                     (f"{ihl + 6}-{ihl + 7}", "ICMP sequence", str(seq)),
                     (f"{ihl + 8}-", "payload", repr(p[ihl + 8:ihl + 40]))]
        return rows

    def __str__(self) -> str:
        lines = [f"read {len(self.raw)} bytes from TUN device {self.device} ({self.mode}): {iplib.describe(self.raw)}",
                 "hex: " + self.raw.hex(" ")]
        lines += [f"  {b:>6}  {f:<16} {v}" for b, f, v in self.fields]
        return "\n".join(lines)


class MarkerOnWire(NamedTuple):
    """A marker sent through the tunnel, and whether it could be read on the client's outer link
    (only with the ``null-teaching`` suite, which does not encrypt)."""

    marker: str
    visible: bool


class TrafficSample(NamedTuple):
    """Seconds since the traffic started, and the bytes the client's outer link carried so far
    each way (``up``: sent by the client)."""

    t: float
    up: int
    down: int


@dataclass
class WgShow:
    """``wg show IFNAME`` on a lab host's daemon: what was printed, and by what.

    ``tool`` is ``"wg"`` when the real ``/usr/bin/wg`` printed it (the real lab), ``"vpnedu"``
    when vpnedu laid out the daemon's ``get=1`` reply the way ``wg show`` does
    (:func:`vpnedu.report.format_wg_show`; the simulation has no ``wg`` binary to run)."""

    host: str
    interface: str
    text: str
    tool: str
    #: One line: how it was run (the command, and where).
    how: str

    def peers(self) -> list[str]:
        """The peers' public keys (base64), in the order listed."""
        return [line.split(":", 1)[1].strip() for line in self.text.splitlines() if line.startswith("peer:")]

    def peer_field(self, key: str, name: str) -> str | None:
        """One field of one peer as printed (``peer_field(KEY, "persistent keepalive")``)."""
        section = None
        for line in self.text.splitlines():
            if line.startswith("peer:"):
                section = line.split(":", 1)[1].strip()
            elif section == key and line.strip().startswith(name + ":"):
                return line.split(":", 1)[1].strip()
        return None

    def __str__(self) -> str:
        return f"{self.how}\n{self.text}"


@dataclass
class WgGet:
    """The raw reply a daemon gives ``get=1`` on its configuration socket: what ``wg show`` reads.

    Printed, the private and pre-shared keys are left out (``wg show`` hides them too);
    :attr:`raw` has them: the reply does carry them, which is why the socket is root's alone."""

    host: str
    interface: str
    raw: str
    how: str

    @property
    def reply(self) -> dict:
        """The reply parsed (:func:`vpnedu.uapi.parse_get`): interface keys, peers, errno."""
        return uapi.parse_get(self.raw)

    def peer(self, key: str) -> dict | None:
        """The reply's lines about the peer whose public key is ``key`` (base64, as wg shows it)."""
        return next((p for p in self.reply["peers"] if hex_to_base64(p["public_key"]) == key), None)

    def lines(self) -> list[str]:
        """The reply's lines as sent (the empty last line left out), the private key hidden."""
        out = []
        for line in self.raw.split("\n"):
            key, _, value = line.partition("=")
            if key in uapi.SECRET_KEYS and value.strip("0"):
                line = f"{key}=(64 hex digits: hidden here, as wg show hides it)"
            if line:
                out.append(line)
        return out

    def __str__(self) -> str:
        return "\n".join([self.how, *self.lines()])


#: strerror(N) -> N, to read an errno back from wg's message ("Unable to modify interface: Invalid
#: argument"): wg prints the errno of the daemon's reply as its text.
_STRERRORS = {os.strerror(n): n for n in range(1, 134)}


def errno_of_message(text: str) -> int | None:
    """The errno whose strerror() ends ``text`` (what ``wg`` prints when a daemon said errno=-N)."""
    for line in reversed(text.strip().splitlines()):
        for msg, n in _STRERRORS.items():
            if line.rstrip().endswith(": " + msg):
                return n
    return None


def config_changes(before: dict, after: dict) -> list[str]:
    """What differs in the *configuration* between two parsed ``get=1`` replies (not the
    counters or handshake times, which move by themselves): one sentence each, keys in base64,
    secret keys only said to have changed."""
    out = []
    a, b = before["interface"], after["interface"]
    if a.get("private_key") != b.get("private_key"):
        out.append("the interface's private key changed")
    for k in ("listen_port", "fwmark"):
        if a.get(k, "0") != b.get(k, "0"):
            out.append(f"{k}: {a.get(k, '0')} -> {b.get(k, '0')}")
    old = {p["public_key"]: p for p in before["peers"]}
    new = {p["public_key"]: p for p in after["peers"]}
    for key in old.keys() - new.keys():
        out.append(f"peer {hex_to_base64(key)} removed")
    for key in new.keys() - old.keys():
        out.append(f"peer {hex_to_base64(key)} added, allowed ips {', '.join(new[key]['allowed_ip']) or '(none)'}")
    for key in old.keys() & new.keys():
        p, q = old[key], new[key]
        name = f"peer {hex_to_base64(key)}"
        if p.get("preshared_key") != q.get("preshared_key"):
            out.append(f"{name}: its preshared key changed")
        for k in ("endpoint", "persistent_keepalive_interval"):
            if p.get(k) != q.get(k):
                out.append(f"{name}: {k} {p.get(k, '(none)')} -> {q.get(k, '(none)')}")
        if sorted(p["allowed_ip"]) != sorted(q["allowed_ip"]):
            out.append(f"{name}: allowed_ip {', '.join(p['allowed_ip']) or '(none)'} -> "
                       f"{', '.join(q['allowed_ip']) or '(none)'}")
    return sorted(out)


#: What the leak test tries while the server is down, as (label, destination, bound to eth0):
#: a ping that follows the routing (into the tunnel: the routing already keeps it in), and two
#: that a program bound to the LAN interface sends (``ping -I eth0``, SO_BINDTODEVICE, as WebRTC
#: and some apps do): routing cannot stop those, only a firewall can.
LEAK_ATTEMPTS = (("ping 192.0.2.80 (routed: into the tunnel)", "192.0.2.80", False),
                 ("ping -I eth0 192.0.2.80 (bound to the LAN)", "192.0.2.80", True),
                 ("ping -I eth0 2001:db8:a::80 (bound to the LAN)", "2001:db8:a::80", True))


def write_kill_switch(path: Path, on: bool) -> None:
    """Set (or remove) ``KillSwitch = true`` in the client's config file at ``path``."""
    from .. import config
    cfg = config.load(path)
    cfg.interface.kill_switch = "on" if on else None
    config.save(cfg, path)


def leaked(sent: list[str], allowed) -> list[str]:
    """The packets of ``sent`` that ``allowed(packet)`` does not let pass."""
    return [p for p in sent if not allowed(p)]


@dataclass
class LeakTest:
    """Notebook 04's leak test: the server is stopped, the client keeps trying to send, and a
    capture of the client's outer link says what left it.  Allowed: the tunnel's own UDP to the
    server's endpoint (handshake attempts, encrypted data) and the link's housekeeping (ARP,
    neighbour discovery); anything else the client sent is a *leak* -- in the clear, under its
    own address, outside the tunnel."""

    kill_switch: bool
    #: (what was tried, how it went) for each of :data:`LEAK_ATTEMPTS`.
    attempts: list[tuple[str, str]]
    #: Every packet the client sent on its outer link during the test, described.
    sent: list[str]
    #: Those of ``sent`` that were not allowed.
    leaked: list[str]

    @property
    def ok(self) -> bool:
        return not self.leaked

    def __str__(self) -> str:
        lines = [f"leak test, KillSwitch = {'true' if self.kill_switch else 'false'}, the server stopped:"]
        lines += [f"  {what}: {how}" for what, how in self.attempts]
        if not self.leaked:
            lines.append("the client's outer link carried only the tunnel's own UDP (to the server) and the "
                         "link's housekeeping: 0 leaked")
        else:
            lines.append(f"the client's outer link: {len(self.leaked)} packet(s) leaked, in the clear:")
            # Without the echo identifier and sequence: they differ from one run to the next.
            lines += [f"  LEAK: {re.sub(r',? id[ =]?[0-9].*$', '', p)}" for p in self.leaked[:6]]
        return "\n".join(lines)


@dataclass
class WgSet:
    """A change sent to a daemon's configuration socket: how, what the daemon answered (its
    ``errno``: 0, or e.g. -22 for EINVAL), what changed in its ``get=1`` reply, and the
    ``config.set`` event it emitted (None when the change was refused: nothing changed)."""

    host: str
    interface: str
    how: str
    #: The ``set=1`` message, when it is known here (sent raw, or translated for the simulation).
    message: str | None
    errno: int
    changes: list[str]
    event: Event | None
    #: Why it failed, in a line (wg's own message, or the daemon's), or "".
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.errno == 0

    def __str__(self) -> str:
        lines = [self.how]
        if self.message is not None:
            lines += ["  " + line for line in self.message.rstrip("\n").split("\n")]
        if self.errno:
            name = uapi.ERRNO_NAMES.get(self.errno, "")
            lines.append(f"reply: errno=-{self.errno} ({name + ', ' if name else ''}{os.strerror(self.errno)}): "
                         "the whole message was refused")
            if self.problem:
                lines.append(f"  why: {self.problem}")
        else:
            lines.append("reply: errno=0 (done)")
        lines.append("changed:" + ("" if self.changes else " nothing"))
        for c in self.changes:
            lines += textwrap.wrap(c, 78, initial_indent="  - ", subsequent_indent="    ", break_long_words=False)
        if self.event is None:
            lines.append(f"{self.host} event: none (no config.set: nothing was applied)")
        else:
            lines += textwrap.wrap(f"{self.host} event: {self.event}", 78, subsequent_indent="  ",
                                   break_long_words=False)
        return "\n".join(lines)


#: The explicit proxies a tunnel peer may name (``vpnedu server`` runs them on its tunnel address
#: 10.0.0.1): via -> (heading, the proxy's address, curl's options to use it).  ``--socks5-hostname``
#: is socks5h: curl hands the proxy the URL's host as written, and the *server* resolves a name.
EXPLICIT_PROXIES = {
    "socks5": ("SOCKS5 (RFC 1928)", "10.0.0.1:1080", ("--socks5-hostname", "10.0.0.1:1080")),
    "http-connect": ("HTTP CONNECT (RFC 9110, 9.3.6)", "10.0.0.1:3128",
                     ("--proxytunnel", "-x", "http://10.0.0.1:3128")),
    "http": ("HTTP proxy, forwarded request", "10.0.0.1:3128", ("-x", "http://10.0.0.1:3128")),
}
#: The width of one proxy's column in :func:`side_by_side` (two of them, and a gap, in 78).
COLUMN = 37


def explicit_proxy_command(via: str, url: str) -> list[str]:
    """The curl command line that fetches ``url`` through the explicit proxy ``via``."""
    if via not in EXPLICIT_PROXIES:
        raise VpneduError(f"no explicit proxy {via!r}", f"use one of {', '.join(EXPLICIT_PROXIES)}")
    return ["curl", "-sS", "--max-time", "10", *EXPLICIT_PROXIES[via][2], url]


@dataclass
class ExplicitProxyFetch:
    """A page fetched from the client through one of the server's explicit proxies, and what
    three places saw of it: the proxy's flow table, the app server's log, and a capture of the
    client's outer link.  The URL carries a marker, to look for on the wire.

    In the simulation nothing is fetched (:attr:`note` says why and what the real lab shows):
    the simulated server has no sockets of its own for a proxy to listen on."""

    via: str
    #: The curl command line run on the client (one string, as typed).
    command: str
    marker: str
    #: What curl printed (the app's reply), or why it failed.
    outcome: str
    ok: bool
    #: The proxy's flow row(s) for the fetch, from its ``proxy.flow.opened``/``closed`` events.
    flows: list[FlowRow]
    #: The app server's log lines for the fetch (the source it saw comes first).
    app_log: list[str]
    #: The packets a capture of the client's outer link saw during the fetch (the link's own
    #: housekeeping, ARP and IPv6 neighbour discovery, left out).
    on_wire: list[str]
    #: Could the marker be read in that capture?  (None: nothing was captured.)
    marker_visible: bool | None
    #: The simulation's account of what it cannot run ("" in the real lab).
    note: str = ""
    #: The server's WireGuard endpoint, ``address:port``.
    endpoint: str = "203.0.113.2:51820"

    def tunnel_packets(self) -> list[str]:
        """The packets of :attr:`on_wire` that are the tunnel's UDP to or from the server's endpoint."""
        return [p for p in self.on_wire if p.startswith("UDP")
                and (p.endswith(f"-> {self.endpoint}") or p.startswith(f"UDP {self.endpoint} ->"))]

    @property
    def only_tunnel(self) -> bool:
        """The client's outer link carried nothing but the tunnel's UDP during the fetch."""
        return bool(self.on_wire) and len(self.tunnel_packets()) == len(self.on_wire)

    def sections(self) -> list[tuple[str, list[str]]]:
        """The result as (heading, lines) pairs, each line at most :data:`COLUMN` characters
        (addresses, ports and byte counts on lines of their own, so two runs break the same way)."""
        heading, address, _ = EXPLICIT_PROXIES.get(self.via, (self.via, "?", ()))
        out = [(heading, [f"{address}, proto {self.via}"]),
               ("the real lab's client runs:" if self.note else "the client ran:", self.command_lines())]
        if self.note:
            return out
        said = [piece for part in re.split(r"(?<=;) ", self.outcome) for piece in textwrap.wrap(part, COLUMN - 2)]
        out.append(("curl printed:", said or ["(nothing)"]))
        rows = []
        for f in self.flows:
            rows += [f"{f.proto} client {f.client}", f"  as {f.proxy}", f"  -> {f.destination}",
                     f"  {f.state}: up {f.bytes_up} B, down {f.bytes_down} B"]
        out.append(("the proxy's flow table:", rows or ["(no flow)"]))
        out.append(("the app server's log:", self.app_log or ["(no request)"]))
        tunnel = self.tunnel_packets()
        other = [p for p in self.on_wire if p not in tunnel]
        wire = [f"{len(tunnel)} WireGuard datagrams (UDP)", f"  to/from {self.endpoint},",
                "  and nothing else" if not other else f"  and {len(other)} other packet(s):"]
        wire += [f"  {p}" for p in other[:4]]
        out.append(("a capture of the client's outer link:", wire))
        return out

    def command_lines(self) -> list[str]:
        """:attr:`command` as a shell prompt shows it, broken for a column: ``$ curl -sS
        --max-time 10``, then each proxy option with its value, then the URL."""
        words = self.command.split()
        lines = ["$ " + " ".join(words[:4])]
        for w in words[4:-1]:
            if w.startswith("-") or len(lines) == 1:
                lines.append("  " + w)
            else:
                lines[-1] += " " + w
        return lines + ["  " + w for w in words[-1:]]

    def verdict(self) -> str:
        """One line: could the URL's marker be read on the client's link?"""
        return f"marker readable on the client's link: {self.marker_visible}"

    def __str__(self) -> str:
        lines = []
        for head, body in self.sections():
            lines += [head] + ["  " + b for b in body]
        lines += wrap_note(self.note) if self.note else [self.verdict()]
        return "\n".join(lines)


def wrap_note(note: str, width: int = 78) -> list[str]:
    """``note`` in lines of at most ``width`` characters, broken between words, paragraph by paragraph."""
    return [line for para in note.split("\n")
            for line in (textwrap.wrap(para, width, break_long_words=False, break_on_hyphens=False) or [""])]


def _fit(line: str, width: int) -> list[str]:
    """A line as it is, or (too long for its column) broken, the rest indented."""
    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 2)
    return textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def side_by_side(fetches: list[ExplicitProxyFetch], width: int = COLUMN, gap: int = 3) -> str:
    """Fetches in columns, section by section, so that what differs -- the command, the proto --
    stands out from what does not: the app's view and the wire's.  Under the columns, one verdict
    a fetch (is the marker readable on the client's link?), or the note the fetches share (the
    simulation's), once, in lines of 78."""
    columns = [f.sections() for f in fetches]
    lines = []
    for i in range(max((len(c) for c in columns), default=0)):
        cells = []
        for c in columns:
            head, body = c[i] if i < len(c) else ("", [])
            cells.append([piece for line in [head, *("  " + b for b in body)] for piece in _fit(line, width)])
        for row in range(max(len(cell) for cell in cells)):
            parts = [cell[row] if row < len(cell) else "" for cell in cells]
            lines.append((" " * gap).join(p.ljust(width) for p in parts).rstrip())
    notes = list(dict.fromkeys(f.note for f in fetches if f.note))
    verdicts = [f"{f.via}: {f.verdict()}" for f in fetches if not f.note]
    if verdicts:
        lines += ["", *verdicts]
    for n in notes:
        lines += [""] + wrap_note(n)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the interface
class CourseLab(Protocol):
    """The lab a notebook drives: four hosts (client, internet, server, app), the vpnedu server
    and client daemons on two of them, and ways to look at and poke the traffic.

    Methods raise :class:`~vpnedu.errors.VpneduError` (one line: the problem and the fix) for a
    call that cannot be done now, e.g. ``start_client()`` before ``start_server()``.
    """

    #: "real" or "sim".
    mode: str
    #: The cipher suite the daemons are provisioned with.
    suite: str
    #: The two daemons' events (the same kinds in both modes; the real lab relays them).
    client_events: EventBus
    server_events: EventBus

    @property
    def banner(self) -> str:
        """What this lab is, in a sentence or two (the notebook prints it first)."""
        ...

    @property
    def dir(self) -> Path:
        """The folder holding the lab's configs (``server.conf``, ``client.conf``) and logs."""
        ...

    # ------------------------------------------------------------------ life cycle
    def up(self) -> "CourseLab":
        """Create the hosts if need be; returns the lab."""
        ...

    def down(self) -> None:
        """Stop the daemons (and, real, delete the namespaces)."""
        ...

    def exists(self) -> bool:
        ...

    def provision(self, suite: str | None = None, split: bool = False) -> None:
        """``vpnedu server init`` + ``vpnedu server add-client client`` into :attr:`dir`."""
        ...

    def start_server(self, suite: str | None = None, forwarding: str = "nat") -> dict:
        """Start the server (provisioning first if need be); its status once it runs."""
        ...

    def start_client(self, split: bool = False, timeout: float | None = None) -> dict:
        """Start the client; its status once its handshake is done (an error after ``timeout``
        seconds without one; ``None``: the lab's own default)."""
        ...

    def stop_client(self) -> None:
        ...

    def stop_server(self) -> None:
        ...

    def restart(self, suite: str | None = None, split: bool = False) -> dict:
        """Stop both, provision again (another suite, a split tunnel), start both."""
        ...

    # ------------------------------------------------------------------ looking
    def status(self, host: str) -> dict:
        """The daemon's status on ``host`` ("server" or "client"), as ``vpnedu status --json``."""
        ...

    def routes(self, host: str = "client", family: int = 4) -> list[str]:
        """The host's main routing table, one ``ip route`` line each (``family=6``: ``ip -6 route``)."""
        ...

    def addresses(self, host: str) -> dict[str, list[str]]:
        """The host's IPv4 addresses by interface, as ``"10.0.0.2/24"``."""
        ...

    def app_log(self) -> list[str]:
        """The app server's log, one request a line, the asker's address first."""
        ...

    def flows(self) -> list[FlowRow]:
        """The server's flow table (its NAT's conntrack, or its proxy's flows)."""
        ...

    # ------------------------------------------------------------------ doing
    def ping(self, host: str, destination: str, count: int = 3) -> PingResult:
        ...

    def app_request(self, marker: str | None = None, family: int = 4) -> AppResult:
        """The client asks the app server something through the VPN (over IPv6 to its IPv6
        address with ``family=6``); who did the app see?"""
        ...

    def marker_on_wire(self, marker: str | None = None) -> MarkerOnWire:
        ...

    def tamper_next(self) -> Event | None:
        """Alter one data packet from client to server; the server's ``packet.dropped`` event."""
        ...

    def replay(self) -> Event | None:
        """Send the server a data packet a second time; the server's ``packet.dropped`` event."""
        ...

    def tun_demo(self, name: str = "tun-demo") -> TunReading:
        """Create a TUN device on the client, ping an address routed into it, read the packet."""
        ...

    def traffic(self, kind: str = "vpnedu", seconds: float = 4.0, interval: float = 0.5
                ) -> Iterator[TrafficSample]:
        """Traffic from the client for ``seconds``, a sample every ``interval``: through the
        tunnel ("vpnedu"), or, with the daemons stopped, over the plain link ("plain")."""
        ...

    # ------------------------------------------------------------------ WireGuard's own tool
    def wg_show(self, host: str = "server") -> WgShow:
        """``wg show`` on the daemon's interface on ``host`` (real: the real ``wg``; simulated:
        vpnedu's rendering of the same ``get=1`` reply, labelled so)."""
        ...

    def wg_get(self, host: str = "server") -> WgGet:
        """The raw ``get=1`` reply of the daemon on ``host``: the text ``wg show`` reads."""
        ...

    def wg_set(self, host: str, *args: str) -> WgSet:
        """``wg set IFNAME ARGS...`` on the daemon on ``host`` (real: the real ``wg``; simulated:
        the ``set=1`` message those arguments become, :func:`vpnedu.uapi.wg_set_message`)."""
        ...

    def leak_test(self, kill_switch: bool = True) -> LeakTest:
        """Start the client (``KillSwitch = true`` or not), stop the server, try
        :data:`LEAK_ATTEMPTS` while the client's outer link is captured; then stop the client,
        put its config back and start the server again (the client is left stopped)."""
        ...

    def explicit_proxy_fetch(self, via: str = "socks5") -> ExplicitProxyFetch:
        """The client fetches a page from the app server through the server's explicit proxy
        ``via`` (a key of :data:`EXPLICIT_PROXIES`: "socks5", "http-connect", "http") with curl,
        while its outer link is captured; the proxy's flow row(s), the app's log line, the wire.
        Starts the server and the client if they are not running (the simulation: nothing is
        fetched; the result's note says what the real lab shows)."""
        ...

    def wg_send(self, host: str, message: str) -> WgSet:
        """One raw message (``set=1`` ... and an empty line) on the daemon's configuration socket,
        as ``wg`` would write it: to see a refused one's ``errno`` and that it changed nothing."""
        ...
