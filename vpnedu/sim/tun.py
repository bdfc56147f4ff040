"""An in-memory TUN device: a queue of IP packets between a simulated host and a program.

A real TUN device (:mod:`vpnedu.net.tun`) is a network interface whose "wire" is
a file descriptor: the kernel routes packets to it and the program ``read()``-s
them; the program ``write()``-s packets and the kernel receives them as if they
had arrived on that interface.  :class:`MemoryTun` offers the same ``read``,
``readv``, ``write``, ``fileno`` and ``close`` calls, so the very same daemon code
(:class:`vpnedu.node.base.Node`) can hold one instead of a real device.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .host import SimHost

#: Like a real TUN device's transmit queue (``txqueuelen`` 500): packets beyond it are dropped.
QUEUE_LENGTH = 500


class MemoryTun:
    """A TUN device on a :class:`~vpnedu.sim.host.SimHost`."""

    def __init__(self, host: "SimHost", name: str = "vpnedu0"):
        if name in host.tuns or name in host.addresses:
            from ..errors import VpneduError
            raise VpneduError(f"[{host.name}] interface {name} already exists", "choose another name")
        self.host = host
        self.name = name
        self._to_program: deque[bytes] = deque()
        self.dropped = 0
        self.closed = False
        #: Packets are plain IP packets (no virtio-net header), as on a TUN device without offloads.
        self.vnet_hdr = False
        host.tuns[name] = self

    # The kernel's side ----------------------------------------------------------
    def queue(self, packet: bytes) -> None:
        """The host routed ``packet`` to this device: it waits for the program to read it."""
        if len(self._to_program) >= QUEUE_LENGTH:
            self.dropped += 1
            return
        self._to_program.append(packet)

    @property
    def pending(self) -> int:
        return len(self._to_program)

    # The program's side (the calls vpnedu.net.tun.Tun has) -----------------------
    def read(self) -> bytes:
        """The next packet the host routed here; BlockingIOError when none waits (non-blocking fd)."""
        if not self._to_program:
            raise BlockingIOError("no packet waiting")
        return self._to_program.popleft()

    def readv(self, buffers) -> int:
        """:meth:`read` into the caller's buffer (what the datapath calls); returns the length."""
        packet = self.read()
        n = len(packet)
        buffers[0][:n] = packet
        return n

    def write(self, packet: bytes) -> None:
        """Hand ``packet`` to the host, as if it had arrived on this interface."""
        if self.closed:
            raise OSError("the TUN device is closed")
        self.host.receive(bytes(packet), self.name)

    def write_parts(self, parts) -> None:
        """Write one packet given as pieces."""
        self.write(b"".join(bytes(p) for p in parts))

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        """Closing a TUN device removes the interface, its addresses and its routes."""
        if not self.closed:
            self.closed = True
            self.host.remove_device(self.name)
