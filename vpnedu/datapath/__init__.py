"""The datapath: the IO layer between a TUN device, a UDP socket and the protocol engine.

::

      applications                                                   the network
           |                                                              |
      [ kernel ] --route--> TUN --read--> Device.send_packets ----> UDP sendmsg (GSO)
      [ kernel ] <--write-- TUN <-------- Device.receive_batch <--- UDP recvmsg (GRO)
                                          Device.tick  (timers: retries, keepalives, rekeys)

The protocol -- keys, counters, replay windows, timers, cryptokey routing, the cookie policy --
is all in :class:`~vpnedu.protocol.device.Device`, which does no IO.  :class:`Datapath` does
only the system calls, and as few as it can, because each packet's Python-level cost caps a
Python VPN near a gigabit:

========================  ===========================================================================
batching                  drain TUN and the socket per wakeup (``batch`` reads) and hand the whole
                          batch to the Device, which seals or opens it into one preallocated buffer
                          (:class:`~vpnedu.protocol.transport.Output`) and runs its bookkeeping once
                          per batch; no event objects unless someone subscribes.
``udp_gso``               all datagrams of a run leave in one ``sendmsg`` with ``UDP_SEGMENT``.
``udp_gro``               ``UDP_GRO`` on the socket: one ``recvmsg`` returns many datagrams.
``tun_gro``               decrypted segments of one TCP flow are written to TUN as one super-packet
                          with a virtio-net header (:func:`vpnedu.net.offload.coalesce`).
``tso``                   TUN with ``IFF_VNET_HDR`` + ``TUNSETOFFLOAD``: one read returns a TCP
                          super-packet (up to ``tso_max`` = 64 KiB); we split it into MTU-sized
                          segments with full checksums (:func:`vpnedu.net.offload.split_tso`, all
                          segments at once as the rows of a numpy array).  Once the split was a
                          Python loop per segment and cost more than the reads it saved; vectorised,
                          one read per ~46 segments wins (BENCHMARKS.md).
========================  ===========================================================================

``--datapath simple`` turns every offload off: one system call per packet, the same engine.
The wire format never changes: one WireGuard transport message per inner packet, every
datagram within the path MTU.

A :class:`Datapath` works for whatever satisfies :class:`Host` -- the daemons
(:class:`vpnedu.node.base.Node`), the simulated daemons (:mod:`vpnedu.sim.node`, on in-memory
TUN devices and sockets) and the test harness (:class:`vpnedu.testing.LoopbackNode`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, fields
from typing import Callable, Protocol

from ..errors import VpneduError
from ..events import EventBus
from ..net import offload as _off
from ..net import udp as _udp
from ..packet import ip as _ip
from ..protocol.device import Device
from ..protocol.transport import Output

#: Room for one read: the largest datagram or TUN packet, with a virtio-net header.
READ_SIZE = 65536 + 64


class TunDevice(Protocol):
    """What the datapath uses of a TUN device (:class:`vpnedu.net.tun.Tun`,
    :class:`vpnedu.sim.tun.MemoryTun`)."""

    vnet_hdr: bool

    def readv(self, buffers) -> int: ...
    def write(self, packet) -> None: ...
    def write_parts(self, parts) -> None: ...


class DatagramSocket(Protocol):
    """What the datapath uses of a UDP socket (a real one, :class:`vpnedu.sim.host.SimSocket`)."""

    def recvmsg_into(self, buffers, ancbufsize: int = 0, flags: int = 0): ...
    def sendto(self, data, address) -> int: ...


class Host(Protocol):
    """What a :class:`Datapath` needs from the node that owns it: the protocol engine, the two
    devices it moves packets between, the clock, and a way to re-arm the node's timer."""

    device: Device
    events: EventBus
    tun: TunDevice
    sock: DatagramSocket
    #: Called for each decrypted packet before it goes to the kernel; True means "taken"
    #: (the server's proxy mode).
    intercept: Callable[[str | None, bytes], bool] | None

    def clock(self) -> float:
        """Monotonic seconds, the ``now`` of every Device call."""
        ...

    def schedule_tick(self) -> None:
        """Called after every wakeup: the Device's next deadline may have moved."""
        ...


@dataclass
class Options:
    """Which optimisations are on (``--datapath fast,no-tso`` turns one off)."""

    #: TSO reads: one read returns a TCP super-packet of up to ``tso_max`` bytes, split here
    #: (:func:`vpnedu.net.offload.split_tso`, vectorised with numpy).  On by default since the
    #: split stopped being a Python loop per segment (BENCHMARKS.md, "Speed, second round").
    tso: bool = True
    udp_gso: bool = True
    udp_gro: bool = True
    tun_gro: bool = True
    #: Reads from TUN / the socket per wakeup before yielding to the event loop.
    batch: int = 64
    #: Largest TSO super-packet the kernel may hand us (the TUN device's gso_max_size).  The
    #: split costs a fixed ~20 us per super-packet plus well under a microsecond per segment, so
    #: the largest (64 KiB) pays best.  A slow receiver with a small socket buffer (an old
    #: wireguard-go reads one datagram per system call) sees bursts of the same size either way:
    #: a wakeup's 64 packet-by-packet reads leave in one UDP GSO send too.
    tso_max: int = 65536

    @property
    def vnet_hdr(self) -> bool:
        return self.tso or self.tun_gro

    @classmethod
    def parse(cls, spec: str | None) -> "Options":
        """``fast`` or ``fast,tso,no-tun-gro,batch=8``; ``simple`` is every offload off (one
        system call per packet)."""
        spec = (spec or "fast").strip().lower()
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if parts[:1] == ["simple"] and len(parts) == 1:
            return cls.simple()
        if parts[:1] != ["fast"]:
            raise VpneduError(f"--datapath {spec!r}: expected 'simple' or 'fast[,no-OPTION...]'",
                              "options: " + ", ".join(f.name.replace("_", "-") for f in fields(cls)))
        opts = cls()
        names = {f.name.replace("_", "-"): f.name for f in fields(cls)}
        for p in parts[1:]:
            key, eq, value = p.partition("=")
            if eq and key in ("batch", "tso-max") and value.isdigit() and int(value) > 0:
                setattr(opts, names[key], int(value))
            elif key.startswith("no-") and key[3:] in names and key[3:] not in ("batch", "tso-max"):
                setattr(opts, names[key[3:]], False)
            elif not eq and key in names and key not in ("batch", "tso-max"):
                setattr(opts, names[key], True)
            else:
                raise VpneduError(f"--datapath: unknown option {p!r}",
                                  "use tso, no-udp-gso, no-udp-gro, no-tun-gro, batch=N or tso-max=BYTES")
        return opts

    @classmethod
    def simple(cls) -> "Options":
        """No offloads: every packet one TUN read or write, every datagram one ``sendto`` or
        ``recvmsg`` (``--datapath simple``, the simulation)."""
        return cls(tso=False, udp_gso=False, udp_gro=False, tun_gro=False)

    def describe(self) -> str:
        if self == Options.simple():
            return "simple"
        off = [f.name.replace("_", "-") for f in fields(self)
               if f.type in (bool, "bool") and not getattr(self, f.name)]
        return ("fast" + "".join(f",no-{o}" for o in off)
                + (f",batch={self.batch}" if self.batch != 64 else "")
                + (f",tso-max={self.tso_max}" if self.tso_max != 65536 and self.tso else ""))


class Datapath:
    """Moves packets for one :class:`Host` in batches (see the module doc)."""

    def __init__(self, host: Host, opts: Options):
        self.host = host
        self.opts = opts
        self.dev = host.device
        self.events = host.events
        self.tun = host.tun
        self.mtu = host.device.mtu
        #: The UDP sockets by address family (4, 6); a host with one socket uses it for both.
        self.socks: dict = {}
        self.sock = None
        #: Replies leave from the address the peer wrote to (see :func:`vpnedu.net.udp.parse_ancillary`).
        self.sticky = False
        self.gso = self.gro = False
        self.set_sockets(getattr(host, "sockets", None) or {4: host.sock})
        self.vnet = self.tun.vnet_hdr
        self._tun_failed = False
        batch = opts.batch
        # Preallocated buffers: one TUN read, ``batch`` socket reads, the datagrams of one send.
        self._tbuf = bytearray(READ_SIZE)
        self._tmv = memoryview(self._tbuf)
        self._ubuf = bytearray(READ_SIZE * batch)
        umv = memoryview(self._ubuf)
        self._slots = [(umv[i * READ_SIZE:(i + 1) * READ_SIZE],) for i in range(batch)]
        # Room for a whole batch of MTU-sized packets, sealed (the engine adds areas if more come).
        self._out = Output(max(_udp.MAX_GSO_BYTES, batch * (self.mtu + 64)),
                           max_run=_udp.MAX_SEGMENTS if self.gso else 1, max_run_bytes=_udp.MAX_GSO_BYTES)
        self._locals: dict = {}
        #: What each optimisation did, for `vpnedu status` and the tests.
        self.stats = {"tun_reads": 0, "tso_packets": 0, "segments_sent": 0, "gso_sends": 0,
                      "udp_reads": 0, "datagrams_received": 0, "tun_writes": 0, "coalesced": 0}

    def set_sockets(self, socks: dict) -> None:
        """Use these UDP sockets (``{4: sock, 6: sock6}``) from now on: at start, and again when
        the listen port changes (``wg set listen-port``).  Offloads are probed on each one;
        with sticky sources on (the host's ``sticky_source``), reads ask for the local address."""
        opts = self.opts
        self.socks = dict(socks)
        self.sock = next(iter(self.socks.values()), None)
        live = [s for s in self.socks.values() if s is not None]
        self.gso = bool(live) and opts.udp_gso and all(_udp.gso_supported(s) for s in live)
        gro = [opts.udp_gro and _udp.enable_gro(s) for s in live]
        self.gro = bool(live) and all(gro)
        self.sticky = bool(getattr(self.host, "sticky_source", False))
        out = getattr(self, "_out", None)
        if out is not None:
            out.max_run = _udp.MAX_SEGMENTS if self.gso else 1

    def _sock_for(self, ep):
        socks = self.socks
        if len(socks) == 1:
            return self.sock
        return socks.get(6 if ":" in ep[0] else 4)

    # ------------------------------------------------------------------ TUN -> UDP
    def on_tun_readable(self) -> None:
        """Drain the TUN device (up to ``batch`` reads), encrypt and send."""
        host, dev, ev = self.host, self.dev, self.events
        readv = self.tun.readv
        bufs = (self._tbuf,)
        tmv = self._tmv
        vnet = self.vnet
        want = ev.wants("tun.read")
        stats = self.stats
        out = self._out
        packets: list = []
        reads = 0
        for _ in range(self.opts.batch):
            try:
                n = readv(bufs)
            except BlockingIOError:   # drained
                break
            except OSError as e:
                self._tun_error(e)
                break
            reads += 1
            if not vnet:
                packets.append(bytes(tmv[:n]))
            else:
                try:
                    segs = _off.packets_from_tun(tmv[:n], self.mtu)
                except _off.OffloadError as e:
                    dev.counters["dropped.bad-offload"] += 1
                    if ev.wants("packet.dropped"):
                        ev.emit("packet.dropped", None, reason="bad-offload", detail=str(e), source=None, size=n)
                    continue
                if len(segs) > 1:   # a TSO super-packet: send it on while the next is read
                    stats["tso_packets"] += 1
                    packets.extend(segs)
                    self._send_packets(packets, out, want)
                    packets = []
                    continue
                packets.append(segs[0])
        stats["tun_reads"] += reads
        if packets:
            self._send_packets(packets, out, want)
        host.schedule_tick()

    def _tun_error(self, err: OSError) -> None:
        """A read from TUN failed.  EBADFD means the device is gone (``ip link del``): the host's
        ``tun_gone`` is told once (vpnedu-wg then exits, as wireguard-go does); anything else is
        counted."""
        self.dev.counters["dropped.tun-read"] += 1
        if err.errno == errno.EBADFD and not self._tun_failed:
            self._tun_failed = True
            gone = getattr(self.host, "tun_gone", None)
            if gone is not None:
                gone(err)

    def _send_packets(self, packets: list, out: Output, want: bool) -> None:
        # The clock is read here, after the reads, not before them: a process stopped (SIGSTOP,
        # a suspended VM) between the two would otherwise judge its keys' age by a time from
        # before the pause, and could send under keys past REJECT_AFTER_TIME.
        now = self.host.clock()
        if want:
            ev = self.events
            for p in packets:
                ev.emit("tun.read", None, size=len(p), packet=_ip.describe(bytes(p)))
        self.stats["segments_sent"] += len(packets)
        self.dev.send_packets(packets, now, out)
        self.send_output(out)

    def send_output(self, out: Output) -> None:
        """Send what the Device produced (then forget it): every run of sealed messages in
        one ``sendmsg`` (UDP GSO) or one ``sendto`` per datagram, then the other messages."""
        ev = self.events
        want = ev.wants("udp.sent")
        for view, size, ep in out.runs:
            self._flush(view, size, ep)
            if want:
                for off in range(0, len(view), size):
                    ev.emit("udp.sent", None, to=f"{ep[0]}:{ep[1]}", size=min(size, len(view) - off), type=4)
        if out.datagrams:
            self.send(out.datagrams)
        if out.packets:
            self.deliver(out.packets)
        out.clear()

    def send(self, datagrams) -> None:
        """Send datagrams one by one (handshake messages and the like)."""
        dev, ev = self.dev, self.events
        for data, ep in datagrams:
            try:
                self._sendto(data, len(data), ep)
            except BlockingIOError:
                dev.counters["dropped.socket-full"] += 1
                continue
            except OSError as e:
                dev.counters["dropped.send-error"] += 1
                if ev.wants("packet.dropped"):
                    ev.emit("packet.dropped", None, reason="send-error", detail=e.strerror,
                            source=None, size=len(data))
                continue
            if ev.wants("udp.sent"):
                ev.emit("udp.sent", None, to=f"{ep[0]}:{ep[1]}", size=len(data), type=data[0])

    def _sendto(self, buf, size: int, ep) -> None:
        """One ``sendto``, or one ``sendmsg`` with the GSO segment size and/or the sticky source
        address (``ep[2]``, see :func:`vpnedu.net.udp.parse_ancillary`).  If that address is gone
        (removed from its interface), the Device forgets it and the datagram leaves from whatever
        address the kernel picks -- WireGuard's sources are sticky, "but not too sticky"."""
        sock = self._sock_for(ep)
        if sock is None:
            raise OSError(errno.EAFNOSUPPORT, f"no IPv{_udp.family_of(ep)} socket")
        if len(ep) < 3:
            if len(buf) <= size:
                sock.sendto(buf, ep)
            else:
                _udp.send_segments(sock, buf, size, ep)
            return
        cmsg = [ep[2]]
        if len(buf) > size:
            cmsg.append(_udp.segment_cmsg(size))
        try:
            sock.sendmsg((buf,), cmsg, 0, ep[:2])
        except OSError as e:
            if not _udp.stale_source(e):
                raise
            self.dev.forget_local_address(ep)
            self.stats["stale_sources"] = self.stats.get("stale_sources", 0) + 1
            self._sendto(buf, size, ep[:2])

    def _flush(self, buf, size: int, ep) -> None:
        count = -(-len(buf) // size)
        try:
            self._sendto(buf, size, ep)
            if count > 1:
                self.stats["gso_sends"] += 1
        except BlockingIOError:
            self.dev.counters["dropped.socket-full"] += count
        except OSError as e:
            if count > 1 and _udp.gso_unusable(e):
                self.gso = False   # send them one by one from now on
                self._out.max_run = 1
                for off in range(0, len(buf), size):
                    self._flush(buf[off:off + size], size, ep)
                return
            self.dev.counters["dropped.send-error"] += count

    # ------------------------------------------------------------------ UDP -> TUN
    def on_udp_readable(self, sock=None) -> None:
        """Drain a socket (``sock``, the first one by default; up to ``batch`` reads, each many
        datagrams with UDP GRO), decrypt, write to TUN and send what the Device answers."""
        host, ev = self.host, self.events
        recv = (sock or self.sock).recvmsg_into
        reads = []
        if self.sticky:
            # Every source becomes (host, port, local): replies leave from the address it wrote to.
            parse, cache = _udp.parse_ancillary, self._locals
            for bufs in self._slots:
                try:
                    n, anc, _flags, addr = recv(bufs, _udp.READ_CMSG_SPACE)
                except OSError:
                    break
                size, local = parse(anc, n)
                if local is not None:
                    local = cache.setdefault(local, local)   # one object per address
                    reads.append((bufs[0][:n], size, (addr[0], addr[1], local)))
                else:
                    reads.append((bufs[0][:n], size, addr[:2]))
            if len(cache) > 1024:
                cache.clear()
        else:
            cmsg = _udp.GRO_CMSG_SPACE if self.gro else 0
            gro_size = _udp.gro_segment_size
            for bufs in self._slots:
                try:
                    n, anc, _flags, addr = recv(bufs, cmsg)
                except OSError:
                    break
                reads.append((bufs[0][:n], gro_size(anc, n) if anc else n, addr[:2]))
        if not reads:
            host.schedule_tick()
            return
        stats = self.stats
        stats["udp_reads"] += len(reads)
        if ev.wants("udp.received"):
            for buf, size, addr in reads:
                for off in range(0, len(buf), size) if buf else (0,):
                    d = buf[off:off + size]
                    ev.emit("udp.received", None, source=f"{addr[0]}:{addr[1]}", size=len(d),
                            type=d[0] if len(d) else None)
        stats["datagrams_received"] += sum(-(-len(b) // s) if b else 1 for b, s, _ in reads)
        out = self._out
        now = host.clock()   # after the reads (see _send_packets)
        self.dev.receive_batch(reads, now, out)
        self.send_output(out)
        host.schedule_tick()

    def deliver(self, packets: list) -> None:
        """Write decrypted ``(peer, packet)`` pairs to TUN (unless the host's ``intercept``
        takes one), TCP segments coalesced when ``tun_gro`` is on."""
        intercept = self.host.intercept
        ev = self.events
        if intercept is None and not ev.wants("tun.write"):
            plain = [pkt for _peer, pkt in packets]
        else:
            plain = []
            for peer, pkt in packets:
                if intercept is not None and intercept(peer.label, pkt):
                    continue   # the server's proxy took it (see vpnedu.proxy)
                if ev.wants("tun.write"):
                    ev.emit("tun.write", peer.label, size=len(pkt), packet=_ip.describe(pkt))
                plain.append(pkt)
        self.write_tun(plain)

    def write_tun(self, packets: list) -> None:
        """Write plain IP packets to TUN, TCP segments coalesced when ``tun_gro`` is on."""
        tun = self.tun
        stats = self.stats
        try:
            if self.opts.tun_gro and self.vnet:
                write = tun.write_parts
                for hdr, parts in _off.coalesce(packets):
                    try:
                        write((hdr, *parts))
                    except OSError:
                        self.dev.counters["dropped.tun-write"] += 1
                    stats["tun_writes"] += 1
                    if len(parts) > 1:
                        stats["coalesced"] += len(parts) - 2
                return
            write = tun.write
            for pkt in packets:
                try:
                    write(pkt)
                except OSError:
                    self.dev.counters["dropped.tun-write"] += 1
                stats["tun_writes"] += 1
        except _off.OffloadError:
            self.dev.counters["dropped.bad-offload"] += 1
