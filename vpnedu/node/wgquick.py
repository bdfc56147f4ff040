"""What wg-quick does around a tunnel besides the tunnel itself: hooks, the fwmark, and notes.

wg-quick(8) reads a few keys that are not WireGuard's own: ``PreUp``, ``PostUp``,
``PreDown``, ``PostDown`` (shell commands run around bringing the interface up and down),
``FwMark`` (handed to ``wg set``: a mark on the tunnel's own UDP packets, so that policy
routing can tell them from the traffic inside), ``Table`` (where the routes go; see
:mod:`vpnedu.node.client`) and ``DNS``.  vpnedu does the same with each, or says that it
does not -- a key in an existing ``wg0.conf`` is never read and then silently ignored.

**Hooks.**  wg-quick runs, in this order::

    PreUp      before the interface exists
    ...        interface, addresses, MTU, up, routes
    PostUp     when everything is in place
    PreDown    before anything is taken down (the interface still exists)
    ...        routes and interface removed
    PostDown   after everything is gone

Each command is run by ``bash -c``, with ``%i`` replaced by the interface name, in the order
the file gives them.  A failing ``PreUp``/``PostUp`` stops the start: vpnedu undoes its own
changes (device, routes, NAT) and, like wg-quick, runs no ``PreDown``/``PostDown`` -- what the
hooks changed themselves is theirs to undo.  A failing ``PreDown``/``PostDown`` is reported and
the tear-down goes on: the host is restored whatever a hook does.

A hook runs as root, so whoever can write the config file can run any command as root.
vpnedu therefore runs hooks only when it runs as root itself, and only from a config file
owned by root that neither group nor others may write (checked with ``fstat`` on the very
file it read).  Otherwise it refuses to start, in one line.  wg-quick trusts the file; vpnedu
checks it, as it refuses a private key that other users can read.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from typing import Callable

from ..config import HOOKS, Config
from ..errors import ConfigError, VpneduError
from ..protocol.keys import redact

UP_HOOKS = ("PreUp", "PostUp")


def hook_refusal(cfg: Config) -> str | None:
    """Why this config's hooks may not run, or None if they may (or there are none)."""
    if not any(cfg.interface.hooks.get(k) for k in HOOKS):
        return None
    if os.geteuid() != 0:
        return "hooks run only when vpnedu runs as root"
    if cfg.file_uid is None or cfg.file_mode is None:
        return "hooks run only from a config file"
    if cfg.file_uid != 0:
        return f"the file belongs to uid {cfg.file_uid}, not root, and hooks run as root"
    if cfg.file_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if cfg.file_mode & bit)
        return (f"the file is writable by {who} (mode {cfg.file_mode & 0o777:04o}), and hooks run as root: "
                "whoever may write it may run commands as root")
    return None


class Hooks:
    """A config's PreUp/PostUp/PreDown/PostDown, run at the right moments of a node's life."""

    def __init__(self, cfg: Config, ifname: str, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.ifname = ifname
        self.log = log
        self.commands = {k: list(cfg.interface.hooks.get(k, [])) for k in HOOKS}
        #: True once PostUp has run: only then are PreDown/PostDown due (as with wg-quick down).
        self.up = False

    def check(self) -> None:
        """Refuse, before any change to the host, hooks that may not run (see :func:`hook_refusal`)."""
        why = hook_refusal(self.cfg)
        if why is not None:
            kinds = [k for k in HOOKS if self.commands[k]]
            path = self.cfg.source
            raise ConfigError(f"{path}: {'/'.join(kinds)} refused: {why}",
                              f"make the file root's and writable only by root (chown root:root {path}; "
                              f"chmod 600 {path}) and run vpnedu as root, or remove the {'/'.join(kinds)} lines")

    def run(self, kind: str) -> None:
        """Run the ``kind`` commands in order.  A failing PreUp/PostUp raises (the start stops);
        a failing PreDown/PostDown is logged and the tear-down goes on."""
        if kind not in UP_HOOKS and not self.up:
            return
        for command in self.commands[kind]:
            line = command.replace("%i", self.ifname)
            shown = redact(line)
            self.log(f"[#] {kind}: {shown}")
            try:
                rc = subprocess.run(["bash", "-c", line], stdin=subprocess.DEVNULL).returncode
            except FileNotFoundError:
                rc, why = 127, "bash is not installed"
            else:
                why = f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc}"
            if rc == 0:
                continue
            if kind in UP_HOOKS:
                raise VpneduError(f"the {kind} command {shown!r} failed ({why}); vpnedu did not start "
                                  "and undid its own changes",
                                  "run the command by hand to see why, fix it in the config, then start again")
            self.log(f"note: the {kind} command {shown!r} failed ({why}); the tear-down goes on")
        if kind == "PostUp":
            self.up = True
        elif kind == "PostDown":
            self.up = False       # down once: a second tear-down runs no hook again


def set_fwmark(sock: socket.socket, mark: int | None) -> None:
    """Mark every packet of the tunnel's UDP socket with ``mark`` (``SO_MARK``, socket(7)), as
    ``wg set wg0 fwmark`` does for the kernel's WireGuard: policy routing (``ip rule ... fwmark``)
    and nftables (``meta mark``) can then tell the tunnel's own packets from those inside it."""
    if not mark:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("I", mark))
    except OSError as e:
        raise VpneduError(f"cannot set FwMark {mark:#x} on the UDP socket: {e.strerror}",
                          "setting a mark needs root (CAP_NET_ADMIN)") from None


def notes(cfg: Config, ifname: str, role: str = "client") -> list[str]:
    """One line for each setting in the config that vpnedu reads but does not apply (yet)."""
    out = []
    table = cfg.interface.table
    if role == "server" and table and table.isdigit():
        out.append(f"note: Table = {table} in {cfg.source} has nothing to hold: the server adds no routes of "
                   "its own (its tunnel subnet's route is the kernel's, in the main table)")
    if not cfg.interface.clamp_mss and role == "client":
        out.append(f"note: ClampMSS = false in {cfg.source} changes nothing here: only a server in nat mode "
                   "clamps the MSS of the TCP it forwards")
    if cfg.interface.dns and role == "server":
        out.append(f"note: DNS = {redact(', '.join(cfg.interface.dns))} in {cfg.source} is not applied: only the "
                   "vpnedu client installs DNS (see vpnedu.net.resolver); the server keeps the host's resolver")
    if role == "server":
        for key, value in (("KillSwitch", cfg.interface.kill_switch), ("BlockIPv6", cfg.interface.block_ipv6)):
            if value is not None:
                out.append(f"note: {key} in {cfg.source} is not applied: it guards a client's traffic "
                           "(see vpnedu.net.killswitch); the server adds no such table")
    return out
