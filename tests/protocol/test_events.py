"""Event hooks: filters, async streams, threads, and no cost when nobody listens."""

import asyncio
import threading

import pytest

from vpnedu import events as ev
from vpnedu.events import CATALOGUE, EventBus, EventLog
from vpnedu.packet.ip import build_icmp_echo

PING = build_icmp_echo("10.0.0.2", "10.0.0.1")


def test_filters_by_kind_prefix_and_layer():
    bus = EventBus()
    hs, data, drops = EventLog(bus, kinds="handshake"), EventLog(bus, layers=["data"]), \
        EventLog(bus, kinds=["packet.dropped"])
    bus.emit("handshake.initiation.sent", "p", sender_index=1)
    bus.emit("data.encrypted", "p", counter=0)
    bus.emit("packet.dropped", None, reason="replay")
    bus.emit("handshakes.bogus")  # a prefix must end at a dot
    assert hs.kinds() == ["handshake.initiation.sent"]
    assert data.kinds() == ["data.encrypted"]
    assert drops.events[0]["reason"] == "replay" and drops.events[0].layer == "packet"


def test_every_emitted_kind_is_in_the_catalogue(pair_factory):
    pair = pair_factory()
    log = EventLog(pair.events)
    pair.handshake()
    pair.client_sends(PING)
    pair.net.advance(30)
    assert set(log.kinds()) <= set(CATALOGUE)
    assert all(isinstance(e.to_json(), str) for e in log.events)


def test_per_packet_events_are_not_built_when_nobody_listens(pair_factory, monkeypatch):
    pair = pair_factory()
    control = EventLog(pair.events, kinds="session")  # a listener, but not for per-packet kinds
    pair.handshake()
    built = []
    real_event = ev.Event
    monkeypatch.setattr(ev, "Event", lambda *a, **k: built.append(a[0]) or real_event(*a, **k))
    calls = []
    real_emit = pair.events.emit
    monkeypatch.setattr(pair.events, "emit", lambda kind, *a, **k: calls.append(kind) or real_emit(kind, *a, **k))
    for _ in range(50):
        pair.client_sends(PING)
    assert [k for k in calls if k in ev.PER_PACKET] == []
    assert built == []
    # Counters are kept regardless.
    assert pair.server_peer.tx_packets == 51 and pair.client_peer.rx_packets == 51
    control.close()


def test_subscriber_errors_never_reach_the_datapath(pair_factory):
    pair = pair_factory()
    pair.events.subscribe(lambda e: 1 / 0)
    pair.handshake()
    pair.client_sends(PING)
    assert pair.net.delivered[pair.server_ep]
    assert pair.events.subscriber_errors > 0


def test_async_stream_receives_events_from_another_thread():
    bus = EventBus()

    async def main():
        got = []
        async with bus.stream(kinds="data") as stream:
            t = threading.Thread(target=lambda: [bus.emit("data.encrypted", "p", counter=i) for i in range(5)]
                                 + [bus.emit("tun.read")])
            t.start()
            async for e in stream:
                got.append(e["counter"])
                if len(got) == 5:
                    break
            t.join()
        return got

    assert asyncio.run(asyncio.wait_for(main(), 5)) == [0, 1, 2, 3, 4]


def test_async_stream_is_bounded_and_counts_what_it_missed():
    bus = EventBus()

    async def main():
        s = bus.stream(maxsize=10)
        for i in range(25):
            bus.emit("timer.keepalive", "p", n=i)
        first = await s.__anext__()
        s.close()
        return first["n"], s.missed

    assert asyncio.run(main()) == (15, 15)


def test_unsubscribe_stops_delivery():
    bus = EventBus()
    log = EventLog(bus)
    bus.emit("tun.read")
    log.close()
    bus.emit("tun.read")
    assert len(log.events) == 1 and not bus.wants("tun.read")


def test_event_fields_are_the_bytes_on_the_wire(pair_factory):
    """What a student reads in an event is what the datagram carried (checked against the wire)."""
    import base64

    from vpnedu.protocol import messages as m
    pair = pair_factory()
    log = EventLog(pair.events)
    wire = []
    pair.net.on_wire = lambda data, s, d: wire.append(data) or data
    pair.handshake()
    pair.client_sends(PING)
    init, resp = m.parse(wire[0]), m.parse(wire[1])
    sent = log.of("handshake.initiation.sent")[0]
    assert sent["sender_index"] == init.sender
    assert base64.b64decode(sent["ephemeral"]) == init.ephemeral
    assert bytes.fromhex(sent["encrypted_static"]) == init.encrypted_static
    assert bytes.fromhex(sent["mac1"]) == init.mac1 and sent["mac2"] == "00" * 16
    assert sent["timestamp"] == log.of("handshake.initiation.received")[0]["timestamp"]
    got = log.of("handshake.response.received")[0]
    assert (got["sender_index"], got["receiver_index"]) == (resp.sender, resp.receiver) == \
        (resp.sender, init.sender)
    assert base64.b64decode(got["ephemeral"]) == resp.ephemeral
    est = {e["role"]: e for e in log.of("session.established")}
    assert est["initiator"]["local_index"] == init.sender == est["responder"]["remote_index"]
    # The ping: 39 bytes, padded to 48, + 16-byte tag + 16-byte header = the 80-byte datagram sent.
    enc = [e for e in log.of("data.encrypted") if not e["keepalive"]][0]
    data = wire[-1]
    assert enc["plaintext_len"] == len(PING) and enc["padded_len"] == -(-len(PING) // 16) * 16
    assert enc["ciphertext_len"] == enc["padded_len"] + 16 and enc["datagram_len"] == len(data) == 16 + 48 + 16
    assert enc["counter"] == m.parse(data).counter == 1   # 0 was the keepalive that confirmed the session
    dec = [e for e in log.of("data.decrypted") if not e["keepalive"]][0]
    assert (dec["counter"], dec["plaintext_len"]) == (1, len(PING)) and "ICMP echo request" in dec["packet"]


# ---------------------------------------------------------------------------- `vpnedu events` on a real daemon
def _console_script() -> str:
    import os
    import sys
    path = os.path.join(os.path.dirname(sys.executable), "vpnedu")
    assert os.access(path, os.X_OK), f"no console script at {path}: pip install -e . first"
    return path


def _follow(cmd):
    """Start a following ``vpnedu events``; killed after 60 s should it print nothing at all
    (a test that waits for a line must not hang when the line never comes)."""
    import subprocess
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(60, p.kill)
    killer.daemon = True
    killer.start()
    return p


@pytest.mark.root
def test_vpnedu_events_says_what_it_waits_for_and_shows_the_recent_history(lab_factory):
    """The real console script in the client's namespace, against the running client daemon."""
    import json
    import signal
    import subprocess

    from tests.lablib import provision, start_client, start_server, stop
    lab = lab_factory()
    provision(lab)
    server = start_server(lab, "--forwarding", "none")
    client = start_client(lab)
    vp = ["ip", "netns", "exec", lab.ns("client"), _console_script(), "events"]
    try:
        # Nothing of this kind happens: it says so on stderr (stdout stays for events), then waits.
        p = _follow([*vp, "--kind", "timer.rekey"])
        try:
            line = p.stderr.readline()
            assert line.startswith("vpnedu events: waiting for events of kind timer.rekey from /run/vpnedu/vpnedu0@"), line
            assert "Ctrl-C stops" in line
            assert p.poll() is None
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
        assert out == "" and p.returncode == 130 and "Traceback" not in err, err

        # The history the socket keeps, oldest first, then it would follow (--count ends it here).
        r = subprocess.run([*vp, "--recent", "0", "--kind", "handshake", "--kind", "session", "--json",
                            "--count", "3"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        kinds = [json.loads(line)["kind"] for line in r.stdout.splitlines()]
        assert kinds == ["handshake.initiation.sent", "handshake.response.received", "session.established"], r.stdout
        assert r.stderr.startswith("vpnedu events: the 3 most recent events of kinds handshake, session "
                                   "the daemon kept:"), r.stderr
        # --recent N: the last N of them; then the waiting line (after the history, not before).
        p = _follow([*vp, "--recent", "1", "--kind", "handshake"])
        try:
            first, second = p.stderr.readline(), p.stderr.readline()
            event = p.stdout.readline()
            p.send_signal(signal.SIGINT)
            p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
        assert first.startswith("vpnedu events: the 1 most recent events of kind handshake the daemon kept:"), first
        assert " handshake.response.received peer=server " in event, event
        assert second.startswith("vpnedu events: waiting for events of kind handshake from"), second
        # Per-packet kinds are not kept: it says which kinds are.
        p = _follow([*vp, "--recent", "5", "--kind", "data.encrypted"])
        try:
            first, second = p.stderr.readline(), p.stderr.readline()
            p.send_signal(signal.SIGINT)
            p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
        assert first.startswith("vpnedu events: the daemon kept no events of kind data.encrypted (it keeps "
                                "these kinds: handshake, session,"), first
        assert second.startswith("vpnedu events: waiting for events of kind data.encrypted"), second
    finally:
        stop(client)
        stop(server)
