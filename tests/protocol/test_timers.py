"""The timer state machine, driven by a fake clock: rekey, reject, retries, keepalives."""

from vpnedu.events import EventLog
from vpnedu.packet.ip import build_icmp_echo
from vpnedu.protocol import messages as m
from vpnedu.protocol.timers import Timers

PING = build_icmp_echo("10.0.0.2", "10.0.0.1")
PONG = build_icmp_echo("10.0.0.1", "10.0.0.2", reply=True)


def handshakes_sent(log):
    return len(log.of("handshake.initiation.sent"))


def test_initiator_rekeys_after_120_seconds_of_use(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.handshake()
    first = pair.server_peer.current
    pair.net.clock.advance(119)
    pair.client_sends(PING)
    assert handshakes_sent(log) == 1 and pair.server_peer.current is first
    pair.net.clock.advance(2)  # 121 s: the next packet triggers a new handshake
    pair.client_sends(PING)
    assert handshakes_sent(log) == 2
    assert any(e["reason"].startswith("REKEY_AFTER_TIME") for e in log.of("timer.rekey"))
    assert pair.server_peer.current is not first and pair.server_peer.previous is first
    pair.client_sends(PING)
    pair.server_sends(PONG)
    got = [p for _, p in pair.net.delivered[pair.server_ep]]
    assert got == [PING, PING, PING] and [p for _, p in pair.net.delivered[pair.client_ep]] == [PONG]


def test_keys_are_rejected_after_180_seconds(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.handshake()
    pair.net.clock.advance(179)
    # Encrypted at 179 s (with the old keys, plus a rekey initiation we throw away) ...
    late, rekey = pair.client.send(pair.server_peer, PING, pair.now)
    assert late[0][0] == m.TRANSPORT_DATA and rekey[0][0] == m.INITIATION
    pair.net.clock.advance(2)
    # ... and delivered at 181 s: too late.
    assert pair.server.receive(late[0], pair.client_ep, pair.now).packets == []
    assert log.drops("expired-session")
    # Sending at 181 s never uses the old keys: the packet waits for a new handshake.
    pair.server_peer.last_initiation_sent = float("-inf")
    sent = pair.client.send(pair.server_peer, PING, pair.now)
    assert [d[0] for d, _ in sent] == [m.INITIATION]
    assert log.of("session.expired") and len(pair.server_peer.staged) == 1


def test_retransmits_every_rekey_timeout_and_gives_up_after_90_seconds(pair_factory):
    pair = pair_factory(jitter=lambda limit: 0.0)
    log = EventLog(pair.events)
    pair.net.on_wire = lambda data, s, d: None if d == pair.server_ep else data  # server unreachable
    pair.client_sends(PING)
    pair.net.advance(60, step=1)
    times = [e.time for e in log.of("handshake.initiation.sent")]
    gaps = {round(b - a, 3) for a, b in zip(times, times[1:])}
    assert gaps == {5.0}
    pair.net.advance(40, step=1)
    assert len(log.of("handshake.timeout")) == 1
    assert handshakes_sent(log) == 18  # REKEY_ATTEMPT_TIME / REKEY_TIMEOUT
    assert log.of("handshake.timeout")[0]["dropped_packets"] == 1 and not pair.server_peer.staged
    pair.net.advance(30, step=1)
    assert handshakes_sent(log) == 18  # and then it stays quiet


def test_passive_keepalive_after_receiving_data_and_sending_nothing(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.handshake()
    pair.client_sends(PING)
    pair.net.advance(9.5)
    assert not log.of("timer.keepalive")
    pair.net.advance(1)
    ka = log.of("timer.keepalive")
    assert len(ka) == 1 and ka[0]["mode"] == "passive" and ka[0].peer == "client"
    assert [e["keepalive"] for e in log.of("data.decrypted")][-1] is True


def test_no_reply_for_15_seconds_starts_a_new_handshake(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.handshake()
    pair.net.on_wire = lambda data, s, d: None if d == pair.client_ep else data  # replies are lost
    pair.client_sends(PING)
    pair.net.advance(14)
    assert handshakes_sent(log) == 1
    pair.net.advance(2)
    assert handshakes_sent(log) == 2
    assert any("KEEPALIVE + REKEY_TIMEOUT" in e["reason"] for e in log.of("timer.rekey"))


def test_persistent_keepalive(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.server_peer.persistent_keepalive = 25
    pair.handshake()
    pair.net.advance(80, step=1)
    kinds = [e["mode"] for e in log.of("timer.keepalive")]
    assert kinds.count("persistent") == 3


def test_keys_are_zeroed_after_three_reject_times(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.handshake()
    pair.net.advance(541, step=5)
    assert log.of("session.zeroed")
    assert pair.server_peer.current is None and not pair.client._index


def test_shortened_timers_rekey_repeatedly_without_loss(pair_factory):
    fast = Timers(rekey_after_time=2, reject_after_time=3, rekey_timeout=0.5, keepalive_timeout=1)
    pair = pair_factory(timers=fast)
    log = EventLog(pair.events)
    pair.handshake()
    sent = 0
    for _ in range(100):  # 10 s of traffic at 10 packets/s in both directions
        pair.net.clock.advance(0.1)
        pair.net.tick()
        pair.client_sends(PING)
        pair.server_sends(PONG)
        sent += 1
    assert len(log.of("session.established")) >= 8
    assert len(pair.net.delivered[pair.server_ep]) == sent
    assert len(pair.net.delivered[pair.client_ep]) == sent
    assert not log.drops()


def test_rekey_and_reject_after_messages(pair_factory):
    """REKEY_AFTER_MESSAGES starts a new handshake; past REJECT_AFTER_MESSAGES a key is used for
    nothing more, sending or receiving (both shortened here: 2**60 messages take a while)."""
    pair = pair_factory(timers=Timers(rekey_after_messages=4, reject_after_messages=8))
    log = EventLog(pair.events)
    pair.handshake()
    # The receiver is stricter than the sender, so the receive check is seen on its own.
    pair.server.timers = Timers(rekey_after_messages=4, reject_after_messages=6)
    pair.net.on_wire = lambda data, s, d: None if data[0] == m.INITIATION else data  # no rekey can finish
    pair.net.clock.advance(6)   # past REKEY_TIMEOUT since the first handshake, far before REKEY_AFTER_TIME
    kp = pair.server_peer.current
    assert kp.send_counter == 1          # the keepalive that confirmed the session to the responder
    for _ in range(3):
        pair.client_sends(PING)          # counters 1..3
    assert handshakes_sent(log) == 1 and not log.of("timer.rekey")
    pair.client_sends(PING)              # counter 4: the 5th message on these keys, time for new ones
    assert handshakes_sent(log) == 2
    assert any("REKEY_AFTER_MESSAGES" in e["reason"] for e in log.of("timer.rekey"))
    for _ in range(3):
        pair.client_sends(PING)          # counters 5..7 still go out on the old keys ...
    assert kp.send_counter == 8 and not log.of("session.expired")
    pair.client_sends(PING)              # ... an 8th would reach REJECT_AFTER_MESSAGES: it waits
    assert log.of("session.expired") and pair.server_peer.current is None
    assert len(pair.server_peer.staged) == 1
    # The receiver took the pings with counters 1..5 and dropped 6 and 7 as an expired session.
    assert len(pair.net.delivered[pair.server_ep]) == 5
    assert len(log.drops("expired-session")) == 2


def test_the_after_wakeup_deadline_of_the_changed_peers_never_misses_an_earlier_one(pair_factory):
    """A daemon keeps one timer armed for the Device's earliest deadline and, after each wakeup,
    only moves it earlier, to ``next_deadline(changed_only=True)``: the peers that wakeup touched
    (looking at all of a server's peers after every packet cost O(peers)).  Driven as the daemons
    drive it -- traffic, handshakes, keepalives, rekeys, a peer set to persistent keepalive, a
    peer added -- the armed time is never later than the true earliest deadline of all peers."""
    from vpnedu.protocol.keys import generate_private_key, public_key
    pair = pair_factory()
    server, client, clock = pair.server, pair.client, pair.net.clock
    for i in range(50):       # idle peers, as on a server with many clients
        server.add_peer(public_key(generate_private_key()), allowed_ips=[f"10.1.{i}.2/32"])

    def earliest():
        ts = [t for p in server.peers.values() for t in p.deadlines()]
        return min(ts) if ts else None

    armed = server.next_deadline()
    fired = checked = 0
    pair.handshake()
    for step in range(1200):                      # 600 s in 0.5 s steps
        if step % 14 == 0:
            pair.client_sends(PING)                # the server wakes: a batch from the client
        if step % 33 == 0:
            pair.server_sends(PONG)                # the server wakes: a packet from its TUN
        if step == 300:
            server.set_persistent_keepalive(pair.client_peer, 7, clock.now)
        if step == 500:
            server.add_peer(public_key(generate_private_key()), persistent_keepalive=3,
                            allowed_ips=["10.2.0.2/32"])
        moved = server.next_deadline(changed_only=True)
        if moved is not None and (armed is None or moved < armed):
            armed = moved
        true = earliest()
        if true is not None:
            assert armed is not None and armed <= true + 1e-9, (step, armed, true)
            checked += 1
        clock.advance(0.5)
        if armed is not None and clock.now >= armed:
            fired += 1
            pair.net.send(pair.server_ep, server.tick(clock.now))
            pair.net.send(pair.client_ep, client.tick(clock.now))
            pair.net.run()
            armed = server.next_deadline()         # after a tick: every peer
        else:
            pair.net.send(pair.client_ep, client.tick(clock.now))
            pair.net.run()
    assert checked > 1000 and fired > 20
