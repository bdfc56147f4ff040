"""The client's DNS: ``DNS =`` of ``[Interface]`` installed for as long as the tunnel is up.

Without this a full-tunnel client sends its web traffic through the VPN and its *names* to
whatever resolver the local network handed out -- a DNS leak: the network it sits on (a café's
Wi-Fi, its provider) still sees every name it looks up.  wg-quick(8) reads ``DNS =`` as a list
in which an IP address is a name server and anything else a search domain, and vpnedu does the
same (:mod:`vpnedu.config` checks each entry).

How the resolver is told depends on who owns ``/etc/resolv.conf`` (resolv.conf(5): the file the
C library's stub resolver reads on every lookup):

``resolved``
    The file points into ``/run/systemd/resolve/``: systemd-resolved answers every lookup and
    routes each to the servers of one link.  ``resolvectl dns IFNAME ...`` and ``resolvectl
    domain IFNAME ... ~.`` give the tunnel its servers, and the routing domain ``~.`` sends
    *every* name there (not only those under the search domains) -- what a VPN that hides the
    client needs.  ``resolvectl revert IFNAME`` undoes it (and resolved forgets a link when the
    device goes anyway).
``resolvconf``
    The file is made by resolvconf(8) (Debian's, whose file lives in ``/run/resolvconf/``, or
    openresolv, which writes its header into it): ``resolvconf -a IFNAME -m 0 -x`` hands it our
    lines with metric 0 and *exclusive*, so only the tunnel's servers are used, as wg-quick does;
    ``resolvconf -d IFNAME -f`` takes them away.
``file``
    Nobody manages the file: vpnedu writes it itself and puts it back as it was, byte for byte
    -- and if it was a symbolic link (to a file a network manager keeps), the link itself, not
    its target's content.  The old state is in the journal *before* the file changes, so after a
    ``kill -9`` the next start or ``vpnedu cleanup`` restores it (kinds ``resolv-conf``,
    ``resolvconf`` and ``resolved`` in :func:`vpnedu.net.journal.kinds`).

The new file replaces the old one in one rename: a reader never sees half a file.  One case
forbids that: ``/etc/resolv.conf`` as a *mount point*.  ``ip netns exec NS`` bind-mounts
``/etc/netns/NS/resolv.conf`` over it (ip-netns(8)), so each namespace has a resolver file of
its own -- which is how the lab and the tests give a namespace its resolver without touching
the host's -- and containers do the same.  Renaming over a mount point fails with ``EBUSY``
(rename(2)), so there the file is rewritten in place, and restored in place.

If another program rewrote the file while the tunnel was up (a DHCP client renewing its
lease), its version is newer than ours and than the one we kept: the undo leaves it alone and
says so, rather than bring back stale servers.

Queries to the tunnel's name servers go through the tunnel only if a route sends them there:
with a split tunnel whose ``AllowedIPs`` leave a server out, :func:`outside_tunnel` names it and
the client says so.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import VpneduError

if TYPE_CHECKING:   # only for annotations: the journal imports this module's undo functions
    from .journal import Journal

RESOLV_CONF = Path("/etc/resolv.conf")
#: glibc reads at most three ``nameserver`` lines (MAXNS in resolv.h; resolv.conf(5)).
MAXNS = 3
#: Where the files of systemd-resolved and of Debian's resolvconf live.
_RESOLVED_DIR = "/run/systemd/resolve/"
_RESOLVCONF_DIRS = ("/run/resolvconf/", "/etc/resolvconf/run/")


def split(dns: Iterable[str]) -> tuple[list[str], list[str]]:
    """wg-quick's rule: ``(name servers, search domains)`` -- an IP address is a server, anything
    else a domain (already checked by :mod:`vpnedu.config`)."""
    servers, domains = [], []
    for d in dns:
        try:
            servers.append(str(ipaddress.ip_address(d)))
        except ValueError:
            domains.append(d.rstrip("."))
    return servers, domains


def outside_tunnel(servers: Iterable[str], allowed_ips) -> list[str]:
    """The name servers no AllowedIPs prefix covers: the client does not route them into the tunnel."""
    out = []
    for s in servers:
        a = ipaddress.ip_address(s)
        if not any(a.version == n.version and a in n for n in allowed_ips):
            out.append(s)
    return out


def manager(path: Path = RESOLV_CONF) -> str:
    """Who owns ``path``: ``resolved``, ``resolvconf`` or ``file`` (see the module docstring).

    A manager counts only when its tool is installed *and* the file is the one it keeps: a
    resolved that runs while the file is a plain file (the bind mount of ``ip netns exec``, a
    container) would take our servers and change nothing the C library reads."""
    real = os.path.realpath(path)
    if real.startswith(_RESOLVED_DIR) and shutil.which("resolvectl"):
        return "resolved"
    if shutil.which("resolvconf"):
        if real.startswith(_RESOLVCONF_DIRS):
            return "resolvconf"
        try:
            head = Path(real).read_bytes()[:512]
        except OSError:
            head = b""
        if b"resolvconf" in head and not os.path.islink(path):   # openresolv's "Generated by resolvconf"
            return "resolvconf"
    return "file"


def render(servers: list[str], domains: list[str], ifname: str, old: bytes | None = None) -> bytes:
    """The resolver file for the tunnel (resolv.conf(5)).  With no server in ``DNS =`` (search
    domains only), the old file's ``nameserver`` lines stay."""
    lines = [f"# written by vpnedu for {ifname} from its DNS = setting; the file from before is put back "
             "when vpnedu stops"]
    if servers:
        lines += [f"nameserver {s}" for s in servers]
    elif old:
        lines += [ln.strip() for ln in old.decode("utf-8", "replace").splitlines()
                  if ln.strip().startswith("nameserver")]
    if domains:
        lines.append("search " + " ".join(domains))
    return ("\n".join(lines) + "\n").encode()


def install(journal: Journal, ifname: str, dns: list[str], *, allowed_ips=(), path: Path = RESOLV_CONF,
            log: Callable[[str], None] = lambda s: None) -> str:
    """Give the host the tunnel's DNS for as long as the journal's changes last.  Returns the line
    for the client's list of changes."""
    servers, domains = split(dns)
    if len(servers) > MAXNS:
        log(f"note: DNS lists {len(servers)} name servers; the C library uses only the first {MAXNS}")
    for s in outside_tunnel(servers, allowed_ips):
        log(f"note: the name server {s} is not in the server's AllowedIPs, so lookups go to it outside "
            "the tunnel (add it to AllowedIPs to send them through)")
    how = manager(path)
    what = ", ".join([*servers, *(f"search {d}" for d in domains)])
    if how == "resolved":
        journal.record("resolved", ifname=ifname)
        if servers:
            _run(["resolvectl", "dns", ifname, *servers])
        _run(["resolvectl", "domain", ifname, *domains, "~."])
        _run(["resolvectl", "default-route", ifname, "true"])
        return f"DNS via systemd-resolved on {ifname}: {what} (every name, routing domain ~.)"
    if how == "resolvconf":
        journal.record("resolvconf", ifname=ifname)
        text = "".join(f"nameserver {s}\n" for s in servers) + (f"search {' '.join(domains)}\n" if domains else "")
        _run(["resolvconf", "-a", ifname, "-m", "0", "-x"], text)
        return f"DNS via resolvconf for {ifname} (exclusive): {what}"
    write_file(journal, ifname, path, servers, domains)
    return f"DNS: {path} now lists {what}; its old content is put back when vpnedu stops"


def write_file(journal: Journal, ifname: str, path: Path, servers: list[str], domains: list[str]) -> None:
    """The ``file`` way: note the file's state in the journal, then replace it."""
    old, link, mode, uid, gid = _state(path)
    new = render(servers, domains, ifname, old)
    journal.record("resolv-conf", path=str(path), old=_b64(old), link=link, mode=mode, uid=uid, gid=gid,
                   ours=_digest(new))
    _put(path, new, 0o644, 0, 0)


def undo_resolv_conf(path: str, old: str | None, link: str | None, mode: int | None, uid: int | None,
                     gid: int | None, ours: str) -> None:
    """Put ``path`` back: the link, the bytes (with their mode and owner), or no file at all."""
    p = Path(path)
    now, now_link = _current(p)
    before = base64.b64decode(old) if old is not None else None
    if (link is not None and now_link == link) or (link is None and now_link is None and now == before):
        return      # already as it was: a crash before the change, or a second undo
    if now_link is not None or _digest(now) != ours:
        raise VpneduError(f"{path} was changed by another program while vpnedu ran; it is left as it is",
                          "check the resolver settings in it")
    if link is not None:
        tmp = p.with_name(f".{p.name}.vpnedu-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(link, tmp)
        os.replace(tmp, p)
    elif before is not None:
        _put(p, before, mode if mode is not None else 0o644, uid or 0, gid or 0)
    else:
        p.unlink(missing_ok=True)


def undo_resolvconf(ifname: str) -> None:
    """Take the tunnel's lines out of resolvconf (``-f``: no complaint if they are gone already)."""
    _run(["resolvconf", "-d", ifname, "-f"])


def undo_resolved(ifname: str) -> None:
    """Drop what we told systemd-resolved about the link (nothing to do if the link is gone)."""
    if _link_exists(ifname):
        _run(["resolvectl", "revert", ifname])


# ---------------------------------------------------------------------------- the file itself
def _state(path: Path) -> tuple[bytes | None, str | None, int | None, int | None, int | None]:
    """``(content, link target, mode, uid, gid)`` of the file now: a link is kept as a link."""
    if path.is_symlink():
        return None, os.readlink(path), None, None, None
    try:
        st = path.stat()
        return path.read_bytes(), None, st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        return None, None, None, None, None
    except OSError as e:
        raise VpneduError(f"cannot read {path}: {e.strerror}", "check the file, or remove DNS = from the config") from None


def _current(path: Path) -> tuple[bytes | None, str | None]:
    if path.is_symlink():
        return None, os.readlink(path)
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, None


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` is a mount point in this process's mount namespace (a bind-mounted file
    included, which :func:`os.path.ismount` does not see when both sides are on one filesystem):
    the fifth field of each line of /proc/self/mountinfo (proc(5))."""
    want = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == want:
                    return True
    except OSError:
        pass
    return False


def _unescape(field: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out, i = bytearray(), 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _put(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write ``data`` as the file ``path``: a new file renamed over it, or -- over a mount point,
    where rename fails with EBUSY -- in place."""
    if is_mount_point(path):
        # In place: the mount keeps its own owner and mode; O_NOFOLLOW, never through a link.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return
    tmp = path.with_name(f".{path.name}.vpnedu-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), uid, gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)      # a symlink at ``path`` is replaced, its target untouched
    except OSError as e:
        raise VpneduError(f"cannot write {path}: {e.strerror}",
                          "run vpnedu as root, or remove DNS = from the config") from None
    finally:
        tmp.unlink(missing_ok=True)


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def _digest(data: bytes | None) -> str:
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def _link_exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")


def _run(cmd: list[str], stdin: str | None = None) -> None:
    try:
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VpneduError(f"'{' '.join(cmd)}' could not run: {e}", "check the resolver service") from None
    if r.returncode != 0:
        raise VpneduError(f"'{' '.join(cmd)}' failed: {(r.stderr or r.stdout).strip()}",
                          "check the resolver service, or remove DNS = from the config")
