"""The course's lab, real or simulated, behind one set of calls the notebooks use.

:func:`open_lab` picks the mode:

* **real** -- the namespace lab (:class:`vpnedu.lab.topology.Lab`): four network
  namespaces, real TUN devices, the real ``vpnedu server`` and ``vpnedu client``
  daemons, watched through their control sockets.  Needs root.
* **sim** -- :class:`vpnedu.sim.lab.SimLab`: the same hosts and addresses,
  the same daemon classes and protocol code, on a simulated network.  No root.

``mode=None`` (the default) reads ``VPNEDU_MODE`` (``sim``, ``real`` or
``auto``) and, on ``auto``, takes the real lab when it can (root, ``ip``,
``/dev/net/tun``) and the simulation otherwise.  Either way it prints a banner
saying which mode runs.

Everything here is also a command: ``vpnedu course tun``, ``vpnedu course attack``
(and ``vpnedu lab``, ``vpnedu status``, ``vpnedu events`` for the rest).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import report
from .errors import VpneduError
from .events import Event, EventBus, EventLog
from .flows import FlowRow
from .packet import ip as _ip

MODES = ("auto", "sim", "real")


# ---------------------------------------------------------------------------- choosing a mode
def real_lab_possible() -> tuple[bool, str]:
    """Can this process run the namespace lab?  (yes/no, and why not)."""
    if os.geteuid() != 0:
        return False, "not root, and the real lab needs root to create network namespaces and TUN devices"
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return False, "'ip' (iproute2) is not installed"
    return True, ""


def choose_mode(mode: str | None = None) -> tuple[str, str]:
    """The mode to run (``sim`` or ``real``) and a sentence saying why."""
    mode = (mode or os.environ.get("VPNEDU_MODE") or "auto").strip().lower()
    if mode not in MODES:
        raise VpneduError(f"unknown course mode {mode!r}", "use 'sim', 'real' or 'auto' (VPNEDU_MODE or MODE)")
    ok, why = real_lab_possible()
    if mode == "real":
        if not ok:
            raise VpneduError(f"the real lab cannot run here: {why}", "run as root, or use MODE = 'sim'")
        return "real", "asked for the real lab"
    if mode == "sim":
        return "sim", "asked for the simulation"
    return ("real", "root and /dev/net/tun are available") if ok else ("sim", why)


#: Width of the banner and of the course's own notes.  A notebook's output area breaks a
#: longer line anywhere, even in the middle of a word, so the course wraps its text itself.
WIDTH = 78


def wrap(text: str, width: int = WIDTH) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken between words only (never
    inside a namespace name such as ``course-client``)."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def open_lab(mode: str | None = None, *, prefix: str | None = None, suite: str = "wireguard",
             out: Callable[[str], None] = print):
    """The lab for this notebook, with a banner saying which mode runs and why."""
    chosen, why = choose_mode(mode)
    if chosen == "real":
        lab = RealLab(prefix=prefix or os.environ.get("VPNEDU_LAB_PREFIX") or "course-", suite=suite, out=out)
    else:
        from .sim.lab import SimLab
        lab = SimLab(suite=suite)
    show_warnings_in_one_line()
    out("=" * WIDTH)
    for line in wrap(f"vpnedu course lab: {chosen.upper()} MODE -- {why}") + wrap(lab.banner):
        out(line)
    out("=" * WIDTH)
    return lab.up()


def show_warnings_in_one_line() -> None:
    """Show vpnedu's warnings (choosing the ``null-teaching`` suite) as the command line does:
    ``vpnedu: WARNING: ...``, wrapped between words -- not Python's default, which adds the file
    path and source line of the code that warned.  Other warnings are left as they are."""
    from .protocol.suites import InsecureSuiteWarning
    previous = warnings.showwarning
    if getattr(previous, "vpnedu_one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, InsecureSuiteWarning):
            return previous(message, category, filename, lineno, file, line)
        print("\n".join(wrap(f"vpnedu: WARNING: {message}")), file=file or sys.stderr)

    show.vpnedu_one_line = True
    warnings.showwarning = show


# ---------------------------------------------------------------------------- shared results
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
        """(bytes, field, value) rows: the IPv4 header, then the ICMP header."""
        p = self.raw
        rows = [("0", "version / IHL", f"{p[0] >> 4} / {(p[0] & 15) * 4} bytes"),
                ("2-3", "total length", str(struct.unpack_from("!H", p, 2)[0])),
                ("8", "TTL", str(p[8])),
                ("9", "protocol", f"{p[9]} ({_ip.PROTO_NAMES.get(p[9], '?')})"),
                ("10-11", "header checksum", f"{struct.unpack_from('!H', p, 10)[0]:#06x}"),
                ("12-15", "source", ".".join(map(str, p[12:16]))),
                ("16-19", "destination", ".".join(map(str, p[16:20])))]
        ihl = (p[0] & 15) * 4
        if p[9] == _ip.PROTO_ICMP and len(p) >= ihl + 8:
            t, c, _, ident, seq = struct.unpack_from("!BBHHH", p, ihl)
            rows += [(f"{ihl}", "ICMP type", f"{t} ({ {8: 'echo request', 0: 'echo reply'}.get(t, '?') })"),
                     (f"{ihl + 4}-{ihl + 5}", "ICMP identifier", str(ident)),
                     (f"{ihl + 6}-{ihl + 7}", "ICMP sequence", str(seq)),
                     (f"{ihl + 8}-", "payload", repr(p[ihl + 8:ihl + 40]))]
        return rows

    def __str__(self) -> str:
        lines = [f"read {len(self.raw)} bytes from TUN device {self.device} ({self.mode}): {_ip.describe(self.raw)}",
                 "hex: " + self.raw.hex(" ")]
        lines += [f"  {b:>6}  {f:<16} {v}" for b, f, v in self.fields]
        return "\n".join(lines)


def compare_suites(packets: int = 2000, size: int = 1400) -> list[dict]:
    """Encrypt and decrypt ``packets`` packets with each cipher suite, in this process: how fast,
    and how big the overhead.  (The AEAD is the only thing that differs between them.)"""
    import warnings
    from .protocol.suites import SUITES
    from .sim import make_pair
    rows = []
    payload = _ip.build_udp("10.0.0.2", 40000, "10.0.0.1", 9, bytes(size - 28))
    for name, suite in SUITES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair = make_pair(name, allow_insecure=suite.insecure)
        pair.handshake()
        start = time.perf_counter()
        wire = 0
        for _ in range(packets):
            out = pair.client.send_packet(payload, pair.now)
            for data, ep in out:
                wire += len(data)
                pair.server.receive(data, pair.client_ep, pair.now)
        secs = time.perf_counter() - start
        rows.append({"suite": name, "construction": suite.construction.decode(), "encrypts": not suite.insecure,
                     "MB/s": round(packets * size / secs / 1e6, 1),
                     "overhead bytes": wire // packets - len(payload)})
    return rows


# ---------------------------------------------------------------------------- the real lab
def _ping_result(dst: str, r: subprocess.CompletedProcess, src: str = ""):
    import re
    from .sim.lab import PingResult
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return PingResult(sent, got, dst, src)


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
        from .events import CATALOGUE, PER_PACKET
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
        from .node import control
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


class RealLab:
    """The course lab in network namespaces with the real daemons (root)."""

    mode = "real"

    def __init__(self, prefix: str = "course-", suite: str = "wireguard",
                 out: Callable[[str], None] = print):
        from .lab.topology import Lab
        self.lab = Lab(prefix=prefix, log=lambda s: None)
        self.suite = suite
        self.out = out
        self.client_events = EventBus()
        self.server_events = EventBus()
        self.procs: dict[str, subprocess.Popen] = {}
        self._feeds: dict[str, DaemonFeed] = {}
        self.split = False
        self.forwarding = "nat"

    @property
    def banner(self) -> str:
        return (f"REAL MODE: network namespaces {self.lab.ns('client')}, {self.lab.ns('internet')}, "
                f"{self.lab.ns('server')}, {self.lab.ns('app')} with real TUN devices, routes and NAT; "
                "the vpnedu daemons run as processes (see them with 'ip netns exec ... vpnedu status').")

    @property
    def dir(self) -> Path:
        return self.lab.dir

    def up(self) -> "RealLab":
        if not self.lab.exists():
            self.lab.up()
        return self

    def down(self) -> None:
        """Stop the daemons and delete the namespaces."""
        self.stop_client()
        self.stop_server()
        self.lab.down()

    def exists(self) -> bool:
        return self.lab.exists()

    # ------------------------------------------------------------------ daemons
    def _vpnedu(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vpnedu", *args]

    def socket_path(self, host: str) -> Path:
        """The daemon's control socket: /run/vpnedu/vpnedu0@<its network namespace's inode>.sock."""
        from .node.control import netns_socket_path
        return netns_socket_path(self.lab.ns(host))

    def provision(self, suite: str | None = None, split: bool = False) -> None:
        self.suite = suite or self.suite
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "client.conf").unlink(missing_ok=True)
        from .lab.topology import SERVER_PUBLIC
        for args in (("server", "init", "-c", f"{d}/server.conf", "--endpoint", SERVER_PUBLIC,
                      "--suite", self.suite, "--force"),
                     ("server", "add-client", "client", "-c", f"{d}/server.conf", *(["--split"] if split else []))):
            r = subprocess.run(self._vpnedu(*args), capture_output=True, text=True)
            if r.returncode:
                raise VpneduError(f"vpnedu {' '.join(args[:2])} failed: {r.stderr.strip()}")
        self.split = split

    def _start(self, host: str, *args: str, timeout: float = 20) -> dict:
        """Start a daemon; return once it answers on its control socket and its events flow here.

        Ready means a status request was answered (:func:`vpnedu.node.control.wait_ready`), not
        that a socket file exists: the file can be one a killed daemon left behind.  Only then does
        the event feed connect, asking for the history so it misses nothing of the start."""
        from .node import control
        running = self.procs.get(host)
        if running is not None and running.poll() is None:
            raise VpneduError(f"the vpnedu {host} is already running (pid {running.pid})",
                              f"stop it first: lab.stop_{host}()")
        extra = ["--allow-null-teaching"] if self.suite == "null-teaching" else []
        path = self.socket_path(host)
        proc = self.procs[host] = self.lab.spawn(host, f"vpn-{host}", *self._vpnedu(*args, *extra))
        try:
            # 'ip netns exec' execs the daemon: its pid is the one that must answer.
            st = control.wait_ready(path, proc, self.dir / f"vpn-{host}.log", timeout=timeout,
                                    what=f"the vpnedu {host}", pid=proc.pid)
            bus = self.server_events if host == "server" else self.client_events
            feed = self._feeds[host] = DaemonFeed(path, bus, name=host)
            bus.feed = feed   # the widgets read it to say when the feed cannot reach the daemon
            if not feed.wait_connected(timeout):
                raise VpneduError(f"the vpnedu {host} answers, but its event stream does not: {feed.problem}",
                                  f"start it again: lab.start_{host}()")
        except BaseException:
            self._stop(host)   # nothing half-started stays behind
            raise
        return st

    def start_server(self, suite: str | None = None, forwarding: str = "nat") -> dict:
        if suite is not None or not (self.dir / "server.conf").exists():
            self.provision(suite)
        st = self._start("server", "server", "-c", f"{self.dir}/server.conf", "--forwarding", forwarding)
        self.forwarding = forwarding
        return st

    def start_client(self, split: bool = False, timeout: float = 20) -> dict:
        if split != self.split:
            self.stop_server()
            self.provision(self.suite, split=split)
            self.start_server()
        server = self._feeds.get("server")
        seen = {k: server.count(k) if server else 0 for k in ("session.established", "session.confirmed")}
        st = self._start("client", "client", "-c", f"{self.dir}/client.conf", timeout=timeout)
        end = time.time() + timeout
        while not st["peers"][0].get("latest_handshake"):
            if time.time() > end or self.procs["client"].poll() is not None:
                from .node.control import log_tail
                raise VpneduError("the client did not complete a handshake within "
                                  f"{timeout:g} s; its log ends with:{log_tail(self.dir / 'vpn-client.log')}")
            time.sleep(0.05)
            try:
                st = self.status("client")
            except VpneduError:
                pass
        # The handshake happened; wait until both daemons' accounts of it reached this process, so
        # the ladder and the event log drawn next are complete and the same on every run (events
        # cross a socket and a thread: they come a little after the status says "done").  The
        # last of them is the server's session.confirmed: the client's first data (its keepalive)
        # arrived under the new keys, the responder's proof that the initiator has them too.
        for host, kind, before in (("client", "session.established", 0),
                                   ("server", "session.established", seen["session.established"]),
                                   ("server", "session.confirmed", seen["session.confirmed"])):
            feed = self._feeds.get(host)
            if feed is not None and not feed.wait_for(kind, before, timeout=5):
                self.out(f"note: the {host}'s {kind} event has not arrived"
                         + (f": {feed.notice()}" if feed.notice() else " (yet)"))
        return st

    def _stop(self, host: str) -> None:
        feed = self._feeds.pop(host, None)
        if feed is not None:
            feed.close()
        p = self.procs.pop(host, None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop_client(self) -> None:
        self._stop("client")

    def stop_server(self) -> None:
        self._stop("server")

    def restart(self, suite: str | None = None, split: bool = False) -> dict:
        self.stop_client()
        self.stop_server()
        self.provision(suite, split=split)
        self.start_server()
        return self.start_client(split=split)

    # ------------------------------------------------------------------ looking
    def status(self, host: str) -> dict:
        from .node import control
        return control.request(self.socket_path(host), {"cmd": "status"})

    def routes(self, host: str = "client") -> list[str]:
        r = self.lab.run(host, "ip", "route")
        return [line.strip() for line in r.stdout.splitlines() if line.strip()]

    def addresses(self, host: str) -> dict[str, list[str]]:
        r = self.lab.run(host, "ip", "-j", "addr")
        return {i["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in i.get("addr_info", []) if a["family"] == "inet"]
                for i in json.loads(r.stdout or "[]") if i["ifname"] != "lo"}

    def app_log(self) -> list[str]:
        return self.lab.app_log()

    def flows(self) -> list[FlowRow]:
        """The server's flow table, as the daemon reports it: its proxy's flows, or with NAT the
        kernel's connection tracking for tunnel clients (:func:`vpnedu.net.conntrack.flows`)."""
        if "server" not in self.procs:
            raise VpneduError("the vpnedu server is not running, so it keeps no flows", "lab.start_server() first")
        st = self.status("server")
        if st.get("flows_error"):
            raise VpneduError(f"the server cannot read the kernel's conntrack table: {st['flows_error']}")
        return [FlowRow.from_dict(d) for d in st.get("flows", [])]

    # ------------------------------------------------------------------ doing
    def ping(self, host: str, destination: str, count: int = 3):
        r = self.lab.run(host, "ping", "-c", str(count), "-i", "0.2", "-W", "2", destination, timeout=30)
        src = self.lab.run(host, "ip", "-o", "route", "get", destination).stdout.split(" src ")
        return _ping_result(destination, r, src[1].split()[0] if len(src) > 1 else "")

    def app_request(self, marker: str | None = None):
        from .lab.topology import APP_ADDRESS, APP_PORT
        from .sim.lab import AppResult
        marker = marker or "vpnedu-marker-" + secrets.token_hex(4)
        feed = self._feeds.get("server") if self.forwarding == "proxy" else None
        closed = feed.count("proxy.flow.closed") if feed else 0
        r = self.lab.run("client", sys.executable, "-m", "vpnedu.lab.app", "fetch",
                         f"http://{APP_ADDRESS}:{APP_PORT}/{marker}")
        if feed is not None and r.returncode == 0:
            # The proxy reports the flow's end a moment after the fetch finished, through the feed:
            # wait for it, so a flow table drawn next shows the flow (closed), not nothing.
            feed.wait_for("proxy.flow.closed", closed, timeout=5)
        sources = [line.split()[0] for line in self.app_log() if marker in line]
        return AppResult(r.stdout.strip() or r.stderr.strip(), sources)

    def marker_on_wire(self, marker: str | None = None) -> tuple[str, bool]:
        """Fetch a marker from the app while tcpdump records the client's link: is it readable there?"""
        from .lab.demo import Demo
        marker = marker or "vpnedu-marker-" + secrets.token_hex(4)
        demo = Demo(self.lab, out=lambda s: None)
        cap = demo.capture("client")
        try:
            self.app_request(marker)
            time.sleep(0.3)
        finally:
            path = demo.stop_capture("client", cap)
        return marker, marker.encode() in path.read_bytes()

    def _attack(self, mode: str) -> Event | None:
        from .lab.topology import SERVER_PUBLIC
        log = EventLog(self.server_events, kinds="packet.dropped")
        try:
            p = subprocess.Popen(["ip", "netns", "exec", self.lab.ns("client"),
                                  *self._vpnedu("course", "attack", mode, "--server", f"{SERVER_PUBLIC}:51820")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            end = time.time() + 15
            while p.poll() is None and time.time() < end:  # traffic until the attacker caught a packet
                self.lab.run("client", "ping", "-c", "1", "-W", "1", "10.0.0.1")
                time.sleep(0.1)
            out, err = p.communicate(timeout=15)
            if p.returncode:
                raise VpneduError(f"the attacker failed: {err.strip()}")
            end = time.time() + 5
            while not log.events and time.time() < end:
                time.sleep(0.05)
        finally:
            log.close()
        return log.events[0] if log.events else None

    def tamper_next(self) -> Event | None:
        """Alter a captured data packet (counter and one ciphertext byte) and send it to the server."""
        return self._attack("tamper")

    def replay(self) -> Event | None:
        """Send a captured data packet to the server a second time."""
        return self._attack("replay")

    def tun_demo(self, name: str = "tun-demo") -> TunReading:
        r = self.lab.run("client", *self._vpnedu("course", "tun", "--name", name, "--json"), timeout=30)
        if r.returncode:
            raise VpneduError(f"vpnedu course tun failed: {r.stderr.strip()}")
        d = json.loads(r.stdout)
        return TunReading.from_packet(d["device"], bytes.fromhex(d["raw"]), "real TUN device")

    def _link_bytes(self, host: str = "client", dev: str = "eth0") -> tuple[int, int]:
        r = self.lab.run(host, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes",
                         f"/sys/class/net/{dev}/statistics/rx_bytes")
        tx, rx = (int(x) for x in r.stdout.split())
        return tx, rx

    def traffic(self, kind: str = "vpnedu", seconds: float = 4.0, interval: float = 0.5
                ) -> Iterator[tuple[float, int, int]]:
        """iperf3 both ways (``--bidir``) from the client for ``seconds``; yield ``(t, up, down)``
        cumulative bytes on the client's outer link every ``interval``.

        ``kind``: "vpnedu" (start the client first) and "wireguard-go" (the daemons must be
        stopped; wireguard-go on both ends) send to the server's tunnel address 10.0.0.1,
        "plain" to its public address.
        """
        from .lab.topology import SERVER_PUBLIC
        from .lab.wireguard_go import WireGuardGo
        wg = []
        if kind == "vpnedu":
            if "client" not in self.procs:
                raise VpneduError("the tunnel is not up", "start the client first: lab.start_client()")
            target = "10.0.0.1"
        elif kind == "plain":
            if "client" in self.procs:
                raise VpneduError("the tunnel is up, so traffic would go through it", "lab.stop_client() first")
            target = SERVER_PUBLIC
        elif kind == "wireguard-go":
            if self.procs:
                raise VpneduError("vpnedu daemons are running", "lab.stop_client() and lab.stop_server() first")
            if not (self.dir / "client.conf").exists():
                self.provision(self.suite)
            # Different names: wireguard-go's control sockets (/var/run/wireguard/NAME.sock) are
            # shared by all namespaces.
            wg = [WireGuardGo(self.lab, "server", self.dir / "server.conf", ifname="wg-srv").up(),
                  WireGuardGo(self.lab, "client", self.dir / "client.conf", ifname="wg-cli").up()]
            target = "10.0.0.1"
        else:
            raise VpneduError(f"unknown link {kind!r}", "use 'vpnedu', 'wireguard-go' or 'plain'")
        iperf = shutil.which("iperf3")
        if iperf is None:
            raise VpneduError("'iperf3' is not installed", "install it: apt-get install iperf3")
        srv = self.lab.spawn("server", "iperf3-server", iperf, "-s", "-1", "-B", target)
        try:
            end = time.time() + 10
            while not self.lab.run("server", "ss", "-Htln", "sport = :5201").stdout.strip():
                if time.time() > end:
                    raise VpneduError("iperf3 server did not start")
                time.sleep(0.05)
            base = self._link_bytes()
            start = time.monotonic()
            cli = subprocess.Popen(["ip", "netns", "exec", self.lab.ns("client"), iperf, "-c", target,
                                    "-t", str(seconds), "--bidir"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            yield 0.0, 0, 0
            nxt = start + interval
            while True:
                time.sleep(max(0.0, nxt - time.monotonic()))
                nxt += interval
                tx, rx = self._link_bytes()
                t = time.monotonic() - start
                yield t, tx - base[0], rx - base[1]
                if cli.poll() is not None or t > seconds + 5:
                    break
            cli.wait(10)
        finally:
            if srv.poll() is None:
                srv.terminate()
            srv.wait(5)
            for w in wg:
                w.down()


# ---------------------------------------------------------------------------- helpers run inside a namespace
def read_one_packet_from_tun(name: str = "tun-demo", address: str = "10.99.0.1/24",
                             target: str = "10.99.0.2", timeout: float = 5.0) -> bytes:
    """Create a TUN device, ping an address routed into it, and read the ping back from it.

    The kernel routes 10.99.0.2 to the device (it is in the device's subnet), so the echo
    request the kernel builds for ``ping`` comes out of our file descriptor, byte for byte.
    """
    import select
    from .net.tun import Tun
    tun = Tun(name)
    pinger = None
    try:
        for cmd in (["ip", "addr", "add", address, "dev", tun.name], ["ip", "link", "set", tun.name, "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        pinger = subprocess.Popen(["ping", "-c", "3", "-i", "0.2", "-W", "1", target],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + timeout
        while time.time() < end:
            r, _, _ = select.select([tun.fileno()], [], [], 0.2)
            if not r:
                continue
            pkt = tun.read()
            if pkt and pkt[0] >> 4 == 4 and pkt[9] == _ip.PROTO_ICMP:
                return pkt
        raise VpneduError(f"no ping to {target} came out of {tun.name} within {timeout:g} s")
    finally:
        if pinger is not None:
            pinger.kill()
            pinger.wait()
        tun.close()


def attack(mode: str, server: tuple[str, int], timeout: float = 10.0) -> dict:
    """Wait for one transport-data datagram leaving for ``server`` on this host, then send the
    server a copy: unchanged (``replay``) or with its counter moved on and one ciphertext bit
    flipped (``tamper``: the AEAD tag no longer matches).  Needs root (a packet socket)."""
    import socket
    ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
    # Only ETH_P_ALL sockets see outgoing packets (the kernel's transmit tap); keep the IPv4 ones.
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sniff.settimeout(0.5)
    end = time.time() + timeout
    try:
        while time.time() < end:
            try:
                frame, addr = sniff.recvfrom(65536)
            except socket.timeout:
                continue
            if (addr[1] != ETH_P_IP or addr[2] != socket.PACKET_OUTGOING or len(frame) < 28
                    or frame[9] != _ip.PROTO_UDP):
                continue
            p = _ip.IPv4Packet.parse(frame)
            dport = struct.unpack_from("!H", p.payload, 2)[0]
            data = p.payload[8:]
            if str(p.dst) != server[0] or dport != server[1] or len(data) <= 32 or data[0] != 4:
                continue
            counter = struct.unpack_from("<Q", data, 8)[0]
            if mode == "tamper":
                d = bytearray(data)
                d[8:16] = struct.pack("<Q", counter + 100_000)
                d[-1] ^= 0x01
                data = bytes(d)
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out.sendto(data, server)
            out.close()
            return {"mode": mode, "counter": counter, "size": len(data)}
        raise VpneduError(f"no data packet to {server[0]}:{server[1]} seen in {timeout:g} s",
                          "is the client running, and is there traffic (ping 10.0.0.1)?")
    finally:
        sniff.close()


# ---------------------------------------------------------------------------- `vpnedu course ...`
import click  # noqa: E402


@click.group("course")
def course_cli() -> None:
    """What the course notebooks show, as commands (the simulated lab needs no root)."""


@course_cli.command("tun")
@click.option("--name", default="tun-demo", show_default=True, help="Name of the TUN device to create.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (device and raw hex).")
@click.option("--sim", is_flag=True, help="Use a simulated host's in-memory TUN device (no root).")
def course_tun(name: str, as_json: bool, sim: bool) -> None:
    """Create a TUN device, ping an address routed into it, read the raw packet and decode it
    (notebook 01).  Without --sim: needs root, run it in a lab namespace
    ('ip netns exec vpnedu-client vpnedu course tun')."""
    if sim:
        from .sim.lab import SimLab
        reading = SimLab().tun_demo(name)
    else:
        reading = TunReading.from_packet(name, read_one_packet_from_tun(name), "real TUN device")
    if as_json:
        click.echo(json.dumps({"device": reading.device, "raw": reading.raw.hex(), "mode": reading.mode}))
    else:
        click.echo(str(reading))


@course_cli.command("attack")
@click.argument("mode", type=click.Choice(["tamper", "replay"]))
@click.option("--server", required=True, help="HOST:PORT of the VPN server.")
@click.option("--timeout", default=10.0, show_default=True)
def course_attack(mode: str, server: str, timeout: float) -> None:
    """Wait for one data packet to the server, then send it a tampered or replayed copy
    (notebook 03; root: a packet socket).  Watch the server's
    'vpnedu events --kind packet.dropped': reason bad-mac, or replay."""
    from .config import parse_endpoint
    click.echo(json.dumps(attack(mode, parse_endpoint(server), timeout)))


@course_cli.command("suites")
@click.option("--packets", default=2000, show_default=True)
def course_suites(packets: int) -> None:
    """Compare the cipher suites: speed of the AEAD in this process, and bytes of overhead (notebook 03)."""
    for row in compare_suites(packets):
        click.echo(f"{row['suite']:<14} {row['MB/s']:>7} MB/s  overhead {row['overhead bytes']} bytes  "
                   f"{'encrypts' if row['encrypts'] else 'DOES NOT ENCRYPT'}  {row['construction']}")


@course_cli.command("sim")
@click.option("--suite", default="wireguard", show_default=True,
              type=click.Choice(["wireguard", "aes256gcm", "null-teaching"]))
@click.option("--split", is_flag=True, help="Split tunnel: only 10.0.0.0/24 through the VPN.")
def course_sim(suite: str, split: bool) -> None:
    """The whole course on the simulated network (no root): handshake, routes, pings, the
    app server's view, the NAT flow table, a tampered and a replayed packet, the journey of one
    packet, and throughput."""
    from .sim.lab import SimLab
    lab = SimLab(suite=suite)
    click.echo(lab.banner)
    before = lab.routes("client")
    lab.start_server()
    ladder = EventLog(lab.client_events, kinds=["handshake", "session"])
    lab.start_client(split=split)
    click.echo("\nhandshake (client's events):")
    for ev in ladder.events:
        click.echo(f"  {ev}")
    after = lab.routes("client")
    click.echo("\nclient routes:")
    for r in sorted(set(before) | set(after), key=(before + after).index):
        click.echo(("  - " if r not in after else "  + " if r not in before else "    ") + r)
    for dst in ("10.0.0.1", "192.0.2.80"):
        click.echo(str(lab.ping("client", dst)))
    click.echo(str(lab.app_request()))
    click.echo("\nflow table (server's NAT):")
    for line in report.flow_table(lab.flows()):
        click.echo(line)
    click.echo(f"\ntampered packet: {lab.tamper_next()}")
    click.echo(f"replayed packet: {lab.replay()}")
    mark = lab.last_hop()
    lab.ping("client", "192.0.2.80", count=1)
    click.echo("\nthe journey of one ping:")
    for hop in lab.trace(mark):
        click.echo(f"  {hop}")
    last = list(lab.traffic("vpnedu", seconds=2))[-1]
    click.echo(f"\nthroughput through the simulated tunnel: {last[1] * 8 / last[0] / 1e6:.1f} Mbit/s up, "
               f"{last[2] * 8 / last[0] / 1e6:.1f} Mbit/s down")
    lab.down()
