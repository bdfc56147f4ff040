"""Real WireGuard peers in the lab: wireguard-go configured with wg(8), and wg-quick.

vpnedu's claim to speak WireGuard is judged by peers nobody here wrote.  Debian
ships ``wireguard-go`` (the userspace implementation), ``wg`` to configure it
and ``wg-quick`` (which falls back to wireguard-go when the kernel module is
missing, as on these machines).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .. import config as _config
from ..errors import VpneduError
from .topology import Lab, require_tool

ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}


class WireGuardGo:
    """A wireguard-go interface on a lab host, configured from a wg-quick style config."""

    def __init__(self, lab: Lab, host: str, conf: str | Path, ifname: str = "wg0", binary: str | None = None):
        """``binary``: a wireguard-go build to run instead of the installed one (Debian's)."""
        self.lab, self.host, self.ifname, self.binary = lab, host, ifname, binary
        self.cfg = _config.load(conf)
        self.proc: subprocess.Popen | None = None

    def up(self) -> "WireGuardGo":
        wggo = self.binary or require_tool("wireguard-go", "wireguard-go")
        wg = require_tool("wg", "wireguard-tools")
        self.proc = self.lab.spawn(self.host, f"wireguard-go-{self.host}", wggo, "-f", self.ifname, env=ENV)
        end = time.time() + 10
        while self.lab.run(self.host, "ip", "link", "show", self.ifname).returncode != 0:
            if time.time() > end or self.proc.poll() is not None:
                raise VpneduError(f"wireguard-go did not create {self.ifname}: "
                                  f"{(self.lab.dir / f'wireguard-go-{self.host}.log').read_text()[-500:]}")
            time.sleep(0.05)
        fd, path = tempfile.mkstemp(prefix="wg-", suffix=".conf")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_config.dumps_wg(self.cfg))
            self.lab.run(self.host, wg, "setconf", self.ifname, path, check=True)
        finally:
            os.unlink(path)
        for a in self.cfg.interface.addresses:
            self.lab.run(self.host, "ip", "addr", "add", str(a), "dev", self.ifname, check=True)
        self.lab.run(self.host, "ip", "link", "set", self.ifname, "mtu", str(self.cfg.interface.mtu or 1420), "up",
                     check=True)
        return self

    def show(self, what: str = "") -> str:
        return self.lab.run(self.host, "wg", "show", self.ifname, *([what] if what else [])).stdout

    def set(self, *args: str) -> None:
        self.lab.run(self.host, "wg", "set", self.ifname, *args, check=True)

    def down(self) -> None:
        self.lab.run(self.host, "ip", "link", "del", self.ifname)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def for_wg_quick(text: str) -> str:
    """A config file for ``wg-quick`` in the lab: without its ``DNS =`` lines when resolvconf(8)
    is not installed.  wg-quick hands ``DNS =`` to resolvconf and fails without it (vpnedu's
    client writes the namespace's resolver file itself); ``add-client`` writes ``DNS =`` while
    the server's DNS forwarder is on."""
    if shutil.which("resolvconf"):
        return text
    return "".join(ln for ln in text.splitlines(True) if not ln.strip().lower().replace(" ", "").startswith("dns="))


def wg_quick(lab: Lab, host: str, action: str, conf: str | Path) -> subprocess.CompletedProcess:
    """Run ``wg-quick up|down CONF`` on a lab host (wireguard-go stands in for the kernel module)."""
    require_tool("wg-quick", "wireguard-tools")
    require_tool("wireguard-go", "wireguard-go")
    full = ["ip", "netns", "exec", lab.ns(host), "wg-quick", action, str(conf)]
    return subprocess.run(full, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=60)
