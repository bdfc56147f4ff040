"""Offline, no kernel: the receiver's cost per packet -- Device.receive_batch (the open loop, the
replay window, the AEAD) and offload.coalesce -- for GRO reads of 64 MTU-sized TCP segments, as in a
bulk download.  ``python scripts/receive_offline.py [TREE]``; BENCHMARKS.md quotes it."""
import sys, time, struct, statistics
from pathlib import Path
# The tree to measure: this one, or another (e.g. a git worktree of an older commit) as argv[1].
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1]))
from vpnedu.sim import make_pair
from vpnedu.protocol.transport import Output
from vpnedu.net import offload
pair = make_pair("wireguard"); pair.handshake()
pair.client_sends(b"")  # confirm
def tcp_segment(seq, payload=1380):
    ip = bytearray(20 + 20 + payload)
    ip[0] = 0x45; struct.pack_into("!H", ip, 2, len(ip)); ip[6] = 0x40; ip[8] = 64; ip[9] = 6
    ip[12:16] = bytes([10, 0, 0, 2]); ip[16:20] = bytes([10, 0, 0, 1])
    struct.pack_into("!HHIIBBH", ip, 20, 40000, 5201, seq, 1, 0x50, 0x10, 512)
    return bytes(ip)
seq = 1000
N, B = 64, 300
per_rx, per_co = [], []
src = pair.client_ep
for it in range(B):
    pkts = [tcp_segment(seq + i * 1380) for i in range(N)]
    seq += N * 1380
    out = Output(200000, max_run=64, max_run_bytes=65000)
    pair.client.send_packets(pkts, pair.now, out)
    reads = [(bytes(view), size, src) for view, size, ep in out.runs]
    rx = Output(0)
    t0 = time.perf_counter_ns()
    pair.server.receive_batch(reads, pair.now, rx)
    t1 = time.perf_counter_ns()
    plain = [p for _peer, p in rx.packets]
    co = offload.coalesce(plain)
    t2 = time.perf_counter_ns()
    assert len(plain) == N, len(plain)
    per_rx.append((t1 - t0) / N / 1000); per_co.append((t2 - t1) / N / 1000)
print(f"receive_batch {statistics.median(per_rx):.2f} us/pkt, coalesce {statistics.median(per_co):.2f} us/pkt, runs {len(co)}")
