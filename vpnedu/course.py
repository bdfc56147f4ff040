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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import VpneduError
from .events import Event, EventBus, EventLog
from .packet import ip as _ip

MODES = ("auto", "sim", "real")


# ---------------------------------------------------------------------------- choosing a mode
def real_lab_possible() -> tuple[bool, str]:
    """Can this process run the namespace lab?  (yes/no, and why not)."""
    if os.geteuid() != 0:
        return False, "not root (the lab creates network namespaces and TUN devices)"
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


def open_lab(mode: str | None = None, *, prefix: str | None = None, suite: str = "wireguard",
             out: Callable[[str], None] = print):
    """The lab for this notebook, with a banner saying which mode runs."""
    chosen, why = choose_mode(mode)
    if chosen == "real":
        lab = RealLab(prefix=prefix or os.environ.get("VPNEDU_LAB_PREFIX") or "course-", suite=suite)
    else:
        from .sim.lab import SimLab
        lab = SimLab(suite=suite)
    out("=" * 78)
    out(f"vpnedu course lab: {chosen.upper()} MODE ({why})")
    out(lab.banner)
    out("=" * 78)
    return lab.up()


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


class _DaemonFeed:
    """Relays a daemon's control-socket event stream into a local EventBus (a thread)."""

    def __init__(self, path: Path, bus: EventBus):
        self.path, self.bus = path, bus
        self.stopped = False
        self.sock = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"events {path.name}")
        self.thread.start()

    def _run(self) -> None:
        from .node import control
        try:
            for d in control.stream(self.path, history=True):
                if self.stopped:
                    break
                self.bus.publish(Event.from_dict(d))
        except (VpneduError, OSError, ValueError):
            pass

    def close(self) -> None:
        self.stopped = True


class RealLab:
    """The course lab in network namespaces with the real daemons (root)."""

    mode = "real"

    def __init__(self, prefix: str = "course-", suite: str = "wireguard"):
        from .lab.topology import Lab
        self.lab = Lab(prefix=prefix, log=lambda s: None)
        self.suite = suite
        self.client_events = EventBus()
        self.server_events = EventBus()
        self.procs: dict[str, subprocess.Popen] = {}
        self._feeds: dict[str, _DaemonFeed] = {}
        self.split = False

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
        from .net.journal import run_dir
        return run_dir() / f"vpnedu0@{os.stat(f'/run/netns/{self.lab.ns(host)}').st_ino}.sock"

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

    def _start(self, host: str, *args: str) -> None:
        extra = ["--allow-null-teaching"] if self.suite == "null-teaching" else []
        path = self.socket_path(host)
        self.procs[host] = self.lab.spawn(host, f"vpn-{host}", *self._vpnedu(*args, *extra))
        end = time.time() + 20
        while not path.exists():
            if self.procs[host].poll() is not None or time.time() > end:
                log = self.dir / f"vpn-{host}.log"
                raise VpneduError(f"the vpnedu {host} did not start: "
                                  f"{log.read_text()[-600:].strip() if log.exists() else ''}")
            time.sleep(0.02)
        bus = self.server_events if host == "server" else self.client_events
        self._feeds[host] = _DaemonFeed(path, bus)

    def start_server(self, suite: str | None = None, forwarding: str = "nat") -> dict:
        if suite is not None or not (self.dir / "server.conf").exists():
            self.provision(suite)
        self._start("server", "server", "-c", f"{self.dir}/server.conf", "--forwarding", forwarding)
        return self.status("server")

    def start_client(self, split: bool = False, timeout: float = 20) -> dict:
        if split != self.split:
            self.stop_server()
            self.provision(self.suite, split=split)
            self.start_server()
        self._start("client", "client", "-c", f"{self.dir}/client.conf")
        end = time.time() + timeout
        while True:
            try:
                st = self.status("client")
                if st["peers"][0].get("latest_handshake"):
                    time.sleep(0.2)  # let the events arrive
                    return st
            except VpneduError:
                pass
            if time.time() > end or self.procs["client"].poll() is not None:
                raise VpneduError("the client did not complete a handshake: "
                                  + (self.dir / "vpn-client.log").read_text()[-600:])
            time.sleep(0.05)

    def _stop(self, host: str) -> None:
        feed = self._feeds.pop(host, None)
        if feed:
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

    def flows(self) -> list[dict]:
        """The server's flow table: the daemon's ``flows`` (proxy mode) or else the kernel's NAT
        connection tracking (``/proc/net/nf_conntrack``) for tunnel clients, in the same schema."""
        try:
            st = self.status("server")
        except VpneduError:
            st = {}
        if st.get("flows"):
            return st["flows"]
        r = self.lab.run("server", "cat", "/proc/net/nf_conntrack")
        return conntrack_flows(r.stdout)

    # ------------------------------------------------------------------ doing
    def ping(self, host: str, destination: str, count: int = 3):
        r = self.lab.run(host, "ping", "-c", str(count), "-i", "0.2", "-W", "2", destination, timeout=30)
        src = self.lab.run(host, "ip", "-o", "route", "get", destination).stdout.split(" src ")
        return _ping_result(destination, r, src[1].split()[0] if len(src) > 1 else "")

    def app_request(self, marker: str | None = None):
        from .lab.topology import APP_ADDRESS, APP_PORT
        from .sim.lab import AppResult
        marker = marker or "vpnedu-marker-" + secrets.token_hex(4)
        r = self.lab.run("client", sys.executable, "-m", "vpnedu.lab.app", "fetch",
                         f"http://{APP_ADDRESS}:{APP_PORT}/{marker}")
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


def conntrack_flows(text: str, subnet_prefix: str = "10.") -> list[dict]:
    """Tunnel clients' entries of ``/proc/net/nf_conntrack`` in the flow-table schema."""
    flows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        proto = parts[2]
        kv: dict[str, list[str]] = {}
        for p in parts:
            if "=" in p:
                k, _, v = p.partition("=")
                kv.setdefault(k, []).append(v)
        src, dst = kv.get("src", []), kv.get("dst", [])
        if len(src) < 2 or not src[0].startswith(subnet_prefix):
            continue
        if proto == "icmp":
            sport = dport = rport = kv.get("id", ["0"])[0]
        else:
            sp, dp = kv.get("sport", ["0", "0"]), kv.get("dport", ["0", "0"])
            sport, dport, rport = sp[0], dp[0], dp[1] if len(dp) > 1 else "0"
        by = [int(b) for b in kv.get("bytes", [])]
        state = next((p for p in parts if p.isupper() and p.isalpha()), "")
        flows.append({"proto": proto, "client": f"{src[0]}:{sport}", "proxy": f"{dst[1]}:{rport}",
                      "destination": f"{dst[0]}:{dport}", "state": state.lower() or "active",
                      "bytes_up": by[0] if by else 0, "bytes_down": by[1] if len(by) > 1 else 0,
                      "age": None})
    return flows


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
    for f in lab.flows():
        click.echo(f"  {f['proto']:<5} {f['client']:<21} -> {f['proxy']:<21} -> {f['destination']:<21} "
                   f"{f['state']} up {f['bytes_up']} down {f['bytes_down']}")
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
