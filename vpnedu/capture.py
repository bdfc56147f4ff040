"""``vpnedu capture``: record the outer link and let Wireshark's dissector read it.

Recording is tcpdump's job (``-w FILE``, a UDP port filter); decoding is
tshark's.  tshark knows WireGuard: with ``-d udp.port==51820,wg`` it names each
datagram's message type, and with ``-o wg.keylog_file:KEYLOG`` -- the file
``vpnedu client|server --keylog`` writes -- it decrypts the handshake and then
shows the IP packets inside the tunnel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import VpneduError

FIELDS = ("frame.number", "frame.time_relative", "ip.src", "ip.dst", "wg.type", "wg.receiver", "wg.counter",
          "_ws.col.Protocol", "_ws.col.Info")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()),
                                      None)
    if path is None:
        raise VpneduError(f"'{name}' is not installed", f"install it: apt-get install {package}")
    return path


def record_command(interface: str, out: str, port: int = 51820, count: int = 0, duration: float = 0) -> list[str]:
    cmd = [_tool("tcpdump", "tcpdump"), "-i", interface, "-U", "--immediate-mode", "-n", "-s", "0", "-w", out]
    if count:
        cmd += ["-c", str(count)]
    if duration:
        cmd = ["timeout", "--signal=INT", str(duration)] + cmd
    return cmd + ["udp", "port", str(port)]


def decode(pcap: str | Path, port: int = 51820, keylog: str | Path | None = None,
           display_filter: str | None = None) -> list[dict[str, str]]:
    """Dissect a capture with tshark; one dict of FIELDS per frame."""
    cmd = [_tool("tshark", "tshark"), "-r", str(pcap), "-n", "-d", f"udp.port=={port},wg",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    if keylog:
        cmd += ["-o", f"wg.keylog_file:{keylog}"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for f in FIELDS:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise VpneduError(f"tshark could not read {pcap}: {r.stderr.strip()[-300:]}")
    rows = []
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        rows.append(dict(zip(FIELDS, parts + [""] * (len(FIELDS) - len(parts)))))
    return rows


WG_TYPES = {"1": "handshake initiation", "2": "handshake response", "3": "cookie reply", "4": "transport data"}


def describe(row: dict[str, str]) -> str:
    types = [WG_TYPES.get(t, t) for t in row.get("wg.type", "").split(",") if t]
    src = row["ip.src"].split(",")
    dst = row["ip.dst"].split(",")
    outer = f"{src[0]} -> {dst[0]}" if src and src[0] else ""
    inner = f"  inner: {src[1]} -> {dst[1]} {row['_ws.col.Protocol']} {row['_ws.col.Info']}" if len(src) > 1 else ""
    return f"{row['frame.number']:>4} {outer} WireGuard {', '.join(types) or '?'}{inner}"
