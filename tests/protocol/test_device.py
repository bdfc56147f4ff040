"""The protocol engine end to end on the in-memory network: handshakes, data, and every way
a datagram can be wrong."""

import pytest

from vpnedu.errors import SuiteError
from vpnedu.events import EventLog
from vpnedu.packet.ip import build_icmp_echo, build_udp
from vpnedu.protocol import messages as m
from vpnedu.protocol.device import Device
from vpnedu.protocol.keys import generate_private_key
from vpnedu.protocol.suites import InsecureSuiteWarning
from vpnedu.sim import make_pair

PING = build_icmp_echo("10.0.0.2", "10.0.0.1", payload=b"ping over the tunnel")
PONG = build_icmp_echo("10.0.0.1", "10.0.0.2", payload=b"ping over the tunnel", reply=True)


def delivered(pair, side):
    ep = pair.server_ep if side == "server" else pair.client_ep
    return [p for _, p in pair.net.delivered[ep]]


def test_handshake_and_data_both_ways(pair_factory, any_suite):
    pair = pair_factory(any_suite)
    log = EventLog(pair.events)
    pair.handshake()
    assert [e["role"] for e in log.of("session.established")] == ["responder", "initiator"]
    pair.client_sends(PING)
    pair.server_sends(PONG)
    assert delivered(pair, "server") == [PING]
    assert delivered(pair, "client") == [PONG]
    assert not log.drops()
    # Both sides agree on the session: the client's send key is the server's receive key.
    ck, sk = pair.server_peer.current.keys, pair.client_peer.current.keys
    assert ck.send_key == sk.recv_key and ck.recv_key == sk.send_key
    assert ck.local_index == sk.remote_index and ck.remote_index == sk.local_index


def test_server_can_initiate_once_it_knows_the_client(pair_factory, any_suite):
    pair = pair_factory(any_suite)
    log = EventLog(pair.events)
    pair.handshake()
    pair.client_sends(PING)
    pair.net.clock.advance(6)
    # The server starts a handshake itself (roles swapped) and data flows on the new keys.
    pair.net.send(pair.server_ep, pair.server.initiate(pair.client_peer, pair.now))
    pair.net.run()
    assert [e["role"] for e in log.of("session.established")][-2:] == ["responder", "initiator"]
    assert pair.client_peer.current.initiator
    pair.server_sends(PONG)
    pair.client_sends(PING)
    assert delivered(pair, "client") == [PONG] and delivered(pair, "server") == [PING, PING]


def test_packets_sent_before_the_handshake_are_queued_then_delivered(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.client_sends(PING)  # no session yet: queued, handshake started, sent on completion
    assert delivered(pair, "server") == [PING]
    assert log.of("data.queued")


def test_null_teaching_is_refused_unless_enabled_and_warns():
    with pytest.raises(SuiteError, match="--allow-null-teaching"):
        make_pair("null-teaching")
    with pytest.raises(SuiteError):
        Device(generate_private_key(), suite="null-teaching")
    with pytest.warns(InsecureSuiteWarning, match="NOT encrypted"):
        make_pair("null-teaching", allow_insecure=True)


def test_null_teaching_shows_the_inner_packet_on_the_wire(pair_factory):
    pair = pair_factory("null-teaching")
    pair.handshake()
    pair.client_sends(PING)
    assert any(PING in c.data for c in pair.net.capture)
    enc = pair_factory("wireguard")
    enc.handshake()
    enc.client_sends(PING)
    assert not any(b"ping over the tunnel" in c.data for c in enc.net.capture)


@pytest.mark.parametrize("client_suite,server_suite", [
    ("aes256gcm", "wireguard"), ("wireguard", "aes256gcm"),
    ("null-teaching", "wireguard"), ("wireguard", "null-teaching"),
])
def test_suite_mismatch_fails_with_a_clear_event(client_suite, server_suite, recwarn):
    pair = make_pair(server_suite, allow_insecure=True)
    # Replace the client with one on another suite.
    client = Device(generate_private_key(), suite=client_suite, allow_insecure=True, events=pair.events,
                    wall_offset=pair.net.clock.wall_offset)
    client.add_peer(pair.server.public_key, endpoint=pair.server_ep, allowed_ips=["10.0.0.0/24"])
    pair.server.add_peer(client.public_key, allowed_ips=["10.0.0.2/32"])
    pair.net.attach(pair.client_ep, client)
    log = EventLog(pair.events)
    pair.net.send(pair.client_ep, client.initiate(client.peers[pair.server.public_key], pair.now))
    pair.net.run()
    drops = log.drops("suite-mismatch")
    assert drops and repr(client_suite) in drops[0]["detail"]
    assert not log.of("handshake.response.sent")


def test_unknown_key_gets_no_reply_and_a_drop_event(pair_factory):
    pair = pair_factory()
    stranger = Device(generate_private_key(), events=pair.events, wall_offset=pair.net.clock.wall_offset)
    peer = stranger.add_peer(pair.server.public_key, endpoint=pair.server_ep, allowed_ips=["0.0.0.0/0"])
    log = EventLog(pair.events)
    datagrams = stranger.initiate(peer, pair.now)
    out = pair.server.receive(datagrams[0][0], ("192.0.2.99", 1234), pair.now)
    assert out.datagrams == [] and out.packets == []
    assert log.drops("unknown-peer")


def test_cryptokey_routing_drops_spoofed_inner_source(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.handshake()
    spoofed = build_icmp_echo("10.0.0.99", "10.0.0.1")
    (d, _), = pair.client.send(pair.server_peer, spoofed, pair.now)
    assert pair.server.receive(d, pair.client_ep, pair.now).packets == []
    assert log.drops("source-not-allowed")
    # Sending side: a destination no peer's AllowedIPs covers has no route.
    assert pair.server.send_packet(build_udp("10.0.0.1", 1, "192.0.2.200", 2, b"x"), pair.now) == []
    assert log.drops("no-route")


def state(dev: Device):
    """Everything a rejected datagram must leave untouched."""
    peers = []
    for p in dev.peers.values():
        peers.append((p.handshake and p.handshake.local_index, p.last_received_timestamp,
                      p.last_initiation_consumed, p.cookie, p.endpoint, p.rx_bytes, p.rx_packets,
                      [(k.local_index, k.replay.greatest, k.send_counter) for k in p.sessions()],
                      p.current and p.current.local_index, p.next and p.next.local_index,
                      p.t_keepalive, p.t_new_handshake, p.t_retransmit, len(p.staged)))
    return sorted(dev._index), peers


def flip_each_byte(data: bytes, skip=range(0)):
    for i in range(len(data)):
        if i in skip:
            continue
        for bit in (0x01, 0x80):
            yield i, data[:i] + bytes([data[i] ^ bit]) + data[i + 1:]


def assert_all_rejected(dev, data, source, log, now, skip=range(0)) -> set:
    """Flip every bit that matters; returns the drop reasons seen."""
    before = state(dev)
    reasons = set()
    for i, bad in flip_each_byte(data, skip):
        log.clear()
        out = dev.receive(bad, source, now)
        assert out.datagrams == [] and out.packets == [], f"byte {i} flipped was answered"
        assert log.drops(), f"byte {i} flipped: no packet.dropped event"
        assert state(dev) == before, f"byte {i} flipped changed state"
        reasons |= {e["reason"] for e in log.drops()}
    return reasons


def test_flipping_any_byte_of_an_initiation_is_dropped_without_state_change(pair_factory, any_suite):
    pair = pair_factory(any_suite)
    log = EventLog(pair.events, kinds="packet.dropped")
    (init, _), = pair.client.initiate(pair.server_peer, pair.now)
    # mac2 is only checked under load (tested below), so its 16 bytes are skipped here.
    reasons = assert_all_rejected(pair.server, init, pair.client_ep, log, pair.now, skip=range(132, 148))
    assert reasons == {"malformed", "bad-mac1"}   # the type/reserved bytes, then everything mac1 covers
    assert pair.server.receive(init, pair.client_ep, pair.now).datagrams  # the original still works


def test_flipping_any_byte_of_a_response_is_dropped_without_state_change(pair_factory, any_suite):
    pair = pair_factory(any_suite)
    log = EventLog(pair.events, kinds="packet.dropped")
    (init, _), = pair.client.initiate(pair.server_peer, pair.now)
    (resp, _), = pair.server.receive(init, pair.client_ep, pair.now).datagrams
    reasons = assert_all_rejected(pair.client, resp, pair.server_ep, log, pair.now, skip=range(76, 92))
    assert reasons == {"malformed", "bad-mac1"}
    assert pair.client.receive(resp, pair.server_ep, pair.now).datagrams  # keepalive confirming the session


def test_flipping_any_byte_of_transport_data_is_dropped_without_state_change(pair_factory, any_suite):
    pair = pair_factory(any_suite)
    pair.handshake()
    log = EventLog(pair.events, kinds="packet.dropped")
    (data, _), = pair.client.send(pair.server_peer, PING, pair.now)
    reasons = assert_all_rejected(pair.server, data, pair.client_ep, log, pair.now)
    # type byte -> malformed; receiver index -> unknown-index; a counter flipped onto the one the
    # confirming keepalive used -> replay (before any decryption); the rest -> bad-mac.
    assert {"malformed", "unknown-index", "bad-mac"} <= reasons <= {"malformed", "unknown-index", "bad-mac", "replay"}
    assert pair.server.receive(data, pair.client_ep, pair.now).packets[0][1] == PING


def test_flipping_any_byte_of_a_cookie_reply_is_dropped_without_state_change(pair_factory, any_suite):
    pair = pair_factory(any_suite)
    (init, _), = pair.client.initiate(pair.server_peer, pair.now)
    pair.server.under_load_until = float("inf")
    (cookie, _), = pair.server.receive(init, pair.client_ep, pair.now).datagrams
    assert m.parse(cookie).type == m.COOKIE_REPLY
    log = EventLog(pair.events, kinds="packet.dropped")
    reasons = assert_all_rejected(pair.client, cookie, pair.server_ep, log, pair.now)
    assert reasons == {"malformed", "unknown-index", "bad-cookie"}
    pair.client.receive(cookie, pair.server_ep, pair.now)
    assert pair.server_peer.cookie is not None


def test_under_load_mac2_and_cookie_reply(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.server.under_load_until = float("inf")
    pair.net.send(pair.client_ep, pair.client.initiate(pair.server_peer, pair.now))
    pair.net.run()
    # Under load, an initiation without mac2 gets only a 64-byte cookie reply, no handshake.
    assert log.of("handshake.cookie.sent") and log.of("handshake.cookie.received")
    assert not log.of("handshake.response.sent")
    assert [len(c.data) for c in pair.net.capture] == [148, 64]
    # The retry (after REKEY_TIMEOUT) carries mac2 computed with the cookie and is answered.
    pair.net.advance(6)
    assert log.of("handshake.response.sent")
    retry = m.HandshakeInitiation.from_bytes(pair.net.capture[2].data)
    assert any(retry.mac2)
    # A flipped mac2 under load is not processed either.
    log.clear()
    pair.net.clock.advance(6)
    (init, _), = pair.client.initiate(pair.server_peer, pair.now)
    before = state(pair.server)
    bad = init[:-1] + bytes([init[-1] ^ 1])
    out = pair.server.receive(bad, pair.client_ep, pair.now)
    assert m.parse(out.datagrams[0][0]).type == m.COOKIE_REPLY and state(pair.server) == before
    assert log.drops("under-load")
    # A cookie is bound to the address: the same mac2 from another address is not accepted.
    out = pair.server.receive(init, ("192.0.2.77", 999), pair.now)
    assert m.parse(out.datagrams[0][0]).type == m.COOKIE_REPLY


def test_replayed_data_is_rejected(pair_factory):
    pair = pair_factory()
    pair.handshake()
    log = EventLog(pair.events, kinds="packet.dropped")
    (data, _), = pair.client.send(pair.server_peer, PING, pair.now)
    assert pair.server.receive(data, pair.client_ep, pair.now).packets
    assert pair.server.receive(data, pair.client_ep, pair.now).packets == []
    assert log.drops("replay")


def test_replayed_initiation_is_rejected(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events, kinds="packet.dropped")
    (init, _), = pair.client.initiate(pair.server_peer, pair.now)
    assert pair.server.receive(init, pair.client_ep, pair.now).datagrams
    pair.net.clock.advance(1)
    before = state(pair.server)
    assert pair.server.receive(init, pair.client_ep, pair.now).datagrams == []
    assert log.drops("stale-timestamp") and state(pair.server) == before


def test_initiations_closer_than_20ms_are_a_flood(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events, kinds="packet.dropped")
    (first, _), = pair.client.initiate(pair.server_peer, pair.now)
    pair.server.receive(first, pair.client_ep, pair.now)
    pair.net.clock.advance(0.010)
    pair.server_peer.last_initiation_sent = float("-inf")  # let the client send again at once
    pair.client.wall_offset += 1  # a newer TAI64N, so only the rate check can stop it
    (second, _), = pair.client.initiate(pair.server_peer, pair.now)
    assert pair.server.receive(second, pair.client_ep, pair.now).datagrams == []
    assert log.drops("initiation-flood")


def test_garbage_never_raises_and_never_gets_a_reply(pair_factory):
    import os
    pair = pair_factory()
    pair.handshake()
    log = EventLog(pair.events, kinds="packet.dropped")
    for n in (0, 1, 3, 4, 31, 32, 64, 92, 148, 1500):
        for t in (1, 2, 3, 4, 9):
            data = bytes([t, 0, 0, 0]) + os.urandom(max(0, n - 4)) if n >= 4 else os.urandom(n)
            out = pair.server.receive(data, ("192.0.2.66", 6666), pair.now)
            assert out.datagrams == [] and out.packets == []
    assert len(log.events) == 50
    assert sum(v for k, v in pair.server.counters.items() if k.startswith("dropped.")) == 50


def test_one_server_and_a_hundred_clients_all_handshake_and_ping():
    """A hundred peers on one simulated link: every client's first packet triggers its handshake;
    all complete, every echo request reaches the server from the right tunnel address, and every
    reply reaches the right client (cryptokey routing over 100 AllowedIPs entries)."""
    from vpnedu.packet.ip import build_icmp_echo
    from vpnedu.protocol.keys import generate_private_key
    from vpnedu.sim import FakeClock, MemoryNetwork
    clock = FakeClock()
    net = MemoryNetwork(clock=clock)
    server_ep = ("203.0.113.2", 51820)
    server = Device(generate_private_key(), wall_offset=clock.wall_offset)
    net.attach(server_ep, server)
    clients = []
    for i in range(100):
        c = Device(generate_private_key(), wall_offset=clock.wall_offset)
        addr = f"10.0.{1 + i // 250}.{2 + i % 250}"
        server.add_peer(c.public_key, allowed_ips=[f"{addr}/32"], name=f"c{i}")
        c.add_peer(server.public_key, endpoint=server_ep, allowed_ips=["0.0.0.0/0"])
        ep = (f"198.51.100.{2 + i % 250}", 40000 + i)
        net.attach(ep, c)
        clients.append((c, ep, addr))
    for i, (c, ep, addr) in enumerate(clients):   # all at once: queued packets wait for handshakes
        net.send(ep, c.send_packet(build_icmp_echo(addr, "10.0.0.1", ident=i, seq=1), clock.now))
    net.run()
    got = net.delivered[server_ep]
    assert len(got) == 100
    assert {p.name for p, _ in got} == {f"c{i}" for i in range(100)}
    assert server.counters.get("handshakes_completed", 0) == 100
    for peer, pkt in got:   # the server answers each one
        ident = int.from_bytes(pkt[24:26], "big")
        reply = build_icmp_echo("10.0.0.1", clients[ident][2], ident=ident, seq=1, reply=True)
        net.send(server_ep, server.send_packet(reply, clock.now))
    net.run()
    for i, (c, ep, addr) in enumerate(clients):
        [(peer, pkt)] = net.delivered[ep]
        assert pkt[16:20] == bytes(map(int, addr.split(".")))
    assert not any(k.startswith("dropped.") for k in server.counters)
