"""Keys interchangeable with Debian's `wg`, and the CLI's behaviour for users."""

import subprocess

import pytest

from vpnedu.errors import KeyFormatError
from vpnedu.protocol import keys

from .conftest import require_tool, run_cli


def wg(*args, input=None):
    return subprocess.run([require_tool("wg"), *args], input=input, capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()


def test_wg_keys_work_with_vpnedu_and_back():
    for _ in range(5):
        wg_priv = wg("genkey")
        assert run_cli("pubkey", input=wg_priv + "\n").stdout.strip() == wg("pubkey", input=wg_priv)
        ours = run_cli("genkey").stdout.strip()
        assert keys.clamp(keys.decode(ours)) == keys.decode(ours)  # clamped, like wg genkey
        assert wg("pubkey", input=ours) == run_cli("pubkey", input=ours).stdout.strip()
        psk = run_cli("genpsk").stdout.strip()
        assert len(keys.decode(psk)) == 32
        wg("pubkey", input=psk)  # wg accepts it as a key (it checks the base64 form)
        assert len(keys.decode(wg("genpsk"))) == 32


def test_decode_rejects_bad_keys():
    for bad in ("", "abc", "A" * 44, keys.encode(bytes(31)), keys.encode(bytes(33)), "!" * 43 + "="):
        with pytest.raises(KeyFormatError, match="not 32 bytes of base64"):
            keys.decode(bad)


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and "vpnedu" in r.stdout
    r = run_cli("--help")
    assert r.returncode == 0 and "handshake-demo" in r.stdout


def test_bad_input_is_one_line_without_traceback():
    for args, stdin in ((("pubkey",), "not-a-key\n"), (("pubkey",), ""), (("no-such-command",), None),
                        (("handshake-demo", "--suite", "null-teaching"), None)):
        r = run_cli(*args, input=stdin)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vpnedu: error: "), r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("suite", ["wireguard", "aes256gcm"])
def test_handshake_demo_prints_each_message(suite):
    r = run_cli("handshake-demo", "--suite", suite)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for words in ("handshake initiation (148 bytes)", "handshake response (92 bytes)", "sender index",
                  "receiver index", "ephemeral", "encrypted static", "encrypted timestamp", "mac1", "mac2",
                  "transport data", "counter", "echo request", "echo reply", "ping delivered both ways"):
        assert words in out, words


def test_handshake_demo_null_teaching_warns():
    r = run_cli("handshake-demo", "--suite", "null-teaching", "--allow-null-teaching")
    assert r.returncode == 0
    assert "NOT encrypted" in r.stderr and "WARNING" in r.stdout


def test_course_commands_show_what_the_notebooks_show():
    """'vpnedu course ...' is the course without Jupyter: the same simulated lab, as text."""
    import json

    from vpnedu.packet.ip import IPv4Packet
    r = run_cli("course", "sim")
    assert r.returncode == 0, r.stderr
    for words in ("SIMULATED MODE", "handshake.initiation.sent", "session.established",
                  "+ 0.0.0.0/1 via 10.0.0.1 dev vpnedu0", "3 received, 0% packet loss",
                  "the app server logged the request from 203.0.113.2", "reason=bad-mac", "reason=replay",
                  "the journey of one ping:", "masquerade: source 10.0.0.2"):
        assert words in r.stdout, words
    r = run_cli("course", "tun", "--sim", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    ip = IPv4Packet.parse(bytes.fromhex(got["raw"]))
    assert got["mode"] == "simulated" and ip.protocol == 1 and str(ip.dst).startswith("10.")
    r = run_cli("course", "suites")
    assert r.returncode == 0 and "DOES NOT ENCRYPT" in r.stdout and "AESGCM_SHA256" in r.stdout, r.stderr
