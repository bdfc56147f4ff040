"""Every file a user names is read with a limit: /dev/zero, a FIFO, a directory or a huge file
get one line naming the file (and the limit), never a hang or gigabytes of memory.

Each command runs through the real command line with a timeout, so that a regression fails
(subprocess.TimeoutExpired) instead of hanging the suite."""

import os
import subprocess

import pytest

from vpnedu import files
from vpnedu.errors import FileRefused

from ..conftest import run_cli

TIMEOUT = 20


def one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode not in (0, 70), (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vpnedu: error: "), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# The commands that read a config from a path.
READERS = [("conf", "check"), ("conf", "export"), ("conf", "import"), ("server", "-c"), ("client", "-c")]


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: " ".join(c))
def test_dev_zero_is_refused_at_once(cmd):
    one_line(run_cli(*cmd, "/dev/zero", timeout=TIMEOUT), "/dev/zero", "character device", "not a regular file")


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: " ".join(c))
def test_a_fifo_is_refused_without_waiting_for_a_writer(cmd, tmp_path):
    fifo = tmp_path / "wg0.conf"
    os.mkfifo(fifo)
    one_line(run_cli(*cmd, str(fifo), timeout=TIMEOUT), str(fifo), "FIFO", "not a regular file")


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: " ".join(c))
def test_a_too_large_file_is_refused_with_the_limit(cmd, tmp_path):
    big = tmp_path / "big.conf"
    with open(big, "w") as f:   # a valid start, then megabytes of comments
        f.write("[Interface]\n")
        line = "# " + "x" * 1021 + "\n"
        for _ in range(files.CONFIG_LIMIT // len(line) + 2):
            f.write(line)
    line = one_line(run_cli(*cmd, str(big), timeout=TIMEOUT), str(big), "larger than the 4 MiB a config may be")
    assert "4 MiB" in line


def test_a_config_with_thousands_of_peers_is_well_within_the_limit(tmp_path):
    """The limit must leave room for real configs: 10,000 peers with pre-shared keys."""
    from vpnedu import config
    from vpnedu.protocol import keys
    cfg = config.loads(f"[Interface]\nPrivateKey = {keys.encode(keys.generate_private_key())}\n"
                       "Address = 10.0.0.1/16\nListenPort = 51820\n")
    for i in range(10_000):
        cfg.peers.append(config.PeerConfig(keys.public_key(keys.generate_private_key()), keys.generate_psk(),
                                           [config.ipaddress.ip_network(f"10.0.{i // 250}.{i % 250 + 2}/32")],
                                           name=f"client{i}"))
    path = tmp_path / "server.conf"
    config.save(cfg, path)
    assert path.stat().st_size < files.CONFIG_LIMIT / 1.5
    r = run_cli("conf", "check", str(path), timeout=TIMEOUT)
    assert r.returncode == 0 and "10000 peer(s)" in r.stdout, r.stderr


def test_a_directory_is_refused(tmp_path):
    one_line(run_cli("conf", "check", str(tmp_path), timeout=TIMEOUT), "is a directory")
    with pytest.raises(FileRefused, match="is a directory, not a regular file"):
        files.read_bytes(tmp_path)


def test_stdin_is_read_with_a_limit():
    with open("/dev/zero", "rb") as zero:
        one_line(run_cli("pubkey", stdin=zero, timeout=TIMEOUT), "standard input", "4 KiB", "private key")
    with open("/dev/zero", "rb") as zero:
        one_line(run_cli("conf", "import", "-", stdin=zero, timeout=TIMEOUT), "standard input", "4 MiB", "config")


def test_binary_input_is_refused_as_not_text(tmp_path):
    bad = tmp_path / "bin.conf"
    bad.write_bytes(b"[Interface]\n\xff\xfe\x00\n")
    one_line(run_cli("conf", "check", str(bad), timeout=TIMEOUT), str(bad), "not a UTF-8 text file")
    r = run_cli("pubkey", input=None, stdin=open(bad, "rb"), timeout=TIMEOUT)
    one_line(r, "standard input is not UTF-8 text")


def test_a_notebook_to_grade_is_read_with_a_limit(tmp_path):
    fifo = tmp_path / "lab.ipynb"
    os.mkfifo(fifo)
    one_line(run_cli("labs", "check", "/dev/zero", timeout=TIMEOUT), "/dev/zero", "not a regular file")
    one_line(run_cli("labs", "check", str(fifo), timeout=TIMEOUT), "FIFO")
    # 'labs build --source DIR' reads every DIR/*.ipynb the same way.
    one_line(run_cli("labs", "build", "--source", str(tmp_path), "--out", str(tmp_path / "out"), timeout=TIMEOUT),
             str(fifo), "FIFO")


def test_the_reader_checks_the_file_it_read(tmp_path):
    """uid and mode come from fstat of the open file: what the hooks' rule looks at."""
    p = tmp_path / "x.conf"
    p.write_text("hello")
    p.chmod(0o620)
    got = files.read_bytes(p, "config")
    assert got.data == b"hello" and got.uid == os.geteuid() and got.mode & 0o777 == 0o620
