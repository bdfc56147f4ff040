"""The configuration socket ``/var/run/wireguard/IFNAME.sock``: where ``wg`` finds a userspace
interface, and how it talks to it.

``wg show``, ``wg set``... look for an interface in two places: the kernel (netlink), then this
directory.  A Unix stream socket named after the interface is all it takes to be "a WireGuard
interface" to the tools; what is said on it is the text protocol of :mod:`vpnedu.uapi`.  A
connection may carry several operations, one after the other; each is ``get=1`` or ``set=1``,
ends with an empty line, and is answered with ``errno=N`` and an empty line.

The socket is owner-only: the directory is created 0700 if it does not exist (wireguard-go
leaves 0755 directories alone, and so do we), the socket file is 0600, and every connection's
peer credentials (``SO_PEERCRED``) must be root's or the daemon's own user's.  A socket file left
by a dead daemon is replaced; one that a live process answers on is not ("in use").

The server never lets one client stall the others or the tunnel: each connection is its own
asyncio task; a message is read in 64 KiB chunks and parsed as it arrives (any size: the
conformance script sends 130,561 allowed IPs in one ``set``), a line longer than
:data:`~vpnedu.uapi.MAX_LINE` is refused, not buffered, and a client that never reads its reply
only blocks its own task.  A client that hangs up mid-message changes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import struct
from collections import deque
from pathlib import Path
from typing import Callable, Protocol

from .. import uapi
from ..errors import NotPermitted, VpneduError
from ..protocol.keys import shown

#: Where wg(8) looks for userspace interfaces (``RUNSTATEDIR "/wireguard/"`` in wireguard-tools).
SOCKET_DIR = Path("/var/run/wireguard")
CHUNK = 65536


def socket_path(ifname: str) -> Path:
    return SOCKET_DIR / f"{ifname}.sock"


def _alive(path: Path) -> bool:
    """Does a process answer on this socket file?"""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def listen(ifname: str) -> tuple[socket.socket, Path]:
    """Create and bind the configuration socket of ``ifname`` (before the daemon forks, so that
    ``wg`` finds it as soon as the start command returns).  Refuses, in one line, a name that
    another live process serves."""
    if "/" in ifname or not ifname or len(ifname.encode()) > 15:
        raise VpneduError(f"interface name {ifname!r} is not a valid interface name",
                          "use at most 15 characters and no '/', e.g. wg0")
    path = socket_path(ifname)
    try:
        SOCKET_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    except PermissionError:
        raise NotPermitted(f"cannot create {SOCKET_DIR}", "run as root (sudo)") from None
    if path.exists() or path.is_symlink():
        if stat.S_ISSOCK(path.lstat().st_mode) and _alive(path):
            raise VpneduError(f"{path} is in use: another process already serves interface {ifname}",
                              f"choose another name, or stop it ('ip link del {ifname}')")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise VpneduError(f"cannot create {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    sock.setblocking(False)
    return sock, path


class Host(Protocol):
    """What the server needs from the daemon that owns the interface."""

    device: object          # a vpnedu.protocol.device.Device

    def clock(self) -> float: ...

    def uapi_socket_state(self) -> tuple[int, int]:
        """``(listen_port, fwmark)`` as they are now (0: not bound / no mark)."""
        ...

    def uapi_rebind(self, port: int | None, fwmark: int | None) -> None:
        """Bind the new port / set the new mark (None: unchanged) *before* anything else of the
        message changes; all or nothing; raise :class:`vpnedu.uapi.UapiError` on failure."""
        ...

    def uapi_applied(self, applied: uapi.Applied) -> None:
        """After a set: send what must be sent (keepalives), re-arm timers, record it."""
        ...


class _Lines:
    """The lines of a stream, read in big chunks (one ``readline`` per line would cost more
    than the parsing); a line longer than MAX_LINE comes out as :data:`TOO_LONG`, its bytes
    discarded up to the next newline.  None at the end of the stream (a partial last line is
    dropped: the message it belonged to is incomplete)."""

    TOO_LONG = object()

    def __init__(self, reader: asyncio.StreamReader):
        self.reader = reader
        self.lines: deque = deque()
        self.rest = b""
        self.skipping = False
        self.eof = False

    async def next(self):
        lines = self.lines
        while not lines:
            if self.eof:
                return None
            chunk = await self.reader.read(CHUNK)
            if not chunk:
                self.eof = True
                continue
            if self.skipping:
                nl = chunk.find(b"\n")
                if nl < 0:
                    continue
                chunk = chunk[nl + 1:]
                self.skipping = False
            parts = (self.rest + chunk).split(b"\n")
            self.rest = parts.pop()
            lines.extend(parts)
            if len(self.rest) > uapi.MAX_LINE:
                lines.append(self.TOO_LONG)
                self.rest = b""
                self.skipping = True
        return lines.popleft()


class UapiServer:
    """Serves :mod:`vpnedu.uapi` on an already bound socket (:func:`listen`) for ``host``."""

    def __init__(self, host: Host, sock: socket.socket, path: Path | None = None, *,
                 log: Callable[[str, str], None] = lambda level, line: None):
        self.host = host
        self.sock = sock
        self.path = path
        self.log = log
        self._ino = path.lstat().st_ino if path is not None and path.exists() else None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._cache = uapi.GetCache()
        #: Operations served, for tests and status: gets, sets, errors.
        self.counts = {"get": 0, "set": 0, "error": 0, "connections": 0}

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, sock=self.sock, limit=CHUNK)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.remove_file()

    def remove_file(self) -> None:
        """Unlink the socket file -- only if it is still ours (a new daemon may have replaced it)."""
        p = self.path
        if p is None:
            return
        try:
            if self._ino is None or p.lstat().st_ino == self._ino:
                p.unlink()
        except OSError:
            pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.counts["connections"] += 1
        try:
            if not _same_user(writer):
                self.log("error", "refused a configuration connection from another user")
                return
            lines = _Lines(reader)
            while True:
                op = await lines.next()
                if op is None:
                    return
                if op == b"get=1":
                    nxt = await lines.next()
                    if nxt is None:
                        return
                    if nxt == b"":
                        await self._send(writer, self._get())
                        continue
                    reply = uapi.UapiError(uapi.EINVAL, "get=1 must be followed by an empty line").reply()
                elif op == b"set=1":
                    reply = await self._set(lines)
                    if reply is None:
                        return
                else:
                    self.log("error", f"invalid operation {shown(op.decode('utf-8', 'replace'))} on the "
                                      "configuration socket (expected get=1 or set=1); closing the connection")
                    return
                writer.write(reply.encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as e:   # a bug must not take the tunnel down
            self.log("error", f"configuration socket: internal error {type(e).__name__}: {e}")
        finally:
            self._tasks.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    def _get(self) -> list[bytes]:
        self.counts["get"] += 1
        port, mark = self.host.uapi_socket_state()
        return uapi.get_pieces(self.host.device, listen_port=port, fwmark=mark, cache=self._cache)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, pieces: list[bytes]) -> None:
        """Write a reply in chunks, waiting for the client between them: a slow (or never
        reading) client holds at most a chunk or two in our buffers, and the pieces themselves
        are shared with every other reply (:class:`vpnedu.uapi.GetCache`)."""
        for piece in pieces:
            mv = memoryview(piece)
            for off in range(0, len(mv), CHUNK):
                writer.write(mv[off:off + CHUNK])
                await writer.drain()

    async def _set(self, lines: _Lines) -> str | None:
        parser = uapi.SetParser()
        while True:
            line = await lines.next()
            if line is None:
                self.log("error", "a client hung up in the middle of a set=1 message; nothing was changed")
                return None
            if line is _Lines.TOO_LONG:
                parser.fail(uapi.UapiError(uapi.EPROTO, f"line {parser.line + 1} is longer than "
                                                        f"{uapi.MAX_LINE} bytes"))
                parser.line += 1
                continue
            if parser.feed(line.decode("utf-8", "replace")):
                break
        self.counts["set"] += 1
        try:
            if parser.error is not None:
                raise parser.error
            applied = uapi.commit_set(self.host, parser.ops)
        except uapi.UapiError as e:
            self.counts["error"] += 1
            self.log("error", f"configuration not changed: {e}")
            return e.reply()
        self.log("verbose", "configuration set: " + ", ".join(f"{k}={v}" for k, v in applied.summary().items()
                                                             if v))
        return uapi.OK_REPLY


def _same_user(writer: asyncio.StreamWriter) -> bool:
    """SO_PEERCRED: only root or the daemon's own user may configure it."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def rebind_error(err: OSError, port: int) -> uapi.UapiError:
    """The reply for a listen port we could not bind: ``-EADDRINUSE``, as wireguard-go."""
    why = err.strerror or str(err)
    if err.errno == errno.EACCES:
        why += " (ports below 1024 need root)"
    return uapi.UapiError(uapi.EADDRINUSE, f"cannot listen on UDP port {port}: {why}")
