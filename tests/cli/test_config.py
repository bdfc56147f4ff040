"""wg-quick configuration files: read, written, and explained when wrong."""

import os
import stat

import pytest

from vpnedu import config
from vpnedu.errors import ConfigError
from vpnedu.protocol import keys

# Fixed keys (any 32 bytes are a key): the test ids that show them are the same in every process,
# as pytest-xdist's workers need.
PRIV = keys.encode(bytes(range(1, 33)))
PUB = keys.encode(keys.public_key(bytes(range(33, 65))))
PSK = keys.encode(bytes(range(65, 97)))

WG_QUICK = f"""
# A typical wg-quick client file
[Interface]
PrivateKey = {PRIV}
Address = 10.0.0.2/24, fd00::2/64
DNS = 10.0.0.1
MTU = 1420
PostUp = echo up

[Peer]
# Name = server
PublicKey = {PUB}
PresharedKey = {PSK}
AllowedIPs = 0.0.0.0/0
AllowedIPs = ::/0
Endpoint = 203.0.113.1:51820
PersistentKeepalive = 25
"""


def test_reads_a_wg_quick_file():
    cfg = config.loads(WG_QUICK, "client.conf")
    itf, (peer,) = cfg.interface, cfg.peers
    assert keys.encode(itf.private_key) == PRIV
    assert [str(a) for a in itf.addresses] == ["10.0.0.2/24", "fd00::2/64"]
    assert itf.dns == ["10.0.0.1"] and itf.mtu == 1420 and itf.hooks == {"PostUp": ["echo up"]}
    assert peer.name == "server" and keys.encode(peer.public_key) == PUB and keys.encode(peer.preshared_key) == PSK
    assert [str(n) for n in peer.allowed_ips] == ["0.0.0.0/0", "::/0"]
    assert peer.endpoint == ("203.0.113.1", 51820) and peer.persistent_keepalive == 25
    assert cfg.suite().name == "wireguard"


def test_roundtrip_and_default_suite_is_not_written():
    cfg = config.loads(WG_QUICK)
    text = config.dumps(cfg)
    assert "CipherSuite" not in text
    assert config.dumps(config.loads(text)) == text


def test_reads_wg_showconf_output_and_keys_case_insensitively():
    text = f"[Interface]\nlistenport = 51820\nprivatekey = {PRIV}\n\n[Peer]\npublickey = {PUB}\n" \
           f"endpoint = [2001:db8::1]:51820\nallowedips = 10.0.0.2/32\n"
    cfg = config.loads(text)
    assert cfg.interface.listen_port == 51820 and cfg.peers[0].endpoint == ("2001:db8::1", 51820)
    assert "Endpoint = [2001:db8::1]:51820" in config.dumps(cfg)


def test_vpnedu_keys_and_null_teaching_gate():
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\nCipherSuite = null-teaching\n")
    with pytest.raises(ConfigError, match="AllowNullTeaching"):
        cfg.suite()
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\nCipherSuite = aes256gcm\n")
    assert cfg.suite().name == "aes256gcm" and "CipherSuite = aes256gcm" in config.dumps(cfg)
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\nForwarding = Proxy\n")
    assert cfg.interface.forwarding == "proxy" and "Forwarding = proxy" in config.dumps(cfg)
    assert "Forwarding" not in config.dumps_wg(cfg)     # wg setconf would not know it


@pytest.mark.parametrize("text,line,words", [
    (f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 99999\n", 3, "ListenPort: '99999' is not a port"),
    ("[Interface]\nPrivateKey = abc\n", 2, "not 32 bytes of base64"),
    (f"[Interface]\nPrivateKey = {PRIV}\nColour = blue\n", 3, "unknown key 'Colour'"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nAllowedIPs = 10.0.0.0/24\n", 3, "has no PublicKey"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nEndpoint = nowhere\n", 5,
     "is not host:port"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.0.0.300/24\n", 5,
     "is not an IP prefix"),
    ("[Interfase]\n", 1, "unknown section"),
    ("PrivateKey = x\n", 1, "outside any section"),
    (f"[Interface]\nPrivateKey = {PRIV}\nCipherSuite = rot13\n", 3, "unknown cipher suite"),
    (f"[Interface]\nPrivateKey = {PRIV}\nForwarding = socks\n", 3, "choose one of: nat, proxy, none"),
    (f"[Interface]\nPrivateKey = {PRIV}\nMTU = 100\n", 3, "MTU: 100 is too small for an MTU (576 to 65535)"),
    (f"[Interface]\nPrivateKey = {PRIV}\nMTU = 70000\n", 3, "MTU: 70000 is too large"),
    (f"[Interface]\nPrivateKey = {PRIV}\nMTU = abc\n", 3, "MTU: 'abc' is not a number; use a number from 576"),
    (f"[Interface]\nPrivateKey = {PRIV}\nMTU = 1000\nAddress = 10.0.0.2/24, fd00::2/64\n", 3,
     "MTU: 1000 is too small for a tunnel that carries IPv6 (Address fd00::2/64)"),
    (f"[Interface]\nPrivateKey = {PRIV}\nClampMSS = maybe\n", 3,
     "ClampMSS: 'maybe' is not true or false; use true (the default"),
])
def test_errors_name_file_line_problem_and_fix(text, line, words):
    with pytest.raises(ConfigError) as e:
        config.loads(text, "bad.conf")
    msg = str(e.value)
    assert msg.startswith(f"bad.conf:{line}: ") and words in msg and "; " in msg and "\n" not in msg


def test_mtu_and_clamp_mss_are_read_and_written_back_only_when_set():
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/24\n")
    assert cfg.interface.mtu is None and cfg.interface.clamp_mss is True
    text = config.dumps(cfg)
    assert "MTU" not in text and "ClampMSS" not in text          # an exported wg-quick file stays clean
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\nMTU = 1280\nclampmss = False\n")
    assert cfg.interface.mtu == 1280 and cfg.interface.clamp_mss is False
    text = config.dumps(cfg)
    assert "MTU = 1280" in text and "ClampMSS = false" in text and "ClampMSS" not in config.dumps_wg(cfg)
    assert config.loads(text).interface.clamp_mss is False
    assert config.loads(f"[Interface]\nPrivateKey = {PRIV}\nClampMSS = true\n").interface.clamp_mss is True
    for loose in ("yes", "1", "on", ""):
        with pytest.raises(ConfigError, match="ClampMSS: .* is not true or false"):
            config.loads(f"[Interface]\nPrivateKey = {PRIV}\nClampMSS = {loose}\n", "x.conf")
    assert "ClampMSS" in config.VPNEDU_KEYS     # a QR code of a file with it warns: WireGuard's apps refuse it
    # IPv6 inside: 1280 is the floor, and it is allowed.
    assert config.loads(f"[Interface]\nAddress = fd00::2/64\nMTU = 1280\n").interface.mtu == 1280


def test_dns_forwarder_is_on_by_default_and_written_only_when_off():
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/24\n")
    assert cfg.interface.dns_forwarder is True and "DNSForwarder" not in config.dumps(cfg)
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\ndnsforwarder = False\n")
    assert cfg.interface.dns_forwarder is False
    text = config.dumps(cfg)
    assert "DNSForwarder = false" in text and "DNSForwarder" not in config.dumps_wg(cfg)
    assert config.loads(text).interface.dns_forwarder is False
    for loose in ("yes", "1", "off", ""):
        with pytest.raises(ConfigError, match="x.conf:3: DNSForwarder: .* is not true or false") as e:
            config.loads(f"[Interface]\nPrivateKey = {PRIV}\nDNSForwarder = {loose}\n", "x.conf")
        assert "\n" not in str(e.value) and "true" in e.value.fix
    assert "DNSForwarder" in config.VPNEDU_KEYS     # WireGuard's apps refuse it: a QR code warns


def test_missing_interface_and_duplicate_peer():
    with pytest.raises(ConfigError, match="no \\[Interface\\]"):
        config.loads(f"[Peer]\nPublicKey = {PUB}\n", "x.conf")
    with pytest.raises(ConfigError, match="two \\[Peer\\] sections"):
        config.loads(f"[Interface]\n[Peer]\nPublicKey = {PUB}\n[Peer]\nPublicKey = {PUB}\n", "x.conf")


def test_save_is_owner_only_and_load_errors(tmp_path):
    p = tmp_path / "c.conf"
    config.save(config.loads(WG_QUICK), p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert config.load(p).peers[0].name == "server"
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "missing.conf")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_a_world_readable_private_key_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "client.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.2/24\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert "every user on this machine can read it (mode 0644)" in str(e.value)
    assert f"chmod 600 {path}" in str(e.value)
    path.chmod(0o600)
    assert config.load(path).interface.private_key is not None
    # A file without a private key (a peer list, say) may be readable by all.
    pub_only = tmp_path / "peers.conf"
    pub_only.write_text(f"[Interface]\nAddress = 10.0.0.2/24\n[Peer]\nPublicKey = {PUB}\n")
    pub_only.chmod(0o644)
    config.load(pub_only)


def test_the_cli_refuses_a_world_readable_key_in_one_line(tmp_path):
    from ..conftest import run_cli
    path = tmp_path / "server.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/24\n")
    path.chmod(0o644)
    r = run_cli("conf", "check", str(path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "chmod 600" in r.stderr


# ------------------------------------------------------------------ wg-quick keys: work or refused
def test_wg_quick_keys_are_read_into_what_they_mean_and_written_back():
    cfg = config.loads(f"[Interface]\nPrivateKey = {PRIV}\nTable = 1234\nFwMark = 0x1234\n"
                       "PreUp = echo a %i\nPostUp = echo b\nPostUp = echo c\nPreDown = echo d\nPostDown = echo e\n"
                       "SaveConfig = false\n")
    itf = cfg.interface
    assert itf.table == "1234" and itf.route_table == 1234 and itf.adds_routes
    assert itf.fwmark == 0x1234
    assert itf.hooks == {"PreUp": ["echo a %i"], "PostUp": ["echo b", "echo c"], "PreDown": ["echo d"],
                         "PostDown": ["echo e"]}
    text = config.dumps(cfg)
    assert "Table = 1234\nFwMark = 0x1234\nPreUp = echo a %i\nPostUp = echo b\nPostUp = echo c\n" in text
    assert config.loads(text).interface.hooks == itf.hooks
    assert "FwMark = 0x1234" in config.dumps_wg(cfg) and "Table" not in config.dumps_wg(cfg)
    for value, table, routes in (("off", "off", False), ("auto", "auto", True), ("Main", "main", True)):
        c = config.loads(f"[Interface]\nTable = {value}\n").interface
        assert (c.table, c.adds_routes, c.route_table) == (table, routes, None)
    assert config.loads("[Interface]\nFwMark = off\n").interface.fwmark is None
    assert config.loads("[Interface]\nFwMark = 0\n").interface.fwmark is None
    assert config.loads("[Interface]\nFwMark = 51820\n").interface.fwmark == 51820


@pytest.mark.parametrize("text,line,words", [
    ("[Interface]\nSaveConfig = true\n", 2, "SaveConfig: 'true' asks to write the running state back"),
    ("[Interface]\nTable = vpn\n", 2, "Table: 'vpn' is not off, auto, main or a table number"),
    ("[Interface]\nTable = 254\n", 2, "Table: table 254 is the kernel's 'main' table"),
    ("[Interface]\nTable = 255\n", 2, "Table: table 255 is the kernel's 'local' table"),
    ("[Interface]\nFwMark = 0x100000000\n", 2, "FwMark: '0x100000000' is not a 32-bit mark"),
    ("[Interface]\nFwMark = red\n", 2, "FwMark: 'red' is not a 32-bit mark"),
    ("[Interface]\nDNS = 10.0.0.1, not a name!\n", 2, "DNS: 'not a name!' is neither an IP address nor"),
    ("[Interface]\nDNS = not_a domain!\n", 2, "DNS: 'not_a domain!' is neither an IP address nor a domain"),
    ("[Interface]\nDNS = -lab.test\n", 2, "DNS: '-lab.test' is neither an IP address nor a domain"),
    ("[Interface]\nDNS = lab..test\n", 2, "DNS: 'lab..test' is neither an IP address nor a domain"),
    ("[Interface]\nDNS = 10.0.0.300\n", 2, "DNS: '10.0.0.300' is neither an IP address nor a domain"),
    ("[Interface]\nDNS = " + "a" * 64 + ".test\n", 2, "is neither an IP address nor a domain"),
    ("[[Interface]]\n", 1, "unknown section '[[Interface]]'"),
    ("[Interface]]]\n", 1, "unknown section '[Interface]]]'"),
    ("[Interface\n", 1, "unknown section"),
    (f"[Interface]\n[Peer]]\nPublicKey = {PUB}\n", 2, "unknown section '[Peer]]'"),
    (f"[Interface]\nPresharedKey = {PSK}\n", 2, "PresharedKey belongs in [Peer], not in [Interface]"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PRIV}\n", 4, "PublicKey is this file's own PrivateKey"),
])
def test_wg_quick_keys_and_headers_that_are_refused_by_name(text, line, words):
    with pytest.raises(ConfigError) as e:
        config.loads(text, "wg0.conf")
    msg = str(e.value)
    assert msg.startswith(f"wg0.conf:{line}: ") and words in msg and "\n" not in msg, msg


def test_conf_check_says_what_each_wg_quick_key_will_do(tmp_path):
    from ..conftest import run_cli
    path = tmp_path / "wg0.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.2/24\nDNS = 10.0.0.1\nTable = off\n"
                    "FwMark = 0x1234\nPostUp = echo up\n")
    path.chmod(0o620)
    r = run_cli("conf", "check", str(path))
    assert r.returncode == 0, r.stderr
    assert "Table = off: the client adds no routes" in r.stdout
    assert "FwMark = 0x1234: the tunnel's UDP packets carry this mark" in r.stdout
    assert "hooks: 1 PostUp" in r.stdout and "a daemon would refuse them" in r.stdout
    why = "writable by group (mode 0620)" if os.geteuid() == 0 else "hooks run only when vpnedu runs as root"
    assert why in r.stdout, r.stdout
    assert "DNS = 10.0.0.1: the client uses the name server(s) 10.0.0.1 while it runs" in r.stdout
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nMTU = 1300\nClampMSS = false\n")
    r = run_cli("conf", "check", str(path))
    assert "MTU = 1300: the tunnel device's MTU" in r.stdout and "ClampMSS = false: a server in nat mode" in r.stdout


def test_a_servers_clients_must_match_its_families_and_not_overlap():
    from vpnedu.protocol.keys import encode, generate_private_key, public_key

    def server(*peers):
        text = f"[Interface]\nPrivateKey = {encode(generate_private_key())}\nAddress = 10.0.0.1/24\n"
        for name, allowed in peers:
            text += f"[Peer]\n# Name = {name}\nPublicKey = {encode(public_key(generate_private_key()))}\n"
            text += f"AllowedIPs = {allowed}\n"
        return config.loads(text, "s.conf")
    config.check_server(server(("a", "10.0.0.2/32"), ("b", "10.0.0.3/32, 10.0.1.0/24")))
    config.check_server(server(("a", "10.0.0.0/24, 10.0.0.2/32")))     # one peer's own overlap: harmless
    with pytest.raises(ConfigError, match=r"\[Peer\] b: AllowedIPs fd00::3/128 is IPv6, but this server's Address"):
        config.check_server(server(("a", "10.0.0.2/32"), ("b", "10.0.0.3/32, fd00::3/128")))
    with pytest.raises(ConfigError, match=r"10.0.0.0/25 of \[Peer\] b and 10.0.0.99/32 of \[Peer\] c overlap"):
        config.check_server(server(("a", "10.0.0.200/31"), ("b", "10.0.0.0/25"), ("c", "10.0.0.99/32")))
    with pytest.raises(ConfigError, match="overlap"):
        config.check_server(server(("a", "10.0.0.0/24, 10.0.0.7/32"), ("b", "10.0.0.5/32")))
    assert config.looks_like_server(server(("a", "10.0.0.2/32")))


@pytest.mark.parametrize("line,words", [
    ("MTU = 100", "MTU: 100 is too small"), ("MTU = abc", "MTU: 'abc' is not a number"),
    ("ClampMSS = maybe", "ClampMSS: 'maybe' is not true or false"),
])
def test_the_daemons_refuse_a_bad_mtu_or_clamp_in_one_line(tmp_path, line, words):
    """Before any change: the config is read before the daemon touches the host (the lab test
    tests/lab/test_mtu.py compares the host before and after)."""
    from ..conftest import run_cli
    path = tmp_path / "bad.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/24\n{line}\n")
    path.chmod(0o600)
    for cmd in ("server", "client"):
        r = run_cli(cmd, "-c", str(path))
        assert r.returncode == 1, (cmd, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"vpnedu: error: {path}:4: {words}"), r.stderr
        assert "Traceback" not in r.stderr + r.stdout
