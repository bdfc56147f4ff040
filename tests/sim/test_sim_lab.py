"""The simulated lab: the real daemons and protocol on simulated hosts, checked as a student would."""

import ipaddress

import pytest

from vpnedu.errors import VpneduError
from vpnedu.events import EventLog
from vpnedu.course import SimLab


@pytest.fixture
def lab():
    lab = SimLab()
    yield lab
    lab.down()


def test_full_tunnel_routes_pings_and_app_sees_server(lab):
    before = lab.routes("client")
    assert before == ["default via 198.51.100.1 dev eth0", "198.51.100.0/24 dev eth0"]
    assert lab.ping("client", "10.0.0.1").received == 0  # no tunnel yet
    lab.start_server()
    st = lab.start_client()
    assert st["peers"][0]["latest_handshake"]
    # Policy routing, as the real client: the main table keeps its default route; a table of the
    # tunnel's own and two rules send everything but the tunnel's marked datagrams into it.
    assert lab.routes("client") == ["default via 198.51.100.1 dev eth0", "10.0.0.0/24 dev vpnedu0",
                                    "198.51.100.0/24 dev eth0"]
    host = lab.hosts["client"]
    assert "32765:\tnot from all fwmark 0xca6c lookup 51820" in host.rule_table()
    assert "32764:\tfrom all lookup main suppress_prefixlength 0" in host.rule_table()
    assert [str(r) for r in host.table_routes(51820)] == ["default dev vpnedu0"]
    assert host.route_to("192.0.2.80").dev == "vpnedu0" and host.route_to("203.0.113.2").dev == "vpnedu0"
    assert host.route_to("203.0.113.2", mark=51820).dev == "eth0"        # the tunnel's own UDP
    assert host.route_to("198.51.100.1").dev == "eth0"                     # the LAN stays the LAN
    assert st["rules"] == ["ip -4 rule priority 32765 not fwmark 0xca6c table 51820",
                           "ip -4 rule priority 32764 table main suppress_prefixlength 0",
                           "ip -6 rule priority 32765 not fwmark 0xca6c table 51820",
                           "ip -6 rule priority 32764 table main suppress_prefixlength 0"]
    assert lab.ping("client", "10.0.0.1").ok
    assert lab.ping("server", "10.0.0.2").ok
    res = lab.ping("client", "192.0.2.80")
    assert res.ok and res.source == "10.0.0.2"
    app = lab.app_request()
    assert app.sources == ["203.0.113.2"] and "203.0.113.2" in app.reply
    flows = lab.flows()
    assert {f.proto for f in flows} == {"icmp", "udp"}
    udp = next(f for f in flows if f.proto == "udp")
    assert udp.client.startswith("10.0.0.2:") and udp.proxy.startswith("203.0.113.2:")
    assert udp.destination == "192.0.2.80:8080" and udp.bytes_down > 0
    lab.stop_client()
    assert lab.routes("client") == before  # every route the client added is gone
    assert not host.rules and host.route_to("192.0.2.80").dev == "eth0"    # and every rule
    lab.stop_server()
    assert not lab.hosts["server"].masquerade and not lab.hosts["server"].forwarding


def test_outer_link_carries_only_encrypted_udp_unless_null_teaching(lab, recwarn):
    lab.start_server()
    lab.start_client()
    marker, visible = lab.marker_on_wire()
    assert not visible
    client_link = [w for w in lab.internet.wire if "client" in (w.source_host, w.destination_host)]
    assert client_link and all("UDP" in str(w) and "51820" in str(w) for w in client_link)
    lab.restart(suite="null-teaching")
    marker, visible = lab.marker_on_wire()
    assert visible


def test_tamper_and_replay_are_dropped_with_the_reason(lab):
    lab.start_server()
    lab.start_client()
    ev = lab.tamper_next()
    assert ev is not None and ev.kind == "packet.dropped" and ev["reason"] == "bad-mac"
    ev = lab.replay()
    assert ev is not None and ev["reason"] == "replay"
    assert lab.status("server")["counters"]["dropped.bad-mac"] == 1
    assert lab.ping("client", "10.0.0.1").ok  # the tunnel is unharmed


def test_split_tunnel_sends_only_the_tunnel_subnet(lab):
    lab.start_server()
    lab.start_client(split=True)
    routes = lab.routes("client")
    assert "10.0.0.0/24 dev vpnedu0" in routes and not lab.hosts["client"].rules
    assert lab.ping("client", "192.0.2.80").source == "198.51.100.2"
    assert lab.ping("client", "10.0.0.1").ok


def test_trace_follows_one_ping_through_tunnel_and_nat(lab):
    lab.start_server()
    lab.start_client()
    mark = lab.last_hop()
    lab.ping("client", "192.0.2.80", count=1)
    hops = [(h.host, h.dev, h.direction) for h in lab.trace(mark)]
    assert hops[0] == ("client", "vpnedu0", "tun->program")
    assert ("server", "eth0", "nat") in hops and ("app", "eth0", "in") in hops
    assert hops[-1] == ("client", "vpnedu0", "program->tun")


def test_tun_demo_reads_the_ping_the_host_routed_into_it(lab):
    r = lab.tun_demo()
    assert r.raw[0] >> 4 == 4 and r.raw[9] == 1
    assert ("16-19", "destination", "10.99.0.2") in r.fields
    assert "tun-demo" not in lab.hosts["client"].addresses  # closed: gone with its routes


def test_throughput_samples_grow_and_errors_are_one_line(lab):
    with pytest.raises(VpneduError, match="start the client"):
        list(lab.traffic("vpnedu", 0.5))
    lab.start_server()
    lab.start_client()
    samples = list(lab.traffic("vpnedu", 1.0, interval=0.25))
    assert len(samples) >= 4 and samples[-1][1] > samples[1][1] > 0 and samples[-1][2] > 0
    with pytest.raises(VpneduError, match="stop_client"):
        list(lab.traffic("plain", 0.5))


def test_the_simulated_lab_rekeys_after_two_minutes_on_a_fake_clock():
    """The real daemons on the simulated hosts run on the clock the lab is given: on a fake
    clock, REKEY_AFTER_TIME (120 s) passes without waiting, and the client -- the initiator --
    renews the keys when it next sends, as WireGuard does."""
    import time

    from vpnedu.protocol.timers import REKEY_AFTER_TIME
    from vpnedu.sim import FakeClock
    clock = FakeClock()
    lab = SimLab(clock=clock)
    try:
        log = EventLog(lab.client_events)
        lab.start_server()
        lab.start_client()
        first = lab.client.server.current
        started, real = clock(), time.monotonic()
        assert lab.ping("client", "10.0.0.1").ok
        lab.wait(REKEY_AFTER_TIME - 1)
        assert lab.client.server.current is first and len(log.of("session.established")) == 1
        lab.wait(2)
        assert lab.ping("client", "10.0.0.1").ok             # the first packet after 120 s ...
        assert any("REKEY_AFTER_TIME" in e["reason"] for e in log.of("timer.rekey"))
        assert len(log.of("session.established")) == 2        # ... started a new handshake
        assert lab.client.server.current is not first and lab.client.server.previous is first
        assert lab.ping("client", "192.0.2.80").ok            # traffic flows on the new keys
        assert clock() - started > REKEY_AFTER_TIME
        # Two minutes of protocol time, not of real time (on the real clock this test would
        # take more than 120 s; it takes well under one).
        assert time.monotonic() - real < REKEY_AFTER_TIME / 4
        assert lab.status("client")["peers"][0]["latest_handshake"] == pytest.approx(clock.wall(), abs=5)
    finally:
        lab.down()


def test_ipv6_goes_through_the_tunnel_too_and_the_app_sees_the_servers_v6_address(lab):
    """The simulated lab is dual stack, as the namespace lab: with AllowedIPs = 0.0.0.0/0, ::/0
    IPv6 takes the tunnel's table by the same two rules, and the server masquerades the client's
    ULA address to its own 2001:db8:5::2."""
    host = lab.hosts["client"]
    assert host.route_to("2001:db8:a::80").dev == "eth0"             # before: straight out
    before6 = lab.routes("client", 6)
    assert before6 == ["default via 2001:db8:c::1 dev eth0", "2001:db8:c::/64 dev eth0"]
    lab.start_server()
    st = lab.start_client()
    assert "-6 default dev vpnedu0 table 51820" in st["routes_added"]
    assert "32765:\tnot from all fwmark 0xca6c lookup 51820" in host.rule_table(6)
    assert [str(r) for r in host.table_routes(51820, 6)] == ["default dev vpnedu0"]
    assert host.route_to("2001:db8:a::80").dev == "vpnedu0"
    assert host.route_to("2001:db8:c::1").dev == "eth0"                 # the LAN stays the LAN
    own6 = next(a.split("/")[0] for a in lab.addresses("client")["vpnedu0"] if ":" in a)
    res = lab.ping("client", "2001:db8:a::80")
    assert res.ok and res.source == own6
    assert "2001:db8:5::2 ICMPv6 echo request id=32343 seq=1" in lab.app_log()
    app = lab.app_request(family=6)
    assert app.sources == ["2001:db8:5::2"] and "2001:db8:5::2" in app.reply
    v4 = lab.app_request()
    assert v4.sources == ["203.0.113.2"]
    udp6 = next(f for f in lab.flows() if f.proto == "udp" and f.destination.startswith("["))
    assert udp6.client.startswith(f"[{own6}]:") and udp6.proxy.startswith("[2001:db8:5::2]:")
    assert udp6.destination == "[2001:db8:a::80]:8080"
    # Nothing of the client's own IPv6 address leaves it unencrypted: on the client's link only
    # the tunnel's UDP (over IPv4, to the server's endpoint) carried the request.
    assert not any(ipaddress.ip_address(own6).packed in w.packet or w.packet[0] >> 4 == 6 for w in lab.internet.wire
                   if "client" in (w.source_host, w.destination_host))
    lab.stop_client()
    assert lab.routes("client", 6) == before6 and not host.rules
    assert host.route_to("2001:db8:a::80").dev == "eth0"


def test_the_kill_switch_keeps_a_bound_socket_in_while_the_server_is_down(lab):
    """The real client's kill switch plan, as the simulated host's output filter: without it a
    ping bound to eth0 gets out in the clear while the server is down; with it nothing leaves but
    the tunnel's own UDP, and the filter goes with the client."""
    lab.start_server()
    off = lab.leak_test(kill_switch=False)
    assert [how for _, how in off.attempts][1:] == ["answered: it got out"] * 2
    assert off.leaked == ["IPv4 198.51.100.2 > 192.0.2.80 ICMP echo request id=32343 seq=1 len=43",
                          "IPv6 2001:db8:c::2 > 2001:db8:a::80 ICMPv6 echo request id=32343 seq=1 len=63"]
    on = lab.leak_test(kill_switch=True)
    assert on.ok and on.sent and all("> 203.0.113.2:51820 UDP" in p for p in on.sent)
    assert [how for _, how in on.attempts][1:] == ["refused on the client (kill switch)"] * 2
    assert not lab.hosts["client"].output_filters and lab.server is not None and lab.client is None
    assert "KillSwitch" not in (lab.dir / "client.conf").read_text()      # the config is put back
