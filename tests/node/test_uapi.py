"""The cross-platform configuration protocol as text (vpnedu.uapi): every key of get and set,
errno replies for bad input, atomic sets, big messages, and no key ever in an error."""

import ipaddress
import time

import pytest

from vpnedu import uapi
from vpnedu.protocol.allowedips import prefix_of
from vpnedu.protocol.device import Device
from vpnedu.protocol.handshake import NO_PSK
from vpnedu.protocol.keys import generate_private_key, public_key

K1 = generate_private_key()
K2 = generate_private_key()
P2 = public_key(K2)
P3 = public_key(generate_private_key())
PSK = bytes(range(32))


def msg(*lines: str) -> str:
    return "\n".join(lines) + "\n\n"


def device(key: bytes | None = None) -> Device:
    return Device(key, random=lambda n: b"\x01" * n)


def setp(dev: Device, *lines: str, now: float = 0.0) -> uapi.Applied:
    return uapi.apply_set(dev, uapi.parse_set(msg(*lines)), now)


def test_every_set_key_then_get_shows_it():
    dev = device()
    done = setp(dev, f"private_key={K1.hex()}", "listen_port=51820", "fwmark=7",
                f"public_key={P2.hex()}", f"preshared_key={PSK.hex()}", "endpoint=[2001:db8::1]:51820",
                "persistent_keepalive_interval=25", "replace_allowed_ips=true",
                "allowed_ip=10.0.0.2/32", "allowed_ip=fd00::2/128", "protocol_version=1")
    assert dev.static.private == K1 and done.private_key and done.added == 1
    peer = dev.peers[P2]
    assert peer.psk == PSK and peer.endpoint == ("2001:db8::1", 51820) and peer.persistent_keepalive == 25
    assert [str(n) for n in peer.allowed_ips] == ["10.0.0.2/32", "fd00::2/128"]
    assert done.keepalive == [peer]            # keepalive turned on: send one now, as wireguard-go
    assert uapi.socket_settings(uapi.parse_set(msg("listen_port=1", "fwmark=2", "listen_port=3"))) == (3, 2)
    peer.tx_bytes, peer.rx_bytes, peer.last_handshake = 123, 456, 1700000000.25
    text = uapi.format_get(dev, listen_port=51820, fwmark=7)
    assert text == (f"private_key={K1.hex()}\nlisten_port=51820\nfwmark=7\n"
                    f"public_key={P2.hex()}\npreshared_key={PSK.hex()}\nprotocol_version=1\n"
                    "endpoint=[2001:db8::1]:51820\nlast_handshake_time_sec=1700000000\n"
                    "last_handshake_time_nsec=250000000\ntx_bytes=123\nrx_bytes=456\n"
                    "persistent_keepalive_interval=25\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n"
                    "errno=0\n\n")
    got = uapi.parse_get(text)
    assert got["errno"] == 0 and got["interface"]["listen_port"] == "51820"
    assert got["peers"][0]["allowed_ip"] == ["10.0.0.2/32", "fd00::2/128"]


def test_an_empty_interface_shows_nothing_but_errno():
    """vpnedu-wg starts empty: no key, no port, no peers."""
    assert uapi.format_get(device()) == "errno=0\n\n"
    dev = device(K1)
    setp(dev, f"public_key={P2.hex()}")
    text = uapi.format_get(dev)
    assert f"preshared_key={'0' * 64}" in text and "endpoint" not in text and "listen_port" not in text
    assert "last_handshake_time_sec=0\nlast_handshake_time_nsec=0" in text


@pytest.mark.parametrize("lines, errno, says", [
    (["listen_port"], uapi.EPROTO, "not key=value"),
    (["private_key=abc"], uapi.EINVAL, "3 characters, not 64"),
    ([f"private_key={'g' * 64}"], uapi.EINVAL, "not 64 hex digits"),
    (["listen_port=65536"], uapi.EINVAL, "0 to 65535"),
    (["listen_port=-1"], uapi.EINVAL, "0 to 65535"),
    (["fwmark=4294967296"], uapi.EINVAL, "0 to 4294967295"),
    (["replace_peers=yes"], uapi.EINVAL, "only value is 'true'"),
    (["endpoint=1.2.3.4:5"], uapi.EINVAL, "not an interface key"),
    (["bogus=1"], uapi.EINVAL, "not an interface key"),
    ([f"public_key={P2.hex()[:-2]}"], uapi.EINVAL, "62 characters"),
    ([f"public_key={P2.hex()}", "listen_port=1"], uapi.EINVAL, "not a peer key"),
    ([f"public_key={P2.hex()}", "protocol_version=2"], uapi.EINVAL, "only version 1"),
    ([f"public_key={P2.hex()}", "remove=false"], uapi.EINVAL, "only value is 'true'"),
    ([f"public_key={P2.hex()}", "persistent_keepalive_interval=65536"], uapi.EINVAL, "0 to 65535"),
    ([f"public_key={P2.hex()}", "allowed_ip=10.0.0.1"], uapi.EINVAL, "ADDRESS/LENGTH"),
    ([f"public_key={P2.hex()}", "allowed_ip=10.0.0.1/33"], uapi.EINVAL, "at most /32"),
    ([f"public_key={P2.hex()}", "allowed_ip=fd00::/129"], uapi.EINVAL, "at most /128"),
    ([f"public_key={P2.hex()}", "allowed_ip=10.0.0.256/32"], uapi.EINVAL, "not an IPv4 or IPv6"),
    ([f"public_key={P2.hex()}", "allowed_ip=10.0.0.0/255.0.0.0"], uapi.EINVAL, "ADDRESS/LENGTH"),
    ([f"public_key={P2.hex()}", "endpoint=1.2.3.4"], uapi.EINVAL, "not IPv4:PORT"),
    ([f"public_key={P2.hex()}", "endpoint=::1:5"], uapi.EINVAL, "not IPv4:PORT"),
    ([f"public_key={P2.hex()}", "endpoint=[::1]5"], uapi.EINVAL, "[IPv6]:PORT"),
    ([f"public_key={P2.hex()}", "endpoint=1.2.3.4:70000"], uapi.EINVAL, "port is not 0-65535"),
    ([f"public_key={P2.hex()}", "endpoint=host.example:51820"], uapi.EINVAL, "not IPv4:PORT"),
])
def test_bad_lines_give_wireguard_gos_errno(lines, errno, says):
    with pytest.raises(uapi.UapiError) as e:
        uapi.parse_set(msg(*lines))
    assert e.value.errno == errno and says in e.value.message, e.value.message
    assert e.value.reply() == f"errno=-{errno}\n\n"


def test_a_set_that_fails_half_way_changes_nothing():
    dev = device(K1)
    setp(dev, f"public_key={P2.hex()}", "endpoint=192.0.2.1:1", "allowed_ip=10.0.0.2/32")
    before = uapi.format_get(dev)
    p = uapi.SetParser()
    lines = ["replace_peers=true", f"private_key={K2.hex()}", f"public_key={P3.hex()}",
             "allowed_ip=10.0.0.0/8", "allowed_ip=bad", "allowed_ip=10.9.0.0/16", ""]
    assert [p.feed(x) for x in lines] == [False] * 6 + [True]
    assert p.error is not None and p.error.errno == uapi.EINVAL and "line 6" in p.error.message
    assert p.ops == []                          # nothing to apply, and nothing was applied
    assert uapi.format_get(dev) == before


def test_update_only_remove_replace_and_prefix_removal():
    dev = device(K1)
    setp(dev, f"public_key={P2.hex()}", "update_only=true", "allowed_ip=10.0.0.0/8")
    assert dev.peers == {}                      # update_only does not create
    setp(dev, f"public_key={P2.hex()}", "allowed_ip=10.0.0.0/8", "allowed_ip=10.1.0.0/16")
    done = setp(dev, f"public_key={P2.hex()}", "update_only=true", "allowed_ip=-10.0.0.0/8",
                "allowed_ip=-192.0.2.0/24")     # update_only on an existing peer: it goes on
    assert [str(n) for n in dev.peers[P2].allowed_ips] == ["10.1.0.0/16"] and done.allowed_ips_removed == 1
    setp(dev, f"public_key={P2.hex()}", "replace_allowed_ips=true", "allowed_ip=10.2.0.0/16")
    assert [str(n) for n in dev.peers[P2].allowed_ips] == ["10.2.0.0/16"]
    setp(dev, f"public_key={P3.hex()}")
    done = setp(dev, f"public_key={P2.hex()}", "remove=true", "endpoint=192.0.2.9:9")
    assert set(dev.peers) == {P3} and done.removed == 1
    assert dev.peer_for(bytes([10, 2, 0, 1])) is None
    done = setp(dev, "replace_peers=true", f"public_key={P2.hex()}")
    assert set(dev.peers) == {P2} and done.removed == 1 and done.added == 1


def test_a_more_specific_peer_takes_over_and_a_prefix_moves():
    """One table for all peers: 192.168.241.2/32 of one peer inside another's /24 wins for that
    address (sending and the source check); the same prefix given to another peer moves."""
    dev = device(K1)
    setp(dev, f"public_key={P2.hex()}", "allowed_ip=192.168.241.0/24", "allowed_ip=fd00::/24",
         f"public_key={P3.hex()}", "allowed_ip=192.168.241.2/32", "allowed_ip=fd00::2/128")
    a, b = dev.peers[P2], dev.peers[P3]
    assert dev.peer_for(ipaddress.ip_address("192.168.241.2").packed) is b
    assert dev.peer_for(ipaddress.ip_address("192.168.241.3").packed) is a
    assert dev.peer_for(ipaddress.ip_address("fd00::2").packed) is b
    assert dev.peer_for(ipaddress.ip_address("fd00::3").packed) is a
    setp(dev, f"public_key={P2.hex()}", "allowed_ip=192.168.241.2/32")
    assert dev.peer_for(ipaddress.ip_address("192.168.241.2").packed) is a
    assert [str(n) for n in b.allowed_ips] == ["fd00::2/128"]
    assert "allowed_ip=192.168.241.2/32" not in uapi.format_get(dev).split("public_key=" + P3.hex())[1]


def test_own_key_is_ignored_and_a_new_private_key_removes_its_peer():
    dev = device(K1)
    setp(dev, f"public_key={public_key(K1).hex()}", "allowed_ip=10.0.0.0/8")
    assert dev.peers == {}
    setp(dev, f"public_key={P2.hex()}", f"preshared_key={PSK.hex()}")
    done = setp(dev, f"private_key={K2.hex()}")
    assert done.private_key and dev.peers == {}     # the device would be its own peer
    setp(dev, f"public_key={P3.hex()}", f"preshared_key={PSK.hex()}")
    setp(dev, f"public_key={P3.hex()}", f"preshared_key={'0' * 64}")
    assert dev.peers[P3].psk == NO_PSK
    setp(dev, f"private_key={'0' * 64}")
    assert dev.static is None and dev.public_key is None and "private_key" not in uapi.format_get(dev)
    assert not setp(dev, f"private_key={'0' * 64}").private_key        # the same key: no change


def test_keys_never_appear_in_errors_or_reprs():
    secret = K1.hex()
    for bad in (secret[:-1], secret[:-1] + "z", secret + "0"):
        for key in ("private_key", "preshared_key"):
            lines = [f"{key}={bad}"] if key == "private_key" else [f"public_key={P2.hex()}", f"{key}={bad}"]
            with pytest.raises(uapi.UapiError) as e:
                uapi.parse_set(msg(*lines))
            assert bad not in str(e.value) and secret[:20] not in str(e.value)
    with pytest.raises(uapi.UapiError) as e:           # a key pasted into the wrong field
        uapi.parse_set(msg(f"public_key={P2.hex()}", f"endpoint={secret}"))
    assert secret[:20] not in str(e.value)
    p = uapi.SetParser()
    p.feed(f"private_key={secret}")
    assert secret not in repr(p)


def test_the_conformance_scripts_big_message_parses_applies_and_formats():
    """130,560 allowed IPs on one peer (WireGuard's netns.sh): well under its time budget."""
    lines = [f"private_key={K1.hex()}", "replace_peers=true", f"public_key={P2.hex()}", "replace_allowed_ips=true"]
    lines += [f"allowed_ip={a}.{b}.0.0/16\nallowed_ip={a:x}::{b:x}/128" for a in range(1, 256) for b in range(256)]
    text = msg(*lines)
    start = time.perf_counter()
    dev = device()
    uapi.apply_set(dev, uapi.parse_set(text), 0.0)
    out = uapi.format_get(dev)
    took = time.perf_counter() - start
    assert out.count("allowed_ip=") == 255 * 256 * 2
    assert "allowed_ip=255.255.0.0/16\nallowed_ip=ff::ff/128\n" in out
    assert took < 20, took


def test_prefixes_are_stored_masked_as_wg_shows_them():
    assert uapi.parse_prefix("10.1.2.3/8") == prefix_of("10.0.0.0/8")
    dev = device(K1)
    setp(dev, f"public_key={P2.hex()}", "allowed_ip=10.1.2.3/8", "allowed_ip=fd00::1:2/112", "allowed_ip=0.0.0.0/0")
    assert uapi.parse_get(uapi.format_get(dev))["peers"][0]["allowed_ip"] == ["10.0.0.0/8", "fd00::1:0/112",
                                                                             "0.0.0.0/0"]
    assert uapi.parse_endpoint("[fe80::1%eth0]:51820") == ("fe80::1%eth0", 51820)
    assert uapi.parse_endpoint("[2001:DB8:0::1]:1") == ("2001:db8::1", 1)


def test_a_get_cache_follows_every_change_of_allowed_ips():
    dev = device(K1)
    cache = uapi.GetCache()
    setp(dev, f"public_key={P2.hex()}", "allowed_ip=10.0.0.0/8", f"public_key={P3.hex()}", "allowed_ip=10.1.0.0/16")
    first = uapi.get_pieces(dev, cache=cache)
    again = uapi.get_pieces(dev, cache=cache)
    assert [p for p in again if b"allowed_ip=10.0.0.0/8" in p][0] is [p for p in first if b"allowed_ip=10.0.0.0/8" in p][0]
    for change, shown, gone in [
        ((f"public_key={P2.hex()}", "allowed_ip=10.2.0.0/16"), "allowed_ip=10.2.0.0/16", None),
        ((f"public_key={P2.hex()}", "allowed_ip=10.1.0.0/16"), None, None),      # stolen from P3
        ((f"public_key={P2.hex()}", "allowed_ip=-10.0.0.0/8"), None, "allowed_ip=10.0.0.0/8"),
        ((f"public_key={P2.hex()}", "replace_allowed_ips=true"), None, "allowed_ip=10.2.0.0/16"),
        ((f"public_key={P3.hex()}", "remove=true", f"public_key={P3.hex()}", "allowed_ip=10.9.0.0/16"),
         "allowed_ip=10.9.0.0/16", None),
    ]:
        setp(dev, *change)
        assert uapi.format_get(dev, cache=cache) == uapi.format_get(dev)    # cached == fresh
        text = uapi.format_get(dev, cache=cache)
        assert shown is None or shown in text
        assert gone is None or gone not in text
