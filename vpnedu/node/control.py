"""The control socket: a running daemon's events and status, for other programs.

Each daemon listens on a Unix socket under ``/run/vpnedu`` (owner-only
permissions: the directory is 0700, the socket 0600).  The protocol is JSON
lines: the client sends one request line, the daemon answers with JSON lines.

``{"cmd": "status"}``
    one line: the ``wg show``-like status (interface, peers, endpoints, latest
    handshake, bytes in/out, counters).
``{"cmd": "events", "kinds": ["handshake"], "layers": ["data"]}``
    one line per event, as they happen, until the client disconnects.
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
from collections import deque
from pathlib import Path
from typing import Iterator

from ..errors import VpneduError
from ..net.journal import netns_id, run_dir

MAX_REQUEST = 4096
#: How many recent events (of the kinds below) a daemon keeps for late subscribers.
HISTORY_SIZE = 256
#: Kinds kept in the history: everything but the per-packet ones (those would flush it at once).
HISTORY_KINDS = ("handshake", "session", "timer", "peer", "route", "nat", "device", "proxy", "packet.dropped")


def socket_path(ifname: str) -> Path:
    return run_dir() / f"{ifname}@{netns_id()}.sock"


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
                    past = list(self.history) if req.get("history") else []
                    writer.write(b'{"subscribed": true}\n')
                    flt = stream._sub.filter
                    for ev in past:
                        if flt.matches(ev.kind):
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
    """The control sockets of daemons in this network namespace."""
    from ..net import journal
    d = journal.RUN_DIR
    if not d.exists():
        return []
    pattern = f"{ifname or '*'}@{netns_id()}.sock"
    return sorted(d.glob(pattern))


def pick_socket(ifname: str | None = None, path: str | None = None) -> Path:
    if path:
        return Path(path)
    found = find_sockets(ifname)
    if not found:
        raise VpneduError("no running vpnedu daemon in this network namespace"
                          + (f" with interface {ifname}" if ifname else ""),
                          "start one with 'vpnedu server' or 'vpnedu client' (or pass --socket PATH)")
    return found[0]


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VpneduError(f"control socket {path} does not exist", "is the daemon running?") from None
    if st.st_uid not in (0, os.geteuid()):
        s.close()
        raise VpneduError(f"control socket {path} belongs to another user (uid {st.st_uid})",
                          "refusing to talk to it; run vpnedu as the daemon's user")
    try:
        s.connect(str(path))
    except PermissionError:
        s.close()
        raise VpneduError(f"permission denied on {path}", "run as the daemon's user (or root)") from None
    except (ConnectionRefusedError, FileNotFoundError):
        s.close()
        raise VpneduError(f"nobody answers on {path}",
                          "the daemon is not running; 'vpnedu cleanup' removes what it left") from None
    return s


def request(path: Path, req: dict, timeout: float = 5.0) -> dict:
    """Send one request and read one JSON line back."""
    s = _connect(path)
    s.settimeout(timeout)
    try:
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise VpneduError(f"the daemon on {path} sent an unreadable reply") from None
    if "error" in reply:
        raise VpneduError(f"the daemon refused: {reply['error']}")
    return reply


def stream(path: Path, kinds=None, layers=None, history: bool = False) -> Iterator[dict]:
    """Yield events (as dicts) from a daemon until it stops or the caller stops iterating.
    With ``history``, first the recent events the daemon kept (see :data:`HISTORY_KINDS`)."""
    s = _connect(path)
    try:
        req = {"cmd": "events", "kinds": kinds, "layers": layers}
        if history:
            req["history"] = True
        s.sendall(json.dumps(req).encode() + b"\n")
        f = s.makefile("rb")
        first = json.loads(f.readline() or b"{}")
        if "error" in first:
            raise VpneduError(f"the daemon refused: {first['error']}")
        for line in f:
            yield json.loads(line)
    finally:
        s.close()
