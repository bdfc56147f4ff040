"""Where an idle ping's round trip goes, in three tunnels of decreasing size (root; BENCHMARKS.md
quotes it).  ``python scripts/ping_floor.py [ROUNDS]``

``forward``   the floor of any Python tunnel: 20 lines that copy TUN reads to a UDP socket and
              back, in a bare ``select.epoll`` loop (no crypto, no protocol);
``engine``    vpnedu's engine (``Device.send_packets`` / ``Device.receive_batch``, keys from the
              same seeded in-memory handshake at both ends) in the same bare loop: no asyncio, no
              Datapath, no daemon; each end prints the median microseconds of its stages;
``daemon``    is not here: ``vpnedu bench --tests tcp1_up`` gives the daemons' RTT on the same
              kind of veth.

Each end runs in a network namespace of its own (192.0.2.1 and .2 on a veth pair; 10.0.0.2 and
10.0.0.1 inside), made here and deleted on the way out, even after an error.  The pings are 50 ms
apart, as the bench's: an idle tunnel, every wakeup after a sleep.
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NS = ("pfa", "pfb")

END = r'''
import fcntl, os, select, signal, socket, statistics, struct, sys, time
kind, role, local, remote = sys.argv[1:5]
sys.path.insert(0, sys.argv[5])
fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"pf0", 0x0001 | 0x1000))    # TUNSETIFF: IFF_TUN | IFF_NO_PI
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((local, 5555)); s.setblocking(False)
T = {k: [] for k in ("tun read", "seal", "udp send", "udp recv", "open", "tun write")}
def report(*_):
    if not T["udp recv"]:
        os._exit(0)
    print(role, "  ".join(f"{k} {statistics.median(v[3:]):.0f}" for k, v in T.items() if len(v) > 8), flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, report)
pc = time.perf_counter_ns
if kind == "engine":
    from vpnedu.protocol.transport import Output
    from vpnedu.sim import make_pair
    from vpnedu.testing import SeededRandom
    pair = make_pair("wireguard", random=SeededRandom(b"ping-floor"))   # the same keys at both ends
    pair.handshake(); pair.client_sends(b"")
    dev = pair.client if role == "client" else pair.server
    t0, base = time.monotonic(), pair.now
    for peer in dev.peers.values():
        peer.endpoint = (remote, 5555)
    out = Output(1 << 16)
print("ready", flush=True)
ep = select.epoll(); ep.register(fd, select.EPOLLIN); ep.register(s.fileno(), select.EPOLLIN)
buf = bytearray(65536); mv = memoryview(buf); dst = (remote, 5555)
while True:
    for f, _ in ep.poll():
        a = pc()  # T
        if f == fd:
            pkts = []
            while True:
                try: pkts.append(os.read(fd, 65536))
                except BlockingIOError: break
            b = pc()  # T
            if kind == "engine":
                dev.send_packets(pkts, base + time.monotonic() - t0, out)
                c = pc()  # T
                for view, size, e in out.runs:
                    s.sendto(view, e[:2])
                out.clear()
            else:
                c = b  # T
                for p in pkts:
                    s.sendto(p, dst)
            d = pc()  # T
            T["tun read"].append((b - a) / 1e3); T["seal"].append((c - b) / 1e3); T["udp send"].append((d - c) / 1e3)  # T
        else:
            reads = []
            while True:
                try: n, addr = s.recvfrom_into(buf)
                except BlockingIOError: break
                reads.append((bytes(mv[:n]), n, addr))
            b = pc()  # T
            if kind == "engine":
                dev.receive_batch(reads, base + time.monotonic() - t0, out)
                pkts = [p for _peer, p in out.packets]
                for d_, e in out.datagrams:
                    s.sendto(d_, e[:2])
                out.clear()
            else:
                pkts = [r[0] for r in reads]
            c = pc()  # T
            for p in pkts:
                try: os.write(fd, p)
                except OSError: pass     # the device is not up yet
            d = pc()  # T
            T["udp recv"].append((b - a) / 1e3); T["open"].append((c - b) / 1e3); T["tun write"].append((d - c) / 1e3)  # T
'''


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def run(kind: str, rounds: int, timed: bool) -> None:
    """Ping through one tunnel; ``timed``: with the stages timed (which costs some RTT itself)."""
    code = END if timed else "\n".join(line for line in END.splitlines() if not line.endswith("# T"))
    procs = []
    try:
        for ns in NS:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "pfa0", "type", "veth", "peer", "name", "pfb0")
        for i, ns in enumerate(NS):
            dev = f"pf{'ab'[i]}0"
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"192.0.2.{i + 1}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for i, (ns, role) in enumerate(zip(NS, ("client", "server"))):
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, kind, role,
                                  f"192.0.2.{i + 1}", f"192.0.2.{2 - i}", str(ROOT)],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            if p.stdout.readline().strip() != "ready":
                raise SystemExit(f"ping_floor: the {role} end did not start")
        for ns, addr in zip(NS, ("10.0.0.2/24", "10.0.0.1/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "pf0")
            sh("ip", "-n", ns, "link", "set", "pf0", "up")
        time.sleep(0.5)
        avgs = []
        for _ in range(rounds):
            r = subprocess.run(["ip", "netns", "exec", NS[0], "ping", "-I", "pf0", "-c", "40", "-i", "0.05", "-q",
                                "10.0.0.1"], capture_output=True, text=True)
            m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
            if not m:
                raise SystemExit(f"ping_floor: no ping through the {kind} tunnel: {r.stdout.strip()[-200:]}")
            avgs.append(float(m.group(1)))
        print(f"{kind}{' (stages timed)' if timed else ''}: mean RTT per round {avgs} ms, "
              f"median {statistics.median(avgs):.3f}")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            line = p.stdout.read().strip()
            if line:
                print(f"  {line} (median us per wakeup)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("ping_floor: run as root (it makes network namespaces and TUN devices)")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for timed in (False, True):
        for kind in ("forward", "engine"):
            run(kind, n, timed)
