"""DNS through the tunnel, in a namespace lab: ``DNS = 192.0.2.1, lab.test`` in the client's config.

A real resolver (dnsmasq, logging each query with its source address) listens on the app side of
the lab's router, at 192.0.2.1, and knows one name: ``app.lab.test``.  The client's namespace gets a
resolver file of its own through ``ip netns exec``'s bind mount of
``/etc/netns/<namespace>/resolv.conf`` (ip-netns(8)), created here with known content -- the host's
``/etc/resolv.conf`` is never touched, and the test checks that too.

What a user would check: ``dig +search app`` and ``getent hosts app.lab.test`` in the client's
namespace answer 192.0.2.80; the resolver saw the queries come from the server's public address
(NAT), not the client's -- they went through the tunnel; after the client stops (SIGTERM), and
after ``kill -9`` + ``vpnedu cleanup``, the namespace's resolver file is byte for byte what it was.
A ``DNS =`` entry that is neither an address nor a domain is one line, and changes nothing.
"""

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vpnedu.netns_lab.topology import APP_ADDRESS, CLIENT_NET, SERVER_PUBLIC, Lab

from ..conftest import require_tool
from ..lablib import snapshot, start_client, start_server, status, stop, vpnedu

pytestmark = [pytest.mark.root, pytest.mark.slow]

RESOLVER = "192.0.2.1"          # the router's address on the app's link
#: The client namespace's resolver file before the tunnel: what must come back, byte for byte.
BEFORE = b"# the lab client's own resolver (tests/node/test_dns_root.py)\nnameserver 198.51.100.1\noptions timeout:1\n"


def _host_resolv() -> tuple:
    p = Path("/etc/resolv.conf")
    st = os.lstat(p)
    return st.st_ino, st.st_mode, os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def dns_lab():
    """A lab (namespaces h17q-*), the client's resolver file, and dnsmasq on the router; all
    removed afterwards, whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    dnsmasq = require_tool("dnsmasq")
    require_tool("dig")
    host_before = _host_resolv()
    lab = Lab(prefix="h17q-", log=lambda s: None)
    etc = Path("/etc/netns") / lab.ns("client")
    made_etc = not etc.exists()
    try:
        lab.up()
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_bytes(BEFORE)
        lab.spawn("internet", "dnsmasq", dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                  "--no-hosts", "--bind-interfaces", f"--listen-address={RESOLVER}", "--pid-file=",
                  f"--address=/app.lab.test/{APP_ADDRESS}", "--log-queries", "--log-facility=-")
        lab.wait_for_udp("internet", 53)
        yield lab, etc / "resolv.conf"
    finally:
        lab.down()
        (etc / "resolv.conf").unlink(missing_ok=True)
        if made_etc:
            for d in (etc, etc.parent):
                try:
                    d.rmdir()
                except OSError:
                    break
    assert _host_resolv() == host_before, "the host's /etc/resolv.conf changed"


def _provision(lab: Lab, *dns: str) -> Path:
    d = lab.dir
    subprocess.run(vpnedu("server", "init", "-c", f"{d}/server.conf", "--endpoint", SERVER_PUBLIC, "--force"),
                   check=True, capture_output=True)
    args = [a for x in dns for a in ("--dns", x)]
    subprocess.run(vpnedu("server", "add-client", "client", "-c", f"{d}/server.conf", *args), check=True,
                   capture_output=True)
    return d / "client.conf"


def _queries(lab: Lab) -> list[str]:
    """The sources dnsmasq logged for app.lab.test ("query[A] app.lab.test from 203.0.113.2")."""
    log = (lab.dir / "dnsmasq.log").read_text()
    return re.findall(r"query\[\w+\] app\.lab\.test from (\S+)", log)


def test_lookups_go_through_the_tunnel_and_the_file_comes_back(dns_lab):
    lab, resolv = dns_lab
    conf = _provision(lab, RESOLVER, "lab.test")
    assert "DNS = 192.0.2.1, lab.test" in conf.read_text()
    start_server(lab)
    before = snapshot(lab, "client")
    # Before the tunnel: the namespace sees the file the fixture made (the bind mount works).
    assert lab.run("client", "cat", "/etc/resolv.conf").stdout.encode() == BEFORE

    client = start_client(lab, "client", str(conf))
    seen = lab.run("client", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 192.0.2.1" in seen and "search lab.test" in seen and "198.51.100.1" not in seen, seen
    assert "dev vpnedu0" in lab.run("client", "ip", "route", "get", RESOLVER).stdout
    st = status(lab, "client")
    assert st["dns"] == [RESOLVER, "lab.test"]
    r = lab.run("client", "dig", "+short", "+search", "+tries=2", "+time=2", "app", timeout=30)
    assert r.stdout.split() == [APP_ADDRESS], r.stdout + r.stderr
    r = lab.run("client", "getent", "hosts", "app.lab.test", timeout=30)
    assert r.returncode == 0 and r.stdout.split()[0] == APP_ADDRESS, r.stdout
    # Both queries reached the resolver from the server's address (NAT), none from the client's own.
    sources = _queries(lab)
    assert len(sources) >= 2 and set(sources) == {SERVER_PUBLIC}, sources
    assert not any(s.startswith(CLIENT_NET) for s in sources)
    log = (lab.dir / "vpn-client.log").read_text()
    assert "DNS: /etc/resolv.conf now lists 192.0.2.1, search lab.test" in log, log
    assert stop(client) == 0
    assert resolv.read_bytes() == BEFORE
    assert lab.run("client", "cat", "/etc/resolv.conf").stdout.encode() == BEFORE
    assert snapshot(lab, "client") == before

    # kill -9: the file stays as the tunnel had it, and 'vpnedu cleanup' puts it back.
    client = start_client(lab, "client", str(conf))
    assert b"nameserver 192.0.2.1" in resolv.read_bytes()
    assert stop(client, signal.SIGKILL) == -signal.SIGKILL
    assert b"nameserver 192.0.2.1" in resolv.read_bytes()
    r = lab.run("client", *vpnedu("cleanup"))
    assert r.returncode == 0 and "cleanup: undid" in r.stdout, r.stdout + r.stderr
    assert resolv.read_bytes() == BEFORE
    assert snapshot(lab, "client") == before


def test_a_bad_dns_entry_is_one_line_and_changes_nothing(dns_lab):
    lab, resolv = dns_lab
    conf = _provision(lab)
    text = conf.read_text().replace("[Peer]", "DNS = not_a domain!\n\n[Peer]", 1)
    conf.write_text(text)
    before = snapshot(lab, "client")
    t = time.time()
    r = lab.run("client", *vpnedu("client", "-c", str(conf)), timeout=30)
    assert r.returncode == 1 and time.time() - t < 20
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith(f"vpnedu: error: {conf}:") and "DNS: 'not_a domain!' is neither an " \
        "IP address nor a domain name" in err, r.stderr
    assert resolv.read_bytes() == BEFORE and snapshot(lab, "client") == before
