"""PiVPN-style provisioning: no root needed."""

import os
import stat

import pytest

from vpnedu import config
from vpnedu.errors import VpneduError
from vpnedu.provision import add_client, init_server

from ..conftest import run_cli


def test_init_and_add_clients(tmp_path):
    sc = tmp_path / "server.conf"
    r = run_cli("server", "init", "-c", str(sc), "--endpoint", "203.0.113.2")
    assert r.returncode == 0 and "server public key:" in r.stdout
    for name, ip in (("alice", "10.0.0.2"), ("bob", "10.0.0.3")):
        r = run_cli("server", "add-client", name, "-c", str(sc))
        assert r.returncode == 0, r.stderr
        # Both numbers, each with the file and setting it is in: the client's own address (with
        # the tunnel subnet's prefix) and the server's route to it (one address, /32).
        assert f"{name}'s address in the tunnel is {ip} and fd" in r.stdout and f"(Address = {ip}/24, fd" in r.stdout
        assert f"the server sends packets for {ip}/32 and " in r.stdout and f"(AllowedIPs = {ip}/32, fd" in r.stdout
        c = config.load(tmp_path / f"{name}.conf")
        assert str(c.interface.addresses[0]) == f"{ip}/24" and c.interface.addresses[1].version == 6
        assert c.peers[0].endpoint == ("203.0.113.2", 51820)
        assert [str(n) for n in c.peers[0].allowed_ips] == ["0.0.0.0/0", "::/0"]
        assert c.peers[0].preshared_key and c.peers[0].persistent_keepalive == 25
    s = config.load(sc)
    assert [p.name for p in s.peers] == ["alice", "bob"]
    assert s.peers[0].public_key == config.load(tmp_path / "alice.conf").interface.public_key
    for f in ("server.conf", "alice.conf", "bob.conf"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o600
    # The client file is plain wg-quick: no vpnedu-only keys for the default suite.
    text = (tmp_path / "alice.conf").read_text()
    assert "CipherSuite" not in text and "PublicEndpoint" not in text
    # The server's DNS forwarder is on (the default): the client asks the server's tunnel addresses.
    server_ips = [str(a.ip) for a in s.interface.addresses]
    assert config.load(tmp_path / "alice.conf").interface.dns == server_ips
    assert f"DNS = {server_ips[0]}, {server_ips[1]}\n" in text


def test_add_client_dns_line(tmp_path):
    sc = tmp_path / "server.conf"
    assert run_cli("server", "init", "-c", str(sc), "--endpoint", "203.0.113.2", "--ipv4-only").returncode == 0
    assert run_cli("server", "add-client", "a", "-c", str(sc)).returncode == 0
    assert config.load(tmp_path / "a.conf").interface.dns == ["10.0.0.1"]
    assert run_cli("server", "add-client", "b", "-c", str(sc), "--dns", "192.0.2.1").returncode == 0
    assert config.load(tmp_path / "b.conf").interface.dns == ["192.0.2.1"]          # --dns wins
    assert run_cli("server", "add-client", "c", "-c", str(sc), "--no-dns").returncode == 0
    assert "DNS" not in (tmp_path / "c.conf").read_text()
    r = run_cli("server", "add-client", "d", "-c", str(sc), "--no-dns", "--dns", "192.0.2.1")
    assert r.returncode == 1 and "contradict" in r.stderr and not (tmp_path / "d.conf").exists()
    # DNSForwarder = false on the server: nothing answers on its tunnel address, so no DNS line.
    sc.write_text(sc.read_text().replace("[Interface]\n", "[Interface]\nDNSForwarder = false\n", 1))
    assert run_cli("server", "add-client", "e", "-c", str(sc)).returncode == 0
    assert "DNS" not in (tmp_path / "e.conf").read_text()
    assert "DNSForwarder = false" in sc.read_text()      # kept when the server file is rewritten


def test_provisioning_errors(tmp_path):
    sc = tmp_path / "server.conf"
    init_server(sc, endpoint=None)
    with pytest.raises(VpneduError, match="already exists"):
        init_server(sc, endpoint=None)
    with pytest.raises(VpneduError, match="public endpoint is unknown"):
        add_client(sc, "alice")
    add_client(sc, "alice", endpoint=("203.0.113.2", 51820))
    with pytest.raises(VpneduError, match="already exists"):
        add_client(sc, "alice", endpoint=("203.0.113.2", 51820))
    with pytest.raises(VpneduError, match="not usable as a file name"):
        add_client(sc, "../evil", endpoint=("203.0.113.2", 51820))
    small = tmp_path / "small.conf"
    init_server(small, endpoint=("203.0.113.2", 51820), subnet="10.9.0.0/30")
    add_client(small, "one")
    with pytest.raises(VpneduError, match="no free address"):
        add_client(small, "two")
    r = run_cli("server", "init", "-c", str(tmp_path / "x.conf"), "--subnet", "banana")
    assert r.returncode == 1 and r.stderr.startswith("vpnedu: error: 'banana' is not a subnet")
    # A path that cannot be written (its "folder" is a file): one line naming the file and the fix,
    # and nothing half-written.
    (tmp_path / "afile").write_text("")
    r = run_cli("server", "init", "-c", str(tmp_path / "afile" / "s.conf"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"vpnedu: error: cannot write {tmp_path / 'afile' / 's.conf'}: {tmp_path / 'afile'} is not a folder")
    assert "exists and is writable" in r.stderr
    before = sc.read_text()
    r = run_cli("server", "add-client", "zed", "-c", str(sc), "--endpoint", "203.0.113.2", "--out", str(tmp_path / "afile" / "sub"))
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sc.read_text() == before and not list(tmp_path.glob(".*.tmp*"))


def test_conf_check_export_and_import(tmp_path):
    sc = tmp_path / "server.conf"
    run_cli("server", "init", "-c", str(sc), "--endpoint", "203.0.113.2")
    run_cli("server", "add-client", "alice", "-c", str(sc))
    r = run_cli("conf", "check", str(tmp_path / "alice.conf"))
    assert r.returncode == 0 and "OK, suite wireguard, address 10.0.0.2/24" in r.stdout
    wg = run_cli("conf", "export", "--wg", str(tmp_path / "alice.conf")).stdout
    assert "Address" not in wg and "PrivateKey" in wg and "Endpoint = 203.0.113.2:51820" in wg
    assert run_cli("conf", "export", str(tmp_path / "alice.conf")).stdout == (tmp_path / "alice.conf").read_text()
    r = run_cli("conf", "import", "-", "--address", "10.0.0.9/24", "-o", str(tmp_path / "imp.conf"), input=wg)
    assert r.returncode == 0, r.stderr
    assert str(config.load(tmp_path / "imp.conf").interface.addresses[0]) == "10.0.0.9/24"
    r = run_cli("conf", "import", "-", input="[Interface]\nPrivateKey = nope\n")
    assert r.returncode == 1 and r.stderr.startswith("vpnedu: error: <stdin>:2: PrivateKey")


def test_dual_stack_by_default(tmp_path):
    """init gives the tunnel a random ULA /64 beside 10.0.0.0/24 (RFC 4193 §3.2); add-client takes the
    next free address of each family, the server routes /32 and /128 to it, and the client sends
    both families into the tunnel (or just both subnets with --split)."""
    import ipaddress
    sc = tmp_path / "server.conf"
    r = run_cli("server", "init", "-c", str(sc), "--endpoint", "2001:db8:2::2")
    assert r.returncode == 0, r.stderr
    s = config.load(sc)
    v4, v6 = s.interface.addresses
    assert str(v4) == "10.0.0.1/24" and v6.version == 6 and v6.network.prefixlen == 64
    assert v6.network.subnet_of(ipaddress.ip_network("fd00::/8")) and v6.ip == v6.network.network_address + 1
    assert s.interface.public_endpoint == ("2001:db8:2::2", 51820)
    net6 = v6.network
    for name, n, split in (("alice", 2, False), ("bob", 3, True)):
        r = run_cli("server", "add-client", name, "-c", str(sc), *(["--split"] if split else []))
        assert r.returncode == 0, r.stderr
        ip6 = net6.network_address + n
        assert f"{name}'s address in the tunnel is 10.0.0.{n} and {ip6}" in r.stdout
        assert f"(AllowedIPs = 10.0.0.{n}/32, {ip6}/128 in server.conf)" in r.stdout
        c = config.load(tmp_path / f"{name}.conf")
        assert [str(a) for a in c.interface.addresses] == [f"10.0.0.{n}/24", f"{ip6}/64"]
        want = ["10.0.0.0/24", str(net6)] if split else ["0.0.0.0/0", "::/0"]
        assert [str(x) for x in c.peers[0].allowed_ips] == want
        assert c.peers[0].endpoint == ("2001:db8:2::2", 51820)
        assert f"Endpoint = [2001:db8:2::2]:51820" in (tmp_path / f"{name}.conf").read_text()
    s = config.load(sc)
    assert [[str(x) for x in p.allowed_ips] for p in s.peers] == [
        ["10.0.0.2/32", f"{net6.network_address + 2}/128"], ["10.0.0.3/32", f"{net6.network_address + 3}/128"]]
    # Two servers, two prefixes: the Global ID is random, not a fixed fd00:: or fd42:42::.
    other = init_server(tmp_path / "other.conf", endpoint=None)
    assert other.interface.addresses[1].network != net6


def test_ipv4_only_and_chosen_prefix(tmp_path):
    sc = tmp_path / "v4.conf"
    r = run_cli("server", "init", "-c", str(sc), "--endpoint", "203.0.113.2", "--ipv4-only")
    assert r.returncode == 0 and "address 10.0.0.1/24, UDP port" in r.stdout
    add_client(sc, "alice")
    c = config.load(tmp_path / "alice.conf")
    assert [str(a) for a in c.interface.addresses] == ["10.0.0.2/24"]
    assert [str(x) for x in c.peers[0].allowed_ips] == ["0.0.0.0/0"]
    assert [str(x) for x in config.load(sc).peers[0].allowed_ips] == ["10.0.0.2/32"]
    # An IPv4-only server config written by hand (as every one was before) works unchanged.
    old = tmp_path / "old.conf"
    old.write_text(sc.read_text().split("[Peer]")[0])
    old.chmod(0o600)
    add_client(old, "carol", endpoint=("203.0.113.2", 51820))
    assert [str(a) for a in config.load(tmp_path / "carol.conf").interface.addresses] == ["10.0.0.2/24"]

    chosen = init_server(tmp_path / "p.conf", endpoint=None, ipv6_subnet="fd12:3456:789a:1::/64")
    assert [str(a) for a in chosen.interface.addresses] == ["10.0.0.1/24", "fd12:3456:789a:1::1/64"]
    for args, msg in ((["--ipv6-prefix", "banana"], "'banana' is not an IPv6 subnet"),
                      (["--ipv6-prefix", "10.1.0.0/24"], "--ipv6-prefix 10.1.0.0/24 is an IPv4 subnet"),
                      (["--ipv6-prefix", "fd00::/64", "--ipv4-only"], "--ipv6-prefix and --ipv4-only contradict"),
                      (["--subnet", "fd00::/64"], "--subnet fd00::/64 is not an IPv4 subnet")):
        r = run_cli("server", "init", "-c", str(tmp_path / "bad.conf"), *args)
        assert r.returncode == 1 and r.stderr.startswith(f"vpnedu: error: {msg}"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.conf").exists()
    small = tmp_path / "small6.conf"
    init_server(small, endpoint=("203.0.113.2", 51820), ipv6_subnet="fd00:1::/126")
    add_client(small, "one")
    add_client(small, "two")
    with pytest.raises(VpneduError, match=r"no free address left in fd00:1::/126"):
        add_client(small, "three")
