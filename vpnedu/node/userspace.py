"""``vpnedu-wg IFNAME``: vpnedu as a userspace WireGuard implementation, configured by ``wg``.

This is what wireguard-go and boringtun are: a program that creates a TUN device, listens on
the configuration socket ``/var/run/wireguard/IFNAME.sock`` (:mod:`vpnedu.node.uapi_socket`)
and otherwise waits to be told what to do -- by the unmodified ``wg`` tool, ``wg-quick``, or
anything else that speaks the cross-platform protocol (<https://www.wireguard.com/xplatform/>).
It starts empty: no key, no port, no peers, no address.  Addresses, routes and the link state
are the administrator's (``ip addr add``, ``ip link set up``), exactly as with the kernel module.

::

    vpnedu-wg wg0            # create wg0, go to the background, return
    wg set wg0 private-key ./key listen-port 51820 peer ... endpoint ... allowed-ips ...
    ip addr add 10.0.0.1/24 dev wg0 && ip link set wg0 up
    ip link del wg0          # the daemon sees its device go, removes its socket and exits

**Foreground or background.**  It forks after the device and the socket exist (so both are
there when the command returns, as scripts expect) unless ``--foreground``/``-f`` or
``WG_PROCESS_FOREGROUND=1``.  ``LOG_LEVEL`` is ``verbose`` (or ``debug``), ``error`` (the
default) or ``silent``; in the background the log goes to the starting terminal only if
``LOG_LEVEL`` was set (wireguard-go's rule).  SIGTERM and SIGINT stop it cleanly; so does
the deletion of its device, wherever it is.

**The netns trick.**  The TUN device may be moved to another network namespace right after
creation (``ip link set wg0 netns ns1``) while the process and its UDP sockets stay behind: the
tunnel then carries ns1's traffic over the first namespace's network
(<https://www.wireguard.com/netns/>).  Nothing here depends on where the device is: packets go
through its file descriptor, and its MTU and state are read through it too
(:class:`vpnedu.net.tun.LinkProbe`).

**Sockets.**  One UDP socket per address family on one port (:func:`vpnedu.net.udp.open_port`),
bound when a ``listen_port`` is set, else -- with a port the kernel picks -- as soon as the link
is up or there is something to send.  Replies leave from the address the peer wrote to (sticky
source addresses), and a peer's new address is learned from its authenticated packets (roaming);
both are in the Device and the datapath, the same engine the ``vpnedu`` daemons run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Callable

from .. import uapi
from ..datapath import Datapath, Options
from ..errors import VpneduError
from ..events import EventBus
from ..net import tun as _tun
from ..net import udp as _udp
from ..protocol.device import DEFAULT_MTU, Device
from ..protocol.suites import aead_backend, choose_aead
from ..protocol.timers import DEFAULT_TIMERS, Timers
from . import uapi_socket
from .base import TickTimer, parse_timers
from .control import ControlServer

LEVELS = {"silent": 0, "error": 1, "verbose": 2, "debug": 2}
#: The exit status when the interface cannot be created (wireguard-go's ExitSetupFailed).
EXIT_SETUP_FAILED = 1
USAGE = """usage: vpnedu-wg [-f/--foreground] INTERFACE-NAME

vpnedu's userspace WireGuard: creates the TUN device INTERFACE-NAME and serves the
configuration socket /var/run/wireguard/INTERFACE-NAME.sock for wg(8) and wg-quick(8).
Environment: WG_PROCESS_FOREGROUND=1 (do not fork), LOG_LEVEL=verbose|error|silent;
vpnedu's own: VPNEDU_TIMERS=rekey_after_time=5,... (short timers for labs), VPNEDU_DATAPATH=simple."""


def log_level(env: dict | None = None) -> int:
    value = (env if env is not None else os.environ).get("LOG_LEVEL", "")
    return LEVELS.get(value, LEVELS["error"])


class Logger:
    """wireguard-go's log lines: ``DEBUG: (wg0) 2025/01/02 15:04:05 text`` and ``ERROR: ...``."""

    def __init__(self, ifname: str, level: int, write: Callable[[str], None] | None = None):
        self.ifname = ifname
        self.level = level
        self._write = write

    def __call__(self, kind: str, line: str) -> None:
        if (kind == "error" and self.level >= 1) or (kind != "error" and self.level >= 2):
            stamp = time.strftime("%Y/%m/%d %H:%M:%S")
            text = f"{'ERROR' if kind == 'error' else 'DEBUG'}: ({self.ifname}) {stamp} {line}\n"
            try:
                if self._write is not None:
                    self._write(text)
                else:
                    sys.stderr.write(text)
                    sys.stderr.flush()
            except (OSError, ValueError):
                pass


class UserspaceInterface:
    """One interface: its TUN device, its configuration socket, its UDP sockets and the engine.
    It is a :class:`vpnedu.datapath.Host` and a :class:`vpnedu.node.uapi_socket.Host`."""

    #: Replies leave from the address the peer wrote to (the datapath asks for IP_PKTINFO).
    sticky_source = True

    def __init__(self, ifname: str, *, log: Callable[[str, str], None] | None = None,
                 datapath: str = "fast", clock: Callable[[], float] = time.monotonic,
                 timers: Timers = DEFAULT_TIMERS):
        self.ifname = ifname
        self.log = log or Logger(ifname, log_level())
        self.clock = clock
        self.events = EventBus()
        self.device = Device(None, events=self.events, name=ifname, mtu=DEFAULT_MTU, timers=timers,
                             wall_offset=time.time() - clock())
        self.options = Options.parse(datapath)
        self.intercept = None
        self.tun: _tun.Tun | None = None
        self.sock = None
        #: The UDP sockets by family, once bound; the port they share and their fwmark.
        self.sockets: dict = {}
        self.port = 0
        self.fwmark = 0
        self.datapath: Datapath | None = None
        self.probe: _tun.LinkProbe | None = None
        self._usock = self._upath = None
        self.server: uapi_socket.UapiServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ticker = TickTimer(self._tick)
        self._next_probe = 0.0
        self.link_up = False
        self.exit_reason = ""

    # ------------------------------------------------------------------ creation
    def create(self) -> None:
        """The TUN device (MTU 1420, down, no address) and the configuration socket."""
        self.tun = _tun.Tun(self.ifname, vnet_hdr=self.options.vnet_hdr, tso=self.options.tso)
        self.ifname = self.tun.name
        try:
            _tun.set_mtu(self.ifname, DEFAULT_MTU)
        except OSError as e:
            self.log("error", f"cannot set the MTU of {self.ifname} to {DEFAULT_MTU}: {e.strerror}")
        self.probe = _tun.LinkProbe(self.tun)
        try:
            self._usock, self._upath = uapi_socket.listen(self.ifname)
        except BaseException:
            self.tun.close()
            raise
        self.log("verbose", f"created TUN device {self.ifname} and {self._upath}")

    # ------------------------------------------------------------------ the uapi_socket.Host side
    def uapi_socket_state(self) -> tuple[int, int]:
        return self.port, self.fwmark

    def uapi_rebind(self, port: int | None, fwmark: int | None) -> None:
        mark = self.fwmark if fwmark is None else fwmark
        if port is not None and (port != self.port or not self.sockets or port == 0):
            try:
                new = _udp.open_port(port, fwmark=mark)
            except OSError as e:
                raise uapi_socket.rebind_error(e, port) from None
            self._use_sockets(new)
        elif fwmark is not None and fwmark != self.fwmark and self.sockets:
            done = []
            try:
                for s in self.sockets.values():
                    _udp.set_mark(s, fwmark)
                    done.append(s)
            except OSError as e:
                for s in done:
                    _udp.set_mark(s, self.fwmark)
                raise uapi.UapiError(e.errno or uapi.EINVAL, f"cannot set fwmark {fwmark}: {e.strerror}") from None
        self.fwmark = mark

    def uapi_applied(self, applied: uapi.Applied) -> None:
        now = self.clock()
        dev = self.device
        if not self.sockets and (self.link_up or any(p.endpoint for p in dev.peers.values())):
            self._bind_any()
        out = []
        for peer in applied.keepalive:
            out += dev.keepalive(peer, now)
        for peer in applied.touched:
            if peer.staged and peer.endpoint is not None and peer.current is None:
                out += dev.initiate(peer, now)
        if out and self.datapath is not None:
            self.datapath.send(out)
        self.events.emit("config.set", None, **applied.summary())
        if self._loop is not None:
            self.schedule_tick()

    # ------------------------------------------------------------------ sockets
    def _bind_any(self) -> None:
        """No port was set: take one the kernel picks (as wireguard-go does when it comes up)."""
        try:
            self._use_sockets(_udp.open_port(0, fwmark=self.fwmark))
        except OSError as e:
            self.log("error", f"cannot open a UDP socket: {e.strerror}")

    def _use_sockets(self, new: dict) -> None:
        loop = self._loop
        for s in self.sockets.values():
            if loop is not None:
                loop.remove_reader(s.fileno())
            s.close()
        self.sockets = new
        self.sock = next(iter(new.values()), None)
        self.port = self.sock.getsockname()[1] if self.sock is not None else 0
        if self.datapath is not None:
            self.datapath.set_sockets(new)
            if loop is not None:
                for s in new.values():
                    loop.add_reader(s.fileno(), self.datapath.on_udp_readable, s)
        self.log("verbose", f"UDP port {self.port} ({' and '.join(f'IPv{f}' for f in new)})")

    # ------------------------------------------------------------------ datapath.Host side
    def tun_gone(self, err: OSError) -> None:
        """The datapath's read found the device deleted (EBADFD)."""
        self.stop(f"the device {self.ifname} was deleted")

    def _on_tun_readable(self) -> None:
        if not self.sockets:     # something to send, so the link is up: now we need a port
            self._bind_any()
        self.datapath.on_tun_readable()

    def schedule_tick(self) -> None:
        """Arm the event loop's timer for the Device's next deadline, at most 1 s away (the
        link probe runs once a second)."""
        if self._loop is not None:
            # Only the peers this wakeup touched can have moved earlier (Device.next_deadline);
            # after a tick, or with nothing armed, every peer is looked at.
            changed = self._ticker.handle is not None
            self._ticker.arm(self._loop, self.device.next_deadline(changed_only=changed), self.clock())

    def _tick(self) -> None:
        now = self.clock()
        if now >= self._next_probe:
            self._next_probe = now + 1.0
            self._check_link()
        out = self.device.tick(now)
        if out:
            self.datapath.send(out)
        self.schedule_tick()

    def _check_link(self) -> None:
        """Follow the device's MTU (the engine pads to it) and state; notice its deletion."""
        state = self.probe.read() if self.probe is not None else None
        if state is None:
            self.stop(f"the device {self.ifname} was deleted")
            return
        mtu, up = state
        if mtu is None:
            return                     # in the middle of a move: ask again in a second
        if mtu != self.device.mtu and mtu >= 68:
            self.log("verbose", f"MTU of {self.ifname}: {self.device.mtu} -> {mtu}")
            self.device.mtu = mtu
            if self.datapath is not None:
                self.datapath.mtu = mtu
        if up and not self.link_up and not self.sockets:
            self._bind_any()
        self.link_up = up

    # ------------------------------------------------------------------ vpnedu's own control socket
    role = "userspace"

    async def status_async(self) -> dict:
        return self.status()

    def status(self) -> dict:
        """What ``vpnedu status`` shows (the control socket serves it, as for the vpnedu daemons;
        ``vpnedu events`` works on a vpnedu-wg interface too)."""
        st = self.device.status()
        st.update({"role": self.role, "interface": self.ifname, "pid": os.getpid(),
                   "public_key": st["public_key"] or "(none)", "listen_port": self.port,
                   "addresses": ["(set with ip addr, in the device's namespace)"], "mtu": self.device.mtu,
                   "fwmark": self.fwmark, "datapath": self.options.describe(), "aead": aead_backend(),
                   "datapath_stats": dict(self.datapath.stats) if self.datapath else {}})
        return st

    def reload(self) -> dict:
        raise VpneduError("vpnedu-wg has no config file to re-read",
                          f"configure it with wg, e.g. 'wg syncconf {self.ifname} FILE'")

    # ------------------------------------------------------------------ running
    def stop(self, reason: str = "") -> None:
        if reason and not self.exit_reason:
            self.exit_reason = reason
        if self._stop is not None:
            self._stop.set()

    async def serve(self) -> None:
        """Move packets and serve the configuration socket until stopped."""
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self.stop, f"{name} received")
        self.datapath = Datapath(self, self.options)
        for s in self.sockets.values():
            loop.add_reader(s.fileno(), self.datapath.on_udp_readable, s)
        self.server = uapi_socket.UapiServer(self, self._usock, self._upath, log=self.log)
        await self.server.start()
        control = ControlServer(self)
        try:
            await control.start()
        except OSError as e:     # the tunnel does not need it
            self.log("error", f"no vpnedu control socket: {e}")
            control = None
        loop.add_reader(self.tun.fileno(), self._on_tun_readable)
        self._check_link()
        self.schedule_tick()
        self.log("verbose", "device started")
        try:
            await self._stop.wait()
        finally:
            self._ticker.cancel()
            loop.remove_reader(self.tun.fileno())
            for s in self.sockets.values():
                loop.remove_reader(s.fileno())
            await self.server.close()
            if control is not None:
                await control.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def close(self) -> None:
        for s in self.sockets.values():
            s.close()
        self.sockets = {}
        if self.probe is not None:
            self.probe.close()
        if self.tun is not None:
            self.tun.close()
        if self.server is None and self._upath is not None:
            # Never served (a failure before the loop): still remove our socket file.
            uapi_socket.UapiServer(self, self._usock, self._upath).remove_file()
        if self._usock is not None:
            self._usock.close()


def _daemonize(keep_output: bool) -> None:
    """Fork; the parent exits 0 at once (the device and socket already exist), the child goes
    on in a new session with stdin (and, unless ``keep_output``, stdout/stderr) on /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    if not keep_output:
        os.dup2(null, 1)
        os.dup2(null, 2)
    if null > 2:
        os.close(null)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        from .. import __version__
        print(f"vpnedu-wg v{__version__}\n\n"
              "vpnedu's userspace WireGuard (the cross-platform interface of wireguard.com/xplatform).")
        return 0
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    foreground = False
    if args[:1] in (["-f"], ["--foreground"]):
        foreground = True
        args = args[1:]
    if len(args) != 1 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    foreground = foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    level = log_level()
    try:
        # VPNEDU_TIMERS=rekey_after_time=5,... (shortened timers for labs and tests) and
        # VPNEDU_DATAPATH=simple|fast,... (vpnedu's own switches; wg knows nothing of them);
        # VPNEDU_AEAD=openssl|cryptography (which library makes the AEAD calls).
        choose_aead(os.environ.get("VPNEDU_AEAD"))
        iface = UserspaceInterface(args[0], log=Logger(args[0], level),
                                   timers=parse_timers(os.environ.get("VPNEDU_TIMERS")),
                                   datapath=os.environ.get("VPNEDU_DATAPATH") or "fast")
        iface.create()
    except VpneduError as e:
        print(f"vpnedu-wg: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_SETUP_FAILED)
    if not foreground:
        _daemonize(keep_output=bool(os.environ.get("LOG_LEVEL")) and level > 0)
    try:
        asyncio.run(iface.serve())
    finally:
        iface.close()
    iface.log("verbose", f"shutting down: {iface.exit_reason or 'stopped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
