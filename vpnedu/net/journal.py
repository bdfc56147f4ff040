"""The host-change journal: how vpnedu never leaves a host half-configured.

Before vpnedu changes anything on the host -- a device, an address, a route,
an nftables table, a sysctl -- it appends a line describing the change, and how
to undo it, to a journal file under ``/run/vpnedu``.  On a clean exit the
changes are undone in reverse order and the journal is deleted.  If the
process dies without cleaning up (``kill -9``, a power cut of the process, a
bug), the journal stays behind; the next vpnedu start in the same network
namespace finds it, sees that the process that wrote it is gone, and undoes
what it lists before doing anything else.  ``vpnedu cleanup`` does the same on
demand.

Writing the intent *before* acting means a crash between the two leaves an
entry whose undo finds nothing to undo, which is harmless: every undo step
ignores "already gone".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

RUN_DIR = Path(os.environ.get("VPNEDU_RUN_DIR", "/run/vpnedu"))


def netns_id() -> int:
    """An identifier of the current network namespace (its inode)."""
    return os.stat("/proc/self/ns/net").st_ino


def run_dir() -> Path:
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return RUN_DIR


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# kind -> function(**params) that undoes one change; filled in by the modules that make them.
UNDO: dict[str, Callable[..., None]] = {}


class Journal:
    """Append-only record of this process's host changes, for one interface."""

    def __init__(self, name: str):
        self.name = name
        self.path = RUN_DIR / f"{name}@{netns_id()}.journal"
        self.entries: list[dict] = []
        self.started = False

    def recover(self, log: Callable[[str], None] = lambda s: None) -> int:
        """Undo what a dead process left behind under this name.  Returns how many steps."""
        if not self.path.exists():
            return 0
        try:
            lines = self.path.read_text().splitlines()
            head = json.loads(lines[0]) if lines else {}
        except (OSError, ValueError):
            lines, head = [], {}
        pid = head.get("pid")
        if pid and pid != os.getpid() and _alive(pid) and _cmdline_is_vpnedu(pid):
            from ..errors import VpneduError
            raise VpneduError(f"another vpnedu (pid {pid}) is running with interface {self.name}",
                              "stop it first, or choose another interface name")
        entries = [json.loads(x) for x in lines[1:] if x.strip()]
        log(f"cleaning up after a previous vpnedu that did not exit cleanly (pid {pid}): "
            f"{len(entries)} change(s)")
        n = _undo(entries, log)
        self.path.unlink(missing_ok=True)
        return n

    def start(self) -> None:
        run_dir()
        self.started = True
        with open(self.path, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "name": self.name}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(self.path, 0o600)

    def record(self, kind: str, **params) -> None:
        """Note a change we are about to make (call *before* making it)."""
        entry = {"kind": kind, **params}
        self.entries.append(entry)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def undo_all(self, log: Callable[[str], None] = lambda s: None) -> int:
        if not self.started:
            return 0
        n = _undo(self.entries, log)
        self.entries.clear()
        self.path.unlink(missing_ok=True)
        self.started = False
        return n


def _undo(entries: list[dict], log: Callable[[str], None]) -> int:
    from . import links, nat, routes, sysctl, tproxy  # noqa: F401  (each registers its UNDO functions)
    n = 0
    for entry in reversed(entries):
        params = dict(entry)
        kind = params.pop("kind")
        fn = UNDO.get(kind)
        if fn is None:
            continue
        try:
            fn(**params)
            n += 1
        except Exception as e:  # keep undoing the rest whatever happens
            log(f"could not undo {kind} {params}: {e}")
    return n


def _cmdline_is_vpnedu(pid: int) -> bool:
    try:
        return b"vpnedu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def recover_all(log: Callable[[str], None] = print) -> int:
    """Undo every stale journal of this network namespace (``vpnedu cleanup``)."""
    if not RUN_DIR.exists():
        return 0
    total = 0
    suffix = f"@{netns_id()}.journal"
    for p in sorted(RUN_DIR.glob(f"*{suffix}")):
        total += Journal(p.name[: -len(suffix)]).recover(log)
    return total
