"""The datapath in real tunnels: fast against fast, fast against simple (every offload off; its
kernel verifies every TCP checksum our TSO split computed), each optimisation really in use.
(vpnedu against wireguard-go with the fast path on: tests/lab/test_wireguard_interop.py, which runs
with the default datapath.)"""

import pytest

from ..conftest import require_tool
from ..lablib import iperf, ping_count, provision, start_client, start_server, status

pytestmark = pytest.mark.root
MB = 1024 * 1024


def nstat(lab, host: str, *names: str) -> dict[str, int]:
    out = lab.run(host, "nstat", "-az", *names).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:] if line.strip()}


# "fast" reads TSO super-packets (the default); "fast,no-tso" lets the kernel segment.
@pytest.mark.parametrize("server_dp,client_dp", [("fast,no-tso", "fast,no-tso"), ("fast", "fast"), ("fast", "simple"),
                                                  ("simple", "fast")])
def test_tunnel_moves_data_with_valid_checksums(lab_factory, server_dp, client_dp):
    require_tool("iperf3")
    require_tool("nstat")
    lab = lab_factory()
    provision(lab)
    start_server(lab, "--forwarding", "none", "--datapath", server_dp)
    start_client(lab, "client", None, "--datapath", client_dp)
    assert ping_count(lab, "client", "10.0.0.1") == (20, 20)
    for reverse in (False, True):
        r = iperf(lab, "server", "10.0.0.1", "client", nbytes="30M", reverse=reverse)
        # (the receiver's count when the sender stops the clock; TCP delivers the rest)
        assert r["end"]["sum_received"]["bytes"] >= 0.8 * 30 * MB
    # Every segment we cut out of a TSO super-packet carried a valid TCP checksum: the kernel on
    # the other side (which checks what a simple-path peer writes to its TUN) found none bad.
    for host in ("server", "client"):
        assert nstat(lab, host, "TcpInCsumErrors").get("TcpInCsumErrors", 0) == 0, host
    srv, cli = status(lab, "server"), status(lab, "client")
    assert srv["datapath"] == server_dp and cli["datapath"] == client_dp
    # Counters (vpnedu status) count what moved, on both paths.
    for st in (srv, cli):
        assert st["peers"][0]["transfer_rx"] > 25 * MB and st["peers"][0]["transfer_tx"] > 25 * MB
    for st, dp, other in ((srv, server_dp, client_dp), (cli, client_dp, server_dp)):
        s = st["datapath_stats"]
        if dp == "simple":                   # the same engine, one system call per packet
            assert s["gso_sends"] == 0 and s["coalesced"] == 0 and s["datagrams_received"] == s["udp_reads"]
            continue
        if "no-tso" not in dp:
            assert s["tso_packets"] > 0      # the kernel handed us super-packets, we split them
        assert s["gso_sends"] > 0            # many datagrams per sendmsg
        assert s["coalesced"] > 0            # segments merged into one TUN write
        if other != "simple":                # a GSO sender: our GRO reads hold many datagrams
            assert s["datagrams_received"] > 2 * s["udp_reads"]
    assert status(lab, "server")["counters"].get("dropped.bad-mac", 0) == 0


def test_per_packet_events_while_traffic_flows(lab_factory):
    """While someone watches per-packet events, the one datapath emits them, per packet, and
    traffic still flows."""
    import subprocess
    import sys
    import time
    lab = lab_factory()
    provision(lab)
    start_server(lab, "--forwarding", "none")
    start_client(lab, "client")
    assert ping_count(lab, "client", "10.0.0.1") == (20, 20)
    watch = subprocess.Popen(["ip", "netns", "exec", lab.ns("server"), sys.executable, "-m", "vpnedu", "events",
                              "--kind", "data.decrypted"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert ping_count(lab, "client", "10.0.0.1", count=5) == (5, 5)
        time.sleep(0.5)
    finally:
        watch.terminate()
        out, err = watch.communicate(timeout=10)
    assert "data.decrypted" in out, out[-500:] + err[-500:]
    assert ping_count(lab, "client", "10.0.0.1", count=5) == (5, 5)
