"""mac1, mac2 and cookies (vpnedu.protocol.cookie), and the protocol's own view of load: a
received batch holding UNDER_LOAD_BATCH handshake messages makes handshakes without a valid
mac2 get a cookie reply, for UNDER_LOAD_HOLD seconds.  Also: what each MAC covers, the
secret's 120 s life, who can open a cookie reply, and how long an initiator uses a cookie."""

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


def test_mac1_and_mac2_cover_every_byte_before_them():
    us = X25519KeyPair()
    checker = CookieChecker(WIREGUARD, us.public, SeededRandom("cover"))
    cookie = checker.cookie_for(EP, 0.0)
    packed, _, _ = add_macs(WIREGUARD, bytes(range(116)) + bytes(32), checker.keys, cookie)
    assert check_mac1(WIREGUARD, packed, checker.keys) and checker.check_mac2(packed, EP, 0.0)
    for i in (0, 50, 115):                        # a byte of the message: both MACs fail
        bad = packed[:i] + bytes([packed[i] ^ 1]) + packed[i + 1:]
        assert not check_mac1(WIREGUARD, bad, checker.keys) and not checker.check_mac2(bad, EP, 0.0)
    bad_mac1 = packed[:120] + bytes([packed[120] ^ 1]) + packed[121:]
    assert not checker.check_mac2(bad_mac1, EP, 0.0)   # mac2 covers mac1 too


def test_the_cookie_secret_lives_exactly_120_seconds_from_its_first_use():
    from vpnedu.protocol.cookie import COOKIE_REFRESH_TIME
    assert COOKIE_REFRESH_TIME == 120.0
    us = X25519KeyPair()
    checker = CookieChecker(WIREGUARD, us.public, SeededRandom("rotate"))
    a = checker.cookie_for(EP, 1000.0)
    assert checker.cookie_for(EP, 1119.999) == a
    with_a, _, _ = add_macs(WIREGUARD, bytes(148), checker.keys, a)
    assert checker.check_mac2(with_a, EP, 1119.999)
    b = checker.cookie_for(EP, 1120.0)            # 120 s after the secret was made: a new one
    assert b != a and not checker.check_mac2(with_a, EP, 1120.0)   # the old cookie is dead
    assert checker.cookie_for(EP, 1239.999) == b and checker.cookie_for(EP, 1240.0) != b
    # The secrets come from the injected source: the same seed, the same cookies.
    twin = CookieChecker(WIREGUARD, us.public, SeededRandom("rotate"))
    assert twin.cookie_for(EP, 5.0) == a


def test_a_cookie_reply_opens_only_with_its_responders_key_and_unaltered():
    us, other = X25519KeyPair(), X25519KeyPair()
    checker = CookieChecker(WIREGUARD, us.public, SeededRandom("reply"))
    packed, mac1, _ = add_macs(WIREGUARD, bytes(148), checker.keys, None)
    nonce, sealed = checker.make_reply(packed, 9, EP, 0.0)
    assert len(nonce) == 24 and len(sealed) == 16 + 16          # XChaCha20 nonce, cookie + tag
    assert open_cookie(WIREGUARD, MacKeys(WIREGUARD, us.public), nonce, sealed, mac1) == checker.cookie_for(EP, 0.0)
    assert open_cookie(WIREGUARD, MacKeys(WIREGUARD, other.public), nonce, sealed, mac1) is None
    assert open_cookie(WIREGUARD, MacKeys(WIREGUARD, us.public), nonce, bytes([sealed[0] ^ 1]) + sealed[1:],
                       mac1) is None
    assert open_cookie(WIREGUARD, MacKeys(WIREGUARD, us.public), bytes(24), sealed, mac1) is None
    assert checker.make_reply(packed, 9, EP, 0.0)[0] != nonce   # a fresh nonce every reply


def test_an_initiator_uses_a_received_cookie_for_120_seconds_only():
    """The initiator side: after a cookie reply, its initiations carry mac2 made with that
    cookie -- and the responder under load answers them -- until the cookie is 120 s old."""
    pair = make_pair()
    pair.server.under_load_until = float("inf")

    def initiation(after: float) -> bytes:
        pair.net.clock.advance(after)
        pair.server_peer.last_initiation_sent = float("-inf")   # let the client send at once
        (init, _), = pair.client.initiate(pair.server_peer, pair.now)
        return init

    init = initiation(0)
    assert m.HandshakeInitiation.from_bytes(init).mac2 == bytes(16)
    (reply, _), = pair.server.receive(init, pair.client_ep, pair.now).datagrams
    assert reply[0] == m.COOKIE_REPLY
    pair.client.receive(reply, pair.server_ep, pair.now)
    got_cookie = pair.now
    for after in (6, 113.9):                                     # 6 s and 119.9 s after the cookie
        init = initiation(after)
        assert any(m.HandshakeInitiation.from_bytes(init).mac2)
        (resp, _), = pair.server.receive(init, pair.client_ep, pair.now).datagrams
        assert resp[0] == m.RESPONSE
    init = initiation(0.1)                                       # 120.0 s: the cookie is stale
    assert round(pair.now - got_cookie, 6) == 120.0
    assert m.HandshakeInitiation.from_bytes(init).mac2 == bytes(16)
    (reply, _), = pair.server.receive(init, pair.client_ep, pair.now).datagrams
    assert reply[0] == m.COOKIE_REPLY
