"""What the server and the client share: a TUN device, a UDP socket, the protocol core
between them, and an asyncio loop that moves packets.

::

      applications                                          the network
           |                                                     |
      [ kernel ] --route--> TUN ==> Datapath ==> Device ==> Datapath ==> UDP
      [ kernel ] <--write-- TUN <== Datapath <== Device <== Datapath <== UDP
                                    Device.tick  (timers: retries, keepalives, rekeys)

The layers have one job each: :class:`~vpnedu.protocol.device.Device` is the protocol and does
no IO; :class:`~vpnedu.datapath.Datapath` does the system calls (draining TUN and the socket,
UDP GSO/GRO, virtio-net headers); the node owns both, the host changes and the event loop
(the datapath calls back :meth:`Node.schedule_tick` after every wakeup).

Setting up changes the host (a device, addresses, routes, NAT, sysctls).
Every change goes through a :class:`~vpnedu.net.journal.Journal` first and is
undone on exit, on Ctrl-C, on SIGTERM, and after a crash at the next start.

Stopping is a promise too: once it has begun -- a signal, ``vpnedu stop`` on the
control socket, an error -- the restore runs to its end.  Supervisors send their
stop signal more than once (coreutils ``timeout`` signals the daemon and then its
whole process group; people press Ctrl-C twice), so :meth:`Node.run` keeps one
SIGINT/SIGTERM handler for its whole run, from before set-up until after the
tear-down: the first signal asks the node to stop, every later one only says
"already stopping; restoring the host".  There is never a moment in which the
default action (death) is back in force while the host is still changed; only
SIGKILL can interrupt the restore, and the journal covers that.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable

from .. import uapi
from ..config import Config
from ..datapath import Datapath, Options
from ..errors import ConfigError, VpneduError
from ..events import EventBus
from ..net import journal as _journal
from ..net import links
from ..net import mtu as _mtu
from ..net import udp as _udp
from ..net.tun import Tun
from ..protocol.device import Device
from ..protocol.suites import aead_backend
from ..protocol.timers import DEFAULT_TIMERS, Timers
from . import uapi_socket, wgquick

CAP_NET_ADMIN = 12


def _keylog_writer(path: str) -> Callable[[str], None]:
    """Append Wireshark key-log lines to ``path`` (created 0600: it holds private keys)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as e:
        raise VpneduError(f"cannot write the key log {path}: {e.strerror}", "choose a writable path") from None
    f = os.fdopen(fd, "a")

    def write(lines: str) -> None:
        f.write(lines)
        f.flush()
    return write


def parse_timers(text: str | None) -> Timers:
    """``rekey_after_time=5,reject_after_time=8`` -> Timers (shortened timers for labs and tests)."""
    if not text:
        return DEFAULT_TIMERS
    import dataclasses
    names = {f.name: f.type for f in dataclasses.fields(Timers)}
    kw = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in names or not value:
            raise VpneduError(f"--timers: {part.strip()!r} is not NAME=SECONDS",
                              "names: " + ", ".join(names))
        try:
            kw[key] = int(value) if "messages" in key else float(value)
        except ValueError:
            raise VpneduError(f"--timers: {value!r} is not a number") from None
    return Timers(**kw)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def has_net_admin() -> bool:
    """Root, or at least the CAP_NET_ADMIN capability (needed for TUN, routes, nftables)."""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return False


class TickTimer:
    """One event-loop timer for a Device's next deadline, shared by every daemon.

    The Device says when it next needs :meth:`~vpnedu.protocol.device.Device.tick`
    (``next_deadline``). Its callers ask after every wakeup, so the timer is only moved when
    the new deadline is earlier. It is never more than 1 s away, so that checks made once a
    second (a device probe, say) have a chance to run.
    """

    def __init__(self, callback: Callable[[], None], longest: float = 1.0):
        self.callback = callback
        self.longest = longest
        self.handle: asyncio.TimerHandle | None = None
        self.at: float | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, deadline: float | None, now: float) -> None:
        at = now + self.longest if deadline is None else min(deadline, now + self.longest)
        if self.handle is not None and self.at is not None and self.at <= at:
            return                      # already armed for as soon or sooner
        self.cancel()
        self.at = at
        self.handle = loop.call_later(max(0.0, at - now), self._fire)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.at = None

    def _fire(self) -> None:
        self.handle = self.at = None
        self.callback()


class Node:
    """A running vpnedu endpoint (see :class:`~vpnedu.node.server.Server` and
    :class:`~vpnedu.node.client.Client`)."""

    role = "node"
    hooks: wgquick.Hooks | None = None   # the config's PreUp/PostUp/PreDown/PostDown, once set up

    def __init__(self, cfg: Config, *, ifname: str = "vpnedu0", events: EventBus | None = None,
                 log: Callable[[str], None] = print, control: bool = True,
                 timers: Timers = DEFAULT_TIMERS, control_path: str | None = None,
                 keylog: str | None = None, datapath: str | None = "fast",
                 clock: Callable[[], float] = time.monotonic, wall_offset: float | None = None):
        if cfg.interface.private_key is None:
            raise ConfigError(f"{cfg.source}: [Interface] has no PrivateKey",
                              "add 'PrivateKey = ...' (make one with 'vpnedu genkey')")
        if not cfg.interface.addresses:
            raise ConfigError(f"{cfg.source}: [Interface] has no Address",
                              "add the tunnel address, e.g. 'Address = 10.0.0.2/24'")
        self.cfg = cfg
        self.suite = cfg.suite()
        #: Which library makes the AEAD calls (the command line chose it from VPNEDU_AEAD).
        self.aead = aead_backend()
        self.ifname = ifname
        self.log = log
        self.events = events or EventBus()
        #: Monotonic seconds: the ``now`` of every Device call (the simulation passes its own).
        self.clock = clock
        self.device = Device(cfg.interface.private_key, suite=self.suite,
                             allow_insecure=cfg.interface.allow_null_teaching, events=self.events,
                             timers=timers, mtu=cfg.interface.mtu or 1420, name=ifname,
                             wall_offset=time.time() - clock() if wall_offset is None else wall_offset)
        #: Why the tunnel device has its MTU, in one line (set-up logs it, the status shows it):
        #: ``MTU =`` in the config, else what :meth:`choose_mtu` measured at set-up.
        self.mtu_source = (f"MTU = {cfg.interface.mtu} in {cfg.source}" if cfg.interface.mtu else
                           f"not measured: the usual {self.device.mtu} ({_mtu.GUESS} - {_mtu.OVERHEAD[6]})")
        for p in cfg.peers:
            self.device.add_peer(p.public_key, preshared_key=p.preshared_key, endpoint=self._resolve(p.endpoint),
                                 persistent_keepalive=p.persistent_keepalive, allowed_ips=p.allowed_ips,
                                 name=p.name)
        self.journal = _journal.Journal(ifname)
        if keylog:
            self.device.keylog = _keylog_writer(keylog)
        self.control_enabled = control
        self.control_path = Path(control_path) if control_path else None
        self.tun: Tun | None = None
        #: The UDP sockets by address family ({4: ..., 6: ...}) on one port; :attr:`sock` is the
        #: first of them (IPv4), for what needs just one (the listen port, the fuzzer).
        self.sockets: dict[int, socket.socket] = {}
        self.sock: socket.socket | None = None
        #: Which offloads the datapath uses (see vpnedu.datapath); ``simple``: none.
        self.datapath_options: Options = Options.parse(datapath)
        #: The IO layer, once the TUN device and the socket exist (:meth:`open_datapath`).
        self.datapath: Datapath | None = None
        self.started = time.time()
        self.changes: list[str] = []  # human-readable list of what we changed on the host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._control = None
        self._exit_error: BaseException | None = None
        #: Stopping has begun (a signal, stop(), an error): later signals only say so.
        self._stopping = False
        self._restored = False        # the tear-down has finished
        self._up = False              # ready: set-up done, packets flow
        self._interrupted = False     # a signal came before the node was up
        #: Called for each decrypted packet before it goes to the kernel; True means "taken".
        self.intercept: Callable[[str | None, bytes], bool] | None = None

    # ------------------------------------------------------------------ config helpers
    @staticmethod
    def _resolve(endpoint: tuple[str, int] | None) -> tuple[str, int] | None:
        """An Endpoint's host as an address of either family (``[2001:db8::2]:51820`` is one
        already; a name takes the resolver's first answer, as wg(8) does)."""
        if endpoint is None:
            return None
        host, port = endpoint
        try:
            info = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
        except socket.gaierror:
            raise ConfigError(f"cannot resolve endpoint host {host!r}",
                              "check the Endpoint in the config, or use an IP address") from None
        return info[0][4][0], port

    @property
    def listen_port(self) -> int:
        return self.sock.getsockname()[1] if self.sock else (self.cfg.interface.listen_port or 0)

    # ------------------------------------------------------------------ set-up and tear-down
    def check_privileges(self) -> None:
        if not has_net_admin():
            raise VpneduError(f"the vpnedu {self.role} needs root (or CAP_NET_ADMIN) to create a TUN device "
                              "and change routes", f"run it with sudo: sudo vpnedu {self.role} ...")

    def open_sockets(self) -> dict[int, socket.socket]:
        """One UDP socket per address family on the same port (:func:`vpnedu.net.udp.open_port`),
        as WireGuard listens: an IPv4 client and an IPv6 client reach the same server, and a
        client's IPv6 Endpoint (``[2001:db8::1]:51820``) is sent to from the IPv6 one.  A host
        without IPv6 (a kernel booted with ipv6.disable=1, a namespace with it switched off)
        gets the IPv4 socket only, and a note says so."""
        port = self.cfg.interface.listen_port or 0
        try:
            # No IP_PKTINFO: the daemons' datapath reads without room for it (no sticky
            # sources), and a truncated control message would hide UDP GRO's segment size.
            socks = _udp.open_port(port, pktinfo=False)      # the FwMark: wgquick.set_fwmark, in setup()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise VpneduError(f"UDP port {port} is already in use",
                                  "stop the program using it (ss -ulpn), or set another ListenPort") from None
            raise VpneduError(f"cannot listen on UDP port {port}: {e.strerror}") from None
        if 6 not in socks:
            self.log(f"note: no IPv6 on this host: listening on UDP port {socks[4].getsockname()[1]} "
                     "for IPv4 only (IPv6 endpoints cannot be reached)")
        return socks

    def _use_sockets(self, socks: dict[int, socket.socket]) -> None:
        self.sockets = dict(socks)
        self.sock = next(iter(self.sockets.values()), None)

    def setup(self) -> None:
        """Make every host change, each recorded in the journal first."""
        self.check_privileges()
        hooks = self.hooks = wgquick.Hooks(self.cfg, self.ifname, self.log)
        hooks.check()                     # refuse hooks it may not run, before any change
        for note in wgquick.notes(self.cfg, self.ifname, self.role):
            self.log(note)
        # What a crashed vpnedu left: undone, or adopted and replaced in place (see vpnedu.net.journal).
        self.journal.recover(self.log, adopt=True)
        hooks.run("PreUp")
        self._use_sockets(self.open_sockets())
        for s in self.sockets.values():
            wgquick.set_fwmark(s, self.cfg.interface.fwmark)
        links.check_no_clash(self.cfg.interface.addresses, self.ifname)
        self.choose_mtu()
        self.journal.start()
        self.journal.record("link", ifname=self.ifname)
        opts = self.datapath_options
        self.tun = Tun(self.ifname, vnet_hdr=opts.vnet_hdr, tso=opts.tso)
        links.configure(self.journal, self.ifname, self.cfg.interface.addresses, self.device.mtu)
        if self.tun.tso and opts.tso_max < 65536:
            self._limit_tso(opts.tso_max)
        addrs = ", ".join(str(a) for a in self.cfg.interface.addresses)
        self.changes.append(f"created TUN device {self.ifname} with {addrs}, MTU {self.device.mtu}")
        self.events.emit("device.up", None, interface=self.ifname, addresses=addrs, mtu=self.device.mtu)
        self.setup_role()
        self.journal.settle(self.log)
        hooks.run("PostUp")

    def choose_mtu(self) -> None:
        """The TUN device's MTU: ``MTU =`` if the config has one, else measured on the routes the
        tunnel's datagrams take, as wg-quick(8) does (:mod:`vpnedu.net.mtu`: the route toward each
        peer's endpoint, or a server's default routes, minus 60 over IPv4 or 80 over IPv6).  Before
        the device exists, so that no route of ours is measured; logged, and in the status."""
        itf = self.cfg.interface
        paths = [] if itf.mtu else _mtu.measure(
            [p.endpoint[0] for p in self.device.peers.values() if p.endpoint is not None], fwmark=itf.fwmark)
        choice = _mtu.choose(paths, ipv6_inside=any(a.version == 6 for a in itf.addresses),
                             configured=itf.mtu, where=self.cfg.source)
        self.device.mtu, self.mtu_source = choice.mtu, choice.source
        self.log(f"tunnel MTU {choice.mtu}: {choice.source}")

    def _limit_tso(self, size: int) -> None:
        """Cap the TSO super-packets of our TUN device (gso_max_size; gone with the device)."""
        from pyroute2 import IPRoute
        try:
            with IPRoute() as ipr:
                idx = links.index_of(ipr, self.ifname)
                if idx is not None:
                    ipr.link("set", index=idx, gso_max_size=size)
        except Exception as e:   # an old kernel: keep 64 KiB super-packets
            self.log(f"note: cannot limit TSO size on {self.ifname}: {e}")

    def setup_role(self) -> None:
        """Role-specific host changes (routes for the client, NAT for the server)."""

    def teardown(self) -> None:
        if self.hooks is not None:
            self.hooks.run("PreDown")     # only after a complete start, as with wg-quick down
        if self.tun is not None:
            self.tun.close()
            self.events.emit("device.down", None, interface=self.ifname)
        n = self.journal.undo_all(self.log)
        if n:
            self.log(f"restored the host: undid {n} change(s)")
        for s in self.sockets.values():
            s.close()
        if self.hooks is not None:
            self.hooks.run("PostDown")

    # ------------------------------------------------------------------ the datapath
    def open_datapath(self) -> Datapath:
        """The IO layer between our TUN device and socket and the Device (after :meth:`setup`)."""
        if self.datapath is None:
            self.datapath = Datapath(self, self.datapath_options)
        return self.datapath

    def _send(self, datagrams) -> None:
        self.open_datapath().send(datagrams)

    # Timers: sleep until the core's next deadline (at most 1 s), then tick.
    _ticker: "TickTimer | None" = None

    def schedule_tick(self, *, every_peer: bool = False) -> None:
        """Arm the event loop's timer for the Device's next deadline (the datapath calls this
        after every wakeup).  After a wakeup only the peers it touched can have an earlier
        deadline (``Device.next_deadline(changed_only=True)``); after a tick, every peer's."""
        if self._ticker is None:
            self._ticker = TickTimer(self._tick)
        full = every_peer or self._ticker.handle is None     # nothing armed: nothing to compare with
        self._ticker.arm(self._loop, self.device.next_deadline(changed_only=not full), self.clock())

    def _tick(self) -> None:
        self._send(self.device.tick(self.clock()))
        self.schedule_tick(every_peer=True)

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        """Ask the node to shut down (thread-safe)."""
        self._begin_stopping()

    def _begin_stopping(self) -> None:
        """Mark that stopping has begun and wake the event loop, if it runs, to do it."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:   # closed in the meantime: serve() is over anyway
                pass

    def _on_signal(self, signum: int, frame) -> None:
        """The SIGINT/SIGTERM handler for all of :meth:`run` (see the module's docstring).

        It runs in the main thread between two bytecodes of whatever runs there -- set-up, the
        event loop, the tear-down -- so it must never raise into that code: it only sets flags
        and wakes the loop.  During set-up it does not interrupt (a half-made change would be
        undone anyway, but an exception in the middle of, say, a journal write is not worth it):
        set-up finishes in a fraction of a second, and the node then stops before serving."""
        if self._stopping:
            self._say("already stopped; the host is restored" if self._restored
                      else "already stopping; restoring the host")
            return
        if not self._up:
            self._interrupted = True
        self._begin_stopping()

    def _say(self, line: str) -> None:
        """Log from the signal handler.  The main thread may be inside a write to the same stream
        (a buffered writer then refuses a reentrant call): fall back to a raw write to stderr."""
        try:
            self.log(line)
        except Exception:
            try:
                os.write(2, (line + "\n").encode())
            except OSError:
                pass

    async def start_services(self) -> None:
        """Role-specific services inside the event loop (the server's proxy)."""

    async def stop_services(self) -> None:
        """Stop what :meth:`start_services` started."""

    async def after_start(self) -> None:
        """Role-specific start-up work once packets flow (the client's first handshake)."""

    def fail(self, err: BaseException) -> None:
        """Stop the node with an error that :meth:`run` will raise."""
        self._exit_error = err
        self._stopping = True
        if self._stop is not None:
            self._stop.set()

    async def serve(self, ready: Callable[["Node"], None] | None = None) -> None:
        """Move packets until stopped.  :meth:`setup` must have run (outside the event loop:
        pyroute2's netlink calls run their own loop).  Signals are :meth:`run`'s business: it
        handles them from before set-up until after the tear-down."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        loop = self._loop
        if self._stopping:     # a signal (or stop()) came before the loop was there to wake
            self._stop.set()
        try:
            if self.control_enabled:
                from .control import ControlServer
                self._control = ControlServer(self, self.control_path)
                await self._control.start()
                await self._start_uapi()
            await self.start_services()
            datapath = self.open_datapath()
            loop.add_reader(self.tun.fileno(), datapath.on_tun_readable)
            for s in self.sockets.values():
                loop.add_reader(s.fileno(), datapath.on_udp_readable, s)
            self.schedule_tick()
            start = asyncio.ensure_future(self.after_start())
            if not self._stopping:
                self._up = True
                if ready is not None:
                    ready(self)
            await self._stop.wait()
            start.cancel()
        finally:
            self._stopping = True
            if self._ticker is not None:
                self._ticker.cancel()
            for obj in (self.tun, *self.sockets.values()):
                if obj is not None and obj.fileno() >= 0:
                    loop.remove_reader(obj.fileno())
            await self.stop_services()
            if self._uapi is not None:
                await self._uapi.close()
            if self._control is not None:
                await self._control.close()
        if self._exit_error is not None:
            raise self._exit_error

    def run(self, ready: Callable[["Node"], None] | None = None, *, restore_signals: bool = True) -> None:
        """Set up, run until SIGINT/SIGTERM or :meth:`stop`, and always restore the host.

        From the first line to the last, SIGINT and SIGTERM go to :meth:`_on_signal` (in the
        main thread; elsewhere only :meth:`stop` stops the node).  A signal before the node is up
        still lets set-up finish, then tears down and raises KeyboardInterrupt ("interrupted").
        At the end the previous handlers come back -- unless ``restore_signals`` is False, as
        for the command line, whose process ends right after: there a supervisor's late second
        signal must not turn a clean exit into death by signal, so SIGINT and SIGTERM are then
        ignored (SIG_IGN: a Python handler would not do, the interpreter puts the default action
        back while it shuts down)."""
        signums = (signal.SIGINT, signal.SIGTERM)
        old = {sig: signal.signal(sig, self._on_signal) for sig in signums} if _main_thread() else {}
        try:
            try:
                self.setup()
                if not self._stopping:
                    asyncio.run(self.serve(ready))
            finally:
                self._stopping = True
                self.teardown()
        finally:
            self._restored = True
            for sig, handler in old.items():
                if not restore_signals:
                    signal.signal(sig, signal.SIG_IGN)
                elif handler is not None:   # None: a handler not set from Python, cannot be put back
                    signal.signal(sig, handler)
        if self._interrupted:
            raise KeyboardInterrupt

    def tun_gone(self, err: OSError) -> None:
        """The datapath found our TUN device deleted (``ip link del``): stop, restoring the host."""
        if self._loop is not None and self.tun is not None and self.tun.fileno() >= 0:
            self._loop.remove_reader(self.tun.fileno())
        self.fail(VpneduError(f"the TUN device {self.ifname} disappeared (deleted with 'ip link del'?)",
                              f"start the vpnedu {self.role} again"))

    # ------------------------------------------------------------------ wg(8) on a running daemon
    _uapi = None

    async def _start_uapi(self) -> None:
        """Serve ``/var/run/wireguard/IFNAME.sock`` too, so that ``wg show`` and ``wg set`` work on
        this daemon as on any userspace WireGuard (:mod:`vpnedu.node.uapi_socket`).  Best effort:
        the directory is shared by every network namespace, so a second daemon with the same
        interface name elsewhere (the lab's client and server are both vpnedu0) goes without,
        and says so."""
        try:
            sock, path = uapi_socket.listen(self.ifname)
        except VpneduError as e:
            self.log(f"note: no wg(8) socket for this daemon: {e.problem}")
            return

        def log(level: str, line: str) -> None:
            if level == "error":
                self.log(f"wg socket: {line}")
        self._uapi = uapi_socket.UapiServer(self, sock, path, log=log)
        await self._uapi.start()

    def uapi_socket_state(self) -> tuple[int, int]:
        return self.listen_port, self.cfg.interface.fwmark or 0

    def uapi_rebind(self, port: int | None, fwmark: int | None) -> None:
        """``wg set listen-port`` / ``fwmark`` on a running daemon: new sockets (both families,
        as at start), swapped in."""
        mark = (self.cfg.interface.fwmark or 0) if fwmark is None else fwmark
        if port is not None and port != self.listen_port:
            try:
                new = _udp.open_port(port, fwmark=mark, pktinfo=False)
            except OSError as e:
                raise uapi_socket.rebind_error(e, port) from None
            loop, old = self._loop, list(self.sockets.values())
            for s in old:
                if loop is not None:
                    loop.remove_reader(s.fileno())
            self._use_sockets(new)
            self.open_datapath().set_sockets(new)
            if loop is not None:
                for s in new.values():
                    loop.add_reader(s.fileno(), self.datapath.on_udp_readable, s)
            for s in old:
                s.close()
            self.cfg.interface.listen_port = port or self.sock.getsockname()[1]
        elif fwmark is not None and self.sockets:
            try:
                for s in self.sockets.values():
                    _udp.set_mark(s, fwmark)
            except OSError as e:
                raise uapi.UapiError(e.errno or uapi.EINVAL, f"cannot set fwmark {fwmark}: {e.strerror}") from None
        if fwmark is not None:
            self.cfg.interface.fwmark = fwmark or None

    def uapi_applied(self, applied) -> None:
        """After ``wg set``: as :meth:`reload` would have done it -- the Device changed in place,
        live sessions kept -- plus the keepalives wg's semantics ask for, and an event."""
        now = self.clock()
        out = []
        for peer in applied.keepalive:
            out += self.device.keepalive(peer, now)
        for peer in applied.touched:
            if peer.staged and peer.endpoint is not None and peer.current is None:
                out += self.device.initiate(peer, now)
        if out:
            self._send(out)
        self.events.emit("config.set", None, source="wg", **applied.summary())
        self.log("configuration changed through the wg socket: "
                 + (", ".join(f"{k}={v}" for k, v in applied.summary().items() if v) or "no change"))
        if self._loop is not None:
            self.schedule_tick()

    def reload(self) -> dict:
        """Re-read the config file: add new peers and remove deleted ones, keeping live sessions."""
        from ..config import check_server, load
        cfg = load(self.cfg.source)
        if self.role == "server":
            check_server(cfg)     # a refused file changes nothing: the running peers stay
        wanted = {p.public_key: p for p in cfg.peers}
        added = removed = 0
        for key in list(self.device.peers):
            if key not in wanted:
                self.device.remove_peer(key)
                removed += 1
        updated = 0
        for key, p in wanted.items():
            if key not in self.device.peers:
                self.device.add_peer(key, preshared_key=p.preshared_key, endpoint=self._resolve(p.endpoint),
                                     persistent_keepalive=p.persistent_keepalive, allowed_ips=p.allowed_ips,
                                     name=p.name)
                added += 1
            else:
                live = self.device.peers[key]
                if (live.persistent_keepalive != p.persistent_keepalive
                        or [str(n) for n in live.allowed_ips] != [str(n) for n in p.allowed_ips]):
                    self.device.update_peer(key, self.clock(), persistent_keepalive=p.persistent_keepalive,
                                            allowed_ips=p.allowed_ips, name=p.name)
                    updated += 1
        self.cfg.peers = cfg.peers
        return {"added": added, "removed": removed, "updated": updated}

    # ------------------------------------------------------------------ status
    async def status_async(self) -> dict:
        """The status, for the control socket (roles may gather more, e.g. the kernel's flows)."""
        return self.status()

    def status(self) -> dict:
        st = self.device.status()
        st.update({
            "role": self.role,
            "interface": self.ifname,
            "pid": os.getpid(),
            "listen_port": self.listen_port,
            "addresses": [str(a) for a in self.cfg.interface.addresses],
            "mtu": self.device.mtu,
            "mtu_source": self.mtu_source,
            "fwmark": self.cfg.interface.fwmark,
            "datapath": self.datapath_options.describe(),
            "aead": self.aead,
            "datapath_stats": dict(self.datapath.stats) if self.datapath else {},
            "started": self.started,
            "changes": list(self.changes),
        })
        return st
