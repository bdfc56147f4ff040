"""The server's DNS forwarder in a namespace lab (``DNSForwarder``, :mod:`vpnedu.proxy.dns`).

The upstream is a real resolver nobody here wrote: dnsmasq on the lab's router at 192.0.2.1,
logging each query with its source and knowing one name, ``app.lab.test``.  The server's
namespace gets ``nameserver 192.0.2.1`` through ``ip netns exec``'s bind mount of
``/etc/netns/<namespace>/resolv.conf`` (ip-netns(8)); the host's ``/etc/resolv.conf`` is never
touched, and the fixture checks that.

What a user would check: from the client, ``dig @10.0.0.1`` and ``dig +tcp @10.0.0.1`` (and the
same at the tunnel's IPv6 address) answer 192.0.2.80, in both forwarding modes; dnsmasq saw the
queries come from the server's public address; the server's public address 203.0.113.2 answers
no DNS from outside; a source that is not a tunnel peer gets nothing; a taken port 53 is one line
naming DNSForwarder, and ``DNSForwarder = false`` listens on nothing.
"""

import hashlib
import os
import re
import signal
from pathlib import Path

import pytest

from vpnedu import config
from vpnedu.netns_lab.topology import APP_ADDRESS, SERVER_PUBLIC, Lab

from ..conftest import require_tool
from ..lablib import provision, start_client, start_server, status, stop, vpnedu

pytestmark = pytest.mark.root

RESOLVER = "192.0.2.1"          # the router's address on the app's link
BIG = [f"198.18.0.{i}" for i in range(1, 61)]   # 60 A records: about 1 KB of answer
SERVER_RESOLV = b"# the lab server's resolvers (tests/node/test_dns_forwarder_root.py)\nnameserver 10.0.0.1\n" \
                b"nameserver 192.0.2.1\noptions timeout:1\n"


def _host_resolv() -> tuple:
    p = Path("/etc/resolv.conf")
    st = os.lstat(p)
    return st.st_ino, st.st_mode, os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def fw_lab():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    dnsmasq = require_tool("dnsmasq")
    require_tool("dig")
    host_before = _host_resolv()
    lab = Lab(prefix="h18d-", log=lambda s: None)
    etcs = [Path("/etc/netns") / lab.ns(h) for h in ("server", "client")]
    made = [not e.exists() for e in etcs]
    try:
        lab.up()
        for e in etcs:
            e.mkdir(parents=True, exist_ok=True)
        (etcs[0] / "resolv.conf").write_bytes(SERVER_RESOLV)
        (etcs[1] / "resolv.conf").write_bytes(b"nameserver 198.51.100.1\noptions timeout:1\n")
        # big.lab.test: more A records than a 512-byte UDP answer holds (RFC 1035 section 4.2.1).
        (lab.dir / "big.hosts").write_text("".join(f"{a} big.lab.test\n" for a in BIG))
        lab.spawn("internet", "dnsmasq", dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                  "--no-hosts", "--bind-interfaces", f"--listen-address={RESOLVER}", "--pid-file=",
                  f"--address=/app.lab.test/{APP_ADDRESS}", f"--addn-hosts={lab.dir / 'big.hosts'}",
                  "--log-queries", "--log-facility=-")
        lab.wait_for_udp("internet", 53)
        lab.wait_for_port("internet", 53)
        yield lab
    finally:
        lab.down()
        for e, m in zip(etcs, made):
            (e / "resolv.conf").unlink(missing_ok=True)
            if m:
                try:
                    e.rmdir()
                except OSError:
                    pass
    assert _host_resolv() == host_before, "the host's /etc/resolv.conf changed"


def _queries(lab: Lab) -> list[str]:
    log = (lab.dir / "dnsmasq.log").read_text()
    return re.findall(r"query\[\w+\] app\.lab\.test from (\S+)", log)


def dig(lab: Lab, host: str, *args: str) -> list[str]:
    r = lab.run(host, "dig", "+short", "+tries=1", "+time=2", *args, "app.lab.test", timeout=30)
    return r.stdout.split() if r.returncode == 0 else [f"rc={r.returncode}"] + r.stdout.split()


def _tunnel6(lab: Lab) -> str:
    cfg = config.load(lab.dir / "server.conf")
    return next(str(a.ip) for a in cfg.interface.addresses if a.version == 6)


@pytest.mark.parametrize("mode", ["nat", "proxy"])
def test_dig_through_the_tunnel_over_udp_and_tcp_both_families(fw_lab, mode):
    lab = fw_lab
    provision(lab)
    v6 = _tunnel6(lab)
    server = start_server(lab, "--forwarding", mode)
    # From outside: the public address answers no DNS (the listeners are on the tunnel addresses only).
    assert dig(lab, "client", f"@{SERVER_PUBLIC}")[0].startswith("rc="), "the public address answered"
    assert dig(lab, "internet", f"@{SERVER_PUBLIC}", "+tcp")[0].startswith("rc=")
    listening = lab.run("server", "ss", "-Hulnt", "sport = :53").stdout
    assert "10.0.0.1:53" in listening and f"[{v6}]:53" in listening and SERVER_PUBLIC not in listening, listening
    assert "0.0.0.0:53" not in listening and "*:53" not in listening, listening

    client = start_client(lab)
    for target in ("10.0.0.1", v6):
        assert dig(lab, "client", f"@{target}") == [APP_ADDRESS], target
        assert dig(lab, "client", f"@{target}", "+tcp") == [APP_ADDRESS], target
    # dnsmasq saw every one of them come from the server's own address, none from the tunnel.
    sources = _queries(lab)
    assert len(sources) == 4 and set(sources) == {SERVER_PUBLIC}, sources
    st = status(lab, "server")["dns_forwarder"]
    assert st["upstreams"] == [RESOLVER] and st["answered"] == 4 and st["servfail"] == 0, st
    # Inside the tunnel, the public address still answers no DNS.
    assert dig(lab, "client", f"@{SERVER_PUBLIC}")[0].startswith("rc=")
    # A source that is no tunnel peer (the server asking itself: 10.0.0.1) gets nothing.
    assert dig(lab, "server", "@10.0.0.1")[0].startswith("rc=")
    st = status(lab, "server")["dns_forwarder"]
    assert st["dropped"] >= 1 and st["answered"] == 4, st
    assert len(_queries(lab)) == 4
    assert stop(client) == 0
    assert stop(server) == 0


def test_port_taken_is_one_line_and_false_turns_it_off(fw_lab):
    lab = fw_lab
    provision(lab)
    squat = lab.spawn("server", "squatter", lab.python()[0], "-c",
                      "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                      "s.bind(('0.0.0.0', 53)); time.sleep(120)")
    try:
        lab.wait_for_udp("server", 53)
        r = lab.run("server", *vpnedu("server", "-c", f"{lab.dir}/server.conf"), timeout=40)
        err = r.stderr.strip()
        assert r.returncode == 1 and "\n" not in err, r.stderr
        assert "10.0.0.1:53" in err and "DNSForwarder = false" in err, err
        assert "vpnedu0" not in lab.run("server", "ip", "-brief", "link").stdout     # all undone
        conf = lab.dir / "server.conf"
        conf.write_text(conf.read_text().replace("[Interface]\n", "[Interface]\nDNSForwarder = false\n", 1))
        server = start_server(lab)
        client = start_client(lab)
        assert status(lab, "server")["dns_forwarder"] is None
        assert dig(lab, "client", "@10.0.0.1")[0].startswith("rc=")
        assert _queries(lab) == []
        assert stop(client) == 0 and stop(server) == 0
    finally:
        squat.send_signal(signal.SIGKILL)
        squat.wait(10)


def test_the_dns_line_add_client_writes_resolves_through_the_tunnel(fw_lab):
    lab = fw_lab
    provision(lab)
    conf = (lab.dir / "client.conf").read_text()
    v6 = _tunnel6(lab)
    assert f"DNS = 10.0.0.1, {v6}\n" in conf
    server = start_server(lab)
    client = start_client(lab)
    seen = lab.run("client", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 10.0.0.1" in seen and "198.51.100.1" not in seen, seen
    # The default resolver: getent (the C library) and dig without @, both through the tunnel.
    r = lab.run("client", "getent", "hosts", "app.lab.test", timeout=30)
    assert r.returncode == 0 and r.stdout.split()[0] == APP_ADDRESS, r.stdout + r.stderr
    assert dig(lab, "client") == [APP_ADDRESS]
    sources = _queries(lab)
    assert len(sources) >= 2 and set(sources) == {SERVER_PUBLIC}, sources
    assert status(lab, "server")["dns_forwarder"]["answered"] >= 2
    assert stop(client) == 0
    assert "198.51.100.1" in lab.run("client", "cat", "/etc/resolv.conf").stdout     # put back
    assert stop(server) == 0


def test_the_lab_gives_each_namespace_its_own_resolver_file():
    """A lab client with add-client's DNS = changes its namespace's file, never the host's."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    host_before = _host_resolv()
    lab = Lab(prefix="h18r-", log=lambda s: None)
    try:
        lab.up()
        for h in lab.hosts():
            assert (Path("/etc/netns") / lab.ns(h) / "resolv.conf").read_bytes() == Path("/etc/resolv.conf").read_bytes()
        provision(lab)
        server = start_server(lab)
        client = start_client(lab)
        mine = Path("/etc/netns") / lab.ns("client") / "resolv.conf"
        assert b"nameserver 10.0.0.1" in mine.read_bytes()
        assert _host_resolv() == host_before
        assert stop(client) == 0 and stop(server) == 0
        assert mine.read_bytes() == Path("/etc/resolv.conf").read_bytes()
    finally:
        lab.down()
    assert not any((Path("/etc/netns") / lab.ns(h)).exists() for h in lab.hosts())
    assert _host_resolv() == host_before


def test_the_command_line_turns_each_service_on_off_or_moves_it(fw_lab):
    """``--no-dns-forwarder``, ``--socks-port off`` and ``--http-proxy-port 8118`` win over the
    file, as ``--forwarding`` does; a bad port is one line naming the flag, before anything changes."""
    lab = fw_lab
    provision(lab)
    r = lab.run("server", *vpnedu("server", "-c", f"{lab.dir}/server.conf", "--socks-port", "70000"), timeout=40)
    err = r.stderr.strip()
    assert r.returncode == 1 and "\n" not in err and "Traceback" not in err, r.stderr
    assert "--socks-port: '70000' is not a port number (1-65535) or 'off'" in err and "SocksPort = 1080" in err, err
    assert "vpnedu0" not in lab.run("server", "ip", "-brief", "link").stdout
    server = start_server(lab, "--no-dns-forwarder", "--socks-port", "off", "--http-proxy-port", "8118")
    try:
        assert status(lab, "server")["dns_forwarder"] is None
        listening = lab.run("server", "ss", "-Htlnu").stdout
        ports = {line.split()[4].rsplit(":", 1)[1] for line in listening.splitlines()}
        assert "8118" in ports and "1080" not in ports and "3128" not in ports and "53" not in ports, listening
        assert all(line.split()[4].startswith(("10.0.0.1:", "[fd")) for line in listening.splitlines()
                   if line.split()[4].endswith(":8118")), listening
    finally:
        assert stop(server) == 0


def test_a_truncated_answer_keeps_its_tc_bit_and_dig_gets_it_whole_over_tcp(fw_lab):
    """A UDP answer too big for 512 bytes comes back from the upstream with TC set (RFC 1035
    section 4.2.1, RFC 7766): the forwarder passes it on with TC and the query's id, and dig
    then asks again over TCP -- which the forwarder also carries upstream over TCP -- and gets
    every record."""
    lab = fw_lab
    provision(lab)
    server = start_server(lab)
    client = start_client(lab)
    try:
        q = ("+noedns", "+tries=1", "+time=2", "@10.0.0.1", "big.lab.test")
        cut = lab.run("client", "dig", "+ignore", *q, timeout=30).stdout      # +ignore: no retry over TCP
        assert re.search(r";; flags: qr[a-z ]* tc[a-z ]*;", cut), cut
        whole = lab.run("client", "dig", *q, timeout=30).stdout
        assert ";; Truncated, retrying in TCP mode." in whole, whole
        got = re.findall(r"^big\.lab\.test\.\s+\d+\s+IN\s+A\s+(\S+)$", whole, re.M)
        assert sorted(got) == sorted(BIG), whole
        log = (lab.dir / "dnsmasq.log").read_text()
        assert len(re.findall(rf"query\[A\] big\.lab\.test from {SERVER_PUBLIC}", log)) == 3, log
    finally:
        assert stop(client) == 0 and stop(server) == 0
