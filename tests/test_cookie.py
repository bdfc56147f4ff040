"""mac1, mac2 and cookies (vpnedu.protocol.cookie), and the protocol's own view of load: a
received batch holding UNDER_LOAD_BATCH handshake messages makes handshakes without a valid
mac2 get a cookie reply, for UNDER_LOAD_HOLD seconds."""

from vpnedu.events import EventLog
from vpnedu.protocol import messages as m
from vpnedu.protocol.cookie import CookieChecker, MacKeys, add_macs, check_mac1, open_cookie
from vpnedu.protocol.keys import X25519KeyPair
from vpnedu.protocol.suites import WIREGUARD
from vpnedu.protocol.timers import UNDER_LOAD_BATCH, UNDER_LOAD_HOLD
from vpnedu.sim import make_pair
from vpnedu.testing import SeededRandom

EP = ("198.51.100.2", 40000)


def test_mac1_needs_the_receivers_public_key():
    us, other = X25519KeyPair(), X25519KeyPair()
    msg = bytes(range(100)) + bytes(32)
    packed, mac1, mac2 = add_macs(WIREGUARD, msg, MacKeys(WIREGUARD, us.public), None)
    assert mac2 == bytes(16) and packed[-32:-16] == mac1
    assert check_mac1(WIREGUARD, packed, MacKeys(WIREGUARD, us.public))
    assert not check_mac1(WIREGUARD, packed, MacKeys(WIREGUARD, other.public))


def test_a_cookie_is_bound_to_the_address_and_the_secret_rotates():
    us = X25519KeyPair()
    checker = CookieChecker(WIREGUARD, us.public, SeededRandom("cookie"))
    msg = bytes(116) + bytes(32)
    a = checker.cookie_for(EP, 10.0)
    assert a == checker.cookie_for(EP, 100.0)                         # same secret within 2 minutes
    assert a != checker.cookie_for(("198.51.100.3", 40000), 100.0)    # another address
    assert a != checker.cookie_for(EP, 131.0)                         # a new secret after 120 s
    # The initiator opens the reply with the mac1 it sent, and its next mac2 passes.
    packed, mac1, _ = add_macs(WIREGUARD, msg, checker.keys, None)
    nonce, sealed = checker.make_reply(packed, 7, EP, 131.0)
    cookie = open_cookie(WIREGUARD, MacKeys(WIREGUARD, us.public), nonce, sealed, mac1)
    assert cookie == checker.cookie_for(EP, 131.0)
    assert open_cookie(WIREGUARD, MacKeys(WIREGUARD, us.public), nonce, sealed, bytes(16)) is None
    with_mac2, _, _ = add_macs(WIREGUARD, msg, checker.keys, cookie)
    assert checker.check_mac2(with_mac2, EP, 131.0) and not checker.check_mac2(packed, EP, 131.0)


def test_a_batch_of_handshakes_puts_the_device_under_load():
    pair = make_pair()
    log = EventLog(pair.events)
    inits = []
    for _ in range(UNDER_LOAD_BATCH + 2):
        pair.server_peer.last_initiation_sent = float("-inf")   # let the client send at once
        (init, _), = pair.client.initiate(pair.server_peer, pair.now)
        inits.append(init)
    now = pair.now
    out = pair.server.receive_batch([(d, len(d), pair.client_ep) for d in inits], now)
    types = [d[0] for d, _ in out.datagrams]
    # The first initiation is answered; the next ones are floods (20 ms); from the 16th on the
    # server is under load, and an initiation without a valid mac2 gets only a cookie reply.
    assert types[0] == m.RESPONSE and types[1:] == [m.COOKIE_REPLY] * 3
    assert len(log.of("handshake.under-load")) == 1 and log.drops("under-load")
    assert pair.server.under_load(now) and pair.server.under_load(now + UNDER_LOAD_HOLD - 0.01)
    assert not pair.server.under_load(now + UNDER_LOAD_HOLD)
    # One batch with fewer handshake messages does not.
    calm = make_pair()
    calm.server.receive_batch([(d, len(d), calm.client_ep) for d in inits[:UNDER_LOAD_BATCH - 1]], now)
    assert not calm.server.under_load(now)
