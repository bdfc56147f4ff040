"""What `vpnedu lab demo` tells a newcomer, checked against the real lab.

The demo's steps are checked elsewhere (tests/lab/test_tunnel.py); these tests read its narration:
that step 5 says why a TUN device is UNKNOWN, that step 7 says which way each ping went, and that
a capture of the client's link names the link's own IPv6/ARP housekeeping for what it is instead of
listing it as something "the client's outer link carried".
"""

import os
import subprocess
import time

import pytest

from vpnedu.netns_lab.demo import Demo, capture_summary

from ..lablib import vpnedu

pytestmark = pytest.mark.root


@pytest.mark.slow
def test_the_demo_says_which_way_each_ping_went_and_what_unknown_means():
    prefix = f"dn{os.getpid() % 10000}-"
    try:
        r = subprocess.run(vpnedu("lab", "demo", "--forwarding", "nat", "--prefix", prefix),
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    finally:
        subprocess.run(vpnedu("lab", "down", "--prefix", prefix), capture_output=True, timeout=60)
    out = r.stdout
    step5 = out[out.index("=== 5."):out.index("=== 6.")]
    assert "UNKNOWN" in step5 and "a TUN device has no cable" in step5 and "carrier" in step5, step5
    step7 = out[out.index("=== 7."):out.index("=== 8.")]
    assert "client -> server (the client pings 10.0.0.1): 3 packets transmitted, 3 received" in step7, step7
    assert "server -> client (the server pings 10.0.0.2): 3 packets transmitted, 3 received" in step7, step7
    step8 = out[out.index("=== 8."):out.index("=== 9.")]
    carried = step8[step8.index("the client's outer link carried only:"):].split("\n    marker text")[0]
    assert "UDP 198.51.100.2:" in carried and "-> 203.0.113.2:51820" in carried
    assert "IP6 fe80" not in carried and "ff02::" not in carried.split("besides")[0], carried


def test_the_capture_summary_calls_link_local_housekeeping_what_it_is(lab_factory):
    """A link that comes up sends IPv6 router solicitations, MLD reports and duplicate address
    detection from its own link-local address: real packets the client's kernel sends, captured with
    tcpdump on the client's link exactly as the demo captures it."""
    lab = lab_factory()
    demo = Demo(lab, out=lambda s: None)
    cap = demo.capture("client")
    try:
        # Take the client's link down and up: the kernel starts IPv6 on it afresh.
        lab.run("client", "ip", "link", "set", "eth0", "down", check=True)
        lab.run("client", "ip", "link", "set", "eth0", "up", check=True)
        path = lab.dir / "client-eth0.pcap"
        names = demo.link_local_names()
        mine = [a for a, who in names.items() if who == "the client's own"]
        assert mine, names
        end = time.time() + 20   # RFC 4861 6.3.7: the first solicitation within a second of link-up
        while not any(p.startswith(f"IP6 {mine[0]} ") and "router solicitation" in p
                      for p in demo.describe_capture("client", path)):
            assert time.time() < end, f"no router solicitation from {mine[0]}: {demo.describe_capture('client', path)}"
            time.sleep(0.5)
        lab.run("client", "ping", "-c", "1", "-W", "1", "198.51.100.1")   # and some traffic
    finally:
        path = demo.stop_capture("client", cap)
    packets = demo.describe_capture("client", path)
    assert any(p.startswith("IP6 fe80:") and "router solicitation" in p for p in packets), packets
    text = capture_summary(packets, names)
    carried, _, housekeeping = text.partition("besides the link's own housekeeping")
    assert "ICMP 198.51.100.2 -> 198.51.100.1" in carried, text      # the ping: traffic
    assert "fe80" not in carried and "IP6" not in carried and "224.0.0." not in carried, text
    assert "(link-local: it never leaves the LAN, not traffic)" in housekeeping
    assert "IPv6 router solicitation from the client's own link-local address fe80:" in housekeeping, text
