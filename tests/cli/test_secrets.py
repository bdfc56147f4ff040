"""No error message shows a private or pre-shared key.

Every error path a key can reach -- bad base64, a wrong length, a key in the wrong field or the
wrong section, a private key pasted as a peer's public key, PSK errors, ``vpnedu pubkey`` with
bad input -- is driven through the real command line (conf check/export/import, server -c,
client -c, server add-client, pubkey), and stdout + stderr are searched for the secret: any
12-character piece of its base64, any 16-digit piece of its hex (either case), and any 8 bytes
of it raw."""

import base64
import os
import subprocess
import sys

import pytest

from vpnedu.protocol import keys

from ..conftest import run_cli

SECRET = keys.generate_private_key()
PSK = keys.generate_psk()
B64 = keys.encode(SECRET)
PSK64 = keys.encode(PSK)
PEER = keys.encode(keys.public_key(keys.generate_private_key()))
GOOD = keys.encode(keys.generate_private_key())


def leaks(output: bytes, secret: bytes) -> list[str]:
    """The forms of ``secret`` found in ``output`` (empty: none)."""
    text = output.decode("utf-8", "surrogateescape")
    b64 = base64.b64encode(secret).decode()
    found = [f"base64 {b64[i:i + 12]!r}" for i in range(len(b64) - 12) if b64[i:i + 12] in text]
    hx = secret.hex()
    low = text.lower()
    found += [f"hex {hx[i:i + 16]}" for i in range(0, len(hx) - 16, 2) if hx[i:i + 16] in low]
    found += [f"raw bytes at {i}" for i in range(len(secret) - 8) if secret[i:i + 8] in output]
    rep = repr(secret)[2:-1]     # b'\x12...' as a Python repr (or a traceback's locals) shows it
    found += [f"repr {rep[i:i + 16]!r}" for i in range(len(rep) - 16) if rep[i:i + 16] in text]
    return found


def cli_bytes(*args: str, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Like conftest.run_cli, but the output as bytes: a raw key must be findable too."""
    return subprocess.run([sys.executable, "-m", "vpnedu", *args], input=stdin, capture_output=True,
                          timeout=60, cwd=cwd)


def check_no_leak(r: subprocess.CompletedProcess, *secrets: bytes) -> None:
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert b"Traceback" not in out and b"internal error" not in out, out
    for s in secrets:
        assert not leaks(out, s), (leaks(out, s), out.decode(errors="replace"))


# Configs that hold the secret where it does not belong, or spoiled so that it is refused.
SPOILED = {
    "too short": f"PrivateKey = {B64[:-2]}=",
    "too long": f"PrivateKey = {B64}AAAA",
    "bad base64": f"PrivateKey = {B64[:20]}!{B64[21:]}",
    "two keys on a line": f"PrivateKey = {B64} {B64}",
    "no equals sign": f"PrivateKey {B64[:-1]}",
    "the key alone": B64,
    "as a section": f"[{B64}]",
    "in Address": f"PrivateKey = {GOOD}\nAddress = {B64}",
    "in ListenPort": f"PrivateKey = {GOOD}\nListenPort = {B64}",
    "in MTU": f"PrivateKey = {GOOD}\nMTU = {B64}",
    "in DNS": f"PrivateKey = {GOOD}\nDNS = {B64}",
    "in Table": f"PrivateKey = {GOOD}\nTable = {B64}",
    "in FwMark": f"PrivateKey = {GOOD}\nFwMark = {B64}",
    "in CipherSuite": f"PrivateKey = {GOOD}\nCipherSuite = {B64}",
    "in Forwarding": f"PrivateKey = {GOOD}\nForwarding = {B64}",
    "in ClampMSS": f"PrivateKey = {GOOD}\nClampMSS = {B64}",
    "in SaveConfig": f"PrivateKey = {GOOD}\nSaveConfig = {B64}",
    "PSK in [Interface]": f"PrivateKey = {GOOD}\nPresharedKey = {B64}",
    "in Endpoint": f"PrivateKey = {GOOD}\n[Peer]\nPublicKey = {PEER}\nEndpoint = {B64}:51820",
    "in AllowedIPs": f"PrivateKey = {GOOD}\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = {B64}",
    "in PersistentKeepalive": f"PrivateKey = {GOOD}\n[Peer]\nPublicKey = {PEER}\nPersistentKeepalive = {B64}",
    "PrivateKey in [Peer]": f"PrivateKey = {GOOD}\n[Peer]\nPublicKey = {PEER}\nPrivateKey = {B64}",
    "own private key as a peer's PublicKey": f"PrivateKey = {B64}\nAddress = 10.0.0.2/24\n[Peer]\nPublicKey = {B64}",
    "a private key as two peers' PublicKey": f"PrivateKey = {GOOD}\n[Peer]\nPublicKey = {B64}\n[Peer]\nPublicKey = {B64}",
    "PSK too short": f"PrivateKey = {GOOD}\n[Peer]\nPublicKey = {PEER}\nPresharedKey = {B64[:-3]}",
    "PSK bad base64": f"PrivateKey = {GOOD}\n[Peer]\nPublicKey = {PEER}\nPresharedKey = {B64[:-1]}?",
    "PSK is the private key": f"PrivateKey = {B64}\n[Peer]\nPublicKey = {PEER}\nPresharedKey = {B64}",
}


@pytest.mark.parametrize("name", SPOILED)
def test_no_config_error_shows_the_key(name, tmp_path):
    text = "[Interface]\n" + SPOILED[name] + "\n" if not SPOILED[name].startswith("[") else SPOILED[name] + "\n"
    path = tmp_path / "wg0.conf"
    path.write_text(text)
    path.chmod(0o600)
    for cmd in (("conf", "check"), ("server", "-c"), ("client", "-c")):
        r = cli_bytes(*cmd, str(path))
        check_no_leak(r, SECRET)
        assert b"wg0.conf:" in r.stderr, (cmd, r.stderr)      # the file and the line are named
    check_no_leak(cli_bytes("conf", "import", "-", stdin=text.encode()), SECRET)


def test_a_bad_psk_in_server_conf_is_not_shown_by_add_client(tmp_path):
    assert run_cli("server", "init", "-c", str(tmp_path / "server.conf"), "--endpoint", "203.0.113.2").returncode == 0
    with open(tmp_path / "server.conf", "a") as f:
        f.write(f"\n[Peer]\nPublicKey = {PEER}\nPresharedKey = {PSK64[:-2]}\n")
    r = cli_bytes("server", "add-client", "alice", "-c", str(tmp_path / "server.conf"))
    check_no_leak(r, PSK)
    assert b"server.conf:" in r.stderr and b"PresharedKey" in r.stderr


@pytest.mark.parametrize("stdin", [B64[:-2], B64 + "A", B64[:10] + "*" + B64[11:], f"{B64} {B64}",
                                   f"PrivateKey = {B64}"],
                         ids=["short", "long", "bad base64", "twice", "a config line"])
def test_pubkey_never_echoes_its_input(stdin):
    check_no_leak(cli_bytes("pubkey", stdin=(stdin + "\n").encode()), SECRET)


def test_a_key_in_a_hook_line_is_hidden_in_the_log():
    """The one place a key-like text may be quoted (a hook's command line) is redacted."""
    assert B64 not in keys.redact(f"wg set %i private-key <(echo {B64})")
    assert "(key hidden)" in keys.redact(f"echo {B64}")


def test_the_leak_check_itself_finds_each_form():
    assert leaks(f"x {B64} y".encode(), SECRET)
    assert leaks(SECRET.hex().upper().encode(), SECRET)
    assert leaks(b"\x00" + SECRET + b"\n", SECRET)
    assert leaks(repr(SECRET).encode(), SECRET)
    assert not leaks(keys.encode(keys.public_key(SECRET)).encode(), SECRET)


def test_configs_and_keys_have_no_secret_in_their_repr():
    from vpnedu import config
    cfg = config.loads(f"[Interface]\nPrivateKey = {B64}\n[Peer]\nPublicKey = {PEER}\nPresharedKey = {PSK64}\n")
    text = repr(cfg).encode()
    assert not leaks(text, SECRET) and not leaks(text, PSK), text
    assert os.environ.get("VPNEDU_DEBUG") is None   # the one-line errors above are not tracebacks
