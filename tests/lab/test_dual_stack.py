"""A dual-stack tunnel in the namespace lab (issue 17): both families inside and outside it.

One lab for every check: provisioning's default (10.0.0.0/24 + a ULA /64, AllowedIPs =
0.0.0.0/0, ::/0), the server in nat mode, curl -4 and curl -6 from the client with the app's log
showing the server's addresses, ping6 on the tunnel device, the policy routing for both families,
the host put back after a normal stop and after kill -9 + 'vpnedu cleanup', and a client whose
Endpoint is the server's IPv6 address.
"""

import os
import signal

import pytest

from vpnedu.netns_lab.topology import APP_ADDRESS, APP_ADDRESS6, SERVER_PUBLIC, SERVER_PUBLIC6, Lab

from ..lablib import provision, snapshot, start_client, start_server, status, stop, vpnedu

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
