"""Where each peer was last heard from, remembered across a restart of the server.

Why: a WireGuard session lives only in the memory of the two ends.  When the server process
restarts (a crash, ``kill -9``, an upgrade, a clean stop and start) its clients still hold keys
the new process never had.  A client's next packets carry a receiver index the new server does
not know; such a packet is *unauthenticated* -- anyone can send one -- so the server must drop
it without a word (answering would hand forgers a way to make it work or send).  Left to the
protocol's timers, the client notices only when its data has gone unanswered for
KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (10 + 5 s, WireGuard paper section 6.5) and then starts a new
handshake: some 15 s without a tunnel.

The server can do better with what it already knows for sure.  While it runs, it notes each
peer's last *authenticated* endpoint -- the address of a packet that opened under the peer's
keys, the same rule by which WireGuard follows a roaming peer (paper 2.1) -- in a small file of
its own under the run directory.  When it starts again it sends each of those peers an ordinary
handshake initiation (message 1): the client answers with message 2, and both sides have a fresh
session at once.  Nothing here reacts to an unauthenticated packet; the only trigger is the
server's own start, and only towards addresses that proved themselves earlier.

The rules the file keeps:

* **Owner-only, atomic, rare.**  Created 0600 in the 0700 run directory, written to a
  temporary file and renamed over the old one (a crash half-way leaves the old file whole), and
  only when something in it changes: a peer's endpoint, or an initiation to a peer that has no
  session -- never per packet.
* **REKEY_TIMEOUT across restarts.**  WireGuard sends at most one initiation per peer per
  REKEY_TIMEOUT (paper 6.1).  An in-memory rate limit forgets itself when the process restarts,
  so the time of each initiation to a peer without a session is kept in the file (on the
  monotonic clock, which runs on across processes; the file names the boot it belongs to), and
  a server restarted twice within REKEY_TIMEOUT waits out the rest of it before greeting again.
  (Rekeys of a live session are not written down: one write per rekey per peer is the price
  that rule would cost, and a crash within 5 s of such a rekey is the one gap it leaves.)
* **Only what still applies.**  Peers no longer in the config are ignored; a file written for
  another interface, network namespace or server key (another config), or before the last
  reboot, or that is not a well-formed file of ours, is ignored with a one-line note.  A peer
  that never answered a whole REKEY_ATTEMPT_TIME of initiations is forgotten: its endpoint is
  stale, and it will come back by itself, as clients always do.

:class:`PeerStateFile` is the file; :class:`PeerMemory` is what a server runs: it listens to
the protocol core's events (``session.established``, ``session.confirmed``, ``peer.roamed``,
``handshake.initiation.sent``, ``handshake.timeout``) and reads the peers' state, so the core
stays free of IO.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import KeyFormatError
from ..events import Event, EventBus, Subscription
from ..net import journal
from ..protocol.keys import decode, encode
from ..protocol.peer import Peer

FORMAT = "vpnedu-peer-endpoints"
VERSION = 1
#: Far above what a config with thousands of peers needs (~150 bytes a peer); a larger file is
#: not one of ours and is not read at all.
MAX_SIZE = 4 * 1024 * 1024
#: The events after which a peer's endpoint or initiation time may have changed.
WATCHED = ("session.established", "session.confirmed", "peer.roamed", "handshake.initiation.sent",
           "handshake.timeout")


def boot_id() -> str:
    """The kernel's random id of this boot: monotonic times are comparable only within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def default_path(ifname: str) -> Path:
    """``/run/vpnedu/<interface>@<netns>.peers``, beside the interface's journal and control socket."""
    return journal.RUN_DIR / f"{ifname}@{journal.netns_id()}.peers"


@dataclass
class PeerRecord:
    """What the file keeps about one peer."""

    #: The peer's last authenticated address.
    endpoint: tuple[str, int]
    #: When (monotonic seconds, this boot) we last sent it an initiation while it had no session.
    initiated: float | None = None


class StateFileError(ValueError):
    """The file exists but cannot be used; the message says why, in a few words."""


class PeerStateFile:
    """The state file of one interface of one server (identified by its public key)."""

    def __init__(self, path: Path, *, interface: str, public_key: bytes, netns: int | None = None,
                 boot: str | None = None):
        self.path = Path(path)
        self.interface = interface
        self.public_key = public_key
        self.netns = journal.netns_id() if netns is None else netns
        self.boot = boot_id() if boot is None else boot

    # ---------------------------------------------------------------- reading
    def load(self, log: Callable[[str], None] = lambda s: None) -> dict[bytes, PeerRecord]:
        """The records in the file, or {} -- with one line to ``log`` saying why -- if it is
        missing (silently), not ours, from another interface, server key or boot, or corrupt."""
        try:
            return self.read()
        except FileNotFoundError:
            return {}
        except StateFileError as e:
            log(f"ignoring the peer state file {self.path}: {e}; peers will reconnect by themselves")
            return {}

    def read(self) -> dict[bytes, PeerRecord]:
        """Like :meth:`load`, but raises :class:`StateFileError` (or FileNotFoundError)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateFileError("a symbolic link, not a file of ours") from None
            raise StateFileError(e.strerror or str(e)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateFileError("not a regular file")
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise StateFileError("not an owner-only file of this user (expected mode 0600)")
            if st.st_size > MAX_SIZE:
                raise StateFileError(f"larger than {MAX_SIZE // (1024 * 1024)} MB")
            raw = os.read(fd, MAX_SIZE + 1)
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise StateFileError("not valid JSON (corrupt or truncated)") from None
        return self._parse(doc)

    def _parse(self, doc: object) -> dict[bytes, PeerRecord]:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StateFileError("not a vpnedu peer state file")
        if doc.get("version") != VERSION:
            raise StateFileError(f"format version {doc.get('version')!r}, this vpnedu reads {VERSION}")
        if doc.get("interface") != self.interface or doc.get("netns") != self.netns:
            raise StateFileError(f"written for interface {doc.get('interface')!r} in network namespace "
                                 f"{doc.get('netns')!r}, not {self.interface!r} in {self.netns}")
        if doc.get("public_key") != encode(self.public_key):
            raise StateFileError("written for another server key (another config)")
        if doc.get("boot_id") != self.boot:
            raise StateFileError("written before the last reboot (stale)")
        peers = doc.get("peers")
        if not isinstance(peers, list):
            raise StateFileError("'peers' is not a list")
        out: dict[bytes, PeerRecord] = {}
        for i, item in enumerate(peers):
            try:
                key = decode(item["public_key"], "peer key")
                host, port = item["endpoint"]
                host = str(ipaddress.ip_address(host))
                if type(port) is not int or not 0 < port < 65536:
                    raise ValueError(port)
                initiated = item.get("initiated")
                if initiated is not None and type(initiated) not in (int, float):
                    raise ValueError(initiated)
            except (KeyError, TypeError, ValueError, KeyFormatError):
                raise StateFileError(f"peer entry {i + 1} is malformed") from None
            out[key] = PeerRecord((host, port), None if initiated is None else float(initiated))
        return out

    # ---------------------------------------------------------------- writing
    def dumps(self, records: dict[bytes, PeerRecord]) -> str:
        return json.dumps({
            "format": FORMAT, "version": VERSION, "interface": self.interface, "netns": self.netns,
            "public_key": encode(self.public_key), "boot_id": self.boot,
            "peers": [{"public_key": encode(k), "endpoint": [r.endpoint[0], r.endpoint[1]],
                       "initiated": r.initiated} for k, r in records.items()],
        }, indent=1) + "\n"

    def save(self, records: dict[bytes, PeerRecord]) -> None:
        """Replace the file in one rename: a crash or a full disk half-way leaves the old file
        whole.  The new file is created 0600 (it says who talks to this server, from where)."""
        text = self.dumps(records).encode()
        if self.path.parent == journal.RUN_DIR:
            journal.run_dir()   # creates it 0700 if needed
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            tmp.unlink(missing_ok=True)   # left by a crash of a process with our pid
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(text)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


class PeerMemory:
    """A server's memory of its peers' endpoints, kept in a :class:`PeerStateFile`.

    ``restore()`` at start-up gives the peers to greet; ``watch()`` keeps the file up to date
    from the core's events.  ``schedule`` defers the file update until the current batch of
    datagrams is done (the node passes ``loop.call_soon``): a burst of handshakes means one
    write, and the update reads the peers after the core has finished with them.
    """

    def __init__(self, device, file: PeerStateFile, *, log: Callable[[str], None] = lambda s: None,
                 schedule: Callable[[Callable[[], None]], object] | None = None,
                 clock: Callable[[], float]):
        self.device = device
        #: The node's monotonic clock (the protocol core has none of its own).
        self.clock = clock
        self.file = file
        self.log = log
        self.schedule = schedule
        self.records: dict[bytes, PeerRecord] = {}
        #: Peers given up on (handshake.timeout): their last_handshake at that moment.
        self._forgotten: dict[bytes, float | None] = {}
        self._pending = False
        self._sub: Subscription | None = None
        self._write_failed = False
        self.writes = 0

    # ---------------------------------------------------------------- start-up
    def restore(self) -> list[Peer]:
        """Read the file, keep what is about configured peers, and give each of those peers its
        remembered endpoint and initiation time.  Returns them: the peers to greet."""
        stored = self.file.load(self.log)
        peers = self.device.peers
        self.records = {k: r for k, r in stored.items() if k in peers}
        now = self.clock()
        greet = []
        for key, rec in self.records.items():
            peer = peers[key]
            peer.endpoint = rec.endpoint
            if rec.initiated is not None:
                # Our initiation from a previous process counts for the REKEY_TIMEOUT rate limit.
                peer.last_initiation_sent = max(peer.last_initiation_sent, min(rec.initiated, now))
            greet.append(peer)
        return greet

    def greet_at(self, peer: Peer) -> float:
        """The earliest time (device clock) at which the rate limit lets us initiate to ``peer``."""
        return peer.last_initiation_sent + self.device.timers.rekey_timeout

    # ---------------------------------------------------------------- keeping it up to date
    def watch(self, events: EventBus) -> None:
        self._sub = events.subscribe(self._on_event, WATCHED)

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def _on_event(self, ev: Event) -> None:
        if ev.kind == "handshake.timeout":
            # Nobody answered for REKEY_ATTEMPT_TIME: that endpoint is stale.
            for peer in self._peers_labelled(ev.peer):
                if peer.current is None:
                    self._forgotten[peer.public_key] = peer.last_handshake
        if self.schedule is None:
            self.update()
        elif not self._pending:
            self._pending = True
            self.schedule(self.update)

    def _peers_labelled(self, label: str | None) -> list[Peer]:
        found = [p for p in self.device.peers.values() if p.label == label]
        return found if len(found) == 1 else []   # two peers with one name: say nothing of either

    def current(self) -> dict[bytes, PeerRecord]:
        """The records as they should be now, from the peers' state."""
        out: dict[bytes, PeerRecord] = {}
        for key, peer in self.device.peers.items():
            old = self.records.get(key)
            if key in self._forgotten:
                if peer.last_handshake == self._forgotten[key]:
                    continue
                del self._forgotten[key]   # it came back
            if peer.last_handshake is not None and peer.endpoint is not None:
                # A handshake completed in this process: the endpoint is authenticated.
                rec = PeerRecord(peer.endpoint, old.initiated if old else None)
            elif old is not None:
                rec = PeerRecord(old.endpoint, old.initiated)
            else:
                continue
            if peer.current is None and peer.last_initiation_sent > float("-inf"):
                rec.initiated = max(rec.initiated or float("-inf"), peer.last_initiation_sent)
            out[key] = rec
        return out

    def update(self) -> bool:
        """Write the file if the records changed; True if it was written."""
        self._pending = False
        new = self.current()
        if new == self.records:
            return False
        try:
            self.file.save(new)
        except OSError as e:
            if not self._write_failed:
                self.log(f"cannot write the peer state file {self.file.path}: {e.strerror or e} "
                         "(after a restart, peers will reconnect by themselves)")
            self._write_failed = True
            return False
        self._write_failed = False
        self.records = new
        self.writes += 1
        return True


def greetable(peers: Iterable[Peer]) -> list[Peer]:
    """Peers still without a session or a handshake in flight: the ones a greeting would help."""
    return [p for p in peers if p.current is None and p.next is None and p.handshake is None]
