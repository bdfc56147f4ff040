"""The client's resolver file, written and put back through the journal (no root needed).

The file here is a ``resolv.conf`` in a temporary folder, so these tests run the very code the
client runs -- :func:`vpnedu.net.resolver.install` and the journal's undo -- on a real file, a
real symbolic link and a real crash (a child process killed with SIGKILL, then ``vpnedu
cleanup``), without touching the host's ``/etc/resolv.conf``.  The root test
``tests/node/test_dns_root.py`` does the same in a namespace lab, where the file is a bind mount.
"""

import os
import signal
import stat
import subprocess
import sys

import pytest

from vpnedu import config
from vpnedu.net import journal, resolver

OLD = b"# the network's resolver\nnameserver 198.51.100.1\nsearch corp.example\noptions edns0\n"


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "RUN_DIR", tmp_path / "run")
    return tmp_path / "run"


def _install(path, dns, j=None):
    j = j or journal.Journal("h17qt0")
    j.start()
    said = []
    line = resolver.install(j, "h17qt0", dns, path=path, log=said.append)
    return j, line, said


def test_a_file_is_replaced_and_put_back_byte_for_byte(run_dir, tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_bytes(OLD)
    path.chmod(0o640)
    assert resolver.manager(path) == "file"
    j, line, _ = _install(path, ["192.0.2.1", "fd00::53", "lab.test", "example.org."])
    text = path.read_text()
    assert "nameserver 192.0.2.1\nnameserver fd00::53\nsearch lab.test example.org\n" in text
    assert "198.51.100.1" not in text and "corp.example" not in text
    assert line.startswith(f"DNS: {path} now lists 192.0.2.1, fd00::53, search lab.test")
    assert j.undo_all() == 1
    assert path.read_bytes() == OLD and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not j.path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["resolv.conf", "run"]


def test_a_symlink_comes_back_as_the_same_symlink(run_dir, tmp_path):
    target = tmp_path / "managed" / "resolv.conf"
    target.parent.mkdir()
    target.write_bytes(OLD)
    path = tmp_path / "resolv.conf"
    path.symlink_to("managed/resolv.conf")        # relative, as /etc/resolv.conf -> ../run/... often is
    j, _, _ = _install(path, ["192.0.2.1"])
    assert not path.is_symlink() and b"nameserver 192.0.2.1" in path.read_bytes()
    assert target.read_bytes() == OLD              # written beside the link, never through it
    j.undo_all()
    assert path.is_symlink() and os.readlink(path) == "managed/resolv.conf" and target.read_bytes() == OLD


def test_no_file_before_means_no_file_after(run_dir, tmp_path):
    path = tmp_path / "resolv.conf"
    j, _, _ = _install(path, ["192.0.2.1"])
    assert path.exists()
    j.undo_all()
    assert not path.exists()


def test_search_domains_alone_keep_the_old_name_servers(run_dir, tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_bytes(OLD)
    j, _, _ = _install(path, ["lab.test"])
    lines = path.read_text().splitlines()
    assert "nameserver 198.51.100.1" in lines and "search lab.test" in lines
    j.undo_all()
    assert path.read_bytes() == OLD


def test_a_file_another_program_rewrote_is_left_alone(run_dir, tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_bytes(OLD)
    j, _, _ = _install(path, ["192.0.2.1"])
    newer = b"nameserver 198.51.100.7\n"        # a DHCP client renewed its lease meanwhile
    path.write_bytes(newer)
    said = []
    j.undo_all(said.append)
    assert path.read_bytes() == newer
    assert len(said) == 1 and "was changed by another program while vpnedu ran" in said[0]


def test_a_crash_is_put_right_by_vpnedu_cleanup(tmp_path):
    """A child installs the DNS and is killed with SIGKILL; ``vpnedu cleanup`` restores the file."""
    run, path = tmp_path / "run", tmp_path / "resolv.conf"
    path.write_bytes(OLD)
    env = {**os.environ, "VPNEDU_RUN_DIR": str(run)}
    child = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from vpnedu.net import journal, resolver\n"
        "j = journal.Journal('h17qt1'); j.start()\n"
        "resolver.install(j, 'h17qt1', ['192.0.2.1', 'lab.test'], path=Path(sys.argv[1]))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", child, str(path)], env=env, capture_output=True, timeout=30)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert b"nameserver 192.0.2.1" in path.read_bytes()
    r = subprocess.run([sys.executable, "-m", "vpnedu", "cleanup"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "cleanup: undid 1 change(s)" in r.stdout, r.stdout + r.stderr
    assert path.read_bytes() == OLD


def test_split_and_the_servers_left_outside_the_tunnel():
    import ipaddress
    servers, domains = resolver.split(["10.0.0.1", "2001:db8::53", "lab.test.", "_srv.example"])
    assert servers == ["10.0.0.1", "2001:db8::53"] and domains == ["lab.test", "_srv.example"]
    nets = [ipaddress.ip_network("10.0.0.0/24")]
    assert resolver.outside_tunnel(servers, nets) == ["2001:db8::53"]
    assert resolver.outside_tunnel(servers, [ipaddress.ip_network("0.0.0.0/0"),
                                             ipaddress.ip_network("::/0")]) == []


def test_the_config_keeps_addresses_and_domains_and_names_a_bad_entry():
    c = config.loads("[Interface]\nDNS = 10.0.0.1, fd00::53, lab.test, _srv.example.com.\n")
    assert c.interface.dns == ["10.0.0.1", "fd00::53", "lab.test", "_srv.example.com."]
    with pytest.raises(config.ConfigError) as e:
        config.loads("[Interface]\nDNS = 10.0.0.1, not_a domain!\n", source="c.conf")
    assert str(e.value).startswith("c.conf:2: DNS: 'not_a domain!' is neither an IP address nor a domain name")
