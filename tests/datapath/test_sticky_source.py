"""Sticky source addresses, without root: the host has every 127.x.y.z address on lo, so a
daemon bound to 0.0.0.0 can be written to at 127.0.0.2 and at 127.0.0.3 -- and must answer
from the address it was written to, or its peer would see the answer come from elsewhere and
roam to it."""

import select
import socket
import time

from vpnedu.datapath import Datapath, Options
from vpnedu.net import udp
from vpnedu.protocol.device import Device
from vpnedu.protocol.keys import generate_private_key
from vpnedu.testing import LoopbackTun, SeededRandom


class Host:
    """A datapath host over real sockets: a vpnedu-wg-like one, sticky sources on."""

    sticky_source = True
    intercept = None

    def __init__(self, device):
        self.device, self.events = device, device.events
        self.tun = LoopbackTun(False)
        self.sockets = udp.open_port(0, families=(4,))
        self.sock = self.sockets[4]
        self.datapath = Datapath(self, Options.parse("fast,no-tun-gro"))

    def clock(self) -> float:
        return time.monotonic()

    def schedule_tick(self) -> None:
        pass


def test_answers_leave_from_the_address_the_peer_wrote_to():
    server = Device(generate_private_key(), random=SeededRandom("s"))
    client = Device(generate_private_key(), random=SeededRandom("c"))
    server.add_peer(client.public_key, allowed_ips=["10.0.0.2/32"])
    host = Host(server)
    port = host.sock.getsockname()[1]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.settimeout(5)
    try:
        for local in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
            time.sleep(0.1)    # a newer TAI64N timestamp (they are coarsened) for every initiation
            peer = client.peers.get(server.public_key) or client.add_peer(
                server.public_key, endpoint=(local, port), allowed_ips=["10.0.0.0/24"])
            peer.endpoint = (local, port)
            peer.last_initiation_sent = float("-inf")
            (init, to), = client.initiate(peer, time.monotonic())
            c.sendto(init, to)
            select.select([host.sock], [], [], 5)
            host.datapath.on_udp_readable(host.sock)
            try:
                data, frm = c.recvfrom(2048)
            except TimeoutError:
                raise AssertionError(f"no answer for {local}: {dict(server.counters)}")
            assert data[0] == 2 and frm == (local, port), (local, frm)      # the response, from there
            sp = server.peers[client.public_key]
            assert sp.endpoint[:2] == c.getsockname() and udp.local_address(sp.endpoint[2]) == local
    finally:
        c.close()
        host.sock.close()
        host.tun.close()


def test_the_local_address_of_a_read_is_a_send_cmsg():
    s = udp.open_port(0, families=(4,))[4]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        c.sendto(b"x", ("127.0.0.7", s.getsockname()[1]))
        select.select([s], [], [], 5)
        n, anc, _flags, addr = s.recvmsg_into([bytearray(100)], udp.READ_CMSG_SPACE)
        size, local = udp.parse_ancillary(anc, n)
        assert size == 1 and udp.local_address(local) == "127.0.0.7"
        # Sent back with it: the kernel uses it as the source.
        s.sendmsg([b"y"], [local], 0, addr)
        assert c.recvfrom(10) == (b"y", ("127.0.0.7", s.getsockname()[1]))
    finally:
        s.close()
        c.close()
