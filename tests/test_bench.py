"""`vpnedu bench --quick` for real, CI-sized: every path gets a number or a stated reason, and the
JSON and PNG are written. No speed thresholds: speed is judged from the benchmark's output."""

import json
import subprocess
import sys

import pytest

from vpnedu.bench import PATHS, TESTS

from .conftest import require_tool

pytestmark = pytest.mark.root


def test_quick_bench_reports_every_path(tmp_path):
    for t in ("iperf3", "wireguard-go", "wg", "openvpn"):
        require_tool(t)
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    r = subprocess.run([sys.executable, "-m", "vpnedu", "bench", "--quick", "--seconds", "1", "--json", str(out_json),
                        "--png", str(out_png), "--prefix", "vtb-"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # The printed table: a section per test, a row per path, ratios to the three references.
    for t in TESTS:
        assert TESTS[t][0] in r.stdout
    assert "x OpenVPN" in r.stdout and "x wg-go" in r.stdout and "x bare" in r.stdout
    data = json.loads(out_json.read_text())
    assert set(data["paths"]) == set(PATHS)
    for path, row in data["paths"].items():
        for t in TESTS:
            got = row[t]["median_mbit_s"]
            assert (got is not None and got > 0) or row["skipped"], (path, t, row)
            if got and data["paths"]["bare"][t]["median_mbit_s"]:
                assert row[t]["vs_bare"] == round(got / data["paths"]["bare"][t]["median_mbit_s"], 2)
        if path != "bare" and not row["skipped"]:
            assert row["cpu_s_per_gb"] > 0 and row["rtt_ms"] > 0
    assert data["handshakes"].get("handshakes_per_second", 0) > 0 or data["handshakes"].get("skipped")
    c = data["concurrency"]
    assert (c.get("clients") == 4 and len(c["per_client_mbit_s"]) == 4) or c.get("skipped")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The bench lab is gone.
    assert "vtb-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
