"""TUN devices: how a VPN gets at the packets the kernel routes to it.

Opening ``/dev/net/tun`` and asking for ``IFF_TUN`` creates a network interface
whose "wire" is a file descriptor: every IP packet the kernel routes to the
interface can be ``read()`` from the descriptor, and every packet ``write()``-n
to it is received by the kernel as if it had arrived on that interface.
``IFF_NO_PI`` drops the 4-byte packet-information header, so each read is
exactly one IP packet.  The device disappears when the descriptor is closed
(including when the process dies), taking its addresses and routes with it.

The fast datapath also asks for ``IFF_VNET_HDR``: every packet then starts with a
10-byte virtio-net header, and ``TUNSETOFFLOAD`` lets the kernel hand over TCP
super-packets of up to 64 KiB (TSO) and take coalesced ones back (see
:mod:`vpnedu.net.offload`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ..errors import VpneduError

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_PATH = "/dev/net/tun"
_PLAIN_HDR = bytes(10)


class Tun:
    """An open TUN device (non-blocking)."""

    def __init__(self, name: str = "vpnedu%d", *, vnet_hdr: bool = False, tso: bool = False):
        if len(name.encode()) > 15:
            raise VpneduError(f"interface name {name!r} is longer than 15 characters",
                              "choose a shorter name, e.g. vpnedu0")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VpneduError(f"{TUN_PATH} is missing", "load the TUN driver with 'modprobe tun' "
                              "(in a container, pass the device in, e.g. --device /dev/net/tun)") from None
        except PermissionError:
            raise VpneduError(f"no permission to open {TUN_PATH}",
                              "run as root (sudo) or give the program CAP_NET_ADMIN") from None
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EPERM:
                raise VpneduError("creating a TUN device needs root or CAP_NET_ADMIN",
                                  "run as root (sudo vpnedu ...)") from None
            if e.errno == errno.EBUSY:
                raise VpneduError(f"interface {name} already exists and is in use",
                                  "stop the other VPN or choose another interface name") from None
            raise VpneduError(f"cannot create TUN device {name}: {e.strerror}") from None
        self.fd = fd
        self.name = ifr[:16].rstrip(b"\0").decode()
        #: Every read starts with, and every write needs, a virtio-net header.
        self.vnet_hdr = vnet_hdr
        #: The kernel may hand us TCP super-packets (read) -- we must split them.
        self.tso = False
        if vnet_hdr and tso:
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
                self.tso = True
            except OSError:
                pass  # an old kernel: plain packets with a header, still correct

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes:
        """One read: an IP packet (with ``vnet_hdr``: a virtio-net header, then the packet)."""
        return os.read(self.fd, 65536 + 10)

    def readv(self, buffers) -> int:
        """One read into the caller's buffers (the datapath's preallocated one); returns its
        length.  BlockingIOError when nothing waits."""
        return os.readv(self.fd, buffers)

    def write(self, packet: bytes) -> None:
        """Write one plain IP packet."""
        if self.vnet_hdr:
            os.writev(self.fd, (_PLAIN_HDR, packet))
        else:
            os.write(self.fd, packet)

    def write_parts(self, parts) -> None:
        """Write one packet given as pieces (with ``vnet_hdr``: the header is the first piece)."""
        os.writev(self.fd, parts)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
