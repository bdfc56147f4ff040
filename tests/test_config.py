"""wg-quick configuration files: read, written, and explained when wrong."""

import os
import stat

import pytest

from vpnedu import config
from vpnedu.errors import ConfigError
from vpnedu.protocol import keys

PRIV = keys.encode(keys.generate_private_key())
PUB = keys.encode(keys.public_key(keys.generate_private_key()))
PSK = keys.encode(keys.generate_psk())

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
])
def test_errors_name_file_line_problem_and_fix(text, line, words):
    with pytest.raises(ConfigError) as e:
        config.loads(text, "bad.conf")
    msg = str(e.value)
    assert msg.startswith(f"bad.conf:{line}: ") and words in msg and "; " in msg and "\n" not in msg


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
    from .conftest import run_cli
    path = tmp_path / "server.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/24\n")
    path.chmod(0o644)
    r = run_cli("conf", "check", str(path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "chmod 600" in r.stderr
