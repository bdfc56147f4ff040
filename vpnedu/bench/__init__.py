"""``vpnedu bench``: vpnedu against wireguard-go, OpenVPN and the bare link, in one run.

Everything runs in one namespace lab on this machine: the same client, router and server
hosts, the same veth cables, the same iperf3.  Measurements alternate between the paths
round by round (A B C, A B C, ...) and the median of the rounds is reported, because a
shared 2-core machine is noisy and whatever disturbs one round then disturbs every path.

Each result is printed with its ratio to OpenVPN, to wireguard-go and to the bare path --
ratios measured side by side are the only numbers worth comparing across machines.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import VpneduError
from ..netns_lab.topology import SERVER_PUBLIC, Lab
from .tunnels import Bare, OpenVPN, Tunnel, Vpnedu, WireGuardGoPair, cpu_seconds, ensure_tools

TESTS = {"tcp1_up": ("1 stream, client -> server", ["-P", "1"]),
         "tcp1_down": ("1 stream, server -> client", ["-P", "1", "-R"]),
         "tcp4_up": ("4 streams, client -> server", ["-P", "4"]),
         "tcp4_down": ("4 streams, server -> client", ["-P", "4", "-R"])}
PATHS = ["bare", "vpnedu-wireguard", "vpnedu-wireguard-simple", "vpnedu-aes256gcm", "vpnedu-null-teaching",
         "wireguard-go", "openvpn"]
REFERENCES = ("openvpn", "wireguard-go", "bare")


@dataclass
class Settings:
    seconds: float = 10.0
    rounds: int = 3
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    tests: list[str] = field(default_factory=lambda: list(TESTS))
    handshake_clients: int = 200
    handshake_seconds: float = 10.0
    concurrency_clients: int = 4

    @classmethod
    def quick(cls) -> "Settings":
        return cls(seconds=2.0, rounds=1, handshake_clients=100, handshake_seconds=3.0)


@dataclass
class Results:
    settings: Settings
    mbps: dict[str, dict[str, list[float]]] = field(default_factory=dict)   # path -> test -> rounds
    rtt_ms: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)               # path -> [cpu s, GB]
    skipped: dict[str, str] = field(default_factory=dict)                   # path -> why
    handshakes: dict = field(default_factory=dict)
    concurrency: dict = field(default_factory=dict)

    def median(self, path: str, test: str) -> float | None:
        v = self.mbps.get(path, {}).get(test)
        return round(statistics.median(v), 1) if v else None

    def cpu_s_per_gb(self, path: str) -> float | None:
        c = self.cpu.get(path)
        return round(c[0] / c[1], 2) if c and c[1] > 0 and path != "bare" else None

    def to_json(self) -> dict:
        rows = {}
        for path in self.settings.paths:
            row = {"skipped": self.skipped.get(path)}
            for t in self.settings.tests:
                m = self.median(path, t)
                row[t] = {"rounds_mbit_s": self.mbps.get(path, {}).get(t, []), "median_mbit_s": m,
                          **{f"vs_{r}": ratio(m, self.median(r, t)) for r in REFERENCES}}
            row["rtt_ms"] = round(statistics.median(self.rtt_ms[path]), 3) if self.rtt_ms.get(path) else None
            row["cpu_s_per_gb"] = self.cpu_s_per_gb(path)
            rows[path] = row
        return {"machine": machine(), "settings": self.settings.__dict__, "paths": rows,
                "handshakes": self.handshakes, "concurrency": self.concurrency}


def vpnedu_path(path: str) -> tuple[str, str] | None:
    """``vpnedu-SUITE`` (fast datapath), ``vpnedu-SUITE-simple`` (readable datapath) or
    ``vpnedu-SUITE@SPEC`` (any ``--datapath`` SPEC, e.g. ``vpnedu-wireguard@fast,no-tso``)
    -> (suite, datapath); None if ``path`` is not a vpnedu path."""
    from ..protocol.suites import SUITES
    if not path.startswith("vpnedu-"):
        return None
    rest = path[len("vpnedu-"):]
    suite, at, spec = rest.partition("@")
    if not at:
        spec = "fast"
        if suite.endswith("-simple"):
            suite, spec = suite[:-len("-simple")], "simple"
    return (suite, spec) if suite in SUITES else None


def valid_path(path: str) -> bool:
    return path in PATHS or vpnedu_path(path) is not None


def one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def machine() -> dict:
    import os
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ver = {}
    for tool, args in (("wireguard-go", ["--version"]), ("openvpn", ["--version"]), ("iperf3", ["--version"])):
        path = shutil.which(tool) or f"/usr/sbin/{tool}"
        try:
            out = subprocess.run([path, *args], capture_output=True, text=True, timeout=5).stdout
            ver[tool] = out.strip().splitlines()[0] if out.strip() else "?"
        except OSError:
            ver[tool] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "versions": ver, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def to_stderr(line: str) -> None:
    """Progress goes to stderr: stdout keeps the results (and the table) alone."""
    print(line, file=sys.stderr, flush=True)


class Bench:
    """One benchmark run.  ``log`` gets the results as they come (a line per path and round);
    ``progress`` gets what is being done right now -- which round, which path, which test -- so a
    run of several minutes is never silent (stderr by default, away from the results)."""

    def __init__(self, settings: Settings, lab: Lab, log: Callable[[str], None] = print,
                 progress: Callable[[str], None] = to_stderr):
        self.s = settings
        self.lab = lab
        self.log = log
        self.progress = progress
        self.r = Results(settings)
        self._where = ""

    # ------------------------------------------------------------------ measuring
    def iperf(self, target: str, args: list[str], port: int = 5201, client: str = "client") -> float:
        cmd = ["iperf3", "-c", target, "-p", str(port), "-t", str(self.s.seconds), "-J", *args]
        r = self.lab.run(client, *cmd, timeout=self.s.seconds + 30)
        try:
            res = json.loads(r.stdout)
        except json.JSONDecodeError:
            raise VpneduError(f"iperf3 to {target} failed: {(r.stderr or r.stdout).strip()[-200:]}") from None
        if "error" in res:
            raise VpneduError(f"iperf3 to {target} failed: {res['error']}")
        end = res["end"]
        self._bytes += end["sum_received"]["bytes"]
        return end["sum_received"]["bits_per_second"] / 1e6

    def ping(self, target: str) -> float | None:
        r = self.lab.run("client", "ping", "-c", "20", "-i", "0.01", "-q", target, timeout=30)
        m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
        return float(m.group(1)) if m else None

    def make(self, path: str) -> Tunnel:
        if path == "bare":
            return Bare(self.lab)
        vp = vpnedu_path(path)
        if vp is not None:
            tun = Vpnedu(self.lab, vp[0], extra=("--datapath", vp[1]))
            tun.name = path
            return tun
        if path == "wireguard-go":
            return WireGuardGoPair(self.lab)
        if path == "openvpn":
            return OpenVPN(self.lab)
        raise VpneduError(f"unknown path {path!r}", "choose from: " + ", ".join(PATHS))

    def measure(self, path: str, rnd: int) -> None:
        tun = self.make(path)
        missing = ensure_tools(tun.needs, self.log) if tun.needs else []
        if missing:
            self.r.skipped[path] = f"not installed: {', '.join(missing)} (run as root to install it)"
            return
        try:
            self.progress(f"bench: {self._where}: {path}: setting up the tunnel")
            tun.up()
            self._bytes = 0
            cpu0 = cpu_seconds(tun.pids())
            pids = tun.pids()
            for t in self.s.tests:
                self.progress(f"bench: {self._where}: {path}: {t} ({TESTS[t][0]}, iperf3 {self.s.seconds:g} s)")
                v = self.iperf(tun.target, TESTS[t][1])
                self.r.mbps.setdefault(path, {}).setdefault(t, []).append(round(v, 1))
            cpu = cpu_seconds(pids) - cpu0
            c = self.r.cpu.setdefault(path, [0.0, 0.0])
            c[0] += cpu
            c[1] += self._bytes / 1e9
            self.progress(f"bench: {self._where}: {path}: ping RTT")
            rtt = self.ping(tun.target)
            if rtt is not None:
                self.r.rtt_ms.setdefault(path, []).append(rtt)
            self.log(f"  round {rnd + 1}: {path:22s} " + "  ".join(
                f"{t} {self.r.mbps[path][t][-1]:8.1f}" for t in self.s.tests) + f"  rtt {rtt} ms")
        except VpneduError as e:
            self.r.skipped[path] = f"failed: {one_line(e)}"
            self.log(f"  round {rnd + 1}: {path}: {one_line(e)}")
        finally:
            tun.down()
            time.sleep(0.3)

    def handshake_rate(self) -> None:
        """The vpnedu server's handshakes per second from many clients (all on one load process)."""
        import sys
        from .. import config as _config
        from ..protocol.keys import encode
        from .handshakes import make_configs
        tun = Vpnedu(self.lab, "wireguard")
        tun.dir = self.lab.dir / "handshakes"
        tun.provision()
        make_configs(str(tun.dir / "server.conf"), self.s.handshake_clients, str(tun.dir / "keys.json"))
        pub = encode(_config.load(tun.dir / "server.conf").interface.public_key)
        tun.procs.append(self.lab.spawn("server", "handshake-server",
                                        *self.lab.vpnedu("server", "-c", f"{tun.dir}/server.conf",
                                                         "--forwarding", "none")))
        try:
            from ..node.control import netns_socket_path, wait_ready
            wait_ready(netns_socket_path(self.lab.ns("server")), tun.procs[-1],
                       self.lab.dir / "handshake-server.log", what="the vpnedu server")
            cpu0 = cpu_seconds(tun.pids())
            r = self.lab.run("client", sys.executable, "-m", "vpnedu.bench.handshakes", f"{SERVER_PUBLIC}:51820",
                             pub, str(tun.dir / "keys.json"), str(self.s.handshake_seconds),
                             timeout=self.s.handshake_seconds + 60)
            res = json.loads(r.stdout)
            res["server_cpu_seconds"] = round(cpu_seconds(tun.pids()) - cpu0, 2)
            self.r.handshakes = res
        except (json.JSONDecodeError, VpneduError) as e:
            self.r.handshakes = {"skipped": f"failed: {one_line(e)}"}
        finally:
            tun.down()

    def concurrency(self) -> None:
        """Four clients send to the server at once: aggregate throughput and fairness."""
        n = min(self.s.concurrency_clients, self.lab.clients)
        clients = self.lab.client_names()[:n]
        tun = Vpnedu(self.lab, "wireguard")
        try:
            tun.up(clients)
            for c in clients[1:]:
                end = time.time() + 20
                while self.lab.run(c, "ping", "-c", "1", "-W", "1", "10.0.0.1").returncode != 0:
                    if time.time() > end:
                        raise VpneduError(f"{c} did not connect")
            procs = []
            for i, c in enumerate(clients):
                cmd = ["ip", "netns", "exec", self.lab.ns(c), "iperf3", "-c", "10.0.0.1", "-p", str(5201 + i),
                       "-t", str(self.s.seconds), "-J"]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            per = []
            for p in procs:
                out, _ = p.communicate(timeout=self.s.seconds + 30)
                per.append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6)
            total = sum(per)
            jain = total ** 2 / (len(per) * sum(x * x for x in per)) if total else 0
            self.r.concurrency = {"clients": n, "per_client_mbit_s": [round(x, 1) for x in per],
                                  "aggregate_mbit_s": round(total, 1), "jain_fairness": round(jain, 3)}
        except (VpneduError, json.JSONDecodeError, KeyError, subprocess.TimeoutExpired) as e:
            self.r.concurrency = {"skipped": f"failed: {one_line(e)}"}
        finally:
            tun.down()

    # ------------------------------------------------------------------ the run
    def run(self) -> Results:
        missing = ensure_tools(["iperf3"], self.log)
        if missing:
            raise VpneduError("iperf3 is not installed", "install it: apt-get install iperf3")
        self.log(f"lab: {self.lab.prefix}*  ({self.s.rounds} round(s), {self.s.seconds:g} s per test)")
        for i in range(self.s.concurrency_clients):
            self.lab.spawn("server", f"iperf3-{5201 + i}", "iperf3", "-s", "-p", str(5201 + i))
        for i in range(self.s.concurrency_clients):
            self.lab.wait_for_port("server", 5201 + i)
        for rnd in range(self.s.rounds):
            for i, path in enumerate(self.s.paths):
                if path in self.r.skipped and not self.r.mbps.get(path):
                    continue
                self._where = f"round {rnd + 1}/{self.s.rounds}, path {i + 1}/{len(self.s.paths)}"
                self.measure(path, rnd)
        self.progress(f"bench: handshake rate: {self.s.handshake_clients} clients for "
                      f"{self.s.handshake_seconds:g} s against the vpnedu server")
        self.handshake_rate()
        self.progress(f"bench: {self.s.concurrency_clients} clients at once through vpnedu "
                      f"(iperf3 {self.s.seconds:g} s)")
        self.concurrency()
        self.progress("bench: done")
        return self.r


# ---------------------------------------------------------------------- reporting
def table(r: Results) -> str:
    lines = []
    s = r.settings
    w = max([22, *(len(p) for p in s.paths)])   # the path column fits the longest name
    for t in s.tests:
        lines.append(f"TCP throughput, {TESTS[t][0]} (Mbit/s, median of {s.rounds})")
        lines.append(f"  {'path':{w}s} {'Mbit/s':>9s} {'x OpenVPN':>10s} {'x wg-go':>8s} {'x bare':>7s}")
        for p in s.paths:
            m = r.median(p, t)
            if m is None:
                lines.append(f"  {p:{w}s} {'-':>9s}  ({r.skipped.get(p, 'no result')})")
                continue
            rat = [ratio(m, r.median(ref, t)) for ref in REFERENCES]
            lines.append(f"  {p:{w}s} {m:9.1f} " + " ".join(
                f"{'-' if x is None else f'{x:.2f}':>{w}s}" for x, w in zip(rat, (10, 8, 7))))
        lines.append("")
    lines.append("Ping RTT (ms, median) and CPU seconds per GB moved (both ends of the tunnel)")
    for p in s.paths:
        rtt = statistics.median(r.rtt_ms[p]) if r.rtt_ms.get(p) else None
        cpu = r.cpu_s_per_gb(p)
        reason = f"  ({r.skipped[p]})" if p in r.skipped and rtt is None else ""
        lines.append(f"  {p:{w}s} rtt {'-' if rtt is None else f'{rtt:.3f}':>7s}   cpu "
                     f"{'-' if cpu is None else f'{cpu:.1f} s/GB':>10s}{reason}")
    lines.append("")
    h = r.handshakes
    if "handshakes_per_second" in h:
        lines.append(f"Handshakes: {h['handshakes_per_second']}/s completed by the vpnedu server from "
                     f"{h['clients']} clients ({h['handshakes_completed']} in {h['seconds']} s, "
                     f"{h.get('cookie_replies', 0)} cookie replies under load, {h['lost']} lost)")
    else:
        lines.append(f"Handshakes: - ({h.get('skipped', 'not run')})")
    c = r.concurrency
    if "aggregate_mbit_s" in c:
        lines.append(f"{c['clients']} clients at once (vpnedu-wireguard): {c['aggregate_mbit_s']} Mbit/s in all, "
                     f"per client {c['per_client_mbit_s']}, Jain fairness {c['jain_fairness']}")
    else:
        lines.append(f"Clients at once: - ({c.get('skipped', 'not run')})")
    return "\n".join(lines)


def chart(r: Results, path: str | Path) -> str | None:
    """A bar chart of the medians; returns None or why it could not be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    s = r.settings
    paths = [p for p in s.paths if r.mbps.get(p)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(s.tests))
    for i, t in enumerate(s.tests):
        vals = [r.median(p, t) or 0 for p in paths]
        ax.bar([x + i * width for x in range(len(paths))], vals, width, label=TESTS[t][0])
    ax.set_xticks([x + width * (len(s.tests) - 1) / 2 for x in range(len(paths))])
    ax.set_xticklabels(paths, rotation=15)
    ax.set_ylabel("Mbit/s (median)")
    ax.set_yscale("log")
    ax.set_title(f"vpnedu bench: iperf3 TCP, {s.seconds:g} s x {s.rounds} round(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
