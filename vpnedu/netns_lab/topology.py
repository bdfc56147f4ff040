"""The namespace lab: the seed's two-VM demo on one machine.

Four network namespaces stand in for four machines.  Each has its own
interfaces, addresses, routing table and firewall, exactly like a separate
host; veth pairs are the cables between them::

     client(s)                internet (router)                server
     eth0 198.51.100.2 --- br0 198.51.100.1                  eth0 203.0.113.2
                               s0 203.0.113.1 ----------------'
                               a0 192.0.2.1 ----- app  eth0 192.0.2.80 (HTTP, HTTPS; logs source addresses)

Every link of it carries IPv6 too, from the documentation prefix 2001:db8::/32 (RFC 3849):
the clients' LAN 2001:db8:c::/64 (router ::1, client ::2), the server 2001:db8:5::2, the app
2001:db8:a::80; the router forwards both families, and the app server answers on both.  It
serves HTTP on port 80 and HTTPS on 443, with a certificate for ``app.lab`` and its two
addresses signed by a CA made when the lab comes up (:meth:`Lab.app_ca`: the file to give
``curl --cacert``; no host resolves ``app.lab`` unless a test or a user adds it to a hosts file).

That is the ``router`` topology, the default: the lab of the demo and the course.  The
benchmark measures on the ``direct`` one instead (``Lab(topology="direct")``), where nothing
stands between a client and the server but a cable::

     client  eth0 198.51.100.2/24 ------- c0  server  203.0.113.2/32 (on lo)
     client2 eth0 198.51.100.3/24 ------- c1
     ...

Each client has a veth cable of its own straight into the server's namespace and an on-link
default route over it; the server holds the public address on its loopback and a host route
back to each client through that client's cable.  ``10.0.0.0/8``, where the tunnels' addresses
live, is unreachable over the cable (see :meth:`Lab._build_direct`).  No host forwards
anything, so what a tunnel costs is its own cost: a router hop would add a per-packet cost that
falls on a peer sending one datagram per packet and hardly on one that sends UDP GSO bursts (a
burst crosses veth-to-veth forwarding as one large packet), which is not what a benchmark
should weigh.

Every cable is a veth pair with an MTU of 1500, unless ``Lab(link_mtu={"server": 1280})`` says
otherwise for one of the router's links -- ``client`` (the clients' LAN: each client's cable and
the bridge), ``server`` or ``app`` -- both ends alike, as on a real link.  With
:meth:`Lab.pmtu_black_hole` the router also drops the ICMP messages that path MTU discovery lives
on, as many firewalls do: a narrow link then swallows every packet too big for it, in silence.

All addresses are documentation ranges (RFC 5737), and every command runs
inside the lab's own namespaces (``ip -n NS ...`` / ``ip netns exec NS ...``),
so the host's own interfaces and routes are never touched.  Every command the
lab runs is printed when ``verbose`` is on: a student can replay them by hand
on two real VMs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import VpneduError
from ..net import journal

CLIENT_NET = "198.51.100"
SERVER_NET = "203.0.113"
APP_NET = "192.0.2"
SERVER_PUBLIC = f"{SERVER_NET}.2"
APP_ADDRESS = f"{APP_NET}.80"
#: The same links' IPv6 prefixes (documentation space, RFC 3849): ``::1`` is the router's end.
CLIENT_NET6 = "2001:db8:c"
SERVER_NET6 = "2001:db8:5"
APP_NET6 = "2001:db8:a"
SERVER_PUBLIC6 = f"{SERVER_NET6}::2"
APP_ADDRESS6 = f"{APP_NET6}::80"
APP_PORT = 80
#: The app server's HTTPS port, and the name its certificate is for (with both its addresses).
APP_TLS_PORT = 443
APP_NAME = "app.lab"
#: Where the tunnels' own addresses live (vpnedu's 10.0.0.0/24, OpenVPN's 10.8.0.0/24).
TUNNEL_NETS = "10.0.0.0/8"

#: The router's links whose MTU ``Lab(link_mtu=...)`` sets (see the module docstring).
LINKS = ("client", "server", "app")
#: The router's nftables table of :meth:`Lab.pmtu_black_hole`.
BLACK_HOLE = "lab_pmtu_black_hole"

#: The lab's topologies, and what measuring across each means (the benchmark prints it).
TOPOLOGIES = {
    "direct": "each client on a veth cable of its own straight into the server's namespace, no "
              "router: every path pays only its own per-packet cost",
    "router": "client -> the lab's router namespace -> server: a forwarding hop whose per-packet "
              "cost falls on peers that send one datagram per packet and hardly on UDP GSO bursts "
              "(one large packet per burst), so it flatters vpnedu against wireguard-go 0.0.2022 "
              "and OpenVPN",
}


def stop_process(p: subprocess.Popen, grace: float = 10) -> None:
    """Stop a daemon the way a user would: SIGTERM (it undoes its host changes and exits), and
    SIGKILL only if it is still there after ``grace`` seconds (the next start then recovers)."""
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}")
                                       if os.path.exists(p)), None)
    if path is None:
        raise VpneduError(f"'{name}' is not installed", f"install it: apt-get install {package}")
    return path


@dataclass
class Lab:
    """A lab instance; ``prefix`` keeps several labs (and tests) apart."""

    prefix: str = "vpnedu-"
    clients: int = 1
    verbose: bool = False
    log: Callable[[str], None] = print
    base_dir: Path | None = None
    #: ``router`` (client -- router -- server, with the app server) or ``direct`` (a cable per
    #: client straight into the server, nothing else): see :data:`TOPOLOGIES`.
    topology: str = "router"
    #: The MTU of some of the router's links (see the module docstring): ``{"server": 1280}``;
    #: the others keep veth's 1500.
    link_mtu: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, int] = field(default_factory=dict)

    # ---------------------------------------------------------------- naming
    @property
    def dir(self) -> Path:
        return (self.base_dir or journal.run_dir()) / f"lab-{self.prefix.rstrip('-') or 'default'}"

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def client_names(self) -> list[str]:
        return ["client"] + [f"client{i}" for i in range(2, self.clients + 1)]

    def client_address(self, name: str) -> str:
        i = 1 if name == "client" else int(name[len("client"):])
        return f"{CLIENT_NET}.{1 + i}"

    def client_address6(self, name: str) -> str:
        """A client's IPv6 address on the router topology's LAN (``2001:db8:c::2`` for client)."""
        i = 1 if name == "client" else int(name[len("client"):])
        return f"{CLIENT_NET6}::{1 + i:x}"

    def hosts(self) -> list[str]:
        if self.topology == "direct":
            return ["server", *self.client_names()]
        return ["internet", "server", "app", *self.client_names()]

    # ---------------------------------------------------------------- running commands
    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [require_tool("ip", "iproute2"), *args]
        if self.verbose:
            self.log("  $ " + " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise VpneduError(f"'{' '.join(cmd)}' failed: {r.stderr.strip()}")
        return r

    def run(self, host: str, *cmd: str, check: bool = False, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command on a lab host and wait for it."""
        full = [require_tool("ip", "iproute2"), "netns", "exec", self.ns(host), *cmd]
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise VpneduError(f"[{host}] '{' '.join(cmd)}' failed: {(r.stderr or r.stdout).strip()}")
        return r

    def spawn(self, host: str, name: str, *cmd: str, env: dict | None = None) -> subprocess.Popen:
        """Start a long-running process on a lab host, its output in the lab dir."""
        out = open(self.dir / f"{name}.log", "ab")
        full = [require_tool("ip", "iproute2"), "netns", "exec", self.ns(host), *cmd]
        p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        out.close()
        self._procs[name] = p.pid
        self._save()
        return p

    def log_of(self, pid: int) -> Path | None:
        """The log file of a process :meth:`spawn` started (None for any other pid)."""
        for name, p in self._procs.items():
            if p == pid:
                return self.dir / f"{name}.log"
        return None

    def python(self, *args: str) -> list[str]:
        """The command line that runs this Python interpreter with ``args``."""
        return [sys.executable, *args]

    def vpnedu(self, *args: str) -> list[str]:
        """The command line that runs this vpnedu (same interpreter) with ``args``."""
        return [sys.executable, "-m", "vpnedu", *args]

    # ---------------------------------------------------------------- state
    def exists(self) -> bool:
        r = subprocess.run([require_tool("ip", "iproute2"), "netns", "list"], capture_output=True, text=True)
        names = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
        return self.ns("server") in names   # every topology has a server

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "lab.json").write_text(json.dumps({"prefix": self.prefix, "clients": self.clients,
                                                       "topology": self.topology, "link_mtu": self.link_mtu,
                                                       "procs": self._procs}))

    @classmethod
    def load(cls, prefix: str = "vpnedu-", **kw) -> "Lab":
        lab = cls(prefix=prefix, **kw)
        p = lab.dir / "lab.json"
        if p.exists():
            d = json.loads(p.read_text())
            lab.clients = d.get("clients", 1)
            lab.topology = d.get("topology", "router")
            lab.link_mtu = d.get("link_mtu", {})
            lab._procs = d.get("procs", {})
        return lab

    # ---------------------------------------------------------------- up / down
    def up(self) -> None:
        """Create the namespaces, cables, addresses and routes, and start the app server."""
        if os.geteuid() != 0:
            raise VpneduError("the lab creates network namespaces and needs root", "run it with sudo")
        require_tool("ip", "iproute2")
        if self.topology not in TOPOLOGIES:
            raise VpneduError(f"unknown lab topology {self.topology!r}", "choose from: " + ", ".join(TOPOLOGIES))
        if self.exists():
            raise VpneduError(f"the lab '{self.prefix}' is already up", "run 'vpnedu lab down' first")
        if self.link_mtu and self.topology != "router":
            raise VpneduError(f"the {self.topology} topology has no router links to set an MTU on",
                              "use the router topology (the default)")
        wrong = sorted(set(self.link_mtu) - set(LINKS))
        if wrong:
            raise VpneduError(f"the lab has no link {wrong[0]!r} to set an MTU on", "choose from: " + ", ".join(LINKS))
        for host, mtu in self.link_mtu.items():
            if not 1280 <= mtu <= 65535:
                raise VpneduError(f"MTU {mtu} for the {host} link is out of range",
                                  "use 1280 (IPv6's minimum: the lab is dual stack) to 65535")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save()
        try:
            self._resolver_files()
            self._build_direct() if self.topology == "direct" else self._build()
        except BaseException:
            self.down()
            raise

    def _resolver_files(self) -> None:
        """Give each namespace a resolver file of its own, ``/etc/netns/NS/resolv.conf``, which
        ``ip netns exec`` bind-mounts over ``/etc/resolv.conf`` (ip-netns(8)): a client whose
        config has ``DNS =`` (what ``add-client`` writes) then changes that file, never the
        host's.  It starts as a copy of the host's; :meth:`down` removes it."""
        try:
            text = Path("/etc/resolv.conf").read_bytes()
        except OSError:
            text = b""
        for h in self.hosts():
            d = Path("/etc/netns") / self.ns(h)
            d.mkdir(parents=True, exist_ok=True)
            (d / "resolv.conf").write_bytes(text)

    @staticmethod
    def _remove_resolver_file(ns: str) -> None:
        d = Path("/etc/netns") / ns
        (d / "resolv.conf").unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:
            pass

    def _build(self) -> None:
        inet, server, app = self.ns("internet"), self.ns("server"), self.ns("app")
        for h in self.hosts():
            self._ip("netns", "add", self.ns(h))
            self._ip("-n", self.ns(h), "link", "set", "lo", "up")
        # The internet router: a bridge for the clients' LAN, a cable each to server and app.
        self._ip("-n", inet, "link", "add", "br0", "type", "bridge")
        self._ip("-n", inet, "addr", "add", f"{CLIENT_NET}.1/24", "dev", "br0")
        self._ip("-n", inet, "link", "set", "br0", "up")
        for i, c in enumerate(self.client_names()):
            port = f"c{i}"
            self._ip("-n", inet, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns(c))
            self._ip("-n", inet, "link", "set", port, "master", "br0", "up")
            if "client" in self.link_mtu:
                self._set_mtu("client", (inet, port), (self.ns(c), "eth0"))
            self._ip("-n", self.ns(c), "addr", "add", f"{self.client_address(c)}/24", "dev", "eth0")
            self._ip("-n", self.ns(c), "link", "set", "eth0", "up")
            self._ip("-n", self.ns(c), "route", "add", "default", "via", f"{CLIENT_NET}.1")
            # IPv6 too; nodad: usable at once, no Duplicate Address Detection wait (RFC 4862 §5.4)
            # -- the lab knows its addresses are unique.
            self._ip("-n", self.ns(c), "addr", "add", f"{self.client_address6(c)}/64", "dev", "eth0", "nodad")
            self._ip("-n", self.ns(c), "-6", "route", "add", "default", "via", f"{CLIENT_NET6}::1")
        self._ip("-n", inet, "addr", "add", f"{CLIENT_NET6}::1/64", "dev", "br0", "nodad")
        if "client" in self.link_mtu:
            self._set_mtu("client", (inet, "br0"))
        for port, host, net, addr, net6, addr6 in (("s0", server, SERVER_NET, SERVER_PUBLIC, SERVER_NET6, SERVER_PUBLIC6),
                                                   ("a0", app, APP_NET, APP_ADDRESS, APP_NET6, APP_ADDRESS6)):
            self._ip("-n", inet, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host)
            self._ip("-n", inet, "addr", "add", f"{net}.1/24", "dev", port)
            self._ip("-n", inet, "addr", "add", f"{net6}::1/64", "dev", port, "nodad")
            self._ip("-n", inet, "link", "set", port, "up")
            name = "server" if port == "s0" else "app"
            if name in self.link_mtu:
                self._set_mtu(name, (inet, port), (host, "eth0"))
            self._ip("-n", host, "addr", "add", f"{addr}/24", "dev", "eth0")
            self._ip("-n", host, "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
            self._ip("-n", host, "link", "set", "eth0", "up")
            self._ip("-n", host, "route", "add", "default", "via", f"{net}.1")
            self._ip("-n", host, "-6", "route", "add", "default", "via", f"{net6}::1")
        self.run("internet", "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
        self.run("internet", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", check=True)
        # The application server, logging who connects.
        (self.dir / "app-access.log").write_text("")
        from .app import make_certificates
        tls = make_certificates(self.dir, [APP_NAME], [APP_ADDRESS, APP_ADDRESS6])
        self.spawn("app", "app", sys.executable, "-m", "vpnedu.netns_lab.app", "serve", "--port", str(APP_PORT),
                   "--log", str(self.dir / "app-access.log"), "--tls-port", str(APP_TLS_PORT),
                   "--cert", str(tls["cert"]), "--key", str(tls["key"]))
        self.wait_for_port("app", APP_PORT)
        self.wait_for_port("app", APP_TLS_PORT)

    def _set_mtu(self, link: str, *devices: tuple[str, str]) -> None:
        """``ip link set DEV mtu N`` on each (namespace, device) end of one of the router's links."""
        for ns, dev in devices:
            self._ip("-n", ns, "link", "set", dev, "mtu", str(self.link_mtu[link]))

    def pmtu_black_hole(self) -> None:
        """Make the router drop ICMP "fragmentation needed" and ICMPv6 "packet too big" -- those
        it forwards and those it sends itself -- as firewalls that filter all ICMP do (RFC 2923,
        "PMTUD black holes"): a host that sends packets too big for a narrow link is never told.
        The table's counters say how many were dropped (:meth:`black_hole_drops`)."""
        if self.topology != "router":
            raise VpneduError(f"the {self.topology} topology has no router to drop ICMP on",
                              "use the router topology (the default)")
        rules = ("    icmp type destination-unreachable icmp code frag-needed counter drop\n"
                 "    icmpv6 type packet-too-big counter drop\n")
        self.run("internet", "nft", "-f", "-", check=True, input=(
            f"table inet {BLACK_HOLE} {{\n"
            + "".join(f"  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n"
                      f"{rules}  }}\n" for hook in ("forward", "output"))
            + "}\n"))

    def black_hole_drops(self) -> int:
        """How many ICMP messages :meth:`pmtu_black_hole` has dropped so far."""
        import re
        out = self.run("internet", "nft", "list", "table", "inet", BLACK_HOLE, check=True).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    def _build_direct(self) -> None:
        """A cable per client straight into the server (see the module docstring): no router, no
        app server, no forwarding anywhere."""
        server = self.ns("server")
        for h in self.hosts():
            self._ip("netns", "add", self.ns(h))
            self._ip("-n", self.ns(h), "link", "set", "lo", "up")
        # The public address on the server's loopback: the same address behind every cable.
        self._ip("-n", server, "addr", "add", f"{SERVER_PUBLIC}/32", "dev", "lo")
        for i, c in enumerate(self.client_names()):
            port, addr = f"c{i}", self.client_address(c)
            self._ip("-n", server, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns(c))
            self._ip("-n", server, "link", "set", port, "up")
            self._ip("-n", server, "route", "add", f"{addr}/32", "dev", port, "src", SERVER_PUBLIC)
            self._ip("-n", self.ns(c), "addr", "add", f"{addr}/24", "dev", "eth0")
            self._ip("-n", self.ns(c), "link", "set", "eth0", "up")
            # On-link: the cable is this client's whole internet (the server answers ARP for
            # its loopback address on it).
            self._ip("-n", self.ns(c), "route", "add", "default", "dev", "eth0")
            # Tunnel addresses only through a tunnel.  Linux answers for any of its addresses on
            # any interface, so without this a client would reach the server's tunnel address
            # (10.0.0.1, OpenVPN's 10.8.0.1) over the bare cable before its tunnel is up -- a
            # ping "through the tunnel" would pass and a connection opened then would bypass it.
            # A tunnel's own /24 is more specific and wins once the tunnel is up.
            self._ip("-n", self.ns(c), "route", "add", "unreachable", TUNNEL_NETS, "metric", "4096")

    def impair(self, loss: float = 0, dup: float = 0, reorder: float = 0, delay_ms: float = 0,
               seed: int | None = None, port: int = 51820) -> None:
        """Make the internet router lose, duplicate, reorder and delay the VPN's datagrams
        (see :mod:`vpnedu.netns_lab.impair`)."""
        if self.topology != "router":
            raise VpneduError(f"the {self.topology} topology has no router to impair the network on",
                              "use the router topology (the default) for a bad network")
        args = ["--port", str(port), "--loss", str(loss), "--dup", str(dup), "--reorder", str(reorder),
                "--delay", str(delay_ms), "--stats", str(self.dir / "impair.json")]
        if seed is not None:
            args += ["--seed", str(seed)]
        self.spawn("internet", "impair", sys.executable, "-m", "vpnedu.netns_lab.impair", *args)
        end = time.time() + 10
        log = self.dir / "impair.log"
        while "impairing" not in (log.read_text() if log.exists() else ""):
            if time.time() > end:
                raise VpneduError(f"the impairment relay did not start: {log.read_text()[-300:]}")
            time.sleep(0.05)

    def impair_stats(self) -> dict:
        """Stop the impairment relay and return what it did (received, dropped, duplicated ...)."""
        pid = self._procs.get("impair")
        if pid is None:
            return {}
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        p = self.dir / "impair.json"
        end = time.time() + 10
        while not p.exists() and time.time() < end:
            time.sleep(0.05)
        return json.loads(p.read_text()) if p.exists() else {}

    def wait_for_udp(self, host: str, port: int, timeout: float = 10) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.run(host, "ss", "-Huln", f"sport = :{port}").stdout.strip():
                return
            time.sleep(0.05)
        raise VpneduError(f"[{host}] nothing listens on UDP port {port} after {timeout:g} s")

    def wait_for_port(self, host: str, port: int, timeout: float = 10) -> None:
        end = time.time() + timeout
        while time.time() < end:
            r = self.run(host, "ss", "-Htln", f"sport = :{port}")
            if r.stdout.strip():
                return
            time.sleep(0.05)
        raise VpneduError(f"[{host}] nothing listens on TCP port {port} after {timeout} s")

    def down(self) -> None:
        """Stop every lab process and delete the namespaces (and their cables) and lab files."""
        for h in self.hosts():
            ns = self.ns(h)
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        deadline = time.time() + 5
        for h in self.hosts():
            ns = self.ns(h)
            while time.time() < deadline:
                r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
                if not r.stdout.split():
                    break
                time.sleep(0.05)
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            self._forget_state(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            self._remove_resolver_file(ns)
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _forget_state(ns: str) -> None:
        """Delete what a server in namespace ``ns`` remembered of its peers (vpnedu.node.peerstate):
        the namespace goes, and a new one may get its inode number and so its file names."""
        try:
            inode = os.stat(f"/run/netns/{ns}").st_ino
        except OSError:
            return
        for p in journal.RUN_DIR.glob(f"*@{inode}.peers"):
            p.unlink(missing_ok=True)

    def app_ca(self) -> Path:
        """The CA certificate (PEM) that signed the app server's HTTPS certificate: what a client
        trusts to check it (``curl --cacert``, ``httpx.Client(verify=...)``)."""
        return self.dir / "app-ca.pem"

    def app_log(self) -> list[str]:
        p = self.dir / "app-access.log"
        return p.read_text().splitlines() if p.exists() else []
