"""Notebook 01's first step, for real: create a TUN device and read a packet out of it.

A TUN device is the kernel's side door for IP packets: what the kernel routes to the device,
a program reads from a file descriptor, byte for byte, as the kernel built it.  This module
is what ``vpnedu course tun`` runs inside the lab's client namespace (root); the simulated
lab has its own in-memory device (:class:`vpnedu.sim.tun.MemoryTun`).
"""

from __future__ import annotations

import select
import subprocess
import time

from ..errors import VpneduError
from ..net.tun import Tun
from ..packet import ip as iplib


def read_one_packet_from_tun(name: str = "tun-demo", address: str = "10.99.0.1/24",
                             target: str = "10.99.0.2", timeout: float = 5.0) -> bytes:
    """Create a TUN device, ping an address routed into it, and read the ping back from it.

    The kernel routes 10.99.0.2 to the device (it is in the device's subnet), so the echo
    request the kernel builds for ``ping`` comes out of our file descriptor, byte for byte.
    """
    tun = Tun(name)
    pinger = None
    try:
        for cmd in (["ip", "addr", "add", address, "dev", tun.name], ["ip", "link", "set", tun.name, "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        pinger = subprocess.Popen(["ping", "-c", "3", "-i", "0.2", "-W", "1", target],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + timeout
        while time.time() < end:
            r, _, _ = select.select([tun.fileno()], [], [], 0.2)
            if not r:
                continue
            pkt = tun.read()
            if pkt and pkt[0] >> 4 == 4 and pkt[9] == iplib.PROTO_ICMP:
                return pkt
        raise VpneduError(f"no ping to {target} came out of {tun.name} within {timeout:g} s")
    finally:
        if pinger is not None:
            pinger.kill()
            pinger.wait()
        tun.close()
