"""The paths the benchmark compares, each brought up and down in the namespace lab.

Every tunnel runs between the lab's ``client`` and ``server`` hosts, over the same veth
cable(s), and iperf3 targets the server's address *inside* the tunnel.  ``bare`` is the same
cable with no tunnel at all: the ceiling.

A path is named by a spec (what ``--paths`` takes); :func:`make` turns one into a
:class:`Tunnel`, and :func:`spec_problem` says what is wrong with one before a lab is built:

=========================  ==========================================================================
``bare``                   no tunnel: iperf3 straight over the cable
``vpnedu-SUITE``           this tree's vpnedu, cipher suite SUITE, the default datapath (``fast``)
``vpnedu-SUITE-simple``    the same engine with every offload off (``--datapath simple``: one
                           system call per packet, no UDP GSO/GRO, no TUN GRO)
``vpnedu-SUITE@SPEC``      any ``--datapath SPEC``, e.g. ``vpnedu-wireguard@fast,no-tun-gro``
``vpnedu@TREE``            the ``wireguard`` suite, default datapath, run from another vpnedu source
                           tree (e.g. ``git worktree add /tmp/old COMMIT``): both daemons run
                           ``PYTHONPATH=TREE python -P -m vpnedu``, checked to import from TREE
``wireguard-go``           the installed wireguard-go (Debian's ``/usr/bin/wireguard-go``)
``wireguard-go@PATH``      any wireguard-go build, e.g. a current one with the offload work
``openvpn``                OpenVPN over UDP, AES-256-GCM, no kernel offload (DCO)
=========================  ==========================================================================
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import VpneduError
from ..netns_lab.topology import SERVER_PUBLIC, Lab
from ..protocol.suites import aead_backend

#: The tunnel MTU of every path (wireguard-go's and OpenVPN's as well as vpnedu's, whose configs say
#: ``MTU =``: measured, vpnedu would take the cable's 1500 - 60 = 1440, see vpnedu.net.mtu): the
#: paths move packets of the same size.
BENCH_MTU = 1420

DEB = {"wireguard-go": "wireguard-go", "wg": "wireguard-tools", "openvpn": "openvpn", "iperf3": "iperf3"}


def have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists()


def ensure_tools(tools: list[str], log) -> list[str]:
    """Install missing Debian packages when root; returns the tools still missing."""
    missing = [t for t in tools if not have(t)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted({DEB.get(t, t) for t in missing})
        log(f"installing Debian packages: {' '.join(pkgs)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], capture_output=True, env=env)
        missing = [t for t in tools if not have(t)]
    return missing


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def peak_rss_mib(pid: int) -> float | None:
    """The largest resident set the process has had so far (``VmHWM``), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def interpreter() -> str:
    """The Python that runs vpnedu's daemons (this one: :meth:`Lab.vpnedu`), e.g. "Python 3.11.2
    (/usr/bin/python3.11)": how it was built changes their speed (scripts/setup.sh)."""
    return f"Python {platform.python_version()} ({Path(sys.executable).resolve()})"


def first_line(cmd: list[str]) -> str:
    """The first line a ``--version`` style command prints, or ``?``."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (r.stdout or r.stderr).strip()
    return out.splitlines()[0].strip() if out else "?"


def tree_commit(tree: Path) -> str:
    """``git describe`` of a source tree (its short commit when it has no tag; ``-dirty`` when it
    has changes), or the folder's name when it is not a git checkout."""
    r = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--tags", "--dirty"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else tree.name


class Tunnel:
    """One path: ``up()`` makes it carry traffic to :attr:`target`, ``down()`` removes it;
    :meth:`daemons` names the processes whose CPU and memory the bench charges to it."""

    name = "?"
    needs: list[str] = []
    target = SERVER_PUBLIC

    def __init__(self, lab: Lab):
        self.lab = lab
        self.procs: list[subprocess.Popen] = []

    def describe(self) -> str:
        return self.name

    def up(self) -> None:
        pass

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []

    def daemons(self) -> dict[str, int]:
        """``{"server": pid, "client": pid}`` of the running tunnel ends (none for ``bare``)."""
        live = [p for p in self.procs if p.poll() is None]
        return dict(zip(("server", "client"), (p.pid for p in live)))

    def pids(self) -> list[int]:
        return list(self.daemons().values())

    def wait_ping(self, timeout: float = 20) -> None:
        """Wait until a ping crosses the tunnel; a daemon that exits meanwhile ends the wait at
        once, with the last line it wrote (its error, as a rule)."""
        end = time.time() + timeout
        while time.time() < end:
            if self.lab.run("client", "ping", "-c", "1", "-W", "1", self.target).returncode == 0:
                return
            for p in self.procs:
                if p.poll() is not None:
                    self.exited(p)
            time.sleep(0.2)
        raise VpneduError(f"{self.name}: no ping through the tunnel to {self.target}",
                          f"see the logs in {self.lab.dir}")

    def exited(self, proc: subprocess.Popen) -> None:
        """Raise: ``proc``, one of this path's daemons, has exited before its tunnel worked."""
        log = self.lab.log_of(proc.pid)
        lines = log.read_text(errors="replace").strip().splitlines() if log and log.exists() else []
        said = lines[-1].strip() if lines else "(it wrote nothing)"
        raise VpneduError(f"{self.name}: a daemon exited (status {proc.returncode}) before the tunnel "
                          f"carried a ping; its last line: {said}", f"see {log or self.lab.dir}")


class Bare(Tunnel):
    name = "bare"

    def describe(self) -> str:
        return "no tunnel: iperf3 straight over the cable (the ceiling)"


class Vpnedu(Tunnel):
    """vpnedu's server and client from this source tree, with the given suite and daemon options."""

    target = "10.0.0.1"
    #: Extra environment of this path's vpnedu processes (none: this tree, as installed).
    env: dict | None = None
    #: The server's ``--forwarding``: none, as the tunnel paths measure the tunnel alone
    #: (``vpnedu bench --proxies`` sets nat or proxy).
    forwarding = "none"

    def __init__(self, lab: Lab, suite: str = "wireguard", extra: tuple[str, ...] = ()):
        super().__init__(lab)
        self.suite = suite
        self.extra = extra
        self.name = f"vpnedu-{suite}"
        self.dir = lab.dir / self.name

    def describe(self) -> str:
        spec = self.extra[1] if self.extra[:1] == ("--datapath",) else "fast"
        what = {"fast": "the default datapath", "simple": "the same engine, every offload off"}.get(spec, "")
        return (f"vpnedu (this tree), suite {self.suite}, --datapath {spec}" + (f" ({what})" if what else "")
                + f", AEAD calls through {aead_backend()}, on {interpreter()}")

    def command(self, *args: str) -> list[str]:
        """The command line that runs this path's vpnedu with ``args``."""
        return self.lab.vpnedu(*args)

    def provision(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}

        def run(*args: str) -> None:
            r = subprocess.run(self.command(*args), capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise VpneduError(f"{self.name}: 'vpnedu {' '.join(args[:2])}' failed: "
                                  f"{(r.stderr or r.stdout).strip()[-300:]}")

        run("server", "init", "-c", f"{self.dir}/server.conf", "--endpoint", SERVER_PUBLIC,
            "--suite", self.suite, "--force")
        for c in self.lab.client_names():
            run("server", "add-client", c, "-c", f"{self.dir}/server.conf", "--out", str(self.dir))
        for conf in [self.dir / "server.conf", *(self.dir / f"{c}.conf" for c in self.lab.client_names())]:
            text = conf.read_text()
            conf.write_text(text.replace("[Interface]\n", f"[Interface]\nMTU = {BENCH_MTU}\n", 1))

    def up(self, clients: list[str] | None = None) -> None:
        if not (self.dir / "server.conf").exists():
            self.provision()
        allow = ["--allow-null-teaching"] if self.suite == "null-teaching" else []
        from ..node.control import netns_socket_path, wait_ready
        self.procs.append(self.lab.spawn("server", f"{self.name}-server",
                                         *self.command("server", "-c", f"{self.dir}/server.conf",
                                                       "--forwarding", self.forwarding, *allow, *self.extra),
                                         env=self.env))
        wait_ready(netns_socket_path(self.lab.ns("server")), self.procs[-1],
                   self.lab.dir / f"{self.name}-server.log", what="the vpnedu server")
        for c in clients or ["client"]:
            self.procs.append(self.lab.spawn(c, f"{self.name}-{c}",
                                             *self.command("client", "-c", f"{self.dir}/{c}.conf", *allow,
                                                           *self.extra), env=self.env))
        self.wait_ping()


def tree_problem(tree: str) -> str | None:
    """Why ``vpnedu@TREE`` cannot run (None when it can)."""
    if not Path(tree, "vpnedu", "__init__.py").is_file():
        return (f"vpnedu@{tree}: {tree} has no vpnedu/ package; give the top of a vpnedu source tree, "
                "e.g. one made with 'git worktree add /tmp/old COMMIT'")
    return None


class VpneduTree(Vpnedu):
    """The ``wireguard`` suite with the default datapath, run from another source tree.

    Both daemons (and the provisioning) run ``python -P -m vpnedu`` with ``PYTHONPATH=TREE``:
    ``-P`` keeps the current folder off ``sys.path`` and PYTHONPATH comes before the installed
    (editable) vpnedu, so the tree's code is what runs -- :meth:`check_imports` proves it before
    the first daemon starts.  The same interpreter and installed packages serve both trees.
    """

    def __init__(self, lab: Lab, tree: str):
        super().__init__(lab, "wireguard")
        self.tree = Path(tree).resolve()
        self.commit = tree_commit(self.tree)
        self.name = f"vpnedu@{self.commit}"
        self.dir = lab.dir / f"vpnedu-tree-{self.commit}"
        # No __pycache__ written into someone else's tree.
        self.env = {"PYTHONPATH": str(self.tree), "PYTHONDONTWRITEBYTECODE": "1"}
        self.checked = False
        self.aead = ""   # which library its AEAD calls go through (check_imports asks the tree)

    def describe(self) -> str:
        return (f"vpnedu from {self.tree} (git describe {self.commit}), suite wireguard, its default datapath"
                + (f", AEAD calls through {self.aead}" if self.aead else "") + f", on {interpreter()}")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-P", "-m", "vpnedu", *args]

    def check_imports(self) -> None:
        # A tree from before vpnedu/protocol/openssl_aead.c has no aead_backend: all its AEAD calls
        # went through cryptography.  (A tree's compiled module is there only if it was built in it.)
        probe = ("import os, vpnedu; print(os.path.realpath(vpnedu.__file__))\n"
                 "try:\n    from vpnedu.protocol.suites import aead_backend, choose_aead\n"
                 "    choose_aead(os.environ.get('VPNEDU_AEAD'))\n"
                 "    print(aead_backend())\n"
                 "except ImportError:\n    print('cryptography')\n")
        r = subprocess.run([sys.executable, "-P", "-c", probe],
                           capture_output=True, text=True, env={**os.environ, **self.env})
        want = self.tree / "vpnedu" / "__init__.py"
        lines = r.stdout.split()
        if r.returncode != 0 or not lines or Path(lines[0]) != want:
            got = r.stdout.strip() or (r.stderr.strip().splitlines() or ["nothing"])[-1]
            raise VpneduError(f"{self.name}: python -P with PYTHONPATH={self.tree} imports vpnedu from {got}, "
                              f"not {want}", "check that the tree is a vpnedu checkout")
        self.aead = lines[1] if len(lines) > 1 else ""
        self.checked = True

    def up(self, clients: list[str] | None = None) -> None:
        if not self.checked:
            self.check_imports()
        super().up(clients)


def wireguard_go_problem(binary: str) -> str | None:
    """Why ``wireguard-go@PATH`` cannot run (None when it can)."""
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        return f"wireguard-go@{binary}: no executable file at {binary}; give the path of a wireguard-go binary"
    return None


class WireGuardGoPair(Tunnel):
    """wireguard-go at both ends, configured with wg(8) from the same keys vpnedu would use."""

    target = "10.0.0.1"

    def __init__(self, lab: Lab, binary: str | None = None):
        super().__init__(lab)
        self.binary = str(Path(binary).resolve()) if binary else None
        self.needs = ["wg"] if binary else ["wireguard-go", "wg"]
        self.version = ""
        if binary:
            self.version = first_line([self.binary, "--version"]).split()[-1]
            self.name = f"wireguard-go@{self.version}" if self.version.startswith("v") else f"wireguard-go@{binary}"
        else:
            self.name = "wireguard-go"

    def describe(self) -> str:
        exe = self.binary or shutil.which("wireguard-go") or "wireguard-go"
        version = self.version or first_line([exe, "--version"]).split()[-1]
        return f"wireguard-go {version} ({exe})"

    def up(self) -> None:
        from ..netns_lab.wireguard_go import WireGuardGo
        base = Vpnedu(self.lab, "wireguard")
        base.dir = self.lab.dir / "wireguard-go-keys"
        if not (base.dir / "server.conf").exists():   # the same keys in every round
            base.provision()
        # Distinct names: wireguard-go's control sockets (/var/run/wireguard/NAME.sock) are shared
        # by every network namespace on the machine, so the lab's prefix goes into them.
        self.ends = []
        for host, conf, role in (("server", "server.conf", "s"), ("client", "client.conf", "c")):
            end = WireGuardGo(self.lab, host, base.dir / conf, ifname=f"{self.lab.prefix[:11]}wg{role}",
                              binary=self.binary)
            self.ends.append(end)   # before up(): a half-started end must be stopped too
            end.up()
        self.procs = [e.proc for e in self.ends]
        self.wait_ping()

    def down(self) -> None:
        for e in getattr(self, "ends", []):
            e.down()
        self.ends = []
        self.procs = []


class OpenVPN(Tunnel):
    """OpenVPN 2.6 over UDP with AES-256-GCM, TLS certificates made on the spot, MTU 1420 like
    WireGuard's (so no tunnel's packets are fragmented), data-channel offload off (no kernel module)."""

    name = "openvpn"
    needs = ["openvpn"]
    target = "10.8.0.1"

    def describe(self) -> str:
        exe = shutil.which("openvpn") or "/usr/sbin/openvpn"
        version = " ".join(first_line([exe, "--version"]).split()[:2])
        return f"{version}, UDP, AES-256-GCM, no DCO (userspace data channel)"

    def up(self) -> None:
        from .pki import make_pki
        d = self.lab.dir / "openvpn"
        pki = make_pki(d)
        common = ["--dev", "tun", "--proto", "udp4", "--data-ciphers", "AES-256-GCM", "--tun-mtu", str(BENCH_MTU),
                  "--ca", str(pki["ca"]), "--disable-dco", "--verb", "3"]
        ovpn = shutil.which("openvpn") or "/usr/sbin/openvpn"
        self.procs.append(self.lab.spawn(
            "server", "openvpn-server", ovpn, *common, "--mode", "server", "--tls-server", "--port", "1194",
            "--topology", "subnet", "--server", "10.8.0.0", "255.255.255.0", "--dh", "none",
            "--cert", str(pki["server_crt"]), "--key", str(pki["server_key"])))
        time.sleep(0.3)
        self.procs.append(self.lab.spawn(
            "client", "openvpn-client", ovpn, *common, "--client", "--remote", SERVER_PUBLIC, "1194", "--nobind",
            "--remote-cert-tls", "server", "--cert", str(pki["client_crt"]), "--key", str(pki["client_key"])))
        log = self.lab.dir / "openvpn-client.log"
        end = time.time() + 30
        while time.time() < end:
            if log.exists() and "Initialization Sequence Completed" in log.read_text(errors="replace"):
                break
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        self.wait_ping(10)


PATHS = ["bare", "vpnedu-wireguard", "vpnedu-wireguard-simple", "vpnedu-aes256gcm", "vpnedu-null-teaching",
         "wireguard-go", "openvpn"]


def vpnedu_path(path: str) -> tuple[str, str] | None:
    """``vpnedu-SUITE`` (default datapath), ``vpnedu-SUITE-simple`` (every offload off) or
    ``vpnedu-SUITE@SPEC`` (any ``--datapath`` SPEC, e.g. ``vpnedu-wireguard@fast,no-tun-gro``)
    -> (suite, datapath); None if ``path`` is not such a path."""
    from ..protocol.suites import SUITES
    if not path.startswith("vpnedu-"):
        return None
    rest = path[len("vpnedu-"):]
    suite, at, spec = rest.partition("@")
    if not at:
        spec = "fast"
        if suite.endswith("-simple"):
            suite, spec = suite[:-len("-simple")], "simple"
    return (suite, spec) if suite in SUITES else None


def spec_problem(spec: str) -> str | None:
    """What is wrong with a ``--paths`` entry, in one line (None when nothing is)."""
    if spec in PATHS or vpnedu_path(spec) is not None:
        return None
    if spec.startswith("vpnedu@"):
        return tree_problem(spec[len("vpnedu@"):])
    if spec.startswith("wireguard-go@"):
        return wireguard_go_problem(spec[len("wireguard-go@"):])
    return (f"unknown path {spec!r}; choose from: {', '.join(PATHS)}, vpnedu-SUITE@DATAPATH, "
            "vpnedu@TREE, wireguard-go@PATH")


def make(spec: str, lab: Lab) -> Tunnel:
    """The tunnel a ``--paths`` entry names (check it with :func:`spec_problem` first)."""
    problem = spec_problem(spec)
    if problem:
        raise VpneduError(problem)
    if spec == "bare":
        return Bare(lab)
    if spec == "openvpn":
        return OpenVPN(lab)
    if spec == "wireguard-go":
        return WireGuardGoPair(lab)
    if spec.startswith("wireguard-go@"):
        return WireGuardGoPair(lab, spec[len("wireguard-go@"):])
    if spec.startswith("vpnedu@"):
        return VpneduTree(lab, spec[len("vpnedu@"):])
    suite, datapath = vpnedu_path(spec)
    tun = Vpnedu(lab, suite, extra=("--datapath", datapath))
    tun.name = spec
    tun.dir = lab.dir / spec.replace("/", "_").replace(",", "_")
    return tun
