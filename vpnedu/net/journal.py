"""The host-change journal: how vpnedu never leaves a host half-configured.

Before vpnedu changes anything on the host -- a device, an address, a route,
an nftables table, a sysctl -- it appends a line describing the change, and how
to undo it, to a journal file under ``/run/vpnedu``.  On a clean exit the
changes are undone in reverse order and the journal is deleted.  If the
process dies without cleaning up (``kill -9``, a power cut of the process, a
bug), the journal stays behind; the next vpnedu start in the same network
namespace finds it, sees that the process that wrote it is gone, and puts the
host right before doing anything else.  ``vpnedu cleanup`` undoes everything it
lists, on demand.

Writing the intent *before* acting means a crash between the two leaves an
entry whose undo finds nothing to undo, which is harmless: every undo step
ignores "already gone".

Restarting without a gap: adopting the dead process's changes
-------------------------------------------------------------

Undoing everything and then setting it up again is correct, but not harmless
for the traffic in flight.  A server killed with ``kill -9`` leaves its
masquerade table and ``net.ipv4.ip_forward = 1`` behind, and the clients'
established TCP connections keep working through them (their conntrack entries
hold the address translation).  If the next start deleted the table and set it
up again a few milliseconds later, every packet arriving in between would miss
the translation: a reply addressed to the server's own address finds no socket
there, the server's kernel answers with a reset, and the client's download dies
with "connection reset by peer".  So a start *adopts* what it will make again:

1. :meth:`Journal.recover` with ``adopt=True`` undoes at once only the kinds of
   change that cannot be replaced in place (devices, addresses, a client's
   routes: they went with the dead process's TUN device anyway).  The entries of
   the *replaceable* kinds (see :func:`kinds`: nftables tables, sysctls, the
   proxy's policy rule and local route) stay on the host and in the journal,
   which is rewritten at once (a new file renamed over the old one) under the
   new process's pid: from then on it is this process's journal, and a crash
   leaves it for the next start or ``vpnedu cleanup`` like any other.
2. During set-up, each module :meth:`claims <Journal.claim>` the adopted entry
   of what it is about to make.  A claimed entry keeps its place and its
   parameters -- for a sysctl that is the value from *before the first vpnedu*,
   not the 1 the dead process left, so the final undo still restores the
   original -- and the module replaces the thing in place instead of creating
   it: one nftables transaction that flushes and refills the table
   (:func:`vpnedu.net.nat.replace_table`), a sysctl that is already 1 is left
   alone, a route is replaced (``RTM_NEWROUTE`` with ``NLM_F_REPLACE``), an
   identical policy rule is kept.
3. At the end of set-up, :meth:`Journal.settle` undoes the adopted entries that
   nobody claimed -- what the dead process made and this start does not (the
   forwarding mode changed from nat to none, say) -- and drops them from the
   journal.

A crash at any point of this leaves a journal that lists every change still on
the host with its original values: before step 1's rewrite, the old journal
(undoing its devices twice is harmless); after it, the adopted entries and the
new ones; in step 3, entries whose undo may already have run (harmless again).
If set-up fails with an error instead, the normal tear-down undoes everything,
adopted entries included.

The kinds of change: one table
------------------------------

:func:`kinds` is the one list of every kind of host change vpnedu makes, each with
the function that undoes it (and, for the replaceable kinds, the parameters that
name the thing).  :meth:`Journal.record` refuses a kind that is not in it, so a
new kind of change cannot be made without saying how to undo it.

A journal can still list a kind this vpnedu does not know: one written by
another version of vpnedu (a newer one that makes a change this one never
heard of).  Skipping it would leave that change on the host for good, with
nobody knowing; undoing nothing would leave every other change too.  So
recovery undoes every other entry, keeps the unknown ones in the journal file
(for the version that wrote them, or for the user to undo by hand), and then
fails with :class:`UnknownChange`: one line that names the file, the kind and
its parameters, and what to do.  A start on that interface refuses until then:
it could not start its own journal without losing those entries.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import VpneduError

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


@dataclass(frozen=True)
class Kind:
    """One kind of host change: how to undo it, and whether a new start can take it over."""

    #: Called with the entry's parameters; must ignore "already gone" (see above).
    undo: Callable[..., None]
    #: For a kind a new start replaces in place and so adopts from a dead process: the
    #: parameters that say *which* thing a change is about (two entries with the same kind and
    #: these values are the same thing).  Empty for the kinds that are undone at once.
    identity: tuple[str, ...] = ()

    @property
    def replaceable(self) -> bool:
        return bool(self.identity)


@functools.cache
def kinds() -> dict[str, Kind]:
    """Every kind of host change vpnedu makes, and how to undo it: the one table.

    Built on first use, not at import: the modules that make the changes load pyroute2 (a third
    of a second), which ``vpnedu status`` and the simulated lab, that only read RUN_DIR, need not pay."""
    from . import links, nat, resolver, routes, sysctl, tproxy
    return {
        "link": Kind(links.undo_link),                    # our TUN device
        "addr": Kind(links.undo_addr),                    # an address on it
        "route": Kind(routes.undo_route),                 # a client's routes (and the host route)
        "rule": Kind(routes.undo_rule),                   # a full tunnel's ip rules (each family)
        "nft-table": Kind(nat.undo_nft_table, identity=("family", "name")),   # NAT / TPROXY / kill switch table
        "sysctl": Kind(sysctl.undo_sysctl, identity=("key",)),                # net.ipv4.ip_forward
        "policy-rule": Kind(tproxy.undo_policy_rule, identity=("fwmark", "table", "priority")),
        "local-route": Kind(tproxy.undo_local_route, identity=("table",)),    # the proxy's route
        "policy-rule6": Kind(tproxy.undo_policy_rule6, identity=("fwmark", "table", "priority")),  # IPv6's
        "local-route6": Kind(tproxy.undo_local_route6, identity=("table",)),  # ... rule and route
        "resolv-conf": Kind(resolver.undo_resolv_conf),   # a client's /etc/resolv.conf (DNS =)
        "resolvconf": Kind(resolver.undo_resolvconf),     # ... or its lines in resolvconf(8)
        "resolved": Kind(resolver.undo_resolved),         # ... or its link's servers in systemd-resolved
    }


class UnknownChange(VpneduError):
    """A journal lists a kind of change this vpnedu cannot undo (see "The kinds of change")."""

    def __init__(self, path: Path, unknown: list, undone: int):
        self.path, self.unknown, self.undone = path, unknown, undone
        what = ", ".join(_describe(e) for e in unknown)
        super().__init__(
            f"{path} lists {len(unknown)} change(s) of a kind this vpnedu does not know: {what}; "
            f"{undone} other change(s) were undone, and these stay in the journal",
            "undo them with the vpnedu version that made them ('vpnedu cleanup'), "
            "or by hand, then delete that file")


def _kind_of(entry) -> str | None:
    """An entry's kind if this vpnedu knows it, else None."""
    kind = entry.get("kind") if isinstance(entry, dict) else None
    return kind if isinstance(kind, str) and kind in kinds() else None


def _describe(entry) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("kind"), str):
        params = {k: v for k, v in entry.items() if k != "kind"}
        return f"{entry['kind']!r} {json.dumps(params)}"
    return json.dumps(entry)


class Journal:
    """Append-only record of this process's host changes, for one interface."""

    def __init__(self, name: str):
        self.name = name
        self.path = RUN_DIR / f"{name}@{netns_id()}.journal"
        self.entries: list[dict] = []
        #: Entries adopted from a dead process that set-up has not claimed yet (also in entries).
        self.pending: list[dict] = []
        self.started = False

    def recover(self, log: Callable[[str], None] = lambda s: None, *, adopt: bool = False) -> int:
        """Put right what a dead process left behind under this name.  Returns how many changes
        were undone now.  With ``adopt``, the changes of replaceable kinds (see :class:`Kind`) are
        not undone but taken over into this process's journal, for set-up to :meth:`claim` (see
        above).  Raises :class:`UnknownChange` if the journal lists a kind this vpnedu does not
        know, after undoing every other change; those entries stay in the file."""
        if not self.path.exists():
            return 0
        try:
            lines = self.path.read_text().splitlines()
            head = json.loads(lines[0]) if lines else {}
        except (OSError, ValueError):
            lines, head = [], {}
        if not isinstance(head, dict):
            head = {}
        pid = head.get("pid")
        if pid and pid != os.getpid() and _alive(pid) and _cmdline_is_vpnedu(pid):
            raise VpneduError(f"another vpnedu (pid {pid}) is running with interface {self.name}",
                              "stop it first, or choose another interface name")
        entries = []
        for x in lines[1:]:
            try:
                entries.append(json.loads(x))
            except ValueError:
                pass   # a line cut short by the crash: its change was never made
        unknown = [e for e in entries if _kind_of(e) is None]
        known = [e for e in entries if _kind_of(e) is not None]
        # With an unknown change left this start fails (see above): nothing to adopt, undo all.
        keep = [e for e in known if adopt and not unknown and kinds()[e["kind"]].replaceable]
        now = [e for e in known if not any(e is k for k in keep)]
        log(f"cleaning up after a previous vpnedu that did not exit cleanly (pid {pid}): "
            f"{len(entries)} change(s)" + (f", {len(keep)} of them to be replaced in place" if keep else ""))
        n = _undo(now, log)
        if unknown:
            _write(self.path, head, unknown)   # only what is still on the host, for a later version
            raise UnknownChange(self.path, unknown, n)
        if keep:
            self.entries = list(keep)
            self.pending = list(keep)
            self.started = True
            self._rewrite()
        else:
            self.path.unlink(missing_ok=True)
        return n

    def start(self) -> None:
        """Begin this process's journal (already begun if :meth:`recover` adopted changes)."""
        if self.started:
            return
        self.started = True
        self._rewrite()

    def _rewrite(self) -> None:
        """Write the whole journal (head and entries) to a new file and rename it over the old
        one: a crash leaves either file complete, never a mixture."""
        run_dir()
        _write(self.path, {"pid": os.getpid(), "name": self.name}, self.entries)

    def record(self, kind: str, **params) -> None:
        """Note a change we are about to make (call *before* making it).  The kind must be in
        :func:`kinds`: a change nobody knows how to undo is never made."""
        _known(kind)
        entry = {"kind": kind, **params}
        self.entries.append(entry)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def claim(self, kind: str, **identity) -> dict | None:
        """Take over the adopted change of ``kind`` about the thing ``identity`` names (see above):
        returns its entry -- which stays in the journal as it is, with the values it recorded --
        or None if the dead process made no such change (then :meth:`record` one as usual).
        ``identity`` must be exactly the kind's :attr:`Kind.identity` parameters."""
        if set(identity) != set(_known(kind).identity):
            raise ValueError(f"journal: a {kind!r} change is named by {_known(kind).identity}, "
                             f"not {tuple(identity)}")
        found = [e for e in self.pending
                 if e.get("kind") == kind and all(e.get(k) == v for k, v in identity.items())]
        self.pending = [e for e in self.pending if not any(e is f for f in found)]
        return found[0] if found else None

    def has(self, kind: str, **identity) -> bool:
        """Whether this process has recorded or claimed a change of ``kind`` about ``identity``."""
        return any(e.get("kind") == kind and all(e.get(k) == v for k, v in identity.items())
                   and not any(e is p for p in self.pending) for e in self.entries)

    def settle(self, log: Callable[[str], None] = lambda s: None) -> int:
        """End of set-up: undo the adopted changes that nobody claimed, and drop them from the
        journal.  Returns how many were undone."""
        stale, self.pending = self.pending, []
        if not stale:
            return 0
        n = _undo(stale, log)
        self.entries = [e for e in self.entries if not any(e is s for s in stale)]
        self._rewrite()
        if n:
            log(f"undid {n} change(s) of the previous vpnedu that this start does not make again")
        return n

    def undo_all(self, log: Callable[[str], None] = lambda s: None) -> int:
        if not self.started:
            return 0
        n = _undo(self.entries, log)
        self.entries.clear()
        self.pending.clear()
        self.path.unlink(missing_ok=True)
        self.started = False
        return n


def _known(kind: str) -> Kind:
    """The table's row for a kind this process is about to record or claim (a bug if missing)."""
    try:
        return kinds()[kind]
    except KeyError:
        raise ValueError(f"journal: no undo for kind {kind!r}; add it to "
                         "vpnedu.net.journal.kinds()") from None


def _write(path: Path, head: dict, entries: list) -> None:
    """Write a whole journal to a new file and rename it over ``path`` (atomic)."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(head) + "\n")
        for e in entries:
            f.write(json.dumps(e) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _undo(entries: list[dict], log: Callable[[str], None]) -> int:
    """Undo known entries, newest first; one that fails is logged and the rest still run."""
    n = 0
    for entry in reversed(entries):
        params = dict(entry)
        kind = params.pop("kind")
        try:
            kinds()[kind].undo(**params)
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
    """Undo every stale journal of this network namespace (``vpnedu cleanup``).  A journal that
    lists a kind this vpnedu does not know does not stop the others: each is undone as far as it
    can be, and then one :class:`UnknownChange` (or one error naming all such files) is raised."""
    if not RUN_DIR.exists():
        return 0
    total, unknown = 0, []
    suffix = f"@{netns_id()}.journal"
    for p in sorted(RUN_DIR.glob(f"*{suffix}")):
        try:
            total += Journal(p.name[: -len(suffix)]).recover(log)
        except UnknownChange as e:
            total += e.undone
            unknown.append(e)
    if len(unknown) == 1:
        raise unknown[0]
    if unknown:
        raise VpneduError("; ".join(e.problem for e in unknown), unknown[0].fix)
    return total
