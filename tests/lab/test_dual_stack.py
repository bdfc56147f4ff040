"""A dual-stack tunnel in the namespace lab (issue 17): both families inside and outside it.

One lab for every check: provisioning's default (10.0.0.0/24 + a ULA /64, AllowedIPs =
0.0.0.0/0, ::/0), the server in nat mode, curl -4 and curl -6 from the client with the app's log
showing the server's addresses, ping6 on the tunnel device, the policy routing for both families,
the host put back after a normal stop and after kill -9 + 'vpnedu cleanup', and a client whose
Endpoint is the server's IPv6 address.

The same dual-stack client with the server in proxy mode (issue 17, the proxy half): curl -6 and
curl -4, a DNS lookup over IPv6 (dig -6 to a dnsmasq on the app host's IPv6 address) and ping -6
all arrive from the server's own addresses, with the router cutting every direct path from the
clients' LAN to the app's link; a capture on the app's link and the proxy's flow events show the
echo requests were the proxy's own; a live IPv6 flow reads ``[addr]:port`` in ``vpnedu status
--flows``; the IPv6 TPROXY table, rule and route are undone after SIGTERM, and after kill -9 by
the next start and by ``vpnedu cleanup``.
"""

import json
import os
import re
import signal

import pytest

from vpnedu.netns_lab.topology import (APP_ADDRESS, APP_ADDRESS6, APP_NET, APP_NET6, CLIENT_NET, CLIENT_NET6,
                                       SERVER_PUBLIC, SERVER_PUBLIC6, Lab)

from ..conftest import require_tool
from ..lablib import provision, snapshot, start_client, start_server, status, stop, vpnedu, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def lab():
    lab = Lab(prefix=f"h17d{os.getpid() % 1000}-", log=lambda s: None)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def curl(lab, family: str, url: str) -> str:
    r = lab.run("client", "curl", family, "-sS", "--max-time", "10", url)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_dual_stack_nat_full_tunnel_and_ipv6_endpoint(lab):
    provision(lab)
    before = {h: snapshot(lab, h) for h in ("client", "server")}
    # Without the VPN the app sees the client's own addresses: the lab is dual stack.
    assert "your address is 2001:db8:c::2" in curl(lab, "-6", f"http://[{APP_ADDRESS6}]/")
    srv = start_server(lab)
    cli = start_client(lab)
    try:
        assert f"your address is {SERVER_PUBLIC}" in curl(lab, "-4", f"http://{APP_ADDRESS}/v4")
        assert f"your address is {SERVER_PUBLIC6}" in curl(lab, "-6", f"http://[{APP_ADDRESS6}]/v6")
        log = lab.app_log()
        assert f"{SERVER_PUBLIC} GET /v4" in log and f"{SERVER_PUBLIC6} GET /v6" in log, log
        r = lab.run("client", "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "-I", "vpnedu0", APP_ADDRESS6)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
        # The server's flow table (conntrack, one family at a time) lists the IPv6 flows too.
        flows = status(lab, "server")["flows"]
        v6 = [f for f in flows if f["destination"].startswith(f"[{APP_ADDRESS6}]")]
        assert {f["proto"] for f in v6} >= {"tcp", "icmpv6"}, flows
        assert all(f["client"].startswith("[fd") and f["proxy"].startswith(f"[{SERVER_PUBLIC6}]:") for f in v6), v6
        # The kernel's own answer: the app through table 51820 and the tunnel device, for each
        # family; the tunnel's own (marked) UDP to the endpoint by the LAN.
        get6 = lab.run("client", "ip", "-6", "route", "get", APP_ADDRESS6).stdout
        assert "dev vpnedu0 table 51820" in get6, get6
        get4 = lab.run("client", "ip", "route", "get", APP_ADDRESS).stdout
        assert "dev vpnedu0 table 51820" in get4, get4
        own = lab.run("client", "ip", "route", "get", SERVER_PUBLIC, "mark", "51820").stdout
        assert "dev eth0" in own and "vpnedu0" not in own, own
        st = status(lab, "client")
        assert st["fwmark"] == 51820 and st["policy_table"] == 51820
        srv_nft = lab.run("server", "nft", "list", "table", "ip6", "vpnedu_vpnedu0").stdout
        assert "masquerade" in srv_nft and "ip6 saddr fd" in srv_nft, srv_nft
        assert lab.run("server", "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    finally:
        assert stop(cli) == 0
    assert snapshot(lab, "client") == before["client"]

    # kill -9: the rules stay behind (the device and its routes die with the process) until
    # 'vpnedu cleanup' undoes them from the journal.
    cli = start_client(lab)
    stop(cli, signal.SIGKILL)
    assert "lookup 51820" in lab.run("client", "ip", "-6", "rule").stdout
    r = lab.run("client", *vpnedu("cleanup"))
    assert r.returncode == 0 and "undid" in r.stdout, r.stdout + r.stderr
    assert snapshot(lab, "client") == before["client"]

    # The outer tunnel over IPv6: Endpoint = [2001:db8:5::2]:51820 (the server listens on both).
    conf = lab.dir / "client6.conf"
    conf.write_text((lab.dir / "client.conf").read_text().replace(
        f"Endpoint = {SERVER_PUBLIC}:51820", f"Endpoint = [{SERVER_PUBLIC6}]:51820"))
    conf.chmod(0o600)
    cli = start_client(lab, "client", str(conf))
    try:
        assert status(lab, "client")["peers"][0]["endpoint"] == f"[{SERVER_PUBLIC6}]:51820"
        assert status(lab, "server")["peers"][0]["endpoint"].startswith("[2001:db8:c::2]:")
        assert f"your address is {SERVER_PUBLIC}" in curl(lab, "-4", f"http://{APP_ADDRESS}/")
        own = lab.run("client", "ip", "-6", "route", "get", SERVER_PUBLIC6, "mark", "51820").stdout
        assert "dev eth0" in own, own
    finally:
        assert stop(cli) == 0
        stop(srv)
    assert snapshot(lab, "client") == before["client"]
    assert snapshot(lab, "server") == before["server"]


# ---------------------------------------------------------------------------- proxy mode
def _cut_direct_paths(lab) -> None:
    """The router drops whatever the clients' LAN sends straight to the app's link, in both
    families (a table of the test's own in the router's namespace, gone with the lab): from
    here on the app can only be reached through the server."""
    lab.run("internet", "nft", "-f", "-", check=True, input=(
        "table inet h17cut {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    ip saddr {CLIENT_NET}.0/24 ip daddr {APP_NET}.0/24 counter drop\n"
        f"    ip6 saddr {CLIENT_NET6}::/64 ip6 daddr {APP_NET6}::/64 counter drop\n"
        "  }\n"
        "}\n"))


def _cut_counts(lab) -> list[int]:
    out = lab.run("internet", "nft", "list", "table", "inet", "h17cut").stdout
    return [int(n) for n in re.findall(r"counter packets (\d+)", out)]


def _log(lab, name: str) -> str:
    p = lab.dir / f"{name}.log"
    return p.read_text() if p.exists() else ""


def _finish(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(10)


def test_dual_stack_proxy_carries_ipv6_tcp_udp_and_ping(lab):
    dnsmasq, tcpdump = require_tool("dnsmasq"), require_tool("tcpdump")
    require_tool("dig")
    provision(lab)
    # A real resolver on the app host's IPv6 address (the app's own name service is IPv4's).
    lab.spawn("app", "dnsmasq6", dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
              "--bind-interfaces", f"--listen-address={APP_ADDRESS6}", "--pid-file=",
              f"--address=/app.lab.test/{APP_ADDRESS6}", "--log-queries", "--log-facility=-")
    wait_for(lambda: f"[{APP_ADDRESS6}]:53" in lab.run("app", "ss", "-Huln", "sport = :53").stdout,
             timeout=10, what="dnsmasq on the app's IPv6 address")
    _cut_direct_paths(lab)
    direct = lab.run("client", "ping", "-6", "-c", "1", "-W", "1", APP_ADDRESS6)
    assert direct.returncode != 0, "the router's cut lets the client reach the app directly"
    cut_before = _cut_counts(lab)

    srv = start_server(lab, "--forwarding", "proxy")
    events = lab.spawn("server", "flow-events", *vpnedu("events", "--kind", "proxy.flow", "--json"))
    wait_for(lambda: "waiting for" in _log(lab, "flow-events"), timeout=10, what="the event stream",
             proc=events)
    # Echo requests as they reach the app's link (type 128 right after the 40-byte header).
    capture = lab.spawn("app", "echo-capture", tcpdump, "-ni", "eth0", "-l", "--immediate-mode", "icmp6 and ip6[40] == 128")
    wait_for(lambda: "listening on" in _log(lab, "echo-capture"), timeout=10, what="tcpdump", proc=capture)
    cli = start_client(lab)
    try:
        assert f"your address is {SERVER_PUBLIC6}" in curl(lab, "-6", f"http://[{APP_ADDRESS6}]/proxy6")
        assert f"your address is {SERVER_PUBLIC}" in curl(lab, "-4", f"http://{APP_ADDRESS}/proxy4")
        log = lab.app_log()
        assert f"{SERVER_PUBLIC6} GET /proxy6" in log and f"{SERVER_PUBLIC} GET /proxy4" in log, log
        # The client's kernel sends the app's IPv6 traffic into the tunnel (and the router
        # would drop it on any other path).
        get6 = lab.run("client", "ip", "-6", "route", "get", APP_ADDRESS6).stdout
        assert "dev vpnedu0 table 51820" in get6, get6
        r = lab.run("client", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", APP_ADDRESS6)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
        # UDP over IPv6: dig takes an answer only from the address it asked, so the proxy's
        # reply left from the resolver's address; the resolver saw the server's.
        r = lab.run("client", "dig", "-6", f"@{APP_ADDRESS6}", "app.lab.test", "AAAA", "+short", "+time=2",
                    "+tries=2")
        assert r.stdout.strip() == APP_ADDRESS6, r.stdout + r.stderr
        asked = re.findall(r"query\[AAAA\] app\.lab\.test from (\S+)", _log(lab, "dnsmasq6"))
        assert asked == [SERVER_PUBLIC6], _log(lab, "dnsmasq6")
        # Connect first, over IPv6 too: a closed port is refused (the proxy's IPv6 RST), at once.
        r = lab.run("client", *lab.python("-m", "vpnedu.netns_lab.traffic", "connect", APP_ADDRESS6, "81"))
        refused = json.loads(r.stdout.strip().splitlines()[-1])
        assert refused["result"] == "Connection refused" and refused["seconds"] < 2, refused
        # A live IPv6 flow, as 'vpnedu status --flows' prints it.
        drip = lab.spawn("client", "drip6", "curl", "-6", "-sS", "-o", "/dev/null", "--max-time", "10",
                         f"http://[{APP_ADDRESS6}]/drip/3")
        try:
            wait_for(lambda: any(f["destination"] == f"[{APP_ADDRESS6}]:80" and f["state"] == "established"
                                 for f in status(lab, "server")["flows"]), timeout=10, what="the IPv6 flow")
            text = lab.run("server", *vpnedu("status", "--flows")).stdout
        finally:
            drip.wait(15)
        rows = [x.split() for x in text.splitlines() if f"[{APP_ADDRESS6}]:80" in x]
        assert len(rows) == 1, text
        proto, client, server_end, destination, state = rows[0][:5]
        assert (proto, destination, state) == ("tcp", f"[{APP_ADDRESS6}]:80", "established"), text
        assert re.fullmatch(r"\[fd[0-9a-f:]+::2\]:\d+", client), text          # the client's ULA address
        assert re.fullmatch(rf"\[{re.escape(SERVER_PUBLIC6)}\]:\d+", server_end), text
    finally:
        assert stop(cli) == 0
        _finish(capture)
        _finish(events)
    flows = [json.loads(x) for x in _log(lab, "flow-events").splitlines() if x.startswith("{")]
    opened = [e["fields"] for e in flows if e["kind"] == "proxy.flow.opened"]
    by = {(f["proto"], f["destination"]): f for f in opened}
    assert ("tcp", f"{APP_ADDRESS}:80") in by, opened
    # Each IPv6 flow: from the client's ULA address, relayed from the server's public IPv6 one.
    for key in (("tcp", f"[{APP_ADDRESS6}]:80"), ("udp", f"[{APP_ADDRESS6}]:53"),
                ("icmp", f"[{APP_ADDRESS6}]:0")):
        assert key in by, opened
        f = by[key]
        assert f["client"].startswith("[fd") and f["proxy"].startswith(f"[{SERVER_PUBLIC6}]:"), f
    # The app's link saw only the proxy's own echo requests: from the server's address, with the
    # identifier the proxy chose for the flow -- not the client's packets forwarded.
    our_id = int(by[("icmp", f"[{APP_ADDRESS6}]:0")]["proxy"].rsplit(":", 1)[1])
    seen = re.findall(r"IP6 (\S+) > (\S+): ICMP6, echo request, id (\d+), seq (\d+)",
                      _log(lab, "echo-capture"))
    assert sorted(seen) == [(SERVER_PUBLIC6, APP_ADDRESS6, str(our_id), str(s)) for s in (1, 2, 3)], \
        _log(lab, "echo-capture")
    # Nothing tried the direct path while the tunnel was up.
    assert _cut_counts(lab) == cut_before
    assert stop(srv) == 0


def test_dual_stack_proxy_ipv6_rules_undone_after_stop_kill_and_cleanup(lab):
    provision(lab)
    before = snapshot(lab, "server")

    def v6_pieces() -> dict:
        """The proxy's IPv6 half on the server: its ip6 table, rule, local route and forwarding."""
        def out(*cmd):
            return lab.run("server", *cmd).stdout
        return {"table": "tproxy to :" in out("nft", "list", "table", "ip6", "vpnedu_vpnedu0"),
                "rule": "fwmark 0x767065 lookup 7670" in out("ip", "-6", "rule"),
                "route": "local default dev lo" in out("ip", "-6", "route", "show", "table", "7670"),
                "forwarding": out("sysctl", "-n", "net.ipv6.conf.all.forwarding").strip()}
    everything = {"table": True, "rule": True, "route": True, "forwarding": "1"}
    assert v6_pieces() == {"table": False, "rule": False, "route": False, "forwarding": "0"}
    # SIGTERM.
    srv = start_server(lab, "--forwarding", "proxy")
    assert v6_pieces() == everything
    assert stop(srv) == 0
    assert snapshot(lab, "server") == before
    # kill -9 leaves them; the next start takes them over and the proxy works through them.
    srv = start_server(lab, "--forwarding", "proxy")
    stop(srv, signal.SIGKILL)
    assert v6_pieces() == everything
    srv = start_server(lab, "--forwarding", "proxy")
    assert "to be replaced in place" in _log(lab, "vpn-server")
    cli = start_client(lab)
    try:
        assert f"your address is {SERVER_PUBLIC6}" in curl(lab, "-6", f"http://[{APP_ADDRESS6}]/restarted")
    finally:
        assert stop(cli) == 0
    # kill -9 again, then 'vpnedu cleanup' undoes it from the journal.
    stop(srv, signal.SIGKILL)
    assert v6_pieces() == everything
    r = lab.run("server", *vpnedu("cleanup"))
    assert r.returncode == 0 and "undid" in r.stdout, r.stdout + r.stderr
    assert snapshot(lab, "server") == before
