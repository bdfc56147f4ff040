"""The control socket: a running daemon's events and status, for other programs.

Each daemon listens on a Unix socket under ``/run/vpnedu`` (owner-only
permissions: the directory is 0700, the socket 0600).  The protocol is JSON
lines: the client sends one request line, the daemon answers with JSON lines.

``{"cmd": "status"}``
    one line: the ``wg show``-like status (interface, peers, endpoints, latest
    handshake, bytes in/out, counters).
``{"cmd": "events", "kinds": ["handshake"], "layers": ["data"], "history": 20}``
    first ``{"subscribed": true, "history": N}``, then the N most recent kept events
    (``"history": true`` for all of them, see :data:`HISTORY_KINDS`; none without
    ``history``), then one line per event as they happen, until the client disconnects.
``{"cmd": "reload"}``
    re-read the config file (new clients from ``vpnedu server add-client``).
``{"cmd": "stop"}``
    shut the daemon down (it restores the host first).

Anything else gets ``{"error": "..."}`` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Iterator

from ..errors import NotPermitted, VpneduError
from ..net.journal import netns_id, run_dir

MAX_REQUEST = 4096
#: How many recent events (of the kinds below) a daemon keeps for late subscribers.
HISTORY_SIZE = 256
#: Kinds kept in the history: everything but the per-packet ones (those would flush it at once).
HISTORY_KINDS = ("handshake", "session", "timer", "peer", "route", "nat", "device", "proxy", "packet.dropped",
                 "config")


def socket_path(ifname: str) -> Path:
    return run_dir() / f"{ifname}@{netns_id()}.sock"


def netns_socket_path(netns: str, ifname: str = "vpnedu0") -> Path:
    """The control socket a daemon in the named network namespace (``ip netns add NAME``) uses:
    the same name as :func:`socket_path` inside it, computed from outside through
    ``/run/netns/NAME`` (the bind mount of the namespace: same inode as ``/proc/self/ns/net``)."""
    return run_dir() / f"{ifname}@{os.stat(f'/run/netns/{netns}').st_ino}.sock"


class ControlServer:
    def __init__(self, node, path: Path | None = None):
        self.node = node
        self.path = path or socket_path(node.ifname)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        #: Recent events, so that a subscriber who connects after the handshake (a notebook
        #: started after the daemon) can still draw it: ``{"cmd": "events", "history": true}``.
        self.history: deque = deque(maxlen=HISTORY_SIZE)
        self._history_sub = node.events.subscribe(self.history.append, kinds=HISTORY_KINDS)

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path),
                                                           limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            self._server = None
        self._history_sub.close()
        self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if not _same_user(writer):
                await _reply(writer, {"error": "permission denied: the control socket serves only its owner"})
                return
            try:
                req = parse_request(await asyncio.wait_for(reader.readline(), 10))
            except (ValueError, asyncio.LimitOverrunError, asyncio.TimeoutError) as e:
                await _reply(writer, {"error": f"bad request: {type(e).__name__}: {e}; send one JSON object "
                                               "per line, e.g. {\"cmd\": \"status\"}"})
                return
            cmd = req.get("cmd")
            if cmd == "status":
                await _reply(writer, await self.node.status_async())
            elif cmd == "events":
                async with self.node.events.stream(kinds=req.get("kinds"), layers=req.get("layers"),
                                                   maxsize=10_000) as stream:
                    # Subscribed first, history copied second: an event that happens in between
                    # is in both (a duplicate) rather than in neither (a gap).
                    flt = stream._sub.filter
                    want = req.get("history")
                    past = [ev for ev in self.history if flt.matches(ev.kind)] if want else []
                    if want is not True and want:
                        past = past[-want:]
                    writer.write(json.dumps({"subscribed": True, "history": len(past)}).encode() + b"\n")
                    for ev in past:
                        writer.write(ev.to_json().encode() + b"\n")
                    await writer.drain()

                    async def pump():
                        async for ev in stream:
                            writer.write(ev.to_json().encode() + b"\n")
                            await writer.drain()
                    # Stop as soon as the subscriber hangs up, not at the next event we fail to write.
                    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(reader.read())]
                    try:
                        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
            elif cmd == "reload":
                try:
                    await _reply(writer, self.node.reload())
                except VpneduError as e:
                    await _reply(writer, {"error": str(e)})
            elif cmd == "stop":
                await _reply(writer, {"stopping": True})
                self.node.stop()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as e:  # a bug must not kill the daemon; tell the client
            try:
                await _reply(writer, {"error": f"internal error: {type(e).__name__}: {e}"})
            except Exception:
                pass
        finally:
            self._tasks.discard(task)
            try:
                writer.close()
            except Exception:
                pass


COMMANDS = ("status", "events", "reload", "stop")


def parse_request(line: bytes) -> dict:
    """One request line -> the request, or ValueError saying what is wrong with it.

    Everything a stranger's bytes can do to the daemon passes through here first (the fuzz
    target ``control`` feeds it), so it checks the shape of every field the daemon reads."""
    try:
        req = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(req, dict):
        raise ValueError("not a JSON object")
    if req.get("cmd") not in COMMANDS:
        raise ValueError(f"unknown command {req.get('cmd')!r}: use {', '.join(COMMANDS)}")
    for key in ("kinds", "layers"):
        v = req.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise ValueError(f"{key!r} must be a list of strings")
    h = req.get("history")
    if h is not None and not isinstance(h, bool) and not (isinstance(h, int) and h >= 0):
        raise ValueError("'history' must be true, false or a number of events (0 or more)")
    return req


async def _reply(writer: asyncio.StreamWriter, obj: dict) -> None:
    writer.write(json.dumps(obj, default=str).encode() + b"\n")
    await writer.drain()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    """SO_PEERCRED: only the daemon's own user (or root) may talk to it."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    import struct
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


# ---------------------------------------------------------------------- client side
def find_sockets(ifname: str | None = None) -> list[Path]:
    """The control sockets of daemons in this network namespace.

    A socket file nobody listens on is left out: a daemon killed with SIGKILL leaves its
    file behind, and a namespace made later can get the dead one's inode number (the
    ``@NETNS`` part of the name), so without this check ``vpnedu status`` would try to talk
    to a daemon that is gone.  (The daemon's next start, or ``vpnedu cleanup``, removes it.)"""
    from ..net import journal
    d = journal.RUN_DIR
    if not d.exists():
        return []
    pattern = f"{ifname or '*'}@{netns_id()}.sock"
    return [p for p in sorted(d.glob(pattern)) if not _dead(p)]


def _dead(path: Path) -> bool:
    """Nobody accepts on this socket file (``ECONNREFUSED``)?  Other failures (permissions, a
    full backlog) are not "dead": the caller reports them when it talks to the daemon."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


def pick_socket(ifname: str | None = None, path: str | None = None) -> Path:
    if path:
        return Path(path)
    found = find_sockets(ifname)
    if not found:
        raise VpneduError("no running vpnedu daemon in this network namespace"
                          + (f" with interface {ifname}" if ifname else ""),
                          "start one with 'vpnedu server' or 'vpnedu client' (or pass --socket PATH)")
    return found[0]


class ControlSocketError(VpneduError):
    """The control socket could not be used; the subclasses say how (readiness checks tell a
    daemon that is still starting from one that refuses us)."""


class NoSocket(ControlSocketError):
    """No socket file at the path: no daemon there yet (or any more)."""


class NotListening(ControlSocketError):
    """The socket file exists but nobody accepts on it (``ECONNREFUSED``): the daemon has bound
    it and not yet called listen(2), or it died and left the file behind."""


class NoReply(ControlSocketError):
    """Connected, but no complete answer: the daemon is busy, or closed the connection."""


class AccessRefused(ControlSocketError, NotPermitted):
    """A permission problem: the socket belongs to another user, or the daemon refused us.
    ``path`` is the socket; ``by_system`` is True when the kernel said no (file modes), which
    the CLI explains by naming the owner (exit status 77, as every :class:`NotPermitted`)."""

    def __init__(self, problem: str, fix: str | None = None, *, path: Path | None = None,
                 by_system: bool = False):
        super().__init__(problem, fix)
        self.path, self.by_system = path, by_system


def _connect(path: Path, timeout: float | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        st = path.stat()
    except FileNotFoundError:
        s.close()
        raise NoSocket(f"control socket {path} does not exist", "is the daemon running?") from None
    except PermissionError:
        s.close()
        raise AccessRefused(f"permission denied on {path}", "run as the daemon's user (or root)",
                            path=path, by_system=True) from None
    if st.st_uid not in (0, os.geteuid()):
        s.close()
        raise AccessRefused(f"control socket {path} belongs to another user (uid {st.st_uid})",
                            "refusing to talk to it; run vpnedu as the daemon's user")
    try:
        s.connect(str(path))
    except PermissionError:
        s.close()
        raise AccessRefused(f"permission denied on {path}", "run as the daemon's user (or root)",
                            path=path, by_system=True) from None
    except FileNotFoundError:
        s.close()
        raise NoSocket(f"control socket {path} does not exist", "is the daemon running?") from None
    except ConnectionRefusedError:
        s.close()
        raise NotListening(f"nobody answers on {path}",
                           "the daemon is not running; 'vpnedu cleanup' removes what it left") from None
    except (socket.timeout, BlockingIOError):   # the listen backlog is full: a busy daemon
        s.close()
        raise NoReply(f"the daemon on {path} does not accept connections now") from None
    return s


def _refusal(path: Path, error: str) -> ControlSocketError | VpneduError:
    if error.startswith("permission denied"):
        return AccessRefused(f"the daemon on {path} refused us: {error}")
    return VpneduError(f"the daemon refused: {error}")


def request(path: Path, req: dict, timeout: float = 5.0) -> dict:
    """Send one request and read one JSON line back."""
    s = _connect(path, timeout)
    try:
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise NoReply(f"the daemon on {path} did not answer within {timeout:g} s") from None
    except (ConnectionResetError, BrokenPipeError):
        raise NoReply(f"the daemon on {path} closed the connection without answering") from None
    finally:
        s.close()
    if not data:
        raise NoReply(f"the daemon on {path} closed the connection without answering")
    try:
        reply = json.loads(data)
    except ValueError:
        raise VpneduError(f"the daemon on {path} sent an unreadable reply") from None
    if "error" in reply:
        raise _refusal(path, reply["error"])
    return reply


class EventSubscription:
    """A live ``events`` request: iterate over it for event dicts; :meth:`close` (from any
    thread) ends the iteration at once.

    ``history``: ``True`` for every recent event the daemon kept (:data:`HISTORY_KINDS`), a number
    for the last that many, ``False`` for none.  :attr:`history` is how many of the first events
    are that history (the rest happen after we subscribed)."""

    def __init__(self, path: Path, kinds=None, layers=None, history: bool | int = False,
                 timeout: float = 5.0):
        self.path = path
        self._sock = _connect(path, timeout)
        try:
            req = {"cmd": "events", "kinds": kinds, "layers": layers}
            if history:
                req["history"] = history
            self._sock.sendall(json.dumps(req).encode() + b"\n")
            self._file = self._sock.makefile("rb")
            try:
                line = self._file.readline()
            except socket.timeout:
                raise NoReply(f"the daemon on {path} did not answer within {timeout:g} s") from None
            except (ConnectionResetError, BrokenPipeError):
                line = b""
            if not line:
                raise NoReply(f"the daemon on {path} closed the connection without answering")
            try:
                first = json.loads(line)
            except ValueError:
                raise VpneduError(f"the daemon on {path} sent an unreadable reply") from None
            if "error" in first:
                raise _refusal(path, first["error"])
            self.info = first
            self.history = int(first.get("history", 0))
            self._sock.settimeout(None)   # events come when they come
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[dict]:
        try:
            for line in self._file:
                yield json.loads(line)
        except (OSError, ValueError):   # closed under us (close()), or the daemon went away
            if not self._closed:
                raise
        # The daemon closed the stream (it stopped) or close() was called.

    _closed = False

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes a thread blocked in recv
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> "EventSubscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(path: Path, kinds=None, layers=None, history: bool | int = False) -> Iterator[dict]:
    """Yield events (as dicts) from a daemon until it stops or the caller stops iterating.
    With ``history``, first the recent events the daemon kept (see :class:`EventSubscription`)."""
    with EventSubscription(path, kinds, layers, history) as sub:
        yield from sub


# ---------------------------------------------------------------------- readiness
def log_tail(log: Path | str | None, lines: int = 8) -> str:
    """The last ``lines`` lines of a daemon's log, indented, or "" (no log, or an empty one)."""
    if log is None:
        return ""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return ""
    tail = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return "".join(f"\n    {line}" for line in tail)


def wait_ready(path: Path, proc: subprocess.Popen | None = None, log: Path | str | None = None,
               timeout: float = 20.0, what: str = "the daemon", pid: int | None = None) -> dict:
    """Wait until the daemon behind ``path`` answers a status request; return that status.

    A socket *file* proves nothing: the daemon binds it a moment before it listens, and a daemon
    that was killed (SIGKILL, a crash) leaves its file behind -- and since the socket is named
    after the network namespace's inode, which the kernel reuses, a fresh namespace can inherit a
    dead daemon's file.  Only an answer on the socket proves a daemon is ready.  So: send
    ``{"cmd": "status"}`` until it is answered, and when it is not, say which of these it is:

    * ``proc`` (the daemon's process) exited: its exit status and the last lines of ``log``;
    * the socket refuses us for permission (another user's daemon): at once, no retrying;
    * still no answer after ``timeout`` seconds: what the socket looked like last (missing, not
      accepting, or silent), with the last lines of ``log``.

    With ``pid``, only that process's answer counts (another daemon may still hold the socket).
    """
    end = time.monotonic() + timeout
    state = f"{path} does not exist yet"
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log)
            raise VpneduError(f"{what} exited with status {proc.returncode} before it answered on its "
                              f"control socket" + (f"; its log ends with:{tail}" if tail else " (its log is empty)"))
        left = end - time.monotonic()
        try:
            st = request(path, {"cmd": "status"}, timeout=max(0.2, min(2.0, left)))
            if pid is None or st.get("pid") == pid:
                return st
            state = f"another daemon (pid {st.get('pid')}) answers on {path}"
        except AccessRefused as e:
            raise VpneduError(f"{what} refused us on {path}: {e.problem}", e.fix) from None
        except NoSocket:
            state = f"{path} does not exist yet"
        except NotListening:
            state = (f"{path} exists but nobody accepts connections on it (a daemon that has not started "
                     "listening yet, or a file left by one that was killed)")
        except NoReply as e:
            state = e.problem
        if time.monotonic() >= end:
            if proc is not None and proc.poll() is not None:
                continue   # it exited meanwhile: say so (above)
            tail = log_tail(log)
            raise VpneduError(f"{what} is still starting after {timeout:g} s: {state}"
                              + (f"; its log ends with:{tail}" if tail else ""),
                              "wait and try again, or stop it and look at its log")
        time.sleep(0.05)
