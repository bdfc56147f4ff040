"""The course lab simulated: client, internet, VPN server and app server in one process.

:class:`SimLab` is a :class:`~vpnedu.course.interface.CourseLab` on the simulation engine
(:mod:`vpnedu.sim`): the same four hosts and the same addresses as the real namespace lab
(:mod:`vpnedu.sim.topology`), and on them the real vpnedu server and client
(:mod:`vpnedu.sim.node`), provisioned by the real ``server init`` / ``add-client`` code.  It
needs no root, so it is what the course uses on Binder and on locked-down PCs.  Packets move
when :meth:`SimLab.run` pumps them, which every method here does for you.  Time is the
``clock`` the lab is given: the real monotonic clock by default
(:class:`~vpnedu.sim.RealClock`), or a :class:`~vpnedu.sim.FakeClock` on which
:meth:`SimLab.wait` jumps from one timer to the next -- two minutes of protocol time (a rekey
after REKEY_AFTER_TIME) pass in a fraction of a second.

Two extra powers a real network does not give a student: :meth:`SimLab.trace`
lists every hop of every packet (which host, which interface, which way, NAT
rewrites), and the wire can be tampered with (:meth:`SimLab.tamper_next`) or a
captured datagram replayed (:meth:`SimLab.replay`).
"""

from __future__ import annotations

import ipaddress
import secrets
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

from .. import config, provision, uapi
from ..errors import VpneduError
from ..events import Event, EventBus, EventLog
from ..flows import FlowRow
from ..packet import ip as iplib
from ..protocol import messages as msgs
from ..report import format_wg_show
from ..sim import FakeClock, RealClock
from ..sim.host import SimHost, SimSocket, TraceEntry
from ..sim.internet import SimInternet, WirePacket
from ..sim.node import SimClient, SimServer
from ..sim.topology import APP_ADDRESS, APP_ADDRESS6, APP_UDP_PORT, ECHO_PORT, SERVER_PUBLIC, build_hosts
from ..sim.tun import MemoryTun
from .interface import (LEAK_ATTEMPTS, AppResult, ExplicitProxyFetch, LeakTest, MarkerOnWire, PingResult,
                        TrafficSample, TunReading, WgGet, WgSet, WgShow, config_changes, explicit_proxy_command,
                        leaked, write_kill_switch)


class SimLab:
    """The course lab on a simulated network (no root needed)."""

    mode = "sim"

    def __init__(self, suite: str = "wireguard", log: Callable[[str], None] = lambda s: None,
                 clock: FakeClock | RealClock | None = None):
        self.suite = suite
        self.log = log
        #: Monotonic seconds for everything in the lab: hosts, daemons, their timers.
        self.clock = clock or RealClock()
        self.internet = SimInternet(clock=self.clock)
        self.dir = Path(tempfile.mkdtemp(prefix="vpnedu-sim-"))
        self.server: SimServer | None = None
        self.client: SimClient | None = None
        self.client_events = EventBus(clock=self.clock.wall)
        self.server_events = EventBus(clock=self.clock.wall)
        self.hosts: dict[str, SimHost] = build_hosts(self.internet, self.clock)

    @property
    def banner(self) -> str:
        return ("SIMULATED MODE: client, internet, server and app server are simulated hosts in this "
                "Python process (no root needed). The WireGuard protocol, the vpnedu server and client, "
                "the packets and the keys are real; the kernel, TUN devices and cables are simulated.")

    #: What notebook 05 prints here instead of the proxy's flow table (lines of at most 78
    #: characters: a notebook's output area breaks long lines anywhere, even mid-word).
    forwarding_note = textwrap.fill(
        "The simulation forwards with NAT only: its server rewrites each packet's source to "
        "203.0.113.2 and keeps the flow table shown above, as the kernel's masquerade does "
        "(conntrack). The proxy mode (--forwarding proxy) ends each client connection in a socket "
        "of the server's own, which needs the real kernel. Run as root, this notebook shows the "
        "proxy's flow table, and the demo ('vpnedu lab demo') shows NAT and the proxy side by side.", 78)

    #: What notebook 05 prints instead of fetching through the explicit proxies (the same rule:
    #: lines of at most 78 characters, see :func:`~vpnedu.course.interface.wrap_note`).
    explicit_proxy_note = (
        "The simulation has no explicit proxies: a proxy listens on a socket of the server's own "
        "(10.0.0.1:1080 for SOCKS5, 10.0.0.1:3128 for HTTP), and the simulated server has none; "
        "that needs the real kernel. Run as root, this cell runs the curl commands above on the "
        "client and shows, for each, the proxy's flow row (proto socks5 or http-connect, the "
        "client 10.0.0.2, the server's own end 203.0.113.2 and the destination), the app server's "
        "log with the source 203.0.113.2 (the server, not the client), and a capture of the "
        "client's outer link: only WireGuard datagrams to 203.0.113.2:51820, the marker in the URL "
        "unreadable. The NAT flow table above is what the simulation shows of the same path.")

    def up(self) -> "SimLab":
        return self

    def down(self) -> None:
        self.stop_client()
        self.stop_server()

    def exists(self) -> bool:
        return True

    # ------------------------------------------------------------------ the loop
    def run(self, limit: int = 100_000) -> int:
        """Move packets until nothing is left to do (the sim's stand-in for asyncio + kernel)."""
        total = 0
        for _ in range(limit):
            n = self.internet.deliver()
            for node in (self.server, self.client):
                if node is not None and node.pump():
                    n += 1
            total += n
            if n == 0:
                break
        return total

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the lab's clock while timers and packets run.  Nothing can
        happen in the simulation between two timers, so the lab sleeps until the daemons' next
        deadline (on a fake clock: jumps there)."""
        clock = self.clock
        end = clock() + seconds
        while True:
            self.run()
            now = clock()
            if now >= end:
                break
            at = end
            for node in (self.server, self.client):
                deadline = node.device.next_deadline() if node is not None else None
                if deadline is not None and deadline < at:
                    at = deadline
            clock.sleep(max(at - now, 0.001))
        self.run()

    # ------------------------------------------------------------------ daemons
    def provision(self, suite: str | None = None, split: bool = False) -> None:
        """``vpnedu server init`` + ``vpnedu server add-client client``, into a temporary directory."""
        self.suite = suite or self.suite
        for f in ("server.conf", "client.conf"):
            (self.dir / f).unlink(missing_ok=True)
        provision.init_server(self.dir / "server.conf", endpoint=(SERVER_PUBLIC, 51820), suite=self.suite,
                              force=True)
        provision.add_client(self.dir / "server.conf", "client", split=split)

    def _load(self, name: str) -> config.Config:
        cfg = config.load(self.dir / name)
        cfg.interface.allow_null_teaching = self.suite == "null-teaching"
        return cfg

    def start_server(self, suite: str | None = None, forwarding: str = "nat") -> dict:
        """Provision (if needed) and start the server; returns its status."""
        if self.server is not None:
            raise VpneduError("the simulated server is already running", "stop it first: lab.stop_server()")
        if suite is not None or not (self.dir / "server.conf").exists():
            self.provision(suite)
        self.server = SimServer(self._load("server.conf"), self.hosts["server"], events=self.server_events,
                                forwarding=forwarding, log=self.log, clock=self.clock,
                                wall_offset=self.clock.wall_offset)
        self.server.setup()
        return self.server.status()

    def start_client(self, split: bool = False, timeout: float | None = None) -> dict:
        """Start the client: TUN, routes, handshake.  Returns its status once the handshake is done
        (an error after ``timeout`` seconds of the lab's clock without one; by default 5)."""
        timeout = 5.0 if timeout is None else timeout
        if self.server is None:
            raise VpneduError("start the server first", "lab.start_server()")
        if self.client is not None:
            raise VpneduError("the simulated client is already running", "stop it first: lab.stop_client()")
        cfg = self._load("client.conf")
        if split:
            cfg.peers[0].allowed_ips = [ipaddress.ip_network("10.0.0.0/24")]
        self.client = SimClient(cfg, self.hosts["client"], events=self.client_events, log=self.log,
                                clock=self.clock, wall_offset=self.clock.wall_offset)
        self.client.setup()
        self.client.start()
        end = self.clock() + timeout
        while self.client.server.current is None:
            self.run()
            if self.clock() > end:
                raise VpneduError("no handshake response in the simulation",
                                  "check that both sides use the same cipher suite")
            self.clock.sleep(0.005)
        self.run()
        return self.client.status()

    def stop_client(self) -> None:
        if self.client is not None:
            self.client.teardown()
            self.client = None

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.teardown()
            self.server = None

    def restart(self, suite: str | None = None, split: bool = False) -> dict:
        """Stop both daemons, (re-provision with ``suite``), start both; the client's status."""
        self.down()
        self.start_server(suite=suite)
        return self.start_client(split=split)

    # ------------------------------------------------------------------ looking
    def node(self, host: str):
        node = {"server": self.server, "client": self.client}.get(host)
        if node is None:
            raise VpneduError(f"no vpnedu daemon runs on {host!r}", f"start it: lab.start_{host}()")
        return node

    def status(self, host: str) -> dict:
        """The daemon's status: what ``vpnedu status --json`` prints."""
        return self.node(host).status()

    def routes(self, host: str = "client", family: int = 4) -> list[str]:
        """The host's main routing table, like ``ip route`` (``family=6``: ``ip -6 route``)."""
        return [str(r) for r in self.hosts[host].table(family)]

    def addresses(self, host: str) -> dict[str, list[str]]:
        return {dev: [str(a) for a in itfs] for dev, itfs in self.hosts[host].addresses.items()}

    def trace(self, since: int = 0) -> list[TraceEntry]:
        """Every hop of every packet since hop number ``since``."""
        return [h for h in self.internet.hops if h.seq > since]

    def last_hop(self) -> int:
        return self.internet.hops[-1].seq if self.internet.hops else 0

    def app_log(self) -> list[str]:
        return list(self.hosts["app"].app_log)

    def flows(self) -> list[FlowRow]:
        """The server's forwarding flow table (here: its NAT's), as rows like the daemon's."""
        if self.server is None:
            raise VpneduError("the simulated server is not running, so it keeps no flows", "lab.start_server() first")
        return self.hosts["server"].flows()

    # ------------------------------------------------------------------ doing
    def ping(self, host: str, destination: str, count: int = 3) -> PingResult:
        """``ping -c COUNT DESTINATION`` on a host."""
        h = self.hosts[host]
        before = len(h.echo_replies)
        src = h.source_address(destination)
        for seq in range(1, count + 1):
            h.ping(destination, seq=seq)
            self.run()
        self.wait(0.05)
        return PingResult(count, len(h.echo_replies) - before, destination, src)

    def send(self, host: str, packet: bytes) -> list[TraceEntry]:
        """Send a hand-made IP packet from a host; returns its journey (and its replies')."""
        mark = self.last_hop()
        self.hosts[host].send_ip(packet)
        self.run()
        return self.trace(mark)

    def udp(self, host: str, destination: str, port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
        """Send one UDP datagram from an ephemeral port and return the reply (or None)."""
        sock = SimSocket(self.hosts[host], family=ipaddress.ip_address(destination).version)
        try:
            sock.sendto(payload, (destination, port))
            end = self.clock() + timeout
            while self.clock() < end:
                self.run()
                try:
                    return sock.recvfrom(65536)[0]
                except BlockingIOError:
                    self.clock.sleep(0.005)
            return None
        finally:
            sock.close()

    def app_request(self, marker: str | None = None, family: int = 4) -> AppResult:
        """The client asks the app server something (over IPv6 with ``family=6``); who does the
        app server think asked?"""
        marker = marker or "vpnedu-marker-" + secrets.token_hex(4)
        reply = self.udp("client", APP_ADDRESS if family == 4 else APP_ADDRESS6, APP_UDP_PORT, marker.encode())
        sources = [line.split()[0] for line in self.app_log() if marker in line]
        return AppResult((reply or b"").decode(errors="replace"), sources)

    def marker_on_wire(self, marker: str | None = None) -> MarkerOnWire:
        """Send a marker to the app through the tunnel; is it readable on the client's link?"""
        marker = marker or "vpnedu-marker-" + secrets.token_hex(4)
        mark = len(self.internet.wire)
        self.app_request(marker)
        client_link = [w for w in list(self.internet.wire)[mark:] if "client" in (w.source_host, w.destination_host)]
        return MarkerOnWire(marker, any(marker.encode() in w.packet for w in client_link))

    def leak_test(self, kill_switch: bool = True) -> LeakTest:
        """The leak test (:class:`~vpnedu.course.interface.LeakTest`) on the simulated hosts: the
        client's outer link is the simulated wire, and the kill switch the client's output
        filter (the real client's plan, :mod:`vpnedu.net.killswitch`)."""
        self.stop_client()
        if self.server is None:
            self.start_server()
        path = self.dir / "client.conf"
        original = path.read_bytes()
        write_kill_switch(path, kill_switch)
        try:
            self.start_client()
            self.stop_server()
            since, hops = self.clock(), self.last_hop()
            host, attempts = self.hosts["client"], []
            for what, dst, bound in LEAK_ATTEMPTS:
                replies = len(host.echo_replies)
                host.ping(dst, dev="eth0" if bound else None)
                self.wait(0.3)
                refused = any(h.direction == "drop" and "outside the tunnel" in h.note for h in self.trace(hops))
                hops = self.last_hop()
                attempts.append((what, "answered: it got out" if len(host.echo_replies) > replies else
                                 "refused on the client (kill switch)" if refused else
                                 "no answer (into the tunnel, and the server is down)"))
            sent = [iplib.describe(w.packet) for w in list(self.internet.wire)
                    if w.time >= since and w.source_host == "client"]
            endpoint = f"> {SERVER_PUBLIC}:51820 UDP"
            return LeakTest(kill_switch, attempts, sent, leaked(sent, lambda p: endpoint in p))
        finally:
            self.stop_client()
            path.write_bytes(original)
            if self.server is None:
                self.start_server()

    def explicit_proxy_fetch(self, via: str = "socks5") -> ExplicitProxyFetch:
        """The curl command the real lab runs through the explicit proxy ``via``, not run: the
        result's note (:attr:`explicit_proxy_note`) says why, and what the real lab shows."""
        marker = "marker-" + secrets.token_hex(4)
        cmd = explicit_proxy_command(via, f"http://{APP_ADDRESS}/{marker}")
        return ExplicitProxyFetch(via, " ".join(cmd), marker, "not run in the simulation", False, [], [], [], None,
                                  note=self.explicit_proxy_note, endpoint=f"{SERVER_PUBLIC}:51820")

    # ------------------------------------------------------------------ attacks
    def _is_transport(self, w: WirePacket, src: str = "client", dst: str = "server") -> bool:
        if w.source_host != src or w.destination_host != dst:
            return False
        data = w.udp_payload
        return len(data) > msgs.TRANSPORT_MIN_SIZE and data[0] == msgs.TRANSPORT_DATA

    def tamper_next(self, offset: int = -1) -> Event | None:
        """Flip one byte of the next data packet from client to server, in flight, and ping
        so there is one.  Returns the server's ``packet.dropped`` event (reason ``bad-mac``)."""
        done = []

        def flip(w: WirePacket) -> bytes | None:
            if done or not self._is_transport(w):
                return w.packet
            p = bytearray(w.packet)
            p[offset] ^= 0x01  # a bit of the ciphertext or tag
            done.append(True)
            return bytes(p)
        log = EventLog(self.server_events, kinds="packet.dropped")
        self.internet.on_wire = flip
        try:
            self.ping("client", "10.0.0.1", count=1)
        finally:
            self.internet.on_wire = None
            log.close()
        return log.events[0] if log.events else None

    def replay(self) -> Event | None:
        """Ping, then put the client's last data packet on the wire a second time.
        Returns the server's ``packet.dropped`` event (reason ``replay``)."""
        self.ping("client", "10.0.0.1", count=1)
        last = next((w for w in reversed(self.internet.wire) if self._is_transport(w)), None)
        if last is None:
            raise VpneduError("no data packet from the client was captured", "start the client and ping first")
        log = EventLog(self.server_events, kinds="packet.dropped")
        try:
            self.internet.inject(last.packet)
            self.run()
        finally:
            log.close()
        return log.events[0] if log.events else None

    # ------------------------------------------------------------------ TUN
    def tun_demo(self, name: str = "tun-demo") -> TunReading:
        """Create a TUN device on the client, ping an address routed into it, read the packet."""
        h = self.hosts["client"]
        tun = MemoryTun(h, name)
        try:
            h.add_address(name, "10.99.0.1/24")
            h.ping("10.99.0.2", ident=0x1234, seq=1, payload=b"hello TUN")
            raw = tun.read()
        finally:
            tun.close()
        return TunReading.from_packet(name, raw, "simulated")

    # ------------------------------------------------------------------ throughput
    def traffic(self, kind: str = "vpnedu", seconds: float = 4.0, interval: float = 0.5,
                size: int = 1200) -> Iterator[TrafficSample]:
        """Send UDP as fast as the simulation goes for ``seconds``; yield ``(t, up, down)`` every
        ``interval``: cumulative bytes on the client's link, each way.

        ``kind`` "vpnedu" goes through the tunnel (start the client first); "plain" goes
        straight to the app server (the client must not be running).  The seconds are real
        ones (a stopwatch of how fast this process simulates), whatever the lab's clock.
        """
        h = self.hosts["client"]
        if kind == "vpnedu" and self.client is None:
            raise VpneduError("the tunnel is not up", "start the client first: lab.start_client()")
        if kind == "plain" and self.client is not None:
            raise VpneduError("the tunnel is up, so traffic would go through it", "lab.stop_client() first")
        if kind not in ("vpnedu", "plain"):
            raise VpneduError(f"no {kind!r} link in the simulation", "use 'vpnedu' or 'plain' "
                              "(wireguard-go needs the real lab)")
        sock = SimSocket(h)
        payload = bytes(size)
        start = time.monotonic()
        base_tx, base_rx = h.counters["eth0.tx_bytes"], h.counters["eth0.rx_bytes"]
        try:
            yield TrafficSample(0.0, 0, 0)
            next_sample = start + interval
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    yield TrafficSample(now - start, h.counters["eth0.tx_bytes"] - base_tx,
                                        h.counters["eth0.rx_bytes"] - base_rx)
                    next_sample += interval
                    if now - start >= seconds:
                        return
                for _ in range(16):
                    sock.sendto(payload, (APP_ADDRESS, ECHO_PORT))
                self.run()
                while sock.inbox:
                    sock.recvfrom()
        finally:
            sock.close()

    # ------------------------------------------------------------------ WireGuard's own tool
    #: Said wherever the real lab would run ``wg``: the simulation has none to run.
    NO_WG = "no wg binary in the simulation"

    def wg_get(self, host: str = "server") -> WgGet:
        """``get=1`` handed to the simulated daemon (:meth:`vpnedu.sim.node.SimNode.uapi_message`):
        the reply its Device gives, by the same code the real socket runs."""
        node = self.node(host)
        self.run()
        reply, _ = node.uapi_message("get=1\n\n")
        return WgGet(host, node.ifname, reply,
                     f"get=1, handed to the simulated {host}'s Device (no socket file in the\n"
                     "simulation; the same vpnedu.uapi code answers as on the real socket)")

    def wg_show(self, host: str = "server") -> WgShow:
        """vpnedu's rendering of the simulated daemon's ``get=1`` reply, laid out like ``wg show``."""
        got = self.wg_get(host)
        text = format_wg_show(got.reply, got.interface, now=self.clock.wall())
        return WgShow(host, got.interface, text, "vpnedu",
                      f"({self.NO_WG}: below is vpnedu's rendering of the\n"
                      f"{host}'s get=1 reply, laid out like 'wg show {got.interface}')")

    def _set(self, host: str, message: str, how: str) -> WgSet:
        node = self.node(host)
        before = self.wg_get(host).reply
        log = EventLog(self.server_events if host == "server" else self.client_events, kinds="config.set")
        try:
            reply, err = node.uapi_message(message)
            self.run()
        finally:
            log.close()
        errno = -int(reply.split("=", 1)[1].split()[0]) if reply.startswith("errno=") else uapi.EPROTO
        return WgSet(host, node.ifname, how, message, errno, config_changes(before, self.wg_get(host).reply),
                     log.events[0] if log.events else None, err.message if err else "")

    def wg_set(self, host: str, *args: str) -> WgSet:
        """The ``set=1`` message ``wg set IFNAME ARGS...`` would send (vpnedu's translation:
        :func:`vpnedu.uapi.wg_set_message`), handed to the simulated daemon."""
        ifname = self.node(host).ifname
        try:
            message = uapi.wg_set_message(args)
        except uapi.UapiError as e:
            raise VpneduError(e.message, "see 'wg set' in wg(8); the simulation knows listen-port, fwmark, "
                                         "peer KEY with remove, endpoint, persistent-keepalive, allowed-ips") from None
        return self._set(host, message, f"wg set {ifname} {' '.join(args)}\n({self.NO_WG}: vpnedu turned the\n"
                                        f"arguments into the set=1 message wg sends, and handed it to the\n"
                                        f"simulated {host}):")

    def wg_send(self, host: str, message: str) -> WgSet:
        """A raw message handed to the simulated daemon, as ``wg`` writes one on the socket."""
        return self._set(host, message, f"sent to the simulated {host}'s configuration protocol:")
