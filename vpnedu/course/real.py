"""The course lab for real: network namespaces, TUN devices and the vpnedu daemons (root).

:class:`RealLab` is a :class:`~vpnedu.course.interface.CourseLab` on the namespace lab
(:class:`vpnedu.netns_lab.topology.Lab`): four network namespaces stand in for the client, an
internet router, the VPN server and an application server; real TUN devices, routes and NAT;
the real ``vpnedu server`` and ``vpnedu client`` run as processes in them.  The lab talks to
the daemons as any program may, over their control sockets: their status, and their events
relayed into this process (:class:`~vpnedu.course.feed.DaemonFeed`) for the widgets.

**Each host's own /run/wireguard.**  A daemon also serves WireGuard's configuration socket,
``/var/run/wireguard/IFNAME.sock``, for ``wg`` (:mod:`vpnedu.node.uapi_socket`).  Network
namespaces do not separate files, and both lab daemons name their interface ``vpnedu0``: on the
host's one directory only the first daemon would get the socket, and ``wg show vpnedu0`` would
answer for whichever that was.  So the lab gives each host a folder of its own,
``<lab dir>/wireguard-<host>``, and runs that host's daemon -- and every ``wg`` the lab runs
for it -- in a mount namespace of its own (``unshare --mount``) where that folder is
bind-mounted on ``/run/wireguard``.  ``wg show`` on the server is then the server's daemon and no
other; nothing of it is left on the host: the mount namespace ends with its last process, and
the folders go with the lab's directory on :meth:`RealLab.down`.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from .. import uapi
from ..errors import VpneduError
from ..events import Event, EventBus, EventLog
from ..flows import FlowRow
from ..netns_lab.demo import Demo, housekeeping
from ..netns_lab.topology import APP_ADDRESS, APP_ADDRESS6, APP_PORT, SERVER_PUBLIC, Lab, require_tool, stop_process
from ..net import killswitch
from ..node import control
from .feed import DaemonFeed
from .interface import (LEAK_ATTEMPTS, AppResult, ExplicitProxyFetch, LeakTest, MarkerOnWire, PingResult,
                        TrafficSample, TunReading, WgGet, WgSet, WgShow, config_changes, errno_of_message,
                        explicit_proxy_command, leaked, write_kill_switch)

#: Run by ``sh -c`` in a new mount namespace: the host's folder ($0) on /run/wireguard, then the
#: command.  (``mkdir -p``: the mount point must exist; it is the standard, usually present, directory.)
#: The end of a reply: its errno line, then the empty line.
_REPLY_END = re.compile(rb"(?:^|\n)errno=-?\d+\n\n$")
_PRIVATE_WG = 'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec "$@"'


class RealLab:
    """The course lab in network namespaces with the real daemons (root)."""

    mode = "real"

    def __init__(self, prefix: str = "course-", suite: str = "wireguard",
                 out: Callable[[str], None] = print):
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
        return control.netns_socket_path(self.lab.ns(host))

    def provision(self, suite: str | None = None, split: bool = False) -> None:
        self.suite = suite or self.suite
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "client.conf").unlink(missing_ok=True)
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
        running = self.procs.get(host)
        if running is not None and running.poll() is None:
            raise VpneduError(f"the vpnedu {host} is already running (pid {running.pid})",
                              f"stop it first: lab.stop_{host}()")
        extra = ["--allow-null-teaching"] if self.suite == "null-teaching" else []
        path = self.socket_path(host)
        proc = self.procs[host] = self.lab.spawn(host, f"vpn-{host}",
                                                 *self.private_wireguard(host, *self._vpnedu(*args, *extra)))
        try:
            # 'ip netns exec', unshare and sh each exec the next: the daemon's pid is the one that must answer.
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

    def start_client(self, split: bool = False, timeout: float | None = None) -> dict:
        """Start the client (20 s for its handshake unless ``timeout`` says otherwise)."""
        timeout = 20.0 if timeout is None else timeout
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
                raise VpneduError("the client did not complete a handshake within "
                                  f"{timeout:g} s; its log ends with:{control.log_tail(self.dir / 'vpn-client.log')}")
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
        if p is not None:
            stop_process(p, grace=15)

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
        return control.request(self.socket_path(host), {"cmd": "status"})

    def routes(self, host: str = "client", family: int = 4) -> list[str]:
        """``ip route`` (``family=6``: ``ip -6 route``) on ``host``, without IPv6's link-local
        fe80::/64 and multicast rows, which the kernel adds on every link by itself."""
        r = self.lab.run(host, "ip", f"-{family}", "route")
        return [line.strip() for line in r.stdout.splitlines()
                if line.strip() and not line.startswith(("fe80::", "multicast "))]

    def addresses(self, host: str) -> dict[str, list[str]]:
        r = self.lab.run(host, "ip", "-j", "addr")
        return {i["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in i.get("addr_info", [])
                              if a["family"] == "inet" or (a["family"] == "inet6" and a.get("scope") != "link")]
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
    def ping(self, host: str, destination: str, count: int = 3) -> PingResult:
        r = self.lab.run(host, "ping", "-c", str(count), "-i", "0.2", "-W", "2", destination, timeout=30)
        src = self.lab.run(host, "ip", "-o", "route", "get", destination).stdout.split(" src ")
        return PingResult.from_ping_output(destination, r.stdout, src[1].split()[0] if len(src) > 1 else "")

    def app_request(self, marker: str | None = None, family: int = 4) -> AppResult:
        """An HTTP request from the client to the app server (``family=6``: to its IPv6 address)."""
        marker = marker or "vpnedu-marker-" + secrets.token_hex(4)
        host = APP_ADDRESS if family == 4 else f"[{APP_ADDRESS6}]"
        feed = self._feeds.get("server") if self.forwarding == "proxy" else None
        closed = feed.count("proxy.flow.closed") if feed else 0
        r = self.lab.run("client", sys.executable, "-m", "vpnedu.netns_lab.app", "fetch",
                         f"http://{host}:{APP_PORT}/{marker}")
        if feed is not None and r.returncode == 0:
            # The proxy reports the flow's end a moment after the fetch finished, through the feed:
            # wait for it, so a flow table drawn next shows the flow (closed), not nothing.
            feed.wait_for("proxy.flow.closed", closed, timeout=5)
        sources = [line.split()[0] for line in self.app_log() if marker in line]
        return AppResult(r.stdout.strip() or r.stderr.strip(), sources)

    def marker_on_wire(self, marker: str | None = None) -> MarkerOnWire:
        """Fetch a marker from the app while tcpdump records the client's link: is it readable there?"""
        marker = marker or "vpnedu-marker-" + secrets.token_hex(4)
        demo = Demo(self.lab, out=lambda s: None)
        cap = demo.capture("client")
        try:
            self.app_request(marker)
            time.sleep(0.3)
        finally:
            path = demo.stop_capture("client", cap)
        return MarkerOnWire(marker, marker.encode() in path.read_bytes())

    def explicit_proxy_fetch(self, via: str = "socks5") -> ExplicitProxyFetch:
        """curl on the client through the server's SOCKS5 or HTTP proxy (10.0.0.1:1080 / :3128)
        for a marker URL on the app server, tcpdump on the client's eth0 meanwhile; the flow
        row(s) come from the server's ``proxy.flow.*`` events (a fetch this short is over before
        a status request could list it)."""
        marker = "marker-" + secrets.token_hex(4)
        cmd = explicit_proxy_command(via, f"http://{APP_ADDRESS}/{marker}")
        if "server" not in self.procs:
            self.start_server(forwarding=self.forwarding)
        if "client" not in self.procs:
            self.start_client(split=self.split)
        curl = require_tool("curl", "curl")
        log = EventLog(self.server_events, kinds="proxy.flow")
        demo = Demo(self.lab, out=lambda s: None)
        cap = demo.capture("client")
        try:
            r = self.lab.run("client", curl, *cmd[1:], timeout=30)
            end = time.time() + 5
            # The proxy reports the flow's end a moment after curl is done, through the feed.
            while r.returncode == 0 and time.time() < end and not any(
                    e.kind == "proxy.flow.closed" and e.get("proto") == via for e in list(log.events)):
                time.sleep(0.05)
        finally:
            pcap = demo.stop_capture("client", cap)
            log.close()
        rows = {}
        for e in log.events:
            if e.get("proto") == via and e.kind in ("proxy.flow.opened", "proxy.flow.closed"):
                row = FlowRow.from_event(e.kind, e.fields, e.peer)
                rows[row.id] = row
        packets = [p for p in demo.describe_capture("client", pcap) if housekeeping(p) is None]
        outcome = r.stdout.strip() if r.returncode == 0 else f"curl failed (exit {r.returncode}): {r.stderr.strip()}"
        return ExplicitProxyFetch(via, " ".join(cmd), marker, outcome, r.returncode == 0, list(rows.values()),
                                  [line for line in self.app_log() if marker in line], packets,
                                  marker.encode() in pcap.read_bytes(), endpoint=f"{SERVER_PUBLIC}:51820")

    def leak_test(self, kill_switch: bool = True) -> LeakTest:
        """The leak test (:class:`~vpnedu.course.interface.LeakTest`) in the namespace lab:
        tcpdump on the client's eth0, the kill switch a real nftables table."""
        self.stop_client()
        forwarding = self.forwarding
        if self.split:        # the test is about a full tunnel: provision one first
            self.stop_server()
            self.provision(self.suite, split=False)
        if "server" not in self.procs:
            self.start_server(forwarding=forwarding)
        path = self.dir / "client.conf"
        original = path.read_bytes()
        write_kill_switch(path, kill_switch)
        demo = Demo(self.lab, out=lambda s: None)
        try:
            self.start_client()
            self.stop_server()
            cap = demo.capture("client")
            attempts = []
            try:
                for what, dst, bound in LEAK_ATTEMPTS:
                    refused = self._kill_switch_refusals()
                    r = self.lab.run("client", "ping", "-n", "-c", "1", "-W", "1", *(("-I", "eth0") if bound else ()),
                                     dst)
                    attempts.append((what, "answered: it got out" if r.returncode == 0 else
                                     "refused on the client (kill switch)" if self._kill_switch_refusals() > refused
                                     else "no answer (into the tunnel, and the server is down)"))
                time.sleep(0.3)
            finally:
                pcap = demo.stop_capture("client", cap)
            sent = [p for p in demo.describe_capture("client", pcap) if _from_client(p)]
            return LeakTest(kill_switch, attempts, sent, leaked(sent, _allowed_on_the_link))
        finally:
            self.stop_client()
            path.write_bytes(original)
            if "server" not in self.procs:
                self.start_server(forwarding=forwarding)

    def _kill_switch_refusals(self) -> int:
        """How many packets the client's kill switch table has refused so far (the counters of
        its reject and drop rules; 0 without the table)."""
        r = self.lab.run("client", "nft", "list", "table", "inet", killswitch.table_name("vpnedu0"))
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", r.stdout)) if r.returncode == 0 else 0

    def _attack(self, mode: str) -> Event | None:
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
                ) -> Iterator[TrafficSample]:
        """iperf3 both ways (``--bidir``) from the client for ``seconds``; yield ``(t, up, down)``
        cumulative bytes on the client's outer link every ``interval``.

        ``kind``: "vpnedu" (start the client first) and "wireguard-go" (the daemons must be
        stopped; wireguard-go on both ends) send to the server's tunnel address 10.0.0.1,
        "plain" to its public address.
        """
        from ..netns_lab.wireguard_go import WireGuardGo
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
            yield TrafficSample(0.0, 0, 0)
            nxt = start + interval
            while True:
                time.sleep(max(0.0, nxt - time.monotonic()))
                nxt += interval
                tx, rx = self._link_bytes()
                t = time.monotonic() - start
                yield TrafficSample(t, tx - base[0], rx - base[1])
                if cli.poll() is not None or t > seconds + 5:
                    break
            cli.wait(10)
        finally:
            if srv.poll() is None:
                srv.terminate()
            srv.wait(5)
            for w in wg:
                w.down()

    # ------------------------------------------------------------------ WireGuard's own tool
    def wg_dir(self, host: str) -> Path:
        """The folder that is ``/run/wireguard`` for ``host``'s daemon and its ``wg`` commands."""
        return self.dir / f"wireguard-{host}"

    def private_wireguard(self, host: str, *cmd: str) -> list[str]:
        """``cmd`` run with ``host``'s own ``/run/wireguard`` (see the module doc): a new mount
        namespace (private propagation: the bind mount never reaches the host's), the folder
        bind-mounted, then ``cmd`` exec'd -- the same pid, as a daemon must keep."""
        d = self.wg_dir(host)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return [require_tool("unshare", "util-linux"), "--mount", "--propagation", "private",
                "sh", "-c", _PRIVATE_WG, str(d), *cmd]

    def _running(self, host: str) -> str:
        """The interface name of the daemon on ``host`` (an error if none runs)."""
        p = self.procs.get(host)
        if p is None or p.poll() is not None:
            raise VpneduError(f"no vpnedu daemon runs on {host!r}, so wg has nothing to talk to",
                              f"start it: lab.start_{host}()")
        return self.status(host)["interface"]

    def _wg(self, host: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
        wg = shutil.which("wg")
        if wg is None:
            raise VpneduError("'wg' is not installed", "install it: apt-get install wireguard-tools")
        r = self.lab.run(host, *self.private_wireguard(host, wg, *args), timeout=30)
        return r, (f"$ wg {' '.join(args)}\n# the real {wg}, run in {self.lab.ns(host)} with the {host}'s own "
                   f"/run/wireguard:\n#   {self.wg_dir(host)}")

    def wg_show(self, host: str = "server") -> WgShow:
        """The real ``wg show IFNAME``, run where it finds the daemon on ``host`` (and only it)."""
        ifname = self._running(host)
        r, how = self._wg(host, "show", ifname)
        if r.returncode:
            raise VpneduError(f"wg show {ifname} on the {host} failed: {(r.stderr or r.stdout).strip()}")
        return WgShow(host, ifname, r.stdout.rstrip("\n"), "wg", how)

    def _exchange(self, host: str, ifname: str, message: str) -> str:
        """One message on the daemon's configuration socket; its reply (up to ``errno=N`` and the
        empty line), as ``wg`` reads it."""
        path = self.wg_dir(host) / f"{ifname}.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(str(path))
            s.sendall(message.encode())
            data = b""
            while not _REPLY_END.search(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise VpneduError(f"cannot talk to {path}: {e.strerror or e}",
                              f"is the {host} running? lab.start_{host}()") from None
        finally:
            s.close()
        return data.decode()

    def wg_get(self, host: str = "server") -> WgGet:
        """``get=1`` on the daemon's real socket, from this process (the file is in the host's
        folder, :meth:`wg_dir`, so no other namespace is needed to reach it)."""
        ifname = self._running(host)
        path = self.wg_dir(host) / f"{ifname}.sock"
        return WgGet(host, ifname, self._exchange(host, ifname, "get=1\n\n"),
                     f"$ printf 'get=1\\n\\n' \\\n    | ncat -U {path}")

    def _changed(self, host: str, ifname: str, before: dict, send) -> tuple:
        """Run ``send()``; return its result, what changed and the ``config.set`` event (waiting
        for it to come through the feed when the change was made, so the log shows it)."""
        feed = self._feeds.get(host)
        bus = self.server_events if host == "server" else self.client_events
        seen = feed.count("config.set") if feed else 0
        log = EventLog(bus, kinds="config.set")
        try:
            result, errno = send()
            if errno == 0 and feed is not None and not feed.wait_for("config.set", seen, timeout=5):
                self.out(f"note: the {host}'s config.set event has not arrived"
                         + (f": {feed.notice()}" if feed.notice() else " (yet)"))
        finally:
            log.close()
        after = uapi.parse_get(self._exchange(host, ifname, "get=1\n\n"))
        return result, errno, config_changes(before, after), (log.events[-1] if log.events else None)

    def wg_set(self, host: str, *args: str) -> WgSet:
        """The real ``wg set IFNAME ARGS...`` on the daemon on ``host``.  wg prints nothing when
        the daemon answered errno=0, and strerror(N) when it answered errno=-N."""
        ifname = self._running(host)
        before = uapi.parse_get(self._exchange(host, ifname, "get=1\n\n"))
        holder = {}

        def send():
            r, how = self._wg(host, "set", ifname, *args)
            holder["how"] = how
            if r.returncode == 0:
                return r, 0
            errno = errno_of_message(r.stderr)
            if errno is None or "Unable to modify interface" not in r.stderr:
                # wg refused the arguments itself: nothing reached the daemon.
                raise VpneduError(f"wg set: {r.stderr.strip() or r.stdout.strip()}", "see 'wg set' in wg(8)")
            return r, errno
        r, errno, changes, event = self._changed(host, ifname, before, send)
        return WgSet(host, ifname, holder["how"], None, errno, changes, event, r.stderr.strip())

    def wg_send(self, host: str, message: str) -> WgSet:
        """A raw message on the daemon's real socket; the daemon's reason for a refusal is read
        from its log (the reply itself carries only the errno)."""
        ifname = self._running(host)
        before = uapi.parse_get(self._exchange(host, ifname, "get=1\n\n"))
        logfile = self.dir / f"vpn-{host}.log"
        mark = logfile.stat().st_size if logfile.exists() else 0

        def send():
            reply = self._exchange(host, ifname, message)
            line = next((x for x in reply.split("\n") if x.startswith("errno=")), "errno=-71")
            return reply, -int(line[6:])
        reply, errno, changes, event = self._changed(host, ifname, before, send)
        why = ""
        if errno:
            end = time.time() + 2
            while not why and time.time() < end:
                with open(logfile, "rb") as f:
                    f.seek(mark)
                    said = [x for x in f.read().decode(errors="replace").splitlines() if "configuration not changed:" in x]
                why = said[-1].split("configuration not changed:", 1)[1].strip() if said else ""
                if not why:
                    time.sleep(0.05)
            why = why.split(": ", 1)[1] if why.startswith(tuple(uapi.ERRNO_NAMES.values())) else why
        path = self.wg_dir(host) / f"{ifname}.sock"
        return WgSet(host, ifname, f"sent to the {host}'s real configuration socket,\n  {path}:", message, errno,
                     changes, event, why)


#: The client's addresses on its outer link (the lab's: vpnedu.netns_lab.topology).
_CLIENT_SOURCES = ("198.51.100.2", "2001:db8:c::2")


def _from_client(packet: str) -> bool:
    """A line of :meth:`Demo.describe_capture` the client sent (its addresses, its link-local or
    the unspecified address; ARP's "tell" names the asker)."""
    if packet.startswith("ARP"):
        return any(f"tell {a}" in packet for a in _CLIENT_SOURCES)
    parts = packet.split()
    if len(parts) < 2:
        return False
    src = parts[1]
    host = src.rpartition(":")[0] if src.count(".") == 3 and ":" in src else src
    return host in _CLIENT_SOURCES or host == "::" or host.startswith("fe80:")


def _allowed_on_the_link(packet: str) -> bool:
    """The tunnel's own UDP to the server, ARP, or IPv6 neighbour discovery and link-local
    housekeeping: what the leak test lets pass."""
    if packet.startswith("UDP") and packet.endswith(f"-> {SERVER_PUBLIC}:51820"):
        return True
    return (packet.startswith("ARP") or housekeeping(packet) is not None
            or any(w in packet for w in ("neighbor solicitation", "neighbor advertisement", "router solicitation")))

