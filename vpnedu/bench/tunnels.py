"""The paths the benchmark compares, each brought up and down in the namespace lab.

Every tunnel runs between the lab's ``client`` and ``server`` hosts, over the same
veth cables and router, and iperf3 targets the server's address *inside* the tunnel.
``bare`` is the same path with no tunnel at all: the ceiling.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from ..errors import VpneduError
from ..netns_lab.topology import SERVER_PUBLIC, Lab

DEB = {"wireguard-go": "wireguard-go", "wg": "wireguard-tools", "openvpn": "openvpn", "iperf3": "iperf3"}


def have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists()


def ensure_tools(tools: list[str], log) -> list[str]:
    """Install missing Debian packages when root; returns the tools still missing."""
    import os
    missing = [t for t in tools if not have(t)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted({DEB.get(t, t) for t in missing})
        log(f"installing Debian packages: {' '.join(pkgs)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], capture_output=True, env=env)
        missing = [t for t in tools if not have(t)]
    return missing


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), from /proc."""
    import os
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Tunnel:
    name = "?"
    needs: list[str] = []
    target = SERVER_PUBLIC

    def __init__(self, lab: Lab):
        self.lab = lab
        self.procs: list[subprocess.Popen] = []

    def up(self) -> None:
        pass

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def wait_ping(self, timeout: float = 20) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.lab.run("client", "ping", "-c", "1", "-W", "1", self.target).returncode == 0:
                return
            for p in self.procs:
                if p.poll() is not None:
                    break
            time.sleep(0.2)
        raise VpneduError(f"{self.name}: no ping through the tunnel to {self.target}",
                          f"see the logs in {self.lab.dir}")


class Bare(Tunnel):
    name = "bare"


class Vpnedu(Tunnel):
    target = "10.0.0.1"

    def __init__(self, lab: Lab, suite: str = "wireguard", extra: tuple[str, ...] = ()):
        super().__init__(lab)
        self.suite = suite
        self.extra = extra
        self.name = f"vpnedu-{suite}"
        self.dir = lab.dir / self.name

    def provision(self) -> None:
        import sys
        self.dir.mkdir(exist_ok=True)
        vp = [sys.executable, "-m", "vpnedu"]
        subprocess.run([*vp, "server", "init", "-c", f"{self.dir}/server.conf", "--endpoint", SERVER_PUBLIC,
                        "--suite", self.suite, "--force"], check=True, capture_output=True)
        for c in self.lab.client_names():
            subprocess.run([*vp, "server", "add-client", c, "-c", f"{self.dir}/server.conf", "--out",
                            str(self.dir)], check=True, capture_output=True)

    def up(self, clients: list[str] | None = None) -> None:
        if not (self.dir / "server.conf").exists():
            self.provision()
        allow = ["--allow-null-teaching"] if self.suite == "null-teaching" else []
        from ..node.control import netns_socket_path, wait_ready
        self.procs.append(self.lab.spawn("server", f"{self.name}-server",
                                         *self.lab.vpnedu("server", "-c", f"{self.dir}/server.conf",
                                                          "--forwarding", "none", *allow, *self.extra)))
        wait_ready(netns_socket_path(self.lab.ns("server")), self.procs[-1],
                   self.lab.dir / f"{self.name}-server.log", what="the vpnedu server")
        for c in clients or ["client"]:
            self.procs.append(self.lab.spawn(c, f"{self.name}-{c}",
                                             *self.lab.vpnedu("client", "-c", f"{self.dir}/{c}.conf", *allow,
                                                              *self.extra)))
        self.wait_ping()


class WireGuardGoPair(Tunnel):
    name = "wireguard-go"
    needs = ["wireguard-go", "wg"]
    target = "10.0.0.1"

    def up(self) -> None:
        from ..netns_lab.wireguard_go import WireGuardGo
        base = Vpnedu(self.lab, "wireguard")
        base.dir = self.lab.dir / "wireguard-go"
        if not (base.dir / "server.conf").exists():   # the same keys in every round
            base.provision()
        # Distinct names: wireguard-go's control sockets (/var/run/wireguard/NAME.sock) are shared
        # by every network namespace on the machine.
        self.ends = []
        for host, conf, ifname in (("server", "server.conf", "wgs0"), ("client", "client.conf", "wgc0")):
            end = WireGuardGo(self.lab, host, base.dir / conf, ifname=ifname)
            self.ends.append(end)   # before up(): a half-started end must be stopped too
            end.up()
        self.procs = [e.proc for e in self.ends]
        self.wait_ping()

    def down(self) -> None:
        for e in getattr(self, "ends", []):
            e.down()
        self.ends = []
        self.procs = []


class OpenVPN(Tunnel):
    """OpenVPN 2.6 over UDP with AES-256-GCM, TLS certificates made on the spot, MTU 1420 like
    WireGuard's (so no tunnel's packets are fragmented), data-channel offload off (no kernel module)."""

    name = "openvpn"
    needs = ["openvpn"]
    target = "10.8.0.1"

    def up(self) -> None:
        from .pki import make_pki
        d = self.lab.dir / "openvpn"
        pki = make_pki(d)
        common = ["--dev", "tun", "--proto", "udp4", "--data-ciphers", "AES-256-GCM", "--tun-mtu", "1420",
                  "--ca", str(pki["ca"]), "--disable-dco", "--verb", "3"]
        ovpn = shutil.which("openvpn") or "/usr/sbin/openvpn"
        self.procs.append(self.lab.spawn(
            "server", "openvpn-server", ovpn, *common, "--mode", "server", "--tls-server", "--port", "1194",
            "--topology", "subnet", "--server", "10.8.0.0", "255.255.255.0", "--dh", "none",
            "--cert", str(pki["server_crt"]), "--key", str(pki["server_key"])))
        time.sleep(0.3)
        self.procs.append(self.lab.spawn(
            "client", "openvpn-client", ovpn, *common, "--client", "--remote", SERVER_PUBLIC, "1194", "--nobind",
            "--remote-cert-tls", "server", "--cert", str(pki["client_crt"]), "--key", str(pki["client_key"])))
        log = self.lab.dir / "openvpn-client.log"
        end = time.time() + 30
        while time.time() < end:
            if log.exists() and "Initialization Sequence Completed" in log.read_text(errors="replace"):
                break
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        self.wait_ping(10)
