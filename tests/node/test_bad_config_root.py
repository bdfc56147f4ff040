"""Bad input to the real daemons: one line that names the problem and the fix, a non-zero exit,
no traceback -- and the host exactly as it was (routes, rules, addresses, nftables, sysctls,
resolv.conf), checked in a namespace lab."""

import re

import pytest

from tests.lablib import provision, snapshot, vpnedu
from vpnedu.protocol.keys import encode, generate_private_key, public_key

pytestmark = pytest.mark.root


def run_refused(lab, host: str, *args: str) -> str:
    before = snapshot(lab, host)
    resolv = lab.run(host, "cat", "/etc/resolv.conf").stdout
    r = lab.run(host, *vpnedu(*args), timeout=30)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert snapshot(lab, host) == before and lab.run(host, "cat", "/etc/resolv.conf").stdout == resolv
    return r.stderr.strip()


def test_a_server_refuses_ipv6_clients_when_ipv4_only_and_overlapping_clients(lab_factory):
    lab = lab_factory()
    d = lab.dir
    for extra, name in ((["--ipv4-only"], "v4only"), ([], "dual")):
        (d / name).mkdir()
        lab.run("server", *vpnedu("server", "init", "-c", f"{d}/{name}/server.conf", "--endpoint", "203.0.113.2",
                                  "--force", *extra), check=True)
        lab.run("server", *vpnedu("server", "add-client", "alice", "-c", f"{d}/{name}/server.conf"), check=True)
    stranger = encode(public_key(generate_private_key()))
    with open(f"{d}/v4only/server.conf", "a") as f:
        f.write(f"\n[Peer]\n# Name = bob\nPublicKey = {stranger}\nAllowedIPs = 10.0.0.3/32, fd42:42::3/128\n")
    err = run_refused(lab, "server", "server", "-c", f"{d}/v4only/server.conf")
    assert re.search(r"\[Peer\] bob: AllowedIPs fd42:42::3/128 is IPv6, but this server's Address is IPv4 only", err)
    assert "give the server an IPv6 address too" in err
    with open(f"{d}/dual/server.conf", "a") as f:
        f.write(f"\n[Peer]\n# Name = carol\nPublicKey = {stranger}\nAllowedIPs = 10.0.0.0/28\n")
    err = run_refused(lab, "server", "server", "-c", f"{d}/dual/server.conf")
    assert "AllowedIPs 10.0.0.0/28 of [Peer] carol and 10.0.0.2/32 of [Peer] alice overlap" in err
    assert "would send 10.0.0.2/32 to only one of them" in err
    assert "give each client its own addresses" in err
    # vpnedu conf check says the same, before anyone starts the server.
    assert run_refused(lab, "server", "conf", "check", f"{d}/dual/server.conf") == err


@pytest.mark.parametrize("dns, words", [("10.0.0.1, not_a@host!", "'not_a@host!' is neither an IP address nor a domain"),
                                        ("300.1.1.1", "'300.1.1.1' is neither an IP address nor a domain")])
def test_a_client_refuses_a_dns_that_is_not_an_address_or_domain(lab_factory, dns, words):
    lab = lab_factory()
    provision(lab)
    path = lab.dir / "client.conf"
    text = path.read_text()
    path.write_text(re.sub(r"(?m)^Address = .*$", lambda m: f"{m.group(0)}\nDNS = {dns}", text, count=1))
    err = run_refused(lab, "client", "client", "-c", str(path))
    assert words in err and "e.g. 'DNS = 10.0.0.1'" in err
