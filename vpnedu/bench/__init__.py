"""``vpnedu bench``: vpnedu against wireguard-go, OpenVPN and the bare link, in one run.

Everything runs in one namespace lab on this machine, on the same cables and with the same
iperf3.  By default the lab is the ``direct`` topology: each client on a veth cable straight into
the server, no router between them (:data:`vpnedu.netns_lab.topology.TOPOLOGIES`), so every path pays
its own per-packet cost and nothing else.  ``--topology router`` measures across the lab's
router namespace instead, as the course's lab is built; the printed table says which one ran.

Measurements alternate between the paths round by round (A B C, A B C, ...) and the median of
the rounds is reported, because a shared machine is noisy and whatever disturbs one round then
disturbs every path.  Each result carries its ratio to every other path measured in the same
run -- ratios measured side by side are the only numbers worth comparing across machines.  For
each path the bench also reports the idle ping RTT through the tunnel, the CPU seconds per GB
moved and the peak resident memory of each of its two daemons (the client's and the server's).
The paths themselves are in :mod:`vpnedu.bench.tunnels`.
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
from ..netns_lab.topology import SERVER_PUBLIC, TOPOLOGIES, Lab
from .tunnels import PATHS, Tunnel, Vpnedu, cpu_seconds, ensure_tools, make, peak_rss_mib, spec_problem

TESTS = {"tcp1_up": ("1 stream, client -> server", ["-P", "1"]),
         "tcp1_down": ("1 stream, server -> client", ["-P", "1", "-R"]),
         "tcp4_up": ("4 streams, client -> server", ["-P", "4"]),
         "tcp4_down": ("4 streams, server -> client", ["-P", "4", "-R"])}
ROLES = ("client", "server")
#: Pings for the idle RTT: 20 of them, 50 ms apart, on a tunnel that carries nothing else.
PING_COUNT, PING_INTERVAL = 20, 0.05


@dataclass
class Settings:
    #: Seconds per iperf3 test (whole seconds: iperf3 reads ``-t`` as an integer).
    seconds: int = 10
    rounds: int = 3
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    tests: list[str] = field(default_factory=lambda: list(TESTS))
    topology: str = "direct"
    handshake_clients: int = 200
    handshake_seconds: float = 10.0
    concurrency_clients: int = 4

    @classmethod
    def quick(cls) -> "Settings":
        """A correctness run (every path comes up, every number and ratio is computed) of about a
        minute and a half: one round, 1 s per test.  Its numbers are not worth comparing."""
        return cls(seconds=1, rounds=1, handshake_clients=100, handshake_seconds=3.0)


@dataclass
class Results:
    settings: Settings
    mbps: dict[str, dict[str, list[float]]] = field(default_factory=dict)   # path -> test -> rounds
    rtt_ms: dict[str, list[float]] = field(default_factory=dict)            # path -> rounds
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)          # path -> role -> CPU s
    gb: dict[str, float] = field(default_factory=dict)                      # path -> GB moved meanwhile
    rss: dict[str, dict[str, float]] = field(default_factory=dict)          # path -> role -> peak MiB
    labels: dict[str, str] = field(default_factory=dict)                    # path -> name in the table
    what: dict[str, str] = field(default_factory=dict)                      # path -> what it is
    skipped: dict[str, str] = field(default_factory=dict)                   # path -> why
    handshakes: dict = field(default_factory=dict)
    concurrency: dict = field(default_factory=dict)

    def label(self, path: str) -> str:
        return self.labels.get(path, path)

    def median(self, path: str, test: str) -> float | None:
        v = self.mbps.get(path, {}).get(test)
        return round(statistics.median(v), 1) if v else None

    def ratios(self, path: str, test: str) -> dict[str, float | None]:
        """This path's median over every other path's, in the same run (None where one is missing)."""
        m = self.median(path, test)
        return {q: ratio(m, self.median(q, test)) for q in self.settings.paths if q != path}

    def rtt(self, path: str) -> float | None:
        v = self.rtt_ms.get(path)
        return round(statistics.median(v), 3) if v else None

    def cpu_s_per_gb(self, path: str) -> dict[str, float] | None:
        """CPU seconds per GB moved, of each daemon and of both (None for ``bare``: no daemons)."""
        c, gb = self.cpu.get(path), self.gb.get(path, 0.0)
        if not c or gb <= 0:
            return None
        per = {role: round(c.get(role, 0.0) / gb, 2) for role in ROLES}
        per["both"] = round(sum(c.values()) / gb, 2)
        return per

    def to_json(self) -> dict:
        rows = {}
        for path in self.settings.paths:
            row = {"label": self.label(path), "what": self.what.get(path), "skipped": self.skipped.get(path)}
            for t in self.settings.tests:
                row[t] = {"rounds_mbit_s": self.mbps.get(path, {}).get(t, []), "median_mbit_s": self.median(path, t),
                          "vs": self.ratios(path, t)}
            row["rtt_ms"] = self.rtt(path)
            row["rtt_ms_rounds"] = self.rtt_ms.get(path, [])
            row["cpu_s_per_gb"] = self.cpu_s_per_gb(path)
            row["peak_rss_mib"] = self.rss.get(path)
            rows[path] = row
        topo = self.settings.topology
        return {"machine": machine(), "topology": {"name": topo, "meaning": TOPOLOGIES[topo]},
                "settings": self.settings.__dict__, "paths": rows,
                "handshakes": self.handshakes, "concurrency": self.concurrency}


def valid_path(path: str) -> bool:
    return spec_problem(path) is None


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
            # The daemons run on this interpreter (Lab.vpnedu): its build matters (scripts/setup.sh).
            "python_executable": str(Path(sys.executable).resolve()),
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
        self._bytes = 0
        self._iperf_servers: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------------ measuring
    def start_iperf_server(self, port: int, wait: bool = True) -> None:
        """``iperf3 -s`` on ``port`` in the server's namespace; one already there is stopped first."""
        old = self._iperf_servers.pop(port, None)
        if old is not None and old.poll() is None:
            old.terminate()
            try:
                old.wait(5)
            except subprocess.TimeoutExpired:
                old.kill()
                old.wait()
        self._iperf_servers[port] = self.lab.spawn("server", f"iperf3-{port}", "iperf3", "-s", "-p", str(port))
        if wait:
            self.lab.wait_for_port("server", port)

    def iperf(self, target: str, args: list[str], port: int = 5201, client: str = "client") -> float:
        cmd = ["iperf3", "-c", target, "-p", str(port), "-t", str(self.s.seconds), "-J", *args]
        # iperf3's server takes one test at a time.  It finishes the last one (its results, its
        # sockets) a moment after the client has its numbers, so on a busy machine the next test
        # can find it "busy running a test": wait a little.  And when the last path's tunnel went
        # down before that final exchange crossed it, the server waits for a client that is gone
        # (--rcv-timeout, 120 s by default): then start a fresh server.  Neither is the new path's
        # failure.
        deadline, restarted = time.monotonic() + 3, False
        while True:
            r = self.lab.run(client, *cmd, timeout=self.s.seconds + 30)
            try:
                res = json.loads(r.stdout)
            except json.JSONDecodeError:
                raise VpneduError(f"iperf3 to {target} failed: {(r.stderr or r.stdout).strip()[-200:]}") from None
            if "busy" not in str(res.get("error", "")):
                break
            if time.monotonic() < deadline:
                time.sleep(0.5)
            elif not restarted and port in self._iperf_servers:
                self.start_iperf_server(port)
                restarted = True
            else:
                break
        if "error" in res:
            raise VpneduError(f"iperf3 to {target} failed: {res['error']}")
        end = res["end"]
        self._bytes += end["sum_received"]["bytes"]
        return end["sum_received"]["bits_per_second"] / 1e6

    def ping(self, target: str) -> float | None:
        """The mean RTT of :data:`PING_COUNT` pings through an otherwise idle tunnel, in ms."""
        r = self.lab.run("client", "ping", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL), "-q", target, timeout=30)
        m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
        return float(m.group(1)) if m else None

    def make(self, path: str) -> Tunnel:
        tun = make(path, self.lab)
        if path not in self.r.labels:
            # Two specs may resolve to one name (two worktrees of one commit): then the spec names it.
            taken = set(self.r.labels.values())
            self.r.labels[path] = tun.name if tun.name not in taken else path
        if path not in self.r.what:
            self.r.what[path] = tun.describe()
        return tun

    def measure(self, path: str, rnd: int) -> None:
        tun = self.make(path)
        missing = ensure_tools(tun.needs, self.log) if tun.needs else []
        if missing:
            self.r.skipped[path] = f"not installed: {', '.join(missing)} (run as root to install it)"
            return
        name = self.r.label(path)
        try:
            self.progress(f"bench: {self._where}: {name}: setting up the tunnel")
            tun.up()
            # Idle first: the RTT of a tunnel that carries nothing else (no batch to wait for).
            self.progress(f"bench: {self._where}: {name}: ping RTT")
            time.sleep(0.2)
            rtt = self.ping(tun.target)
            if rtt is not None:
                self.r.rtt_ms.setdefault(path, []).append(rtt)
            self._bytes = 0
            ends = tun.daemons()
            cpu0 = {role: cpu_seconds([pid]) for role, pid in ends.items()}
            for t in self.s.tests:
                self.progress(f"bench: {self._where}: {name}: {t} ({TESTS[t][0]}, iperf3 {self.s.seconds:g} s)")
                v = self.iperf(tun.target, TESTS[t][1])
                self.r.mbps.setdefault(path, {}).setdefault(t, []).append(round(v, 1))
            if ends:
                cpu = self.r.cpu.setdefault(path, {})
                rss = self.r.rss.setdefault(path, {})
                for role, pid in ends.items():
                    cpu[role] = cpu.get(role, 0.0) + cpu_seconds([pid]) - cpu0[role]
                    peak = peak_rss_mib(pid)
                    if peak is not None:
                        rss[role] = max(rss.get(role, 0.0), peak)
                self.r.gb[path] = self.r.gb.get(path, 0.0) + self._bytes / 1e9
            self.log(f"  round {rnd + 1}: {name:22s} " + "  ".join(
                f"{t} {self.r.mbps[path][t][-1]:8.1f}" for t in self.s.tests) + f"  rtt {rtt} ms")
        except VpneduError as e:
            self.r.skipped[path] = f"failed: {one_line(e)}"
            self.log(f"  round {rnd + 1}: {name}: {one_line(e)}")
        finally:
            tun.down()
            time.sleep(0.3)

    def handshake_rate(self) -> None:
        """The vpnedu server's handshakes per second from many clients (all on one load process)."""
        from .. import config as _config
        from ..node.control import netns_socket_path, wait_ready
        from ..protocol.keys import encode
        from .handshakes import make_configs
        tun = Vpnedu(self.lab, "wireguard")
        tun.dir = self.lab.dir / "handshakes"
        try:
            tun.provision()
            make_configs(str(tun.dir / "server.conf"), self.s.handshake_clients, str(tun.dir / "keys.json"))
            pub = encode(_config.load(tun.dir / "server.conf").interface.public_key)
            tun.procs.append(self.lab.spawn("server", "handshake-server",
                                            *self.lab.vpnedu("server", "-c", f"{tun.dir}/server.conf",
                                                             "--forwarding", "none")))
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
        procs: list[subprocess.Popen] = []
        try:
            # Fresh iperf3 servers: one may still wait for a client of the last path that is gone
            # (see iperf), and these clients start at once, with no retry.
            for i in range(n):
                self.start_iperf_server(5201 + i, wait=False)
            for i in range(n):
                self.lab.wait_for_port("server", 5201 + i)
            tun.up(clients)
            for c in clients[1:]:
                end = time.time() + 20
                while self.lab.run(c, "ping", "-c", "1", "-W", "1", "10.0.0.1").returncode != 0:
                    if time.time() > end:
                        raise VpneduError(f"{c} did not connect")
            for i, c in enumerate(clients):
                cmd = ["ip", "netns", "exec", self.lab.ns(c), "iperf3", "-c", "10.0.0.1", "-p", str(5201 + i),
                       "-t", str(self.s.seconds), "-J"]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            per = []
            for c, p in zip(clients, procs):
                out, err = p.communicate(timeout=self.s.seconds + 30)
                res = json.loads(out or "{}")
                if "error" in res or "sum_received" not in res.get("end", {}):
                    raise VpneduError(f"iperf3 from {c} failed: {res.get('error') or err.strip()[-200:] or 'no result'}")
                per.append(res["end"]["sum_received"]["bits_per_second"] / 1e6)
            total = sum(per)
            jain = total ** 2 / (len(per) * sum(x * x for x in per)) if total else 0
            self.r.concurrency = {"clients": n, "per_client_mbit_s": [round(x, 1) for x in per],
                                  "aggregate_mbit_s": round(total, 1), "jain_fairness": round(jain, 3)}
        except (VpneduError, json.JSONDecodeError, KeyError, subprocess.TimeoutExpired) as e:
            self.r.concurrency = {"skipped": f"failed: {one_line(e)}"}
        finally:
            for p in procs:   # one that hung must not outlive the run
                if p.poll() is None:
                    p.kill()
                    p.wait()
            tun.down()

    # ------------------------------------------------------------------ the run
    def run(self) -> Results:
        missing = ensure_tools(["iperf3"], self.log)
        if missing:
            raise VpneduError("iperf3 is not installed", "install it: apt-get install iperf3")
        self.log(f"lab: {self.lab.prefix}*, {self.s.topology} topology  ({self.s.rounds} round(s), "
                 f"{self.s.seconds:g} s per test)")
        for i in range(self.s.concurrency_clients):
            self.start_iperf_server(5201 + i, wait=False)
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
def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(r: Results) -> str:
    """The results for people: which topology, what each path is, then throughput with the ratio
    of every row to every column's path, RTT, CPU and memory, handshakes and clients at once."""
    s = r.settings
    paths = s.paths
    names = [r.label(p) for p in paths]
    w = max([12, *(len(n) for n in names)]) + 5        # "[N] " + the longest name
    lines = [f"Topology: {s.topology} -- {TOPOLOGIES[s.topology]}.", "", "Paths:"]
    for i, p in enumerate(paths, 1):
        lines.append(f"  {f'[{i}] {r.label(p)}':{w}s} {r.what.get(p, '')}")
    lines.append("")
    cols = "".join(f"{f'x[{i}]':>7s}" for i in range(1, len(paths) + 1))
    for t in s.tests:
        lines.append(f"TCP throughput, {TESTS[t][0]} (Mbit/s, median of {s.rounds} round(s); x[N]: this row "
                     f"over path [N], same run)")
        lines.append(f"  {'path':{w}s} {'Mbit/s':>9s}{cols}")
        for i, p in enumerate(paths, 1):
            m = r.median(p, t)
            row = f"  {f'[{i}] {r.label(p)}':{w}s} "
            if m is None:
                lines.append(row + f"{'-':>9s}  ({r.skipped.get(p, 'no result')})")
                continue
            rat = r.ratios(p, t)
            got = len(r.mbps.get(p, {}).get(t, []))
            # A path that failed in some rounds: its median is of fewer rounds, and the table says so.
            short = f"  (only {got} of {s.rounds} rounds; {r.skipped.get(p, 'no result')})" if got < s.rounds else ""
            lines.append((row + f"{m:9.1f}" + "".join(
                f"{'' if q == p else fmt(rat[q], '.2f'):>7s}" for q in paths)).rstrip() + short)
        lines.append("")
    lines.append(f"Idle ping RTT (ms: mean of {PING_COUNT} pings {PING_INTERVAL * 1000:g} ms apart, median of the "
                 f"rounds); the tunnel's two daemons: CPU seconds per GB moved, peak RSS (MiB)")
    lines.append(f"  {'path':{w}s} {'RTT ms':>7s}   {'CPU s/GB: client':>16s} {'server':>7s} {'both':>7s}   "
                 f"{'RSS: client':>11s} {'server':>7s}")
    for i, p in enumerate(paths, 1):
        cpu = r.cpu_s_per_gb(p) or {}
        rss = r.rss.get(p) or {}
        reason = f"  ({r.skipped[p]})" if p in r.skipped and r.rtt(p) is None else ""
        lines.append(f"  {f'[{i}] {r.label(p)}':{w}s} {fmt(r.rtt(p), '.3f'):>7s}   "
                     f"{fmt(cpu.get('client'), '.1f'):>16s} {fmt(cpu.get('server'), '.1f'):>7s} "
                     f"{fmt(cpu.get('both'), '.1f'):>7s}   {fmt(rss.get('client'), '.1f'):>11s} "
                     f"{fmt(rss.get('server'), '.1f'):>7s}{reason}")
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
    """The run for people, as a PNG: the throughput medians (one group of bars per path, log
    scale), and under them the idle RTT and the CPU seconds per GB of each path's two daemons.
    Returns None, or why it could not be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    s = r.settings
    paths = [p for p in s.paths if r.mbps.get(p)]
    names = [r.label(p) for p in paths]
    fig = plt.figure(figsize=(max(8.0, 1.4 * len(paths) + 2), 8.0))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 2))
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / max(1, len(s.tests))
    for i, t in enumerate(s.tests):
        vals = [r.median(p, t) or 0 for p in paths]
        bars = ax.bar([x + i * width for x in range(len(paths))], vals, width, label=TESTS[t][0])
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in vals], fontsize=6, rotation=90, padding=2)
    ax.set_xticks([x + width * (len(s.tests) - 1) / 2 for x in range(len(paths))])
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("Mbit/s (median)")
    ax.set_yscale("log")
    ax.set_title(f"vpnedu bench, {s.topology} topology: iperf3 TCP, {s.seconds:g} s x {s.rounds} round(s)")
    ax.legend(fontsize=8)
    for col, (title, spec, values) in enumerate((
            ("idle ping RTT (ms)", ".2f", [r.rtt(p) or 0 for p in paths]),
            ("CPU s per GB, both daemons", ".1f", [(r.cpu_s_per_gb(p) or {}).get("both", 0) for p in paths]))):
        sub = fig.add_subplot(grid[1, col])
        bars = sub.bar(range(len(paths)), values, color="tab:gray")
        sub.bar_label(bars, labels=[format(v, spec) if v else "-" for v in values], fontsize=7, padding=2)
        sub.set_xticks(range(len(paths)))
        sub.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        sub.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
