"""TUN devices: how a VPN gets at the packets the kernel routes to it.

Opening ``/dev/net/tun`` and asking for ``IFF_TUN`` creates a network interface
whose "wire" is a file descriptor: every IP packet the kernel routes to the
interface can be ``read()`` from the descriptor, and every packet ``write()``-n
to it is received by the kernel as if it had arrived on that interface.
``IFF_NO_PI`` drops the 4-byte packet-information header, so each read is
exactly one IP packet.  The device disappears when the descriptor is closed
(including when the process dies), taking its addresses and routes with it.
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
TUN_PATH = "/dev/net/tun"


class Tun:
    """An open TUN device (non-blocking)."""

    def __init__(self, name: str = "vpnedu%d"):
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
            ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
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

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes:
        return os.read(self.fd, 65536)

    def write(self, packet: bytes) -> None:
        os.write(self.fd, packet)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
