"""vpnedu.net.tproxy without root: the original destination read from the control messages the
kernel really sends (IPv4's ``sockaddr_in``, IPv6's ``sockaddr_in6``), the same bytes built by
hand, and the TPROXY ruleset each family gets."""

import socket
import struct

import pytest

from vpnedu.net import tproxy


def _loopback_datagram(family: int, address: str):
    """One datagram over loopback to a socket asking for its original destination (the option
    works on any UDP socket, not only transparent ones): (control messages, receiver's port)."""
    level, option = ((tproxy.SOL_IPV6, tproxy.IPV6_RECVORIGDSTADDR) if family == socket.AF_INET6
                     else (socket.SOL_IP, tproxy.IP_RECVORIGDSTADDR))
    with socket.socket(family, socket.SOCK_DGRAM) as rx, socket.socket(family, socket.SOCK_DGRAM) as tx:
        rx.setsockopt(level, option, 1)
        rx.bind((address, 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        tx.sendto(b"where was I going?", (address, port))
        data, anc, _flags, _src = rx.recvmsg(2048, tproxy.ORIGDST_SPACE)
    assert data == b"where was I going?"
    return anc, port


def test_original_destination_from_the_kernels_ipv4_control_message():
    anc, port = _loopback_datagram(socket.AF_INET, "127.0.0.1")
    assert [(lvl, t) for lvl, t, _ in anc] == [(socket.SOL_IP, tproxy.IP_RECVORIGDSTADDR)]
    assert tproxy.original_destination(anc) == ("127.0.0.1", port)


def test_original_destination_from_the_kernels_ipv6_control_message():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        anc, port = _loopback_datagram(socket.AF_INET6, "::1")
    except OSError as e:   # a host whose loopback has no ::1 (IPv6 disabled)
        pytest.skip(f"no IPv6 loopback: {e}")
    [(level, kind, data)] = anc
    assert (level, kind, len(data)) == (tproxy.SOL_IPV6, tproxy.IPV6_RECVORIGDSTADDR, 28)   # a sockaddr_in6
    assert tproxy.original_destination(anc) == ("::1", port)


def test_original_destination_parses_sockaddr_in6_bytes():
    # struct sockaddr_in6: family (host order), port (network order), flow info, address, scope id.
    addr = socket.inet_pton(socket.AF_INET6, "2001:db8:a::80")
    sin6 = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 53, 0x12345) + addr
            + struct.pack("=I", 0))
    assert tproxy.original_destination([(tproxy.SOL_IPV6, tproxy.IPV6_RECVORIGDSTADDR, sin6)]) \
        == ("2001:db8:a::80", 53)
    sin = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 80) + socket.inet_aton("192.0.2.80")
           + bytes(8))
    assert tproxy.original_destination([(socket.SOL_IP, tproxy.IP_RECVORIGDSTADDR, sin)]) \
        == ("192.0.2.80", 80)
    # Another control message, or one cut short, is no destination.
    assert tproxy.original_destination([(tproxy.SOL_IPV6, 50, sin6)]) is None              # IPV6_PKTINFO
    assert tproxy.original_destination([(tproxy.SOL_IPV6, tproxy.IPV6_RECVORIGDSTADDR, sin6[:20])]) is None
    assert tproxy.original_destination([]) is None


def test_each_family_gets_its_own_table_with_its_own_match():
    v4 = tproxy.ruleset("10.0.0.0/24", "vpnedu0", 4000, 4001)
    v6 = tproxy.ruleset("fd00:1:2:3::/64", "vpnedu0", 4000, 4001)
    assert v4.startswith("table ip vpnedu_vpnedu0 {") and "ip daddr != 10.0.0.0/24" in v4
    assert v6.startswith("table ip6 vpnedu_vpnedu0 {") and "ip6 daddr != fd00:1:2:3::/64" in v6
    for text in (v4, v6):
        assert "meta l4proto tcp tproxy to :4000 meta mark set 0x767065" in text
        assert "meta l4proto udp tproxy to :4001 meta mark set 0x767065" in text
        assert 'iifname "vpnedu0" oifname != "vpnedu0" counter drop' in text


def test_transparent_socket_family_follows_the_address():
    """Without CAP_NET_ADMIN (or CAP_NET_RAW) the transparent option is refused; as root both
    families bind."""
    for address in ("0.0.0.0", "::"):
        try:
            s = tproxy.transparent_socket(socket.SOCK_DGRAM, (address, 0), original_destination=True)
        except PermissionError:
            pytest.skip("IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW")
        with s:
            assert s.family == (socket.AF_INET6 if address == "::" else socket.AF_INET)
            if s.family == socket.AF_INET6:
                assert s.getsockopt(tproxy.SOL_IPV6, socket.IPV6_V6ONLY) == 1
                assert s.getsockopt(tproxy.SOL_IPV6, tproxy.IPV6_TRANSPARENT) == 1
                assert s.getsockopt(tproxy.SOL_IPV6, tproxy.IPV6_RECVORIGDSTADDR) == 1
            else:
                assert s.getsockopt(socket.SOL_IP, tproxy.IP_TRANSPARENT) == 1
