"""Kernel switches under /proc/sys, changed and put back.

A Linux host drops packets that arrive on one interface for an address
reachable through another unless it is told to act as a router:
``net.ipv4.ip_forward = 1``.  The VPN server needs that to pass clients'
packets from the tunnel to the internet; vpnedu remembers the old value and
restores it.

After a crash the switch is left as the dead process set it.  The next start
takes its journal entry over (:meth:`~vpnedu.net.journal.Journal.claim`) rather
than switching forwarding off and on again -- which would drop the packets of
established connections in between -- and the entry keeps the value from
before the first vpnedu, so that is what the final undo restores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # only for annotations: the journal imports this module's undo functions
    from .journal import Journal


def _path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read(key: str) -> str:
    return _path(key).read_text().strip()


def set_value(journal: Journal, key: str, value: str) -> str:
    """Set a sysctl, recording the old value; returns the old value (after a crash: the value
    from before the dead vpnedu, which its adopted journal entry holds)."""
    taken = journal.claim("sysctl", key=key)
    if taken is not None:
        if read(key) != value:
            _path(key).write_text(value + "\n")
        return taken["value"]
    old = read(key)
    if old != value:
        journal.record("sysctl", key=key, value=old)
        _path(key).write_text(value + "\n")
    return old


def undo_sysctl(key: str, value: str) -> None:
    _path(key).write_text(value + "\n")
