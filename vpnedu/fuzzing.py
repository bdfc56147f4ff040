"""Fuzz targets: every parser and the server's receive path, fed arbitrary bytes.

A VPN server's UDP port is open to the whole internet, so whatever arrives there must end in
one of two ways: a valid message is processed, anything else is *dropped* (counted, with an
event saying why) -- never an exception escaping, and never a reply to a packet that did not
prove who sent it (a reply to forged packets would let an attacker use the server to amplify
traffic against someone else).

Each target takes bytes and checks those promises itself:

``receive``    a server :class:`~vpnedu.protocol.device.Device` with an established session;
               the input, with its first byte steered to a real message type and, for data
               messages, the real receiver index, so the fuzzer reaches deep code quickly
``fastpath``   the same, through the daemons' IO layer with its default offloads
               (:meth:`vpnedu.datapath.Datapath.on_udp_readable`): a real UDP socket on the
               loopback address and a datagram socket pair standing in for the TUN device
               (:class:`vpnedu.testing.LoopbackNode`)
``messages``   :func:`vpnedu.protocol.messages.parse`
``config``     :func:`vpnedu.config.loads` (wg-quick INI text)
``ip``         :class:`vpnedu.packet.ip.IPv4Packet` and :func:`~vpnedu.packet.ip.describe`
``control``    :func:`vpnedu.node.control.parse_request`, the daemon's decoding of a request line
``uapi``       a ``set=1`` message of the wg(8) configuration socket (:mod:`vpnedu.uapi`), each line's
               first byte steered to a real key, then applied to a Device whose ``get`` must still
               parse: the whole path a local client's bytes take, never an exception but UapiError

``python -m vpnedu.fuzzing TARGET [libFuzzer options]`` runs one under atheris (coverage-guided;
``pip install atheris``), e.g. ``python -m vpnedu.fuzzing receive -runs=1000000``; ``all`` runs
each in turn.  The test suite feeds the same targets with hypothesis.
"""

from __future__ import annotations

import sys
from typing import Callable

from .errors import VpneduError

_pair = None


def _server():
    """One server with an established session, built once (and rebuilt if a target broke it)."""
    global _pair
    if _pair is None:
        from .sim import make_pair
        _pair = make_pair()
        _pair.handshake()
        _pair.client_sends(b"\x45" + bytes(19))
    return _pair


def _steer(pair, data: bytes) -> bytes:
    """The first byte picks a real message type; for data, the second may aim at the live session."""
    if len(data) >= 4:
        mtype, aim = 1 + data[0] % 4, data[1] % 2
        data = bytes([mtype]) + b"\0\0\0" + data[4:]
        if mtype == 4 and len(data) >= 8 and aim:
            kp = pair.client_peer.current   # the server's session with the client
            if kp is not None:
                data = data[:4] + kp.local_index.to_bytes(4, "little") + data[8:]
    return data


def _drops(device) -> int:
    return sum(v for k, v in device.counters.items() if k.startswith("dropped."))


def target_receive(data: bytes) -> None:
    pair = _server()
    server = pair.server
    data = _steer(pair, data)
    before = _drops(server)
    out = server.receive(data, ("198.51.100.66", 40000), pair.now)
    # Forged bytes cannot carry a valid MAC or AEAD tag: no reply, no packet, one drop counted.
    if out.datagrams or out.packets:
        raise AssertionError(f"a forged {len(data)}-byte message got a reply or was accepted: {data[:40].hex()}")
    if _drops(server) != before + 1:
        raise AssertionError(f"a rejected message was not counted as exactly one drop: {data[:40].hex()}")


_fast = None


def target_fastpath(data: bytes) -> None:
    global _fast
    pair = _server()
    if _fast is None or _fast[0].device is not pair.server:
        import socket

        from .testing import LoopbackNode
        _fast = (LoopbackNode(pair.server, clock=lambda: pair.now), socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    node, sender = _fast
    data = _steer(pair, data)[:65000]
    before = _drops(pair.server)
    sender.sendto(data, node.sock.getsockname())
    node.datapath.on_udp_readable()
    if node.sent or node.tun.written():
        raise AssertionError(f"a forged {len(data)}-byte datagram got a reply or reached TUN: {data[:40].hex()}")
    if _drops(pair.server) != before + 1:
        raise AssertionError(f"a rejected datagram was not counted as exactly one drop: {data[:40].hex()}")


def target_messages(data: bytes) -> None:
    from .protocol import messages
    try:
        messages.parse(data)
    except VpneduError:
        pass


def target_config(data: bytes) -> None:
    from . import config
    try:
        cfg = config.loads(data.decode("utf-8", errors="replace"), "fuzz.conf")
    except VpneduError:
        return
    config.loads(config.dumps(cfg))   # what we write, we can read back


def target_ip(data: bytes) -> None:
    from .packet import ip
    try:
        ip.IPv4Packet.parse(data)
    except VpneduError:
        pass
    ip.describe(data)


def target_control(data: bytes) -> None:
    """The daemon's own decoding of a control-socket request line: a request, or ValueError."""
    from .node.control import COMMANDS, parse_request
    try:
        req = parse_request(data)
    except ValueError:
        return
    if req["cmd"] not in COMMANDS:
        raise AssertionError(f"an unknown command passed: {data[:60]!r}")


def target_uapi(data: bytes) -> None:
    """A set=1 message: parsed line by line, applied if valid, and the get reply still well-formed."""
    from . import uapi
    from .protocol.device import Device
    keys = (*uapi.DEVICE_KEYS, "public_key", *uapi.PEER_KEYS)
    lines = []
    for raw in data.split(b"\n"):
        if not raw:
            lines.append("")
            continue
        if raw[0] >= 200:          # a key of the input's own
            lines.append(raw[1:].decode("utf-8", "replace"))
            continue
        key = keys[raw[0] % len(keys)]
        b = raw[1:].ljust(34, b"\0")
        if raw[0] & 1 or len(raw) < 3:   # the value as the input has it
            value = raw[1:].decode("utf-8", "replace")
        elif key.endswith("_key"):       # else a plausible one, so that the set goes through
            value = b[1:33].hex()
        elif key == "allowed_ip":
            value = (f"{b[1]}.{b[2]}.{b[3]}.{b[4]}/{b[5] % 33}" if b[0] & 2 else
                     f"{b[1]:x}:{b[2]:x}::{b[3]:x}/{b[5] % 129}")
        elif key == "endpoint":
            value = f"{b[1]}.{b[2]}.{b[3]}.{b[4]}:{b[5] << 8 | b[6]}" if b[0] & 2 else f"[fd00::{b[1]:x}]:{b[2]}"
        elif key in ("replace_peers", "replace_allowed_ips", "remove", "update_only"):
            value = "true"
        elif key == "protocol_version":
            value = "1"
        else:
            value = str(int.from_bytes(b[1:4], "big") % 70000)
        lines.append(f"{key}={value}")
    p = uapi.SetParser()
    for line in lines + [""]:
        if p.feed(line):
            break
    if p.error is not None:
        if p.ops:
            raise AssertionError("a failed set kept operations to apply")
        return
    dev = Device(None, random=lambda n: bytes(n))
    uapi.apply_set(dev, p.ops, 0.0)
    got = uapi.parse_get(uapi.format_get(dev, listen_port=1))
    if got["errno"] != 0 or len(got["peers"]) != len(dev.peers):
        raise AssertionError("the get reply does not describe the device")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "receive": target_receive, "fastpath": target_fastpath, "messages": target_messages, "config": target_config,
    "ip": target_ip,
    "control": target_control, "uapi": target_uapi,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in (*TARGETS, "all"):
        print(f"usage: python -m vpnedu.fuzzing {{{'|'.join(TARGETS)}|all}} [libFuzzer options]", file=sys.stderr)
        return 2
    try:
        import atheris
    except ImportError:
        print("vpnedu: error: atheris is not installed; pip install atheris", file=sys.stderr)
        return 2
    names = list(TARGETS) if argv[1] == "all" else [argv[1]]
    if len(names) > 1:
        # One process per target (libFuzzer fuzzes one function per process), as many at once
        # as there are CPUs: most of a short run is atheris instrumenting the imports.
        import os
        import subprocess
        from concurrent.futures import ThreadPoolExecutor

        def one(n: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "vpnedu.fuzzing", n, *argv[2:]], capture_output=True)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            done = list(pool.map(one, names))
        for r in done:       # in target order, each target's output together
            sys.stdout.buffer.write(r.stdout)
            sys.stderr.buffer.write(r.stderr)
        return max(r.returncode for r in done)
    # Coverage for vpnedu's own code only: instrumenting what it imports too (numpy above all)
    # cost most of a short run and guides the fuzzer through code that is not ours.
    with atheris.instrument_imports(include=["vpnedu"]):
        from . import config  # noqa: F401
        from . import datapath  # noqa: F401
        from .node import control  # noqa: F401
        from .packet import ip  # noqa: F401
        from .protocol import cookie, device, handshake, messages, replay, session  # noqa: F401
    atheris.Setup([argv[0], *argv[2:]], TARGETS[names[0]])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
