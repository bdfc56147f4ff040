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
        sock.sendmsg((buf,), ((SOL_UDP, UDP_SEGMENT, _U16.pack(size)),), 0, addr)


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
