"""The tunnel's MTU without ``MTU =`` (vpnedu.net.mtu): the pure decision on route MTUs, and the
netlink lookup that feeds it in a namespace of its own (root); the MSS clamp's nftables text."""

import json
import os
import subprocess
import sys

import pytest

from vpnedu.net import mtu, nat
from vpnedu.net.mtu import Path, choose


def ep(mtu_, family=4, dev="eth0", address=None, route_mtu=False) -> Path:
    address = address or ("203.0.113.2" if family == 4 else "2001:db8:5::2")
    return Path("endpoint", family, mtu_, dev, address, route_mtu)


def default(mtu_, family=4, dev="eth0") -> Path:
    return Path("default", family, mtu_, dev)


def test_the_overheads_are_the_headers():
    # IP header + UDP header + WireGuard's 16-byte data header and 16-byte tag.
    assert mtu.OVERHEAD == {4: 20 + 8 + 16 + 16, 6: 40 + 8 + 16 + 16} == {4: 60, 6: 80}


def test_an_ipv4_endpoint_on_ethernet():
    got = choose([ep(1500)], ipv6_inside=True)
    assert got == mtu.Choice(1440, "route to 203.0.113.2 via eth0 (mtu 1500) - 60")


def test_an_ipv6_endpoint_takes_80_and_a_multiple_of_16():
    got = choose([ep(1500, 6)], ipv6_inside=True)
    assert got.mtu == 1408, got      # 1500 - 80 = 1420, down to a multiple of 16
    assert got.source.startswith("route to 2001:db8:5::2 via eth0 (mtu 1500) - 80 = 1420, rounded down to 1408")


def test_a_route_mtu_is_named_as_the_routes():
    got = choose([ep(1400, route_mtu=True)], ipv6_inside=False)
    assert got.mtu == 1328 and got.source.startswith("route to 203.0.113.2 via eth0 (route mtu 1400) - 60 = 1340")


def test_a_narrow_client_link_ipv4_only_and_dual_stack():
    v4 = choose([ep(1280)], ipv6_inside=False)
    assert v4.mtu == 1216 and "1280) - 60 = 1220, rounded down to 1216" in v4.source
    # An IPv6-carrying tunnel never goes below IPv6's minimum: Linux would take IPv6 off the device.
    v6 = choose([ep(1280)], ipv6_inside=True)
    assert v6.mtu == 1280 and "= 1220, raised to 1280: IPv6's minimum" in v6.source


def test_every_measured_mtu_pads_to_itself():
    """WireGuard pads to a multiple of 16 up to the sender's MTU: a measured MTU that is a multiple
    of 16 means a peer with a larger MTU never pads one of our full-size packets past our path."""
    for path_mtu in range(1280, 9001, 7):
        for family in (4, 6):
            for inside in (True, False):
                got = choose([ep(path_mtu, family)], ipv6_inside=inside).mtu
                assert got % 16 == 0, (path_mtu, family, got)
                if got > (1280 if inside else 576):       # not raised to the floor
                    assert got + mtu.OVERHEAD[family] <= path_mtu < got + mtu.OVERHEAD[family] + 16


def test_several_endpoints_the_largest_as_wg_quick():
    got = choose([ep(1280, address="198.51.100.7"), ep(1500, dev="eth1"), ep(1400, 6)], ipv6_inside=True)
    assert got.mtu == 1440 and got.source == ("route to 203.0.113.2 via eth1 (mtu 1500) - 60 "
                                              "(the largest of 3 endpoints' routes)")
    # A tie between the families: the IPv6 path, whose overhead is larger, decides.
    assert choose([ep(1500), ep(1500, 6)], ipv6_inside=True).mtu == 1408


def test_a_server_takes_the_smaller_of_its_default_routes():
    both = choose([default(1500), default(1500, 6)], ipv6_inside=True)
    assert both.mtu == 1408, both
    assert both.source.startswith("IPv6 default route via eth0 (mtu 1500) - 80 = 1420, rounded down to 1408")
    assert "the IPv4 default route's 1500 - 60 = 1440 is larger" in both.source
    only4 = choose([default(1500)], ipv6_inside=True)
    assert only4 == mtu.Choice(1440, "default route via eth0 (mtu 1500) - 60")
    # A narrow IPv4 uplink beside a wide IPv6 one: the IPv4 result is the smaller.
    narrow = choose([default(1280), default(9000, 6, "eth1")], ipv6_inside=False)
    assert narrow.mtu == 1216 and narrow.source.startswith("default route via eth0 (mtu 1280) - 60")


def test_endpoints_win_over_default_routes():
    assert choose([default(9000), ep(1500)], ipv6_inside=True).mtu == 1440


def test_no_route_at_all_is_wg_quicks_guess():
    got = choose([], ipv6_inside=True)
    assert got.mtu == 1408 and got.source.startswith("no route to measure: 1500 (wg-quick's guess) - 80")


def test_the_floor_and_the_ceiling():
    low = choose([ep(600)], ipv6_inside=False)      # 600 - 60 = 540 < 576
    assert low.mtu == 576 and "raised to 576" in low.source
    lo = choose([ep(65536, dev="lo", address="127.0.0.1")], ipv6_inside=False)
    assert lo.mtu == 65472 and lo.mtu + 60 <= 65535
    lo6 = choose([ep(65536, 6, "lo", "::1")], ipv6_inside=True)
    assert lo6.mtu + 80 <= 65535 and lo6.mtu % 16 == 0 and "lowered to" in lo6.source


def test_a_configured_mtu_wins_as_it_is():
    got = choose([ep(1280)], ipv6_inside=True, configured=1421, where="alice.conf")
    assert got == mtu.Choice(1421, "MTU = 1421 in alice.conf")


def test_the_clamp_is_in_the_masquerade_table_both_directions():
    text = nat.ruleset("10.0.0.0/24", "vpnedu0", clamp_mss=True)
    assert 'iifname "vpnedu0" tcp flags syn tcp option maxseg size set rt mtu' in text
    assert 'oifname "vpnedu0" tcp flags syn tcp option maxseg size set rt mtu' in text
    assert "chain mss {\n    type filter hook forward priority mangle" in text
    assert text.startswith("table ip vpnedu_vpnedu0 {") and "mss" in nat.CHAINS
    assert nat.ruleset("fd00::/64", "vpnedu0", clamp_mss=True).startswith("table ip6 vpnedu_vpnedu0 {")
    off = nat.ruleset("10.0.0.0/24", "vpnedu0")
    assert "maxseg" not in off and "chain mss" not in off and "masquerade" in off


@pytest.mark.root
def test_measure_reads_the_kernels_routes(tmp_path):
    """In a namespace of its own: a device MTU, a route's own MTU, a fwmark that picks another
    table, both families' default routes, and an endpoint with no route."""
    ns = f"vtmtu{os.getpid() % 10000}"
    ip = ["ip", "-n", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                    ["link", "set", "eth0", "mtu", "1400", "up"], ["link", "set", "eth1", "mtu", "9000", "up"],
                    ["addr", "add", "192.0.2.1/24", "dev", "eth0"], ["addr", "add", "198.18.0.1/24", "dev", "eth1"],
                    ["-6", "addr", "add", "2001:db8::1/64", "dev", "eth1", "nodad"],
                    ["route", "add", "default", "via", "192.0.2.2"],
                    ["-6", "route", "add", "default", "via", "2001:db8::2"],
                    ["route", "add", "203.0.113.0/24", "via", "192.0.2.2", "mtu", "1300"],
                    ["route", "add", "default", "via", "198.18.0.2", "table", "77"],
                    ["rule", "add", "fwmark", "0x77", "table", "77"],
                    ["route", "add", "unreachable", "100.64.0.0/10"]):
            subprocess.run([*ip, *cmd], check=True)
        code = ("import json, sys; from vpnedu.net import mtu; "
                "print(json.dumps([[p.__dict__ for p in mtu.measure(a, fwmark=m)] "
                "for a, m in json.loads(sys.argv[1])]))")
        asks = [[["198.51.100.9"], None], [["203.0.113.5"], None], [["198.51.100.9"], 0x77],
                [["198.51.100.9", "203.0.113.5", "198.51.100.9"], None], [[], None], [["2001:db8::9"], None],
                [["100.64.0.1"], None]]
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, json.dumps(asks)],
                           capture_output=True, text=True, check=True)
        got = json.loads(r.stdout)
        e = {"kind": "endpoint", "route_mtu": False}
        assert got[0] == [{**e, "family": 4, "mtu": 1400, "dev": "eth0", "address": "198.51.100.9"}]
        assert got[1] == [{**e, "family": 4, "mtu": 1300, "dev": "eth0", "address": "203.0.113.5",
                           "route_mtu": True}]
        assert got[2] == [{**e, "family": 4, "mtu": 9000, "dev": "eth1", "address": "198.51.100.9"}]
        assert [p["mtu"] for p in got[3]] == [1400, 1300]            # each address once
        assert got[4] == [{"kind": "default", "family": 4, "mtu": 1400, "dev": "eth0", "address": None,
                           "route_mtu": False},
                          {"kind": "default", "family": 6, "mtu": 9000, "dev": "eth1", "address": None,
                           "route_mtu": False}]
        assert got[6] == got[4]      # no route to the endpoint: as with none, the default routes
        assert got[5][0]["family"] == 6 and got[5][0]["mtu"] == 9000 and got[5][0]["dev"] == "eth1"
        # The server of this host: the smaller of the two defaults' results.
        assert choose([Path(**p) for p in got[4]], ipv6_inside=True).mtu == 1328   # 1400 - 60, down to 16
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_the_tunnels_ipv4_socket_sends_without_df():
    """IP_MTU_DISCOVER = IP_PMTUDISC_DONT on the IPv4 socket (vpnedu.net.udp.clear_df): routers may
    fragment the tunnel's datagrams, as they may the kernel WireGuard's."""
    import socket

    from vpnedu.net import udp
    socks = udp.open_port(0, pktinfo=False)
    try:
        assert socks[4].getsockopt(socket.IPPROTO_IP, udp.IP_MTU_DISCOVER) == udp.IP_PMTUDISC_DONT
    finally:
        for s in socks.values():
            s.close()
