#!/usr/bin/env python3
"""The iperf3 figures of WireGuard's conformance script (shared/conformance/wireguard-go-netns.sh),
read from the output of one run, as a Markdown table (BENCHMARKS.md).

    ./wireguard-go-netns.sh "$(command -v vpnedu-wg)" > vpnedu.log 2>&1
    ./wireguard-go-netns.sh /usr/bin/wireguard-go > wggo.log 2>&1
    python3 scripts/conformance-figures.py vpnedu-wg=vpnedu.log wireguard-go=wggo.log

The script calls its ``tests`` four times -- IPv4 outside at the normal and at the big (~34 KB)
MTU, then IPv6 outside at both -- and each time moves 1 GB four ways: TCP over IPv4 and over IPv6
inside, UDP over IPv4 and IPv6 inside (``-b 0``: as fast as the sender can).  For TCP the table
gives the receiver's rate; for UDP the sender's rate, what arrived, and the loss.
"""

from __future__ import annotations

import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RATE = re.compile(r"([\d.]+) ([KMG]?)bits/sec")
LOSS = re.compile(r"\(([\d.]+)%\)")
BLOCKS = [("IPv4", "normal"), ("IPv4", "big"), ("IPv6", "normal"), ("IPv6", "big")]


def mbit(line: str) -> float:
    m = RATE.search(line)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}[m.group(2)]


def transfers(text: str) -> list[dict]:
    """One dict per ``iperf3 -Z ... -c`` of the log, in order."""
    out = []
    cur = None
    for raw in text.splitlines():
        line = ANSI.sub("", raw)
        if "[+]" in line and "iperf3 -Z" in line:
            cmd = line.split(": ", 1)[1]
            cur = {"udp": " -u " in cmd, "inner": "IPv6" if ":" in cmd.split(" -c ")[1] else "IPv4",
                   "sender": None, "receiver": None}
            out.append(cur)
        elif cur is not None:
            if line.rstrip().endswith("sender") and cur["sender"] is None:
                cur["sender"] = line
            elif line.rstrip().endswith("receiver") and cur["receiver"] is None:
                cur["receiver"] = line
            elif line.startswith("iperf Done."):
                cur = None
    return out


def cells(t: dict | None) -> str:
    if t is None or t["receiver"] is None:
        return "(not run)"
    if not t["udp"]:
        return f"{mbit(t['receiver']):,.0f}"
    loss = LOSS.search(t["receiver"])
    return (f"{mbit(t['sender']):,.0f} sent, {mbit(t['receiver']):,.0f} received"
            + (f" ({loss.group(1)}% lost)" if loss else ""))


def table(runs: dict[str, list[dict]]) -> str:
    names = list(runs)
    head = "| outer | TUN MTU | inner | " + " | ".join(f"{n}, Mbit/s" for n in names) + " |"
    rows = [head, "|" + "---|" * (3 + len(names))]
    for i, (outer, mtu) in enumerate(BLOCKS):
        for j, (proto, inner) in enumerate([("TCP", "IPv4"), ("TCP", "IPv6"), ("UDP", "IPv4"), ("UDP", "IPv6")]):
            k = i * 4 + j
            vals = [cells(runs[n][k] if k < len(runs[n]) else None) for n in names]
            rows.append(f"| {outer} | {mtu} | {proto} over {inner} | " + " | ".join(vals) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    runs = {}
    for arg in argv:
        name, eq, path = arg.partition("=")
        if not eq:
            name, path = arg, arg
        with open(path, encoding="utf-8", errors="replace") as f:
            runs[name] = transfers(f.read())
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
