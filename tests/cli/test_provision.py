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
        assert f"{name}'s address in the tunnel is {ip} (Address = {ip}/24 in {name}.conf" in r.stdout
        assert f"the server sends packets for {ip}/32 to {name} (AllowedIPs = {ip}/32 in server.conf)" in r.stdout
        c = config.load(tmp_path / f"{name}.conf")
        assert str(c.interface.addresses[0]) == f"{ip}/24"
        assert c.peers[0].endpoint == ("203.0.113.2", 51820)
        assert [str(n) for n in c.peers[0].allowed_ips] == ["0.0.0.0/0"]
        assert c.peers[0].preshared_key and c.peers[0].persistent_keepalive == 25
    s = config.load(sc)
    assert [p.name for p in s.peers] == ["alice", "bob"]
    assert s.peers[0].public_key == config.load(tmp_path / "alice.conf").interface.public_key
    for f in ("server.conf", "alice.conf", "bob.conf"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o600
    # The client file is plain wg-quick: no vpnedu-only keys for the default suite.
    text = (tmp_path / "alice.conf").read_text()
    assert "CipherSuite" not in text and "PublicEndpoint" not in text


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
