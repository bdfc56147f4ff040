"""A bad network on purpose: loss, duplication, reordering and delay on the lab's internet router.

Real networks lose, duplicate, reorder and delay packets; a VPN must survive all four (and the
replay window must catch every duplicate).  Linux's ``tc netem`` would do it, but is not
available everywhere, so the lab's router impairs the tunnel's packets itself, in userspace:

* an nftables TPROXY rule in the router's *prerouting* hook diverts every UDP datagram to or
  from the VPN port, in both directions, to this relay's socket (the router forwards
  everything else untouched);
* for each datagram the relay rolls the dice: drop it (``--loss``), hold it for ``--delay``
  milliseconds, hold it longer so that later packets overtake it (``--reorder``), or send
  it twice (``--dup``);
* it sends with the datagram's *original* source address and port (a socket bound with
  ``IP_TRANSPARENT`` to an address that is not the router's), so client and server see
  exactly what they would have seen from a plain router.

``python -m vpnedu.netns_lab.impair --port 51820 --loss 5 --dup 1 --reorder 2 --delay 20`` (run in
the router's namespace by ``vpnedu lab up --loss ...``).  On SIGTERM it writes its counts
(JSON) to ``--stats``; datagrams still held back at that moment are never sent.  The loss dice
are rolled once per datagram, *before* duplication, so both copies of a duplicate are sent;
``duplicated_data_delivered`` counts the duplicated transport-data messages (type 4) whose two
copies both left the relay -- each of those is one replay drop at the receiving end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import subprocess
import sys

from ..net.tproxy import original_destination, transparent_socket

MARK = 0x696D70          # "imp"
TABLE = 7671
#: Extra hold for a reordered packet, on top of the delay: later packets overtake it.
REORDER_HOLD = 0.004


def ruleset(vpn_port: int, relay_port: int) -> str:
    return (f"table ip vpnedu_impair {{\n"
            f"  chain prerouting {{\n"
            f"    type filter hook prerouting priority mangle; policy accept;\n"
            f"    udp dport {vpn_port} tproxy to :{relay_port} meta mark set {MARK:#x} counter accept\n"
            f"    udp sport {vpn_port} tproxy to :{relay_port} meta mark set {MARK:#x} counter accept\n"
            f"  }}\n"
            f"}}\n")


def install(vpn_port: int, relay_port: int) -> None:
    """The nftables table and policy route that hand the VPN's datagrams to the relay."""
    # With br_netfilter loaded, packets arriving through the clients' bridge meet the IP hooks
    # in the bridge's context, where TPROXY's socket assignment is lost before local delivery.
    # This namespace's bridge needs no IP filtering: turn it off here (a per-namespace setting).
    subprocess.run(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"], capture_output=True, check=False)
    subprocess.run(["nft", "-f", "-"], input=ruleset(vpn_port, relay_port), text=True, check=True,
                   capture_output=True)
    subprocess.run(["ip", "rule", "add", "fwmark", str(MARK), "lookup", str(TABLE)], check=True, capture_output=True)
    subprocess.run(["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", str(TABLE)], check=True,
                   capture_output=True)


class Impairment:
    def __init__(self, loss: float = 0, dup: float = 0, reorder: float = 0, delay_ms: float = 0,
                 seed: int | None = None):
        self.loss, self.dup, self.reorder = loss / 100, dup / 100, reorder / 100
        self.delay = delay_ms / 1000
        self.rng = random.Random(seed)
        self.stats = {"received": 0, "sent": 0, "dropped": 0, "duplicated": 0, "duplicated_data": 0,
                      "duplicated_data_delivered": 0, "reordered": 0}
        self.socks: dict[tuple[str, int], socket.socket] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def _socket(self, bind: tuple[str, int]) -> socket.socket:
        s = transparent_socket(socket.SOCK_DGRAM, bind, original_destination=True, rcvbuf=4 << 20)
        self.loop.add_reader(s.fileno(), self._readable, s)
        return s

    def _sender(self, source: tuple[str, int]) -> socket.socket:
        """A socket that sends as ``source`` (and, TPROXY being what it is, also receives what is
        addressed to it -- which is then relayed like everything else)."""
        s = self.socks.get(source)
        if s is None:
            s = self.socks[source] = self._socket(source)
        return s

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(256):
            try:
                data, anc, _f, src = sock.recvmsg(65535, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            dst = original_destination(anc)
            if dst is None:
                continue
            self.stats["received"] += 1
            self.impair(data, src[:2], dst)

    def impair(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        rng = self.rng
        if rng.random() < self.loss:
            self.stats["dropped"] += 1
            return
        copies = 1
        pair = None   # for a duplicated data message: how many of its two copies were sent
        if rng.random() < self.dup:
            copies = 2
            self.stats["duplicated"] += 1
            if data[:1] == b"\x04":
                self.stats["duplicated_data"] += 1
                pair = [0]
        for _ in range(copies):
            hold = self.delay
            if rng.random() < self.reorder:
                hold += REORDER_HOLD + self.delay
                self.stats["reordered"] += 1
            if hold > 0:
                self.loop.call_later(hold, self._send, data, src, dst, pair)
            else:
                self._send(data, src, dst, pair)

    def _send(self, data: bytes, src: tuple[str, int], dst: tuple[str, int],
              pair: list[int] | None = None) -> None:
        try:
            self._sender(src).sendto(data, dst)
            self.stats["sent"] += 1
        except OSError:
            self.stats["dropped"] += 1
            return
        if pair is not None:
            pair[0] += 1
            if pair[0] == 2:
                self.stats["duplicated_data_delivered"] += 1

    async def run(self, relay_port: int, stats_path: str | None, ready) -> None:
        self.loop = asyncio.get_running_loop()
        self._socket(("0.0.0.0", relay_port))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        ready()
        await stop.wait()
        if stats_path:
            with open(stats_path, "w") as f:
                json.dump(self.stats, f)


def describe(settings: argparse.Namespace) -> str:
    """``5% loss, 1% duplicated, 2% reordered, +20 ms`` (what ``vpnedu lab up`` prints)."""
    return (f"{settings.loss:g}% loss, {settings.dup:g}% duplicated, {settings.reorder:g}% reordered, "
            f"+{settings.delay:g} ms")


def running(pid: int | None) -> argparse.Namespace | None:
    """The settings of the relay running as ``pid`` (read from its command line), or None if no
    relay runs there -- for ``vpnedu lab status``."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
    except (OSError, TypeError, ValueError):
        return None
    if "vpnedu.netns_lab.impair" not in argv:
        return None
    return _parser().parse_args(argv[argv.index("vpnedu.netns_lab.impair") + 1:])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vpnedu.netns_lab.impair")
    ap.add_argument("--port", type=int, default=51820, help="the VPN's UDP port")
    ap.add_argument("--relay-port", type=int, default=7672)
    ap.add_argument("--loss", type=float, default=0, help="percent of datagrams dropped")
    ap.add_argument("--dup", type=float, default=0, help="percent of datagrams sent twice")
    ap.add_argument("--reorder", type=float, default=0, help="percent held back so that others overtake them")
    ap.add_argument("--delay", type=float, default=0, help="milliseconds added to every datagram")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stats", help="write the counts here (JSON) on exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    install(a.port, a.relay_port)
    imp = Impairment(a.loss, a.dup, a.reorder, a.delay, a.seed)
    asyncio.run(imp.run(a.relay_port, a.stats, lambda: print("impairing", flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
