"""``vpnedu bench --proxies``: one download through each way the server forwards, side by side.

The explicit proxies (SOCKS5, the HTTP proxy's CONNECT) and the transparent proxy all end the
client's TCP connection in the server's Python process and open a second one to the
destination; NAT leaves both to the kernel.  This benchmark fetches the same file from the
lab's app server (``/random/N``, known bytes) with curl from the client, four ways:

==============  ==========================================================================
``nat``         ``curl URL``: the server forwards in ``nat`` mode (the kernel's masquerade)
``socks5``      ``curl --socks5-hostname 10.0.0.1:1080 URL``, the same server
``http-connect`` ``curl -x http://10.0.0.1:3128 --proxytunnel URL``, the same server
``proxy``       ``curl URL`` with the server in ``proxy`` mode (TPROXY, :mod:`vpnedu.proxy`)
==============  ==========================================================================

The app server sits behind the lab's router, so this runs on the ``router`` topology: every
way crosses the same router hop after the server, and only the server's part differs.  The
ways alternate round by round and the median is reported, with each way's ratio to NAT and
the server daemon's CPU seconds per GB.

Then the load: many SOCKS5 connections at once, each echoing a block through the app's TCP
echo service (:mod:`vpnedu.bench.socks_load`), with the server daemon's peak open files and
resident memory, and whether its open files went back to where they were.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import VpneduError
from ..netns_lab.topology import APP_ADDRESS, Lab
from .tunnels import Vpnedu, cpu_seconds, peak_rss_mib

WAYS = ("nat", "socks5", "http-connect", "proxy")
CURL = {"nat": (), "socks5": ("--socks5-hostname", "10.0.0.1:1080"),
        "http-connect": ("-x", "http://10.0.0.1:3128", "--proxytunnel"), "proxy": ()}
ECHO_PORT = 7


@dataclass
class ProxySettings:
    rounds: int = 3
    size: int = 20 * 1024 * 1024          #: bytes per download (20 MiB)
    connections: int = 500                #: concurrent SOCKS5 connections in the load run
    echo_bytes: int = 64 * 1024           #: what each of them echoes

    @classmethod
    def quick(cls) -> "ProxySettings":
        """A correctness run: one round of 4 MiB, 50 connections.  Not numbers to compare."""
        return cls(rounds=1, size=4 * 1024 * 1024, connections=50)


@dataclass
class ProxyResults:
    settings: ProxySettings
    mbps: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    gb: dict[str, float] = field(default_factory=dict)
    load: dict = field(default_factory=dict)

    def median(self, way: str) -> float | None:
        v = self.mbps.get(way)
        return statistics.median(v) if v else None

    def to_json(self) -> dict:
        return {"settings": self.settings.__dict__, "mbit_s": self.mbps,
                "median_mbit_s": {w: self.median(w) for w in self.mbps},
                "ratio_to_nat": {w: _ratio(self.median(w), self.median("nat")) for w in self.mbps},
                "server_cpu_s_per_gb": {w: round(self.cpu_s[w] / self.gb[w], 2) for w in self.cpu_s if self.gb.get(w)},
                "load": self.load}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class ProxyBench:
    def __init__(self, settings: ProxySettings, lab: Lab, log: Callable[[str], None] = print,
                 progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)):
        self.s, self.lab, self.log, self.progress = settings, lab, log, progress
        self.r = ProxyResults(settings)

    def fetch(self, way: str) -> float:
        """One download the ``way`` way -> Mbit/s (curl's average speed); the bytes are checked."""
        url = f"http://{APP_ADDRESS}/random/{self.s.size}"
        r = self.lab.run("client", "curl", "-sS", "--fail", "--max-time", "120", *CURL[way], "-o", "/dev/null",
                         "-w", "%{size_download} %{speed_download}", url, timeout=150)
        if r.returncode != 0:
            raise VpneduError(f"{way}: curl failed: {r.stderr.strip()[-200:]}")
        got, speed = r.stdout.split()
        if int(got) != self.s.size:
            raise VpneduError(f"{way}: curl got {got} bytes of {self.s.size}")
        return float(speed) * 8 / 1e6

    def measure(self, tun: Vpnedu, way: str, rnd: int) -> None:
        pid = tun.daemons()["server"]
        cpu0 = cpu_seconds([pid])
        self.progress(f"bench --proxies: round {rnd + 1}/{self.s.rounds}: {way} ({self.s.size >> 20} MiB)")
        v = self.fetch(way)
        self.r.mbps.setdefault(way, []).append(round(v, 1))
        self.r.cpu_s[way] = self.r.cpu_s.get(way, 0.0) + cpu_seconds([pid]) - cpu0
        self.r.gb[way] = self.r.gb.get(way, 0.0) + self.s.size / 1e9
        self.log(f"  round {rnd + 1}: {way:13s} {v:8.1f} Mbit/s")

    def load(self, tun: Vpnedu) -> None:
        """:data:`ProxySettings.connections` SOCKS5 connections at once, each echoing a block."""
        pid = tun.daemons()["server"]
        before = open_files(pid)
        self.progress(f"bench --proxies: {self.s.connections} SOCKS5 connections at once, "
                      f"{self.s.echo_bytes >> 10} KiB echoed each")
        r = self.lab.run("client", sys.executable, "-m", "vpnedu.bench.socks_load", "10.0.0.1:1080",
                         f"{APP_ADDRESS}:{ECHO_PORT}", str(self.s.connections), str(self.s.echo_bytes), timeout=180)
        try:
            res = json.loads(r.stdout)
        except json.JSONDecodeError:
            raise VpneduError(f"the SOCKS5 load failed: {(r.stderr or r.stdout).strip()[-200:]}") from None
        end = time.time() + 10     # the server's ends close as the clients' FINs arrive
        while open_files(pid) > before and time.time() < end:
            time.sleep(0.1)
        res.update(server_open_files_before=before, server_open_files_after=open_files(pid),
                   server_peak_rss_mib=peak_rss_mib(pid))
        self.r.load = res
        self.log(f"  load: {res['ok']}/{res['connections']} connections echoed {res['bytes_each']} B in "
                 f"{res['wall_s']} s (slowest {res['max_s']} s); server open files {before} -> "
                 f"{res['server_open_files_after']}")

    def run(self) -> ProxyResults:
        self.log(f"lab: {self.lab.prefix}*, router topology ({self.s.rounds} round(s), "
                 f"{self.s.size >> 20} MiB per download)")
        for rnd in range(self.s.rounds):
            for mode, ways in (("nat", ("nat", "socks5", "http-connect")), ("proxy", ("proxy",))):
                tun = Vpnedu(self.lab, "wireguard")
                tun.forwarding = mode
                try:
                    tun.up()
                    for way in ways:
                        self.measure(tun, way, rnd)
                    if mode == "nat" and rnd == self.s.rounds - 1:
                        self.load(tun)
                finally:
                    tun.down()
        return self.r


def table(r: ProxyResults) -> str:
    nat = r.median("nat")
    lines = [f"one {r.settings.size >> 20} MiB download from the app server, median of {r.settings.rounds} "
             "round(s), router topology",
             f"  {'way':13s} {'Mbit/s':>9s} {'vs nat':>7s} {'server CPU s/GB':>16s}"]
    for way in WAYS:
        m = r.median(way)
        ratio = _ratio(m, nat)
        cpu = r.cpu_s.get(way, 0) / r.gb[way] if r.gb.get(way) else None
        lines.append(f"  {way:13s} {'-' if m is None else f'{m:9.1f}':>9s} "
                     f"{'-' if ratio is None else f'{ratio:.2f}x':>7s} {'-' if cpu is None else f'{cpu:.1f}':>16s}")
    if r.load:
        ld = r.load
        lines += ["", f"{ld['connections']} SOCKS5 connections at once, {ld['bytes_each'] >> 10} KiB echoed each: "
                      f"{ld['ok']} ok in {ld['wall_s']} s (median {ld['median_s']} s, p99 {ld['p99_s']} s); "
                      f"server open files {ld['server_open_files_before']} -> {ld['server_open_files_after']}, "
                      f"peak RSS {ld['server_peak_rss_mib']} MiB"
                      + (f"; failed: {ld['failed']}" if ld["failed"] else "")]
    return "\n".join(lines)
