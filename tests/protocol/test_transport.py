"""The one transport engine: a batch behaves exactly as its packets one by one.

Two identical worlds are built from the same seed (same keys, same ephemeral keys, same
indices: :class:`vpnedu.testing.SeededRandom`) on the same fake clock.  The same script runs
in both; one world makes the one-packet calls (``send``, ``receive``), the other the batch
calls (``send_batch``, ``receive_batch``, with UDP-GRO-style reads that hold several
datagrams).  After every step both worlds must agree on the wire bytes, the packets delivered,
the counters, every timer deadline and session state, and the events -- through replays,
tampering, unknown indices, roaming, rekeys (by time and by message count), session
expiry and keepalives.
"""

from collections import Counter

import pytest

from vpnedu.events import EventLog
from vpnedu.packet.ip import build_icmp_echo, build_udp
from vpnedu.protocol import transport
from vpnedu.protocol.timers import Timers
from vpnedu.sim import FakeClock, make_pair
from vpnedu.testing import SeededRandom

PING = build_icmp_echo("10.0.0.2", "10.0.0.1", payload=b"ping")
PONG = build_icmp_echo("10.0.0.1", "10.0.0.2", payload=b"pong", reply=True)


def up(n: int, size: int) -> bytes:
    return build_udp("10.0.0.2", 40000 + n, "10.0.0.1", 9, bytes([n % 256]) * (size - 28))


def down(n: int, size: int) -> bytes:
    return build_udp("10.0.0.1", 9, "10.0.0.2", 40000 + n, bytes([n % 256]) * (size - 28))


class World:
    def __init__(self, batch: bool, **kw):
        self.batch = batch
        self.pair = make_pair(random=SeededRandom(b"twins"), clock=FakeClock(), **kw)
        self.log = EventLog(self.pair.events)

    @property
    def now(self):
        return self.pair.now

    def send(self, dev, peer, packets):
        """(transport datagrams, other datagrams) that sending ``packets`` produced."""
        if self.batch:
            out = dev.send_batch(peer, packets, self.now)
            return out.transport_datagrams(), out.datagrams
        sent = [d for p in packets for d in dev.send(peer, p, self.now)]
        return split(sent)

    def receive(self, dev, datagrams):
        """(transport datagrams, other datagrams, delivered packets) for received datagrams."""
        if self.batch:
            out = dev.receive_batch(gro_reads(datagrams), self.now)
            return out.transport_datagrams(), out.datagrams, [(p.label, bytes(x)) for p, x in out.packets]
        sent, delivered = [], []
        for data, src in datagrams:
            got = dev.receive(data, src, self.now)
            sent += got.datagrams
            delivered += [(p.label, bytes(x)) for p, x in got.packets]
        return (*split(sent), delivered)


def split(datagrams):
    return ([d for d in datagrams if d[0][0] == transport.TYPE],
            [d for d in datagrams if d[0][0] != transport.TYPE])


def gro_reads(datagrams):
    """What UDP GRO hands over: consecutive datagrams of one source and one size in one buffer
    (a shorter one may end a run)."""
    reads = []
    for data, src in datagrams:
        if reads and reads[-1][2] == src and data and len(reads[-1][0]) % reads[-1][1] == 0 \
                and len(data) <= reads[-1][1] and len(reads[-1][0]) + len(data) <= 65000:
            buf, size, _ = reads[-1]
            reads[-1] = (buf + data, size, src)
        else:
            reads.append((data, len(data), src))
    return reads


def snapshot(world):
    """Everything the engine keeps: counters, sessions, replay windows, every timer deadline."""
    state = {}
    for dev in (world.pair.client, world.pair.server):
        peers = []
        for p in dev.peers.values():
            sessions = []
            for k in (p.current, p.previous, p.next):
                if k is None:
                    sessions.append(None)
                    continue
                g = k.replay.greatest
                window = tuple(k.replay.check(c) for c in range(max(0, g - 70), g + 2))
                sessions.append((k.local_index, k.remote_index, k.send_counter, g, window, k.created))
            peers.append(dict(
                deadlines=(p.t_retransmit, p.t_keepalive, p.t_new_handshake, p.t_zero_keys, p.t_persistent),
                timer_flags=(p.need_another_keepalive, p.sent_last_minute_handshake, p.handshake_attempts,
                             p.last_initiation_sent, p.last_initiation_consumed),
                traffic=(p.tx_bytes, p.tx_packets, p.rx_bytes, p.rx_packets, p.endpoint, p.last_handshake),
                staged=[bytes(s) for s in p.staged], sessions=sessions,
                handshake=p.handshake and p.handshake.local_index))
        state[dev.name] = dict(counters=dict(dev.counters), peers=peers, next_deadline=dev.next_deadline(),
                               under_load=dev.under_load_until)
    state["events"] = Counter(e.kind for e in world.log.events)
    state["drops"] = Counter(e["reason"] for e in world.log.drops())
    return state


def both(worlds, step):
    """Run ``step(world)`` in both worlds; the results and the whole state must be equal."""
    single, batch = (step(w) for w in worlds)
    assert single == batch
    assert snapshot(worlds[0]) == snapshot(worlds[1])
    return single


@pytest.fixture
def worlds():
    ws = [World(batch=False), World(batch=True)]
    for w in ws:
        w.pair.handshake()
    assert snapshot(ws[0]) == snapshot(ws[1])   # the seed makes them twins
    return ws


def test_batches_equal_single_packets_through_drops_roaming_rekeys_and_keepalives(worlds):
    sizes = [60, 1420, 77, 0, 1300, 1300, 1300, 500, 1419, 33]
    packets = [up(i, n) if n else b"" for i, n in enumerate(sizes)]
    wire, control = both(worlds, lambda w: w.send(w.pair.client, w.pair.server_peer, packets))
    assert len(wire) == len(packets) and not control
    assert [len(d) for d, _ in wire] == [96, 1452, 112, 32, 1344, 1344, 1344, 544, 1452, 80]   # padded

    # The server receives them, plus a replay, a tampered copy, an unknown index, garbage, a
    # handshake message that is not for us, and the same session's packets from a new address.
    c_ep = worlds[0].pair.client_ep
    roamed = ("198.51.100.77", 4444)

    def hostile(w):
        grams = [(d, c_ep) for d, _ in wire]
        replay = grams[4]
        tampered = (grams[6][0][:-1] + bytes([grams[6][0][-1] ^ 1]), c_ep)
        unknown = (bytes([4, 0, 0, 0]) + bytes(4) + bytes(8) + bytes(32), c_ep)
        short = (bytes([4, 0, 0, 0]) + bytes(12), c_ep)
        bogus_init = (bytes([1, 0, 0, 0]) + bytes(144), c_ep)
        return grams[:5] + [replay, tampered, unknown, short, bogus_init] + grams[5:6] + \
            [(d, roamed) for d, _ in grams[7:]]
    sent, control, delivered = both(worlds, lambda w: w.receive(w.pair.server, hostile(w)))
    assert [p for _, p in delivered] == [p for p in packets if p and p != packets[6]]
    assert not sent and not control
    drops = snapshot(worlds[1])["drops"]
    assert drops == Counter({"replay": 1, "bad-mac": 1, "unknown-index": 1, "malformed": 1, "bad-mac1": 1})
    assert worlds[1].pair.client_peer.endpoint == roamed

    # The server answers in a batch; the client takes it.
    answers = [down(i, 90 + 37 * i) for i in range(8)]
    wire, _ = both(worlds, lambda w: w.send(w.pair.server, w.pair.client_peer, answers))
    both(worlds, lambda w: w.receive(w.pair.client, [(d, w.pair.server_ep) for d, _ in wire]))

    # Ten seconds later: the passive keepalive the client owes (it received the server's
    # answers and has sent nothing since), through the timers; the server owes none.
    for w in worlds:
        w.pair.net.clock.advance(11)
    ticks = both(worlds, lambda w: (w.pair.client.tick(w.now), w.pair.server.tick(w.now)))
    assert [[len(d) for d, _ in t] for t in ticks] == [[32], []]
    assert snapshot(worlds[1])["events"]["timer.keepalive"] == 1

    # Two minutes in: the next batch from the initiator (the client) starts a rekey.
    for w in worlds:
        w.pair.net.clock.advance(110)
    wire, control = both(worlds, lambda w: w.send(w.pair.client, w.pair.server_peer, packets[:5]))
    assert len(control) == 1 and control[0][0][0] == 1   # the initiation, after the data
    assert snapshot(worlds[1])["events"]["timer.rekey"] == 1
    # The handshake completes (server answers; client confirms with its queued data or a
    # keepalive); the server confirms the new session on the first data.
    s_ep, c_ep = worlds[0].pair.server_ep, worlds[0].pair.client_ep
    _, resp, _ = both(worlds, lambda w: w.receive(w.pair.server, [(control[0][0], c_ep)]))
    wire2, _, _ = both(worlds, lambda w: w.receive(w.pair.client, [(resp[0][0], s_ep)]))
    wire3, _ = both(worlds, lambda w: w.send(w.pair.client, w.pair.server_peer, packets[5:]))
    _, _, delivered = both(worlds, lambda w: w.receive(w.pair.server, [(d, c_ep) for d, _ in wire + wire2 + wire3]))
    assert snapshot(worlds[1])["server"]["counters"]["handshakes_completed"] == 2
    assert len(delivered) == len([p for p in packets if p])


def test_batches_equal_single_packets_across_rekey_and_reject_after_messages():
    """A batch that crosses REKEY_AFTER_MESSAGES starts one handshake; one that reaches
    REJECT_AFTER_MESSAGES seals only what the keys may still send and queues the rest, as
    packets sent one by one would."""
    limits = Timers(rekey_after_messages=5, reject_after_messages=12)
    ws = [World(batch=False, timers=limits), World(batch=True, timers=limits)]
    for w in ws:
        w.pair.handshake()
        w.pair.net.clock.advance(6)   # past REKEY_TIMEOUT: a rekey initiation may go out
    packets = [up(i, 100 + i) for i in range(20)]
    wire, control = both(ws, lambda w: w.send(w.pair.client, w.pair.server_peer, packets))
    assert len(wire) == 11                 # counters 1..11 (0 was the confirming keepalive)
    assert [d[0] for d, _ in control] == [1]
    st = snapshot(ws[1])
    assert st["events"]["session.expired"] == 1 and len(st["client"]["peers"][0]["staged"]) == 9
    both(ws, lambda w: w.receive(w.pair.server, [(d, w.pair.client_ep) for d, _ in wire]))


def test_batches_equal_single_packets_near_and_past_reject_after_time(worlds):
    """Time-driven rules on the batch paths: data received 166 s into a session makes the
    initiator rekey (REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT); past 180 s a
    received batch sealed in time is dropped, a batch to send is queued with a new initiation,
    and the new session delivers what waited -- the same in both worlds, deadlines included."""
    s_ep, c_ep = worlds[0].pair.server_ep, worlds[0].pair.client_ep
    answers = [down(i, 200) for i in range(4)]
    for w in worlds:
        w.pair.net.clock.advance(166)
    # The responder (the server) sends; the initiator (the client) receives and rekeys.
    wire, control = both(worlds, lambda w: w.send(w.pair.server, w.pair.client_peer, answers))
    assert len(wire) == 4 and not control
    sent, control, delivered = both(worlds, lambda w: w.receive(w.pair.client, [(d, s_ep) for d, _ in wire]))
    assert not sent and [d[0] for d, _ in control] == [1] and len(delivered) == 4
    assert snapshot(worlds[1])["events"]["timer.rekey"] == 1
    # That initiation is lost.  The server seals more at 179 s; they arrive at 181 s: too late.
    for w in worlds:
        w.pair.net.clock.advance(13)
    late, _ = both(worlds, lambda w: w.send(w.pair.server, w.pair.client_peer, answers))
    for w in worlds:
        w.pair.net.clock.advance(2)
    assert both(worlds, lambda w: w.receive(w.pair.client, [(d, s_ep) for d, _ in late])) == ([], [], [])
    assert snapshot(worlds[1])["drops"] == Counter({"expired-session": 4})
    # Both sides have data to send: the sessions expire, the packets wait, initiations go out.
    ups = [up(i, 100) for i in range(3)]
    wire, control = both(worlds, lambda w: w.send(w.pair.client, w.pair.server_peer, ups))
    assert not wire and [d[0] for d, _ in control] == [1]
    assert both(worlds, lambda w: w.send(w.pair.server, w.pair.client_peer, answers))[0] == []
    st = snapshot(worlds[1])
    assert st["events"]["session.expired"] == 2
    assert [len(st[side]["peers"][0]["staged"]) for side in ("client", "server")] == [3, 4]
    # The client's handshake completes; each side's queue goes out under the new keys.
    _, resp, _ = both(worlds, lambda w: w.receive(w.pair.server, [(control[0][0], c_ep)]))
    wire, _, _ = both(worlds, lambda w: w.receive(w.pair.client, [(resp[0][0], s_ep)]))
    wire, _, delivered = both(worlds, lambda w: w.receive(w.pair.server, [(d, c_ep) for d, _ in wire]))
    assert [p for _, p in delivered] == ups and len(wire) == 4
    _, _, delivered = both(worlds, lambda w: w.receive(w.pair.client, [(d, s_ep) for d, _ in wire]))
    assert [p for _, p in delivered] == answers
    st = snapshot(worlds[1])
    assert [len(st[side]["peers"][0]["staged"]) for side in ("client", "server")] == [0, 0]
    assert st["server"]["counters"]["handshakes_completed"] == 2


@pytest.mark.parametrize("suite", ["aes256gcm", "null-teaching"])
def test_every_suite_takes_the_same_batch_path(suite):
    ws = [World(batch=False, suite=suite, allow_insecure=True), World(batch=True, suite=suite, allow_insecure=True)]
    for w in ws:
        w.pair.handshake()
    packets = [up(i, 40 + 50 * i) for i in range(6)]
    wire, _ = both(ws, lambda w: w.send(w.pair.client, w.pair.server_peer, packets))
    _, _, delivered = both(ws, lambda w: w.receive(w.pair.server, [(d, w.pair.client_ep) for d, _ in wire]))
    assert [p for _, p in delivered] == packets
    if suite == "null-teaching":
        assert all(p in d for p, (d, _) in zip(packets, wire))   # readable on the wire


def test_output_runs_are_the_udp_gso_layout():
    """Sealed datagrams lie back to back in the caller's buffer, grouped in runs of equal
    length to one endpoint (only the last of a run shorter), within the run limits."""
    pair = make_pair()
    pair.handshake()
    out = transport.Output(1 << 16, max_run=4, max_run_bytes=65000)
    sizes = [1420] * 6 + [500, 1420, 1420, 100, 100]
    pair.client.send_batch(pair.server_peer, [up(i, n) for i, n in enumerate(sizes)], pair.now, out)
    runs = [(len(v), size) for v, size, _ in out.runs]
    assert runs == [(4 * 1452, 1452), (2 * 1452 + 544, 1452), (2 * 1452 + 144, 1452), (144, 144)]
    assert all(ep == pair.client.peers[pair.server.public_key].endpoint for _, _, ep in out.runs)
    # A buffer too small for the batch grows into a new area; earlier runs stay valid.
    small = transport.Output(3000, max_run=64)
    pair.client.send_batch(pair.server_peer, [up(i, 1420) for i in range(5)], pair.now, small)
    got = small.transport_datagrams()
    assert len(got) == 5 and all(len(d) == 1452 for d, _ in got)
    for d, _ in got:
        assert pair.server.receive(d, pair.client_ep, pair.now).packets
