"""Hostile input: the fuzz targets (vpnedu/fuzzing.py) fed by hypothesis here, and by atheris,
coverage-guided, in a short run (the README documents the 1M-input job). Every target checks its
own promise: only drops, no exception, no reply to a forged packet."""

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnedu import fuzzing

IN_CI = os.environ.get("CI") == "true"


@pytest.mark.parametrize("name", sorted(fuzzing.TARGETS))
def test_hypothesis_feeds_every_target(name):
    target = fuzzing.TARGETS[name]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=300), st.binary(min_size=32, max_size=32).map(lambda b: b * 5)))
    def run(data):
        target(data)
    run()


def test_the_receive_target_reaches_authentication():
    """The steering works: forged data messages reach the AEAD check (bad-mac), not only the
    cheap length checks, so the fuzzer exercises the deep path."""
    for i in range(400):
        fuzzing.target_receive(bytes([3, 1]) + os.urandom(2 + 16 * (1 + i % 8)))
    counters = fuzzing._server().server.counters
    assert counters["dropped.bad-mac"] > 100


def test_the_fastpath_target_runs_the_daemons_receive_path_and_would_catch_a_leak():
    """Forged data reaches the fast path's own AEAD check (bad-mac counted); and a genuine data
    message, which the fast path does write to TUN, makes the target fail: its check is real."""
    from vpnedu.sim import make_pair
    for i in range(300):
        fuzzing.target_fastpath(bytes([3, 1]) + os.urandom(2 + 16 * (1 + i % 8)))
    assert fuzzing._server().server.counters["dropped.bad-mac"] > 100
    assert fuzzing._fast[0].datapath.stats["datagrams_received"] >= 300
    p = make_pair()
    p.handshake()
    p.client_sends(b"\x45" + bytes(19))
    from vpnedu.packet.ip import build_icmp_echo
    (data, _), = p.client.send(p.server_peer, build_icmp_echo("10.0.0.2", "10.0.0.1"), p.now)
    fuzzing._pair, saved = p, fuzzing._fast
    try:
        with pytest.raises(AssertionError, match="reached TUN"):
            fuzzing.target_fastpath(bytes([3, 0]) + data[2:])   # steered to type 4, index kept
    finally:
        fuzzing._pair, fuzzing._fast = None, None
        saved[0].close()
        saved[1].close()


def test_a_forged_reply_would_be_caught():
    """The target's own check is real: a valid handshake initiation (which does earn a response)
    makes it fail."""
    from vpnedu.sim import make_pair
    p = make_pair()
    (init, _), = p.client.initiate(p.server_peer, p.now)
    fuzzing._pair = p
    try:
        with pytest.raises(AssertionError, match="got a reply"):
            # The steering keeps a type-1 message as it is (first byte 0 -> type 1).
            fuzzing.target_receive(bytes([0]) + init[1:])
    finally:
        fuzzing._pair = None


def test_atheris_short_run():
    try:
        import atheris  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("atheris is not installed (it is in the test extras)")
        pytest.skip("atheris is not installed")
    r = subprocess.run([sys.executable, "-m", "vpnedu.fuzzing", "all", "-runs=4000"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("Done 4000 runs") == len(fuzzing.TARGETS)


def test_control_requests_are_checked_before_the_daemon_acts():
    """The control target is the daemon's own decoder: each field the daemon reads has its shape
    checked, so a stranger's line ends in a 'bad request' reply, not in the dispatch code."""
    from vpnedu.node.control import parse_request
    assert parse_request(b'{"cmd": "events", "kinds": ["handshake"]}\n')["kinds"] == ["handshake"]
    for bad, why in ((b'{"cmd": "events", "kinds": 5}', "'kinds' must be a list of strings"),
                     (b'{"cmd": "events", "layers": [1]}', "'layers' must be a list of strings"),
                     (b'{"cmd": 42}', "unknown command 42"), (b"[1]", "not a JSON object"),
                     (b"\xff\xfe", "not UTF-8"), (b"[" * 100_000, "nested too deeply"), (b"{", "Expecting")):
        with pytest.raises(ValueError, match=why):
            parse_request(bad)
