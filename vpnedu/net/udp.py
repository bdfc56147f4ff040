"""UDP segmentation offloads: many datagrams per system call, still one datagram per message.

``UDP_SEGMENT`` (UDP GSO, Linux 4.18+): one ``sendmsg`` carries a buffer of datagrams laid end
to end, all ``size`` bytes long except possibly the last, and the kernel cuts it into separate
UDP datagrams (each with its own IP and UDP header) as late as possible -- on the wire they are
exactly the datagrams ``sendto`` would have sent one by one.

``UDP_GRO`` (Linux 5.0+): the receiving kernel may coalesce consecutive datagrams of one flow
into a single ``recvmsg``; a control message says the size of each original datagram (the last
may be shorter).  Without the control message the buffer is a single datagram.
"""

from __future__ import annotations

import errno
import socket
import struct

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: The kernel's limit of datagrams per GSO send (UDP_MAX_SEGMENTS, 64 in older kernels).
MAX_SEGMENTS = 64
#: And of bytes per send (the payload of one 64 KiB IPv4 packet, with room for headers).
MAX_GSO_BYTES = 65000
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_U16 = struct.Struct("=H")


def segment_cmsg(size: int) -> tuple[int, int, bytes]:
    """The control message that asks the kernel to cut one send into datagrams of ``size``
    bytes (UDP GSO, ``UDP_SEGMENT``: udp(7)); the last datagram may be shorter."""
    return (SOL_UDP, UDP_SEGMENT, _U16.pack(size))
_INT = struct.Struct("=i")


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced reads; False if the kernel cannot."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


def gso_supported(sock: socket.socket) -> bool:
    """Does this kernel take ``UDP_SEGMENT``?  (Probed with getsockopt, nothing is sent.)"""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        return True
    except OSError:
        return False


def send_segments(sock: socket.socket, buf, size: int, addr) -> None:
    """Send ``buf`` as datagrams of ``size`` bytes (the last may be shorter) in one call."""
    if len(buf) <= size:
        sock.sendto(buf, addr)
    else:
        sock.sendmsg((buf,), (segment_cmsg(size),), 0, addr)


def gro_segment_size(ancdata, nbytes: int) -> int:
    """The size of each datagram in a coalesced read (``nbytes`` if it was not coalesced)."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return _INT.unpack_from(data)[0] or nbytes
    return nbytes


def split_gro(buf, nbytes: int, size: int):
    """The datagrams in a coalesced read, as memoryview slices of ``buf``."""
    mv = memoryview(buf)
    return [mv[off:min(off + size, nbytes)] for off in range(0, nbytes, size)]


def gso_unusable(err: OSError) -> bool:
    """Errors after which we stop using UDP GSO on this socket and send one by one."""
    return err.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE)


# ---------------------------------------------------------------------- sticky source addresses
#: ``struct in_pktinfo`` (ifindex, spec_dst, addr) and ``struct in6_pktinfo`` (addr, ifindex).
_IN_PKTINFO = struct.Struct("=i4s4s")
_IN6_PKTINFO = struct.Struct("=16si")
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
PKTINFO_CMSG_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size)
#: Room for what a read may bring: the GRO segment size and the destination address.
READ_CMSG_SPACE = GRO_CMSG_SPACE + PKTINFO_CMSG_SPACE


def enable_pktinfo(sock: socket.socket) -> bool:
    """Ask the kernel to say, with every datagram, which of our addresses it was sent to
    (``IP_PKTINFO`` / ``IPV6_RECVPKTINFO``).  False if it cannot."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        return True
    except OSError:
        return False


def parse_ancillary(ancdata, nbytes: int) -> tuple[int, tuple | None]:
    """What the control messages of one read say: ``(segment_size, local)``.

    ``segment_size`` is the size of each datagram of a coalesced (GRO) read, ``nbytes`` if it
    was not coalesced.  ``local`` is the control message that makes a reply leave *from the
    address this datagram was sent to* (WireGuard's "sticky" source address: a peer that wrote
    to 10.0.0.2 of a host with two addresses gets its answers from 10.0.0.2, else it would
    roam to the other one), or None.  It is a ``(level, type, data)`` tuple, ready for
    ``sendmsg``, and hashable: the protocol keeps it as the third element of the peer's
    endpoint and hands it back with every datagram for that peer."""
    size = nbytes
    local = None
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            size = _INT.unpack_from(data)[0] or nbytes
        elif level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _ifindex, _spec, addr = _IN_PKTINFO.unpack_from(data)
            # Send from the header's destination, on whatever interface routing picks.
            local = (socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, addr, bytes(4)))
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= _IN6_PKTINFO.size:
            addr, ifindex = _IN6_PKTINFO.unpack_from(data)
            # A link-local address means something only on its interface: keep the index then.
            scoped = addr[0] == 0xFE and addr[1] & 0xC0 == 0x80
            local = (socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(addr, ifindex if scoped else 0))
    return size, local


def local_address(local: tuple) -> str:
    """The address a sticky-source control message names (for logs and tests)."""
    level, _kind, data = local
    if level == socket.IPPROTO_IP:
        return socket.inet_ntop(socket.AF_INET, _IN_PKTINFO.unpack_from(data)[1])
    return socket.inet_ntop(socket.AF_INET6, _IN6_PKTINFO.unpack_from(data)[0])


def stale_source(err: OSError) -> bool:
    """A send from a remembered local address failed because that address is gone."""
    return err.errno in (errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH)


#: ``IP_MTU_DISCOVER`` and its ``IP_PMTUDISC_DONT`` (linux/in.h; Python's socket module lacks them).
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0


def clear_df(sock: socket.socket) -> None:
    """Send this IPv4 socket's datagrams without DF ("don't fragment"), as the kernel's WireGuard
    does (its ``send4`` builds the outer header with ``df = 0``): a router before a narrower link
    then fragments a datagram too big for it, where with DF it would drop it and ask the sender by
    ICMP "fragmentation needed" for smaller ones -- an answer that a firewall filtering ICMP never
    lets through (a PMTU black hole: the tunnel's large packets vanish, its small ones pass).
    Datagrams are too big when the tunnel's MTU is larger than the path allows: 1280 at least for a
    tunnel that carries IPv6, a peer's larger MTU (vpnedu.net.mtu), an ``MTU =`` that says more.
    Without it Linux sets DF on a datagram that fits the path MTU it knows (``IP_PMTUDISC_WANT``,
    the default) but not on a UDP GSO batch, which is larger: the same tunnel's datagrams were
    fragmented in one send and dropped in the next.  (IPv6 has no DF: its routers never fragment,
    and the sender fragments what exceeds the path MTU it knows.)"""
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)


def family_of(endpoint) -> int:
    """6 for an IPv6 endpoint (its host has a colon), else 4."""
    return 6 if ":" in endpoint[0] else 4


# ---------------------------------------------------------------------- one port, two families
def open_port(port: int, *, buffer: int = 4 << 20, fwmark: int = 0,
              families: tuple[int, ...] = (4, 6), pktinfo: bool = True) -> dict[int, socket.socket]:
    """Non-blocking UDP sockets on ``port`` (0: one the kernel picks) for IPv4 and IPv6 --
    the same port on both, as wireguard-go's ``StdNetBind`` does: one IPv4 socket on 0.0.0.0 and
    one ``IPV6_V6ONLY`` socket on ``::``, each reporting the local address of what it receives
    (:func:`enable_pktinfo`).  A host without IPv6 gets the IPv4 socket only.

    Raises OSError (EADDRINUSE...) if the port is taken; with port 0, if the port the kernel
    gave the IPv4 socket is taken for IPv6, it tries again with another one."""
    for _attempt in range(100):
        socks: dict[int, socket.socket] = {}
        try:
            bound = port
            for fam in families:
                try:
                    s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET, socket.SOCK_DGRAM)
                except OSError as e:   # ipv6.disable=1: no AF_INET6 sockets at all
                    if fam == 6 and e.errno == errno.EAFNOSUPPORT and 4 in socks:
                        continue
                    raise
                socks[fam] = s
                if fam == 6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind(("::" if fam == 6 else "0.0.0.0", bound))
                except OSError as e:
                    if fam == 6 and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) and 4 in socks:
                        s.close()
                        del socks[fam]
                        continue
                    raise
                bound = s.getsockname()[1]
                s.setblocking(False)
                for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):   # *BUFFORCE as root
                    try:
                        s.setsockopt(socket.SOL_SOCKET, force, buffer)
                    except OSError:
                        s.setsockopt(socket.SOL_SOCKET, opt, buffer)
                if fam == 4:
                    clear_df(s)
                if pktinfo:    # only for a reader that makes room for it (sticky sources)
                    enable_pktinfo(s)
                if fwmark:
                    set_mark(s, fwmark)
            return socks
        except OSError as e:
            for s in socks.values():
                s.close()
            if port == 0 and e.errno == errno.EADDRINUSE:
                continue
            raise
        except BaseException:
            for s in socks.values():
                s.close()
            raise
    raise OSError(errno.EADDRINUSE, "no port free on both IPv4 and IPv6")


def set_mark(sock: socket.socket, mark: int) -> None:
    """``SO_MARK``: the firewall mark of everything this socket sends (``wg set fwmark``; policy
    routing can tell the tunnel's own packets from the traffic inside them).  Needs
    CAP_NET_ADMIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("I", mark))
