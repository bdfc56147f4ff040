"""``vpnedu capture``: record the outer link and let Wireshark's dissector read it.

Recording is tcpdump's job (``-w FILE``, a UDP port filter); decoding is
tshark's.  tshark knows WireGuard: with ``-d udp.port==51820,wg`` it names each
datagram's message type, and with ``-o wg.keylog_file:KEYLOG`` -- the file
``vpnedu client|server --keylog`` writes -- it decrypts the handshake and then
shows the IP packets inside the tunnel.

A sender with UDP GSO (vpnedu's fast datapath) hands the kernel a burst of transport
messages as one large datagram, which the kernel segments only where a real NIC would; on a
veth cable -- the namespace lab -- the capture then holds the whole burst as one datagram,
and Wireshark's dissector reads only its first message.  :func:`split_gso_bursts` rewrites
such a capture into the datagrams a physical cable carries (``vpnedu capture -w`` does it
after recording), recognising a burst by the run of transport headers inside it: same
receiver index, consecutive counters, one segment size.

Debian confines tcpdump with an AppArmor profile (``/etc/apparmor.d/usr.bin.tcpdump``)
that lets it write only files named ``*.pcap`` or ``*.cap`` (and files under
``/tmp`` and home directories): :func:`record_command` refuses any other name up
front, with the fix, instead of letting tcpdump fail with "Permission denied".
"""

from __future__ import annotations

import re
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import VpneduError

FIELDS = ("frame.number", "frame.time_relative", "ip.src", "ip.dst", "wg.type", "wg.receiver", "wg.counter",
          "_ws.col.Protocol", "_ws.col.Info")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()),
                                      None)
    if path is None:
        raise VpneduError(f"'{name}' is not installed", f"install it: apt-get install {package}")
    return path


#: File names the tcpdump AppArmor profile lets it write anywhere ("-W adds a numerical suffix").
_APPARMOR_NAMES = re.compile(r"\.(pcap|cap)[0-9]*$", re.IGNORECASE)
#: Where its profile lets it write any name (abstractions/user-tmp, @{HOME}).
_APPARMOR_DIRS = re.compile(r"^(/tmp/|/var/tmp/|/root/|/home/[^/]+/)")


def apparmor_confines_tcpdump() -> bool:
    """True if AppArmor is on and enforces a profile on tcpdump (as Debian and Ubuntu ship it)."""
    try:
        if Path("/sys/module/apparmor/parameters/enabled").read_text().strip() != "Y":
            return False
    except OSError:
        return False
    try:
        for line in Path("/sys/kernel/security/apparmor/profiles").read_text().splitlines():
            name, _, mode = line.rpartition(" ")
            if name in ("tcpdump", "/usr/bin/tcpdump", "/usr/sbin/tcpdump"):
                return mode == "(enforce)"
        return False
    except OSError:  # securityfs not mounted or not readable: go by the installed profile
        return (Path("/etc/apparmor.d/usr.bin.tcpdump").exists()
                and not Path("/etc/apparmor.d/disable/usr.bin.tcpdump").exists())


def check_output_file(out: str, confined: bool | None = None) -> None:
    """Fail early, with the fix, where tcpdump could not write ``out`` ("-" is standard output)."""
    if out == "-":
        return
    given, path = Path(out), Path(out).absolute()
    if not path.parent.is_dir():
        raise VpneduError(f"cannot record to {out}: the directory {path.parent} does not exist",
                          "create it, or give -w a file in an existing directory")
    if _APPARMOR_NAMES.search(path.name):
        return
    if confined is None:
        confined = apparmor_confines_tcpdump()
    in_free_dir = _APPARMOR_DIRS.match(str(path)) and not any(part.startswith(".") for part in path.parts)
    if confined and not in_free_dir:
        raise VpneduError(f"tcpdump may not write {out}: its AppArmor profile "
                          "(/etc/apparmor.d/usr.bin.tcpdump) only lets it write files named *.pcap or *.cap",
                          f"name the file so, e.g. -w {given.with_name(given.stem + '.pcap')}")


def record_command(interface: str, out: str, port: int = 51820, count: int = 0, duration: float = 0) -> list[str]:
    """The tcpdump command line that records the tunnel's outer packets to ``out`` ("-": stdout);
    with ``duration`` it runs under ``timeout --signal=INT`` (exit status 124: a normal stop)."""
    check_output_file(out)
    cmd = [_tool("tcpdump", "tcpdump"), "-i", interface, "-U", "--immediate-mode", "-n", "-s", "0", "-w", out]
    if count:
        cmd += ["-c", str(count)]
    if duration:
        cmd = ["timeout", "--signal=INT", str(duration)] + cmd
    return cmd + ["udp", "port", str(port)]


#: The four magic numbers of a pcap file: byte order, microsecond or nanosecond timestamps.
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}


def _pcap_records(data: bytes) -> Iterator[tuple[tuple[int, int, int, int], bytes]]:
    """The complete records of a pcap file's bytes: ((ts_sec, ts_frac, caplen, origlen), frame)."""
    e = _PCAP_MAGIC.get(data[:4])
    if e is None or len(data) < 24:
        return
    pos = 24
    while pos + 16 <= len(data):
        head = struct.unpack_from(e + "IIII", data, pos)
        frame = data[pos + 16:pos + 16 + head[2]]
        pos += 16 + head[2]
        if pos > len(data):
            return   # cut short: tcpdump was stopped in the middle of writing
        yield head, frame


def count_packets(pcap: str | Path) -> int:
    """How many packets a pcap file (tcpdump's format) holds; 0 if it is empty or cut short."""
    return sum(1 for _ in _pcap_records(Path(pcap).read_bytes()))


_TRANSPORT = b"\x04\x00\x00\x00"
_LINK_HEADER = {1: 14, 113: 16, 276: 20, 101: 0, 12: 0}   # Ethernet, Linux cooked v1/v2, raw IP


def wireguard_segments(payload: bytes) -> list[bytes] | None:
    """The transport messages of one UDP GSO burst, or None if ``payload`` is a single message.

    A burst is ``n`` messages of one size (the GSO segment size), the last possibly shorter, all
    to the same receiver index with consecutive counters: the segment size is the first offset,
    a multiple of 16, where the next such header starts."""
    if len(payload) < 64 or payload[:4] != _TRANSPORT:
        return None
    ridx = payload[4:8]
    (first,) = struct.unpack_from("<Q", payload, 8)
    size = next((k for k in range(32, len(payload) - 31, 16)
                 if payload[k:k + 8] == _TRANSPORT + ridx and struct.unpack_from("<Q", payload, k + 8)[0] == first + 1),
                None)
    if size is None:
        return None
    segs = [payload[o:o + size] for o in range(0, len(payload), size)]
    for i, seg in enumerate(segs):
        if (len(seg) < 32 or len(seg) % 16 or seg[:8] != _TRANSPORT + ridx
                or struct.unpack_from("<Q", seg, 8)[0] != first + i):
            return None
    return segs


def split_gso_bursts(pcap: str | Path) -> tuple[int, int]:
    """Rewrite a pcap file so that every UDP GSO burst of WireGuard transport messages becomes the
    datagrams a cable carries (same timestamp, IP and UDP headers with their own lengths and a
    fresh IP checksum; UDP checksum 0, "none", as IPv4 allows).  Returns (bursts, datagrams made);
    a file with none is left untouched."""
    from .packet.ip import checksum
    path = Path(pcap)
    data = path.read_bytes()
    e = _PCAP_MAGIC.get(data[:4])
    link = _LINK_HEADER.get(struct.unpack_from(e + "I", data, 20)[0] & 0xFFFF) if e and len(data) >= 24 else None
    if link is None:
        return 0, 0
    out, bursts, made = [data[:24]], 0, 0
    for (ts_sec, ts_frac, caplen, origlen), frame in _pcap_records(data):
        segs = None
        ip = frame[link:]
        if caplen == origlen and len(ip) >= 28 and ip[0] >> 4 == 4 and ip[9] == 17 \
                and not (struct.unpack_from("!H", ip, 6)[0] & 0x3FFF):   # UDP, not a fragment
            ihl = (ip[0] & 15) * 4
            total = struct.unpack_from("!H", ip, 2)[0]   # not the Ethernet padding of a short frame
            segs = wireguard_segments(ip[ihl + 8:total if total > ihl + 8 else len(ip)])
        if not segs:
            out.append(struct.pack(e + "IIII", ts_sec, ts_frac, caplen, origlen) + frame)
            continue
        bursts += 1
        made += len(segs)
        for seg in segs:
            iph = bytearray(ip[:ihl])
            struct.pack_into("!H", iph, 2, ihl + 8 + len(seg))
            struct.pack_into("!H", iph, 10, 0)
            struct.pack_into("!H", iph, 10, checksum(bytes(iph)))
            udp = ip[ihl:ihl + 4] + struct.pack("!HH", 8 + len(seg), 0)
            new = frame[:link] + bytes(iph) + udp + seg
            out.append(struct.pack(e + "IIII", ts_sec, ts_frac, len(new), len(new)) + new)
    if bursts:
        tmp = path.with_name(path.name + ".split")
        tmp.write_bytes(b"".join(out))
        tmp.replace(path)
    return bursts, made


def record(interface: str, out: str, port: int = 51820, count: int = 0, duration: float = 0,
           echo: Callable[[str], None] = print) -> int:
    """``vpnedu capture -w``: run tcpdump (printing its command line) until ``count`` packets,
    ``duration`` seconds or Ctrl-C -- each a normal end -- then say where the file is and how
    to read it.  Returns the number of packets recorded."""
    cmd = record_command(interface, out, port, count, duration)
    echo("$ " + " ".join(cmd))
    p = subprocess.Popen(cmd)
    try:
        rc = p.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to tcpdump too: let it close the file
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        rc = 0 if rc in (0, 124, 128 + signal.SIGINT, -signal.SIGINT) else rc
    if rc not in (0, 124):  # 124: `timeout` ended the recording after `duration` seconds
        raise VpneduError(f"tcpdump failed (exit {rc})",
                          f"are you root, and does interface {interface} exist?")
    if out != "-":
        bursts, made = split_gso_bursts(out)
        if bursts:
            echo(f"split {bursts} UDP GSO burst(s) into {made} datagrams, as a cable carries them")
        n = count_packets(out)
        echo(f"wrote {out}: {n} packet(s); read it with: vpnedu capture -r {out} [--keylog KEYLOG]")
        return n
    return 0


def decode(pcap: str | Path, port: int = 51820, keylog: str | Path | None = None,
           display_filter: str | None = None, fields: Sequence[str] = FIELDS) -> list[dict[str, str]]:
    """Dissect a capture with tshark; one dict of ``fields`` (tshark field names, by default
    FIELDS) per frame.  A field that occurs more than once (``ip.src`` of the outer and, once
    decrypted, the inner packet) has its values joined with commas."""
    cmd = [_tool("tshark", "tshark"), "-r", str(pcap), "-n", "-d", f"udp.port=={port},wg",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    if keylog:
        cmd += ["-o", f"wg.keylog_file:{keylog}"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise VpneduError(f"tshark could not read {pcap}: {r.stderr.strip()[-300:]}")
    rows = []
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        rows.append(dict(zip(fields, parts + [""] * (len(fields) - len(parts)))))
    return rows


WG_TYPES = {"1": "handshake initiation", "2": "handshake response", "3": "cookie reply", "4": "transport data"}


def describe(row: dict[str, str]) -> str:
    types = [WG_TYPES.get(t, t) for t in row.get("wg.type", "").split(",") if t]
    src = row["ip.src"].split(",")
    dst = row["ip.dst"].split(",")
    outer = f"{src[0]} -> {dst[0]}" if src and src[0] else ""
    inner = f"  inner: {src[1]} -> {dst[1]} {row['_ws.col.Protocol']} {row['_ws.col.Info']}" if len(src) > 1 else ""
    return f"{row['frame.number']:>4} {outer} WireGuard {', '.join(types) or '?'}{inner}"
