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


# ---------------------------------------------------------------------- the device, wherever it is
TUNGETIFF = 0x800454D2
TUNGETDEVNETNS = 0x54E3        # _IO('T', 227), Linux 5.2+: an fd of the device's network namespace
SIOCGIFFLAGS = 0x8913
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000
_IFREQ_INT = struct.Struct("16si")


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)          # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_mtu(name: str, mtu: int) -> None:
    """Set the MTU of an interface of this network namespace (``ip link set NAME mtu N``)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFMTU, _IFREQ_INT.pack(name.encode(), mtu))


class LinkProbe:
    """The MTU and up/down state of a TUN device, read through its file descriptor -- also after
    the device was moved to another network namespace (``ip link set wg1 netns ns1``, the trick
    of <https://www.wireguard.com/netns/>), where its name means nothing in ours.

    ``TUNGETDEVNETNS`` gives a descriptor of the namespace the device is in now; a socket made
    there (``setns`` there and back, for one system call) answers ``SIOCGIFMTU`` and
    ``SIOCGIFFLAGS`` for the name ``TUNGETIFF`` reports.  The socket is kept until the device
    moves again.  :meth:`read` returns None once the device is gone."""

    def __init__(self, tun: "Tun"):
        self.tun = tun
        self._ns: tuple[int, int] | None = None
        self._sock = None

    def _socket_in(self, nsfd: int):
        import socket
        st = os.fstat(nsfd)
        key = (st.st_dev, st.st_ino)
        if key != self._ns or self._sock is None:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(nsfd)
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                finally:
                    _setns(own)
            finally:
                os.close(own)
            if self._sock is not None:
                self._sock.close()
            self._sock, self._ns = sock, key
        return self._sock

    def read(self) -> tuple[int | None, bool | None] | None:
        """``(mtu, up)`` now, or None if the device no longer exists.  While the device is being
        moved between namespaces its name may be in neither for a moment: then ``(None, None)``
        (unknown, ask again) -- only the TUN descriptor itself says "deleted" (EBADFD)."""
        fd = self.tun.fd
        if fd < 0:
            return None
        try:
            name = fcntl.ioctl(fd, TUNGETIFF, bytes(18))[:16].rstrip(b"\0")
        except OSError:
            return None                            # EBADFD: deleted
        try:
            nsfd = fcntl.ioctl(fd, TUNGETDEVNETNS)
        except OSError:
            nsfd = None                            # an old kernel: only our own namespace
        try:
            sock = self._socket_in(nsfd) if nsfd is not None else self._own_socket()
            req = _IFREQ_INT.pack(name, 0)
            mtu = _IFREQ_INT.unpack(fcntl.ioctl(sock, SIOCGIFMTU, req))[1]
            flags = _IFREQ_INT.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, req))[1]
        except OSError:
            self._ns = None            # look the namespace up again next time
            return None, None
        finally:
            if nsfd is not None:
                os.close(nsfd)
        return mtu, bool(flags & IFF_UP)

    def _own_socket(self):
        import socket
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
