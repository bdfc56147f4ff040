"""Cryptokey routing's table (vpnedu.protocol.allowedips): longest-prefix match for IPv4 and
IPv6, a prefix given to another peer, a peer removed, and the listing ``vpnedu status`` prints --
checked against examples and against a brute-force model over random prefixes."""

import ipaddress
import random

import pytest

from vpnedu.protocol.allowedips import AllowedIPs


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class Peer:
    """A peer stand-in: the table keys on identity, as it does for real peers."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


A, B, C, D, E = (Peer(n) for n in "ABCDE")


def test_the_longest_matching_prefix_wins_for_ipv4():
    t = AllowedIPs()
    t.insert("10.0.0.0/8", A)
    t.insert("10.1.0.0/16", B)
    t.insert("10.1.2.0/24", C)
    t.insert("10.1.2.3/32", D)
    assert t.lookup(ip("10.1.2.3")) is D
    assert t.lookup(ip("10.1.2.4")) is C
    assert t.lookup(ip("10.1.3.1")) is B
    assert t.lookup(ip("10.200.0.1")) is A
    assert t.lookup(ip("11.0.0.1")) is None
    t.insert("0.0.0.0/0", E)                    # a full tunnel: everything else
    assert t.lookup(ip("11.0.0.1")) is E and t.lookup(ip("10.1.2.3")) is D
    assert t.lookup(ip("2001:db8::1")) is None  # an IPv4 default route is not an IPv6 one


def test_the_longest_matching_prefix_wins_for_ipv6_separately_from_ipv4():
    t = AllowedIPs()
    t.insert("2001:db8::/32", A)
    t.insert("2001:db8:1::/48", B)
    t.insert("2001:db8:1::7/128", C)
    t.insert("10.0.0.0/8", D)
    assert t.lookup(ip("2001:db8:1::7")) is C
    assert t.lookup(ip("2001:db8:1::8")) is B
    assert t.lookup(ip("2001:db8:2::1")) is A
    assert t.lookup(ip("2001:db9::1")) is None
    # An IPv4-mapped IPv6 address is an IPv6 address: the IPv4 prefix does not cover it.
    assert t.lookup(ip("::ffff:10.0.0.1")) is None and t.lookup(ip("10.0.0.1")) is D
    t.insert("::/0", E)
    assert t.lookup(ip("fd00::1")) is E and t.lookup(ip("11.0.0.1")) is None


def test_host_bits_are_ignored_and_an_address_of_another_size_matches_nothing():
    t = AllowedIPs()
    t.insert("10.9.9.9/16", A)                  # as wg does: 10.9.0.0/16
    assert t.lookup(ip("10.9.200.1")) is A
    assert list(t.entries()) == [(ipaddress.ip_network("10.9.0.0/16"), A)]
    assert t.lookup(b"\x0a\x09\x00") is None and t.lookup(b"") is None and t.lookup(bytes(5)) is None


def test_giving_a_prefix_to_another_peer_replaces_it_and_leaves_the_rest():
    t = AllowedIPs()
    t.insert("10.0.0.2/32", A)
    t.insert("10.0.1.0/24", A)
    t.insert("10.0.0.2/32", B)                  # the same range, now B's (as with `wg set`)
    assert t.lookup(ip("10.0.0.2")) is B and t.lookup(ip("10.0.1.9")) is A
    assert sorted((str(n), v.name) for n, v in t.entries()) == [("10.0.0.2/32", "B"), ("10.0.1.0/24", "A")]
    t.insert("10.0.0.2/32", B)                  # inserting it again changes nothing
    assert len(list(t.entries())) == 2


def test_removing_a_peer_removes_all_its_prefixes_and_shorter_ones_take_over():
    t = AllowedIPs()
    t.insert("10.0.0.0/24", A)
    t.insert("10.0.0.5/32", B)
    t.insert("2001:db8::5/128", B)
    t.insert("2001:db8::/64", C)
    twin = Peer("B")                            # equal name, another peer: not removed with B
    t.insert("10.0.0.6/32", twin)
    t.remove_value(B)
    assert t.lookup(ip("10.0.0.5")) is A and t.lookup(ip("2001:db8::5")) is C
    assert t.lookup(ip("10.0.0.6")) is twin
    assert B not in [v for _, v in t.entries()]
    t.remove_value(A)
    t.remove_value(C)
    t.remove_value(twin)
    assert list(t.entries()) == [] and t.lookup(ip("10.0.0.5")) is None
    t.remove_value(A)                           # removing a peer that has nothing is harmless


def test_entries_list_every_prefix_once_and_rebuild_the_same_table():
    t = AllowedIPs()
    nets = {"0.0.0.0/0": A, "10.0.0.0/24": B, "10.0.0.1/32": C, "::/0": D, "fd00::/8": E,
            "2001:db8::1/128": A}
    for n, v in nets.items():
        t.insert(n, v)
    listed = list(t.entries())
    assert sorted((str(n), v.name) for n, v in listed) == sorted((n, v.name) for n, v in nets.items())
    again = AllowedIPs()
    for n, v in listed:
        again.insert(n, v)
    for a in ("10.0.0.1", "10.0.0.2", "192.0.2.1", "fd00::9", "2001:db8::1", "2001:db8::2"):
        assert again.lookup(ip(a)) is t.lookup(ip(a))


@pytest.mark.parametrize("version", [4, 6])
def test_lookup_matches_a_brute_force_model(version):
    """Random prefixes, random insertions, replacements and removals; after each step every
    probe address answers as "the most specific containing prefix, last writer wins"."""
    rng = random.Random(f"allowedips-{version}")
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    base = ipaddress.ip_network("10.0.0.0/8" if version == 4 else "2001:db8::/32")
    peers = [Peer(f"p{i}") for i in range(6)]
    t, model = AllowedIPs(), {}
    for step in range(300):
        if rng.random() < 0.1 and model:
            gone = rng.choice(peers)
            t.remove_value(gone)
            model = {n: v for n, v in model.items() if v is not gone}
        else:
            length = rng.randint(base.prefixlen, bits)
            addr = int(base.network_address) + rng.getrandbits(bits - base.prefixlen)
            net = cls((addr, length), strict=False)
            value = rng.choice(peers)
            t.insert(net, value)
            model[net] = value
        for _ in range(20):
            probe = ipaddress.ip_address(int(base.network_address) + rng.getrandbits(bits - base.prefixlen))
            if model and rng.random() < 0.5:         # often an address inside a known prefix
                net = rng.choice(list(model))
                probe = net.network_address + rng.randrange(net.num_addresses)
            covering = [n for n in model if probe in n]
            want = model[max(covering, key=lambda n: n.prefixlen)] if covering else None
            assert t.lookup(probe.packed) is want, (step, probe)
        assert dict(t.entries()) == model
