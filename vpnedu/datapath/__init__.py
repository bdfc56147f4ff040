"""The fast datapath: the same protocol as :class:`~vpnedu.protocol.device.Device`, in batches.

The readable path (``--datapath simple``, :meth:`vpnedu.node.base.Node._on_tun_readable`) moves
one packet at a time through :meth:`Device.send_packet` and :meth:`Device.receive`: easy to
follow, and what the notebooks show.  Each packet then costs two system calls and a few dozen
Python-level steps on each side, which caps a Python VPN near a gigabit.  The fast path keeps
the wire format (one WireGuard transport message per inner packet, every datagram within the
path MTU) and the same keys, counters and replay windows, and cuts the per-packet cost:

========================  ===========================================================================
``tso`` (off by default)  TUN with ``IFF_VNET_HDR`` + ``TUNSETOFFLOAD``: one read returns a TCP
                          super-packet (up to ``tso_max`` bytes); we split it into MTU-sized segments
                          with full checksums (:func:`vpnedu.net.offload.split_tso`).  Measured: the
                          checksums in Python cost more than the reads they save, so by default the
                          kernel segments and checksums (in C) and we read packet by packet.
``udp_gso``               all datagrams of a batch leave in one ``sendmsg`` with ``UDP_SEGMENT``.
``udp_gro``               ``UDP_GRO`` on the socket: one ``recvmsg`` returns many datagrams.
``tun_gro``               decrypted segments of one TCP flow are written to TUN as one super-packet
                          with a virtio-net header (:func:`vpnedu.net.offload.coalesce`).
batching                  drain TUN and socket per wakeup; encrypt into one preallocated buffer; timer
                          and counter bookkeeping once per batch (``Device.fast_sent`` /
                          ``Device.fast_received``); no event objects unless someone subscribes.
========================  ===========================================================================

Whenever a per-packet event is wanted (``tun.read``, ``data.encrypted``, ...), or a packet is
anything but data on the current session (handshakes, a session being confirmed, replays,
tampering), the fast path hands that packet to the readable path, so events, drop reasons and
the protocol state machine stay those of :class:`Device`.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag

from ..errors import VpneduError
from ..net import offload as _off
from ..net import udp as _udp
from ..packet import ip as _ip
from ..protocol.session import Keypair

if TYPE_CHECKING:
    from ..node.base import Node

_HEADER = struct.Struct("<IIQ")
_PAD = bytes(16)
#: Events that would have to be built per packet: while any is wanted, use the readable path.
PER_PACKET_SEND = ("tun.read", "data.encrypted", "udp.sent")
PER_PACKET_RECEIVE = ("udp.received", "data.decrypted", "tun.write")


@dataclass
class Options:
    """Which optimisations are on (``--datapath fast,no-tso`` turns one off)."""

    #: Off by default: measured side by side, our TSO split (TCP checksums in Python) costs more
    #: than letting the kernel segment and checksum in C and reading packet by packet (BENCHMARKS.md).
    tso: bool = False
    udp_gso: bool = True
    udp_gro: bool = True
    tun_gro: bool = True
    #: Reads from TUN / the socket per wakeup before yielding to the event loop.
    batch: int = 64
    #: Largest TSO super-packet the kernel may hand us (the TUN device's gso_max_size): every one
    #: leaves as a burst of datagrams, and a slow receiver with a small socket buffer (an old
    #: wireguard-go reads one datagram per system call) overflows under 64 KiB bursts.
    tso_max: int = 16384

    @property
    def vnet_hdr(self) -> bool:
        return self.tso or self.tun_gro

    @classmethod
    def parse(cls, spec: str | None) -> "Options | None":
        """``simple`` -> None (the readable path); ``fast`` or ``fast,tso,no-tun-gro,batch=8`` -> Options."""
        spec = (spec or "fast").strip().lower()
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if parts[:1] == ["simple"] and len(parts) == 1:
            return None
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

    def describe(self) -> str:
        off = [f.name.replace("_", "-") for f in fields(self)
               if f.type in (bool, "bool") and f.name != "tso" and not getattr(self, f.name)]
        return ("fast" + (",tso" if self.tso else "") + "".join(f",no-{o}" for o in off)
                + (f",batch={self.batch}" if self.batch != 64 else "")
                + (f",tso-max={self.tso_max}" if self.tso_max != 16384 and self.tso else ""))


class FastPath:
    """Moves packets for one :class:`~vpnedu.node.base.Node` in batches (see the module doc)."""

    def __init__(self, node: "Node", opts: Options):
        self.node = node
        self.opts = opts
        self._handshakes = 0
        self.dev = node.device
        self.events = node.events
        self.tun = node.tun
        self.sock = node.sock
        self.mtu = node.device.mtu
        self.gso = opts.udp_gso and _udp.gso_supported(self.sock)
        self.gro = opts.udp_gro and _udp.enable_gro(self.sock)
        self.vnet = self.tun.vnet_hdr
        # Preallocated buffers: a TUN read, a socket read, and the datagrams of one send.
        self._tbuf = bytearray(65536 + 64)
        self._tmv = memoryview(self._tbuf)
        self._ubuf = bytearray(65536 + 64)
        self._umv = memoryview(self._ubuf)
        self._obuf = bytearray(_udp.MAX_GSO_BYTES + 2048)
        self._omv = memoryview(self._obuf)
        #: What each optimisation did, for `vpnedu status` and the tests.
        self.stats = {"tun_reads": 0, "tso_packets": 0, "segments_sent": 0, "gso_sends": 0,
                      "udp_reads": 0, "datagrams_received": 0, "tun_writes": 0, "coalesced": 0}

    # ------------------------------------------------------------------ TUN -> UDP
    def packets_from_read(self, raw) -> list:
        """One TUN read as plain IP packets (split when it is a TSO super-packet)."""
        if not self.vnet:
            return [bytes(raw)]
        flags, gso_type, _hl, gso_size, cs, co = _off.VNET_HDR.unpack_from(raw, 0)
        if gso_type == _off.GSO_NONE:
            if flags & _off.NEEDS_CSUM:
                pkt = bytearray(raw[_off.VNET_HDR_LEN:])
                _off.finish_checksum(pkt, cs, co)
                return [pkt]
            return [bytes(raw[_off.VNET_HDR_LEN:])]
        self.stats["tso_packets"] += 1
        return _off.split_tso(raw[_off.VNET_HDR_LEN:], gso_type, gso_size, cs, self.mtu)

    def on_tun_readable(self) -> None:
        node, dev, ev = self.node, self.dev, self.events
        fd = self.tun.fd
        bufs = (self._tbuf,)
        tmv = self._tmv
        readable = ev.wants("tun.read") or ev.wants("data.encrypted") or ev.wants("udp.sent")
        routes = dev.routes
        cache: dict = {}
        pending: dict = {}   # peer -> [segments]
        now = dev.clock()
        for _ in range(self.opts.batch):
            try:
                n = os.readv(fd, bufs)
            except OSError:   # BlockingIOError: drained
                break
            self.stats["tun_reads"] += 1
            try:
                segs = self.packets_from_read(tmv[:n])
            except _off.OffloadError as e:
                dev._drop("bad-offload", str(e), size=n)
                continue
            for seg in segs:
                if readable:
                    if ev.wants("tun.read"):
                        ev.emit("tun.read", None, size=len(seg), packet=_ip.describe(bytes(seg)))
                    node._send(dev.send_packet(bytes(seg)))
                    continue
                v = seg[0] >> 4
                dst = bytes(seg[16:20]) if v == 4 else bytes(seg[24:40]) if v == 6 else b""
                peer = cache.get(dst, False)
                if peer is False:
                    peer = cache[dst] = routes.lookup(dst) if _ip.ip_length(seg) else None
                if peer is None:
                    node._send(dev.send_packet(bytes(seg)))   # counted and reported as no-route
                    continue
                q = pending.get(peer)
                if q is None:
                    pending[peer] = [seg]
                else:
                    q.append(seg)
                    if len(q) >= 256:
                        self.send_batch(peer, q, now)
                        del pending[peer]
            if len(segs) > 1 and pending:   # a super-packet: send it on while the next is read
                for peer, q in pending.items():
                    self.send_batch(peer, q, now)
                pending.clear()
        for peer, q in pending.items():
            self.send_batch(peer, q, now)
        node._schedule_tick()

    def send_batch(self, peer, packets: list, now: float) -> None:
        """Encrypt ``packets`` for ``peer`` into consecutive transport messages and send them,
        as few ``sendmsg`` calls as UDP GSO allows (runs of equal-sized datagrams)."""
        node, dev = self.node, self.dev
        kp = dev.fast_send_keypair(peer, len(packets), now)
        aead = kp.sender if kp is not None else None
        cipher = getattr(aead, "_cipher", None)
        if cipher is None:   # no session (queue + handshake), or the null-teaching suite
            for p in packets:
                node._send(dev.send(peer, bytes(p), now))
            return
        seal = cipher.encrypt_into
        nonce = aead._fmt.pack
        hdr = _HEADER.pack_into
        mtu = self.mtu
        ep = peer.endpoint
        out, omv = self._obuf, self._omv
        ridx = kp.remote_index
        counter = kp.send_counter
        gso = self.gso
        max_seg = _udp.MAX_SEGMENTS if gso else 1
        max_bytes = _udp.MAX_GSO_BYTES
        off = 0          # end of the datagrams in the buffer (they all belong to the current run)
        size = 0         # size of the run's datagrams
        count = 0
        closed = False   # the run ended with a shorter datagram: nothing may follow it
        nbytes = 0
        for p in packets:
            n = len(p)
            if n & 15 or n > mtu:   # pad to a multiple of 16, never past the MTU (as Device._encrypt)
                unit = n % mtu if n > mtu else n
                pad = min(-(-unit // 16) * 16, mtu) - unit
                if pad > 0:
                    p = bytes(p) + _PAD[:pad]
                    n += pad
            dlen = n + 32
            if count and (closed or dlen > size or count >= max_seg or off + dlen > max_bytes):
                self._flush(omv[:off], size, count, ep)
                off = count = 0
                closed = False
            if not count:
                size = dlen
            elif dlen < size:
                closed = True
            hdr(out, off, 4, ridx, counter)
            seal(nonce(counter), p, None, omv[off + 16:off + dlen])
            counter += 1
            off += dlen
            count += 1
            nbytes += dlen
        kp.send_counter = counter
        if count:
            self._flush(omv[:off], size, count, ep)
        self.stats["segments_sent"] += len(packets)
        node._send(dev.fast_sent(peer, kp, len(packets), nbytes, now))

    def _flush(self, buf, size: int, count: int, ep) -> None:
        sock = self.sock
        try:
            if count == 1:
                sock.sendto(buf, ep)
            else:
                _udp.send_segments(sock, buf, size, ep)
                self.stats["gso_sends"] += 1
        except BlockingIOError:
            self.dev.counters["dropped.socket-full"] += count
        except OSError as e:
            if count > 1 and _udp.gso_unusable(e):
                self.gso = False   # send them one by one from now on
                for off in range(0, len(buf), size):
                    self._flush(buf[off:off + size], size, 1, ep)
                return
            self.dev.counters["dropped.send-error"] += count

    # ------------------------------------------------------------------ UDP -> TUN
    def on_udp_readable(self) -> None:
        node, dev, ev = self.node, self.dev, self.events
        sock = self.sock
        bufs = (self._ubuf,)
        umv = self._umv
        readable = ev.wants("udp.received") or ev.wants("data.decrypted") or ev.wants("tun.write")
        now = dev.clock()
        index = dev._index
        reject_msgs = dev.timers.reject_after_messages
        reject_time = dev.timers.reject_after_time
        check_source = dev.check_source
        routes = dev.routes
        intercept = node.intercept
        deliver: list = []
        src_cache: dict = {}
        cmsg = _udp.GRO_CMSG_SPACE if self.gro else 0
        stats = self.stats
        self._handshakes = 0   # handshake messages in this wakeup (see Node.note_handshakes)
        for _ in range(self.opts.batch):
            try:
                n, anc, _flags, addr = sock.recvmsg_into(bufs, cmsg)
            except OSError:
                break
            stats["udp_reads"] += 1
            addr = addr[:2]
            if n == 0:   # an empty datagram: malformed, counted as a drop like any other
                self._receive_readable(b"", addr, deliver)
                continue
            size = _udp.gro_segment_size(anc, n) if anc else n
            # Per-batch bookkeeping for the (peer, keypair) of the run of datagrams being handled.
            cur_idx = -1
            peer = kp = None
            opened = nbytes = data = 0
            for off in range(0, n, size):
                end = off + size if off + size < n else n
                d = umv[off:end]
                stats["datagrams_received"] += 1
                if readable:
                    self._receive_readable(bytes(d), addr, deliver)
                    continue
                dl = end - off
                if dl < 32 or d[0] != 4 or d[1] or d[2] or d[3]:
                    self._receive_readable(bytes(d), addr, deliver)
                    continue
                _t, ridx, counter = _HEADER.unpack_from(d)
                if ridx != cur_idx:
                    if opened:
                        node._send(dev.fast_received(peer, kp, opened, nbytes, data, addr, now))
                        opened = nbytes = data = 0
                    entry = index.get(ridx)
                    if (entry is None or type(entry[1]) is not Keypair or entry[1] is not entry[0].current
                            or now - entry[1].created >= reject_time
                            or getattr(entry[1].receiver, "_cipher", None) is None):
                        cur_idx = -1
                        self._receive_readable(bytes(d), addr, deliver)
                        continue
                    cur_idx = ridx
                    peer, kp = entry
                    replay = kp.replay
                    aead = kp.receiver
                    opn = aead._cipher.decrypt
                    nonce = aead._fmt.pack
                if counter >= reject_msgs or not replay.check(counter):
                    self._receive_readable(bytes(d), addr, deliver)   # counted as expired / replay
                    continue
                try:
                    plain = opn(nonce(counter), d[16:], None)
                except InvalidTag:
                    self._receive_readable(bytes(d), addr, deliver)   # counted as bad-mac
                    continue
                if not replay.accept(counter):
                    dev._drop("replay", f"counter {counter} was already received", peer, addr, dl)
                    continue
                opened += 1
                nbytes += dl
                if not plain:
                    continue   # a keepalive
                data += 1
                length = _ip.ip_length(plain)
                if length is None:
                    dev._drop("malformed-inner", "decrypted payload is not an IPv4/IPv6 packet", peer, addr, dl)
                    continue
                if length != len(plain):
                    plain = plain[:length]
                if check_source:
                    src = plain[12:16] if plain[0] >> 4 == 4 else plain[8:24]
                    owner = src_cache.get(src, False)
                    if owner is False:
                        owner = src_cache[src] = routes.lookup(src)
                    if owner is not peer:
                        dev._drop("source-not-allowed", f"inner source {ipaddress.ip_address(src)} is not in "
                                  "this peer's AllowedIPs", peer, addr, dl)
                        continue
                if intercept is not None and intercept(peer.label, plain):
                    continue
                deliver.append(plain)
            if opened:
                node._send(dev.fast_received(peer, kp, opened, nbytes, data, addr, now))
            if len(deliver) >= 256:
                self.write_tun(deliver)
                deliver = []
        if deliver:
            self.write_tun(deliver)
        node._schedule_tick()

    def _receive_readable(self, data: bytes, addr, deliver: list) -> None:
        """One datagram through the readable path (:meth:`Device.receive`), as the simple
        datapath does, its packets joining ``deliver`` in order."""
        node, dev, ev = self.node, self.dev, self.events
        if data and data[0] in (1, 2):
            self._handshakes += 1
            node.note_handshakes(self._handshakes)
        if ev.wants("udp.received"):
            ev.emit("udp.received", None, source=f"{addr[0]}:{addr[1]}", size=len(data),
                    type=data[0] if data else None)
        got = dev.receive(data, addr)
        if got.datagrams:
            node._send(got.datagrams)
        intercept = node.intercept
        for peer, pkt in got.packets:
            if intercept is not None and intercept(peer.label, pkt):
                continue
            if ev.wants("tun.write"):
                ev.emit("tun.write", peer.label, size=len(pkt), packet=_ip.describe(pkt))
            deliver.append(pkt)

    def write_tun(self, packets: list) -> None:
        """Write decrypted packets to TUN, TCP segments coalesced when ``tun_gro`` is on."""
        tun = self.tun
        stats = self.stats
        try:
            if self.opts.tun_gro and self.vnet:
                for hdr, parts in _off.coalesce(packets):
                    try:
                        os.writev(tun.fd, (hdr, *parts))
                    except OSError:
                        self.dev.counters["dropped.tun-write"] += 1
                    stats["tun_writes"] += 1
                    if len(parts) > 1:
                        stats["coalesced"] += len(parts) - 2
                return
            for pkt in packets:
                try:
                    tun.write(pkt)
                except OSError:
                    self.dev.counters["dropped.tun-write"] += 1
                stats["tun_writes"] += 1
        except _off.OffloadError:
            self.dev.counters["dropped.bad-offload"] += 1
