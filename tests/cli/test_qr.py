"""QR codes of client configs, read back by a real decoder (zbar's zbarimg).

What a phone scans must be the file, byte for byte: each test decodes the PNG -- and the
terminal's half-block drawing, turned back into modules and into a PNG -- with ``zbarimg
-Sbinary`` (bytes as they are, no charset guessing) and compares the bytes with the file.
"""

import os
import stat
import struct
import subprocess
import zlib

import pytest

from vpnedu import config
from vpnedu.protocol import keys

from ..conftest import require_tool, run_cli
from .test_secrets import leaks


def decode(png: bytes | str) -> bytes:
    """What zbarimg reads in a PNG (a path, or the PNG's bytes on stdin): the raw bytes of the code."""
    zbar = require_tool("zbarimg")
    args = [zbar, "--raw", "-q", "-Sbinary"]
    r = subprocess.run(args + ([png] if isinstance(png, str) else ["-"]), capture_output=True,
                       input=None if isinstance(png, str) else png, timeout=30)
    assert r.returncode == 0, f"zbarimg found no QR code (exit {r.returncode})"
    return r.stdout


# The half blocks, back to (upper light, lower light): the inverse of vpnedu.qr's drawing.
CELLS = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}


def terminal_to_png(lines: list[str], scale: int = 4) -> bytes:
    """A grayscale PNG (written with zlib, no image library) of a QR code drawn in half blocks."""
    light: list[list[bool]] = []
    for line in lines:
        upper, lower = zip(*(CELLS[c] for c in line))
        light += [list(upper), list(lower)]
    raw = b""
    for row in light:
        px = b"".join((b"\xff" if m else b"\x00") * scale for m in row)
        raw += (b"\x00" + px) * scale
    width, height = len(light[0]) * scale, len(light) * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def qr_lines(stdout: str) -> list[str]:
    """The lines of the drawing in a command's output (only block characters and spaces)."""
    lines = [ln for ln in stdout.splitlines() if ln and set(ln) <= set(CELLS) and "█" in ln]
    assert lines, "no QR drawing in the output"
    assert len({len(ln) for ln in lines}) == 1, "the drawing's lines differ in length"
    return lines


@pytest.fixture
def server(tmp_path):
    sc = tmp_path / "server.conf"
    assert run_cli("server", "init", "-c", str(sc), "--endpoint", "203.0.113.2").returncode == 0
    return sc


def test_add_client_qr_is_the_file_byte_for_byte(server, tmp_path):
    png = tmp_path / "alice.png"
    r = run_cli("server", "add-client", "alice", "-c", str(server), "--dns", "10.0.0.1", "--qr",
                "--qr-png", str(png))
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "alice.conf"
    data = conf.read_bytes()
    # A default client file holds no vpnedu key: nothing WireGuard's apps refuse, no warning.
    assert not any(k in data.decode() for k in config.VPNEDU_KEYS)
    assert "warning" not in r.stderr
    assert decode(str(png)) == data
    assert stat.S_IMODE(os.stat(png).st_mode) == 0o600
    lines = qr_lines(r.stdout)
    # Two module rows per line, the quiet zone (4 light modules) on each side.
    assert len(lines[0]) % 4 == 1 and len(lines[0]) >= 21 + 8 and len(lines) == (len(lines[0]) + 1) // 2
    assert lines[0] == "█" * len(lines[0])
    assert decode(terminal_to_png(lines)) == data
    # The private key and the PSK are in the code only, never in what the command printed.
    c = config.load(conf)
    out = (r.stdout + r.stderr).encode()
    for secret in (c.interface.private_key, c.peers[0].preshared_key):
        assert not leaks(out, secret)


def test_another_suite_still_encodes_the_file_and_warns(tmp_path):
    sc = tmp_path / "server.conf"
    assert run_cli("server", "init", "-c", str(sc), "--endpoint", "203.0.113.2", "--suite",
                   "aes256gcm").returncode == 0
    png = tmp_path / "bob.png"
    r = run_cli("server", "add-client", "bob", "-c", str(sc), "--qr-png", str(png))
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "bob.conf").read_bytes()
    assert b"CipherSuite = aes256gcm" in data and decode(str(png)) == data
    warn = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "CipherSuite" in warn[0] and "WireGuard's apps will not accept" in warn[0]
    assert "█" not in r.stdout       # --qr-png alone: no drawing


def test_allow_null_teaching_is_written_only_with_its_suite():
    priv = keys.generate_private_key()
    c = config.Config(config.InterfaceConfig(private_key=priv, allow_null_teaching=True))
    assert "AllowNullTeaching" not in config.dumps(c)
    c.interface.cipher_suite = "null-teaching"
    text = config.dumps(c)
    assert "AllowNullTeaching = true" in text and "CipherSuite = null-teaching" in text
    with pytest.warns(UserWarning, match="NOT encrypted"):
        assert config.loads(text).suite().name == "null-teaching"


def test_conf_qr_shows_an_existing_file(server, tmp_path):
    assert run_cli("server", "add-client", "carol", "-c", str(server)).returncode == 0
    conf = tmp_path / "carol.conf"
    # A hand-edited file with a comment: the code holds exactly these bytes, not a rewrite.
    conf.write_bytes(b"# carol's phone\n" + conf.read_bytes())
    r = run_cli("conf", "qr", str(conf))
    assert r.returncode == 0, r.stderr
    assert decode(terminal_to_png(qr_lines(r.stdout))) == conf.read_bytes()
    png = tmp_path / "carol.png"
    r = run_cli("conf", "qr", str(conf), "--png", str(png))
    assert r.returncode == 0 and "█" not in r.stdout
    assert decode(str(png)) == conf.read_bytes()


def test_bad_qr_input_is_one_line_and_changes_nothing(server, tmp_path):
    before = server.read_bytes()
    missing = tmp_path / "no" / "such" / "folder" / "alice.png"
    r = run_cli("server", "add-client", "alice", "-c", str(server), "--qr-png", str(missing))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("vpnedu: error: --qr-png ")
    assert "does not exist" in r.stderr and "mkdir -p" in r.stderr
    assert server.read_bytes() == before and not (tmp_path / "alice.conf").exists()
    # A file too long for any QR code: one line with its size.
    assert run_cli("server", "add-client", "dave", "-c", str(server)).returncode == 0
    conf = tmp_path / "dave.conf"
    conf.write_bytes(conf.read_bytes() + b"# " + b"x" * 3000 + b"\n")
    r = run_cli("conf", "qr", str(conf))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "too long for one QR code" in r.stderr
