"""Helpers for the tests that drive vpnedu-wg (and wireguard-go) with the real wg(8) tool in
network namespaces the test creates and deletes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from vpnedu.node.uapi_socket import socket_path


def vpnedu_wg() -> list[str]:
    """The vpnedu-wg command of this interpreter's environment."""
    script = Path(sys.executable).parent / "vpnedu-wg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vpnedu.node.userspace"]


def sh(*cmd: str, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(pred, timeout: float = 10, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Netns:
    """Two namespaces ``a`` and ``b`` joined by a veth: 192.0.2.1/24 + 2001:db8:16::1/64 in a,
    .2 and ::2 in b.  Everything is deleted by :meth:`close`, whatever happened."""

    def __init__(self, tag: str):
        self.tag = tag
        self.a, self.b = f"{tag}a", f"{tag}b"
        self.daemons: list[subprocess.Popen] = []
        self.names: list[str] = []
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", self.b)
        for ns, host in ((self.a, 1), (self.b, 2)):
            dev = "veth0" if host == 1 else "veth1"
            sh("ip", "-n", ns, "addr", "add", f"192.0.2.{host}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"2001:db8:16::{host}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def run(self, ns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def start(self, ns: str, ifname: str, program: list[str] | None = None, *, foreground: bool = True,
              log: Path | None = None, env: dict | None = None) -> subprocess.Popen | None:
        """Start a userspace WireGuard (vpnedu-wg by default) for ``ifname`` in ``ns``; returns
        the process (foreground) or None (it forked: the start command has returned)."""
        self.names.append(ifname)
        program = program or vpnedu_wg()
        e = dict(os.environ, LOG_LEVEL="verbose", **(env or {}))
        out = open(log, "ab") if log else subprocess.DEVNULL
        cmd = ["ip", "netns", "exec", ns, *program, *(["-f"] if foreground else []), ifname]
        try:
            if not foreground:
                r = subprocess.run(cmd, env=e, stdout=out, stderr=out, timeout=30)
                assert r.returncode == 0, f"{cmd} -> {r.returncode}: {log.read_text() if log else ''}"
                return None
            p = subprocess.Popen(cmd, env=e, stdout=out, stderr=out)
            self.daemons.append(p)
        finally:
            if log:
                out.close()
        wait_for(lambda: socket_path(ifname).exists() or p.poll() is not None, 20, f"{ifname}'s socket")
        assert p.poll() is None, f"{ifname} exited: {log.read_text() if log else ''}"
        return p

    def close(self) -> None:
        for name in self.names:
            for ns in (self.a, self.b):
                subprocess.run(["ip", "-n", ns, "link", "del", name], capture_output=True)
        for p in self.daemons:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for ns in (self.a, self.b):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for name in self.names:
            try:
                socket_path(name).unlink()
            except FileNotFoundError:
                pass


def wg(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return sh(shutil.which("wg") or "wg", *args, check=check, input=input)


def genkey() -> tuple[str, str]:
    priv = wg("genkey").stdout.strip()
    return priv, wg("pubkey", input=priv + "\n").stdout.strip()


def dump(ifname: str) -> tuple[list[str], list[list[str]]]:
    """``wg show IF dump``: the interface's fields and each peer's."""
    lines = [ln.split("\t") for ln in wg("show", ifname, "dump").stdout.strip().split("\n")]
    return lines[0], lines[1:]
