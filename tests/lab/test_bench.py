"""`vpnedu bench` for real, CI-sized: every path gets a number or a stated reason, every ratio is
computed from the run's own numbers, and the JSON and PNG are written.  No speed thresholds:
speed is judged from the benchmark's output, on a quiet machine (BENCHMARKS.md)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpnedu.bench import PATHS, TESTS
from vpnedu.netns_lab.topology import SERVER_PUBLIC, Lab

from ..conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnedu", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def check_ratios(data: dict) -> None:
    """Each result carries its ratio to every other path of the run, computed from the medians."""
    paths = data["paths"]
    for path, row in paths.items():
        for t in data["settings"]["tests"]:
            got = row[t]["median_mbit_s"]
            assert (got is not None and got > 0) or row["skipped"], (path, t, row)
            assert set(row[t]["vs"]) == set(paths) - {path}, (path, t)
            for other, r in row[t]["vs"].items():
                base = paths[other][t]["median_mbit_s"]
                assert r == (round(got / base, 2) if got and base else None), (path, t, other)


def check_daemons(row: dict) -> None:
    """A tunnel's two daemons each have CPU per GB and a peak RSS; both = client + server."""
    cpu, rss = row["cpu_s_per_gb"], row["peak_rss_mib"]
    assert cpu["client"] > 0 and cpu["server"] > 0, row
    assert abs(cpu["both"] - cpu["client"] - cpu["server"]) <= 0.02, cpu
    assert rss["client"] > 0 and rss["server"] > 0, row
    assert row["rtt_ms"] > 0


def another_tree(tmp_path: Path, marker: Path) -> tuple[Path, str]:
    """A copy of this tree's vpnedu in a git repository of its own (its commit names the bench row),
    whose import appends its file name to ``marker`` when VPNEDU_TEST_MARKER says so."""
    tree = tmp_path / "old-tree"
    shutil.copytree(ROOT / "vpnedu", tree / "vpnedu", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tree / "vpnedu" / "__init__.py", "a") as f:
        f.write("\nimport os as _os\nif _os.environ.get('VPNEDU_TEST_MARKER'):\n"
                "    open(_os.environ['VPNEDU_TEST_MARKER'], 'a').write(__file__ + '\\n')\n")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return tree, commit


@pytest.mark.root
def test_quick_bench_reports_every_path_another_tree_and_another_wireguard_go_build(tmp_path):
    """One ``--quick`` run of every built-in path plus ``vpnedu@TREE`` (both daemons run TREE's code:
    a marker its import writes proves it; the row is named by TREE's commit) and
    ``wireguard-go@PATH`` (that binary).  ``--json`` alone writes the JSON to stdout and everything
    else to stderr.  (One run for all of it: each bench run costs a lab, a handshake-rate and a
    four-client measurement.)"""
    for t in ("iperf3", "wireguard-go", "wg", "openvpn"):
        require_tool(t)
    out_png = tmp_path / "b.png"
    marker = tmp_path / "imports.txt"
    tree, commit = another_tree(tmp_path, marker)
    wggo = shutil.which("wireguard-go")
    paths = [*PATHS, f"vpnedu@{tree}", f"wireguard-go@{wggo}"]
    t0 = time.monotonic()
    # Two of the four tests (one stream up, four streams down): the same code measures all four,
    # and each iperf3 run costs every path a few seconds.
    tests = ("tcp1_up", "tcp4_down")
    r = bench("--quick", "--tests", ",".join(tests), "--paths", ",".join(paths), "--json", "--chart", str(out_png),
              "--prefix", f"vtb{os.getpid() % 10000}-", env={**os.environ, "VPNEDU_TEST_MARKER": str(marker)})
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # The promise of --quick (a duration, not a speed): about 90 s for the built-in paths; 240 s
    # with two more even on a loaded machine.
    assert took < 240, f"vpnedu bench --quick took {took:.0f} s"
    data = json.loads(r.stdout)   # stdout is the JSON alone
    # The printed table: which topology and what that means, what each path is, a section per
    # test with a row per path (a number or the reason) and a ratio column per path.
    table = r.stderr
    assert "Topology: direct -- each client on a veth cable of its own" in table
    for t in TESTS:
        assert (TESTS[t][0] in table) == (t in tests), t
    for i, p in enumerate(PATHS, 1):
        assert f"  [{i}] {p} " in table
    assert f"[{len(PATHS) + 1}] vpnedu@{commit} " in table
    assert "".join(f"{f'x[{i}]':>7s}" for i in range(1, len(paths) + 1)) in table
    # While it runs, stderr says which round, path and test it is on, in order, "done" last.
    progress = [line for line in table.splitlines() if line.startswith("bench: ")]
    n, k = len(paths), len(PATHS) + 1
    for want in (f"bench: round 1/1, path {k}/{n}: vpnedu@{commit}: setting up the tunnel",
                 f"bench: round 1/1, path {k}/{n}: vpnedu@{commit}: ping RTT",
                 f"bench: round 1/1, path {k}/{n}: vpnedu@{commit}: tcp1_up (1 stream, client -> server, iperf3 1 s)",
                 "bench: handshake rate: 100 clients for 3 s against the vpnedu server"):
        assert want in progress, (want, table)
    assert any(p.startswith(f"bench: round 1/1, path {n}/{n}: wireguard-go@v")
               and p.endswith(": tcp1_up (1 stream, client -> server, iperf3 1 s)") for p in progress), progress
    assert progress[-1] == "bench: done"
    assert data["topology"]["name"] == "direct" and set(data["paths"]) == set(paths)
    check_ratios(data)
    for path, row in data["paths"].items():
        if path == "bare":
            assert row["cpu_s_per_gb"] is None and row["peak_rss_mib"] is None   # no daemons
        elif not row["skipped"]:
            check_daemons(row)
    old, wg = data["paths"][f"vpnedu@{tree}"], data["paths"][f"wireguard-go@{wggo}"]
    assert old["label"] == f"vpnedu@{commit}" and str(tree) in old["what"], old
    assert old["skipped"] is None and wg["skipped"] is None, (old, wg)
    assert wg["label"].startswith("wireguard-go@v") and wggo in wg["what"], wg
    # The tree's own code ran: the provisioning, the server and the client each imported it.
    imported = marker.read_text().split()
    assert len(imported) >= 3 and set(imported) == {str(tree / "vpnedu" / "__init__.py")}, imported
    h = data["handshakes"]
    assert h.get("handshakes_per_second", 0) > 0 or h.get("skipped")
    if not h.get("skipped"):
        # A server under load answers with cookies and the clients come back with mac2: almost every
        # handshake completes (not a speed figure: a server that drops them all fails here).
        assert h["handshakes_completed"] > 10 * h["lost"], h
    c = data["concurrency"]
    assert c.get("clients") == 4 and len(c["per_client_mbit_s"]) == 4, c   # the direct lab has 4 cables
    assert abs(c["aggregate_mbit_s"] - sum(c["per_client_mbit_s"])) < 0.5
    assert 0.25 <= c["jain_fairness"] <= 1.0   # Jain's index lies in [1/n, 1]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The bench lab is gone.
    assert f"vtb{os.getpid() % 10000}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                            text=True).stdout


@pytest.mark.root
def test_quick_proxy_bench_downloads_every_way_and_holds_every_socks_connection(tmp_path):
    require_tool("curl")
    out_json = tmp_path / "p.json"
    r = bench("--proxies", "--quick", "--json", str(out_json), "--prefix", "vtp-")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "4 MiB download from the app server, median of 1 round(s), router topology" in r.stdout
    data = json.loads(out_json.read_text())
    ways = ("nat", "socks5", "http-connect", "proxy")
    assert set(data["median_mbit_s"]) == set(ways) and all(data["median_mbit_s"][w] > 0 for w in ways), data
    for w in ways:
        assert data["ratio_to_nat"][w] == round(data["median_mbit_s"][w] / data["median_mbit_s"]["nat"], 3)
        assert data["server_cpu_s_per_gb"][w] > 0
        assert f"  {w:13s} " in r.stdout
    load = data["load"]
    assert load["ok"] == load["connections"] == 50 and load["failed"] == {}, load
    assert load["server_open_files_after"] <= load["server_open_files_before"], load   # every socket closed
    assert "vtp-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.root
def test_direct_topology_is_one_cable_per_client_and_no_tunnel_address_over_it():
    require_tool("ping")
    lab = Lab(prefix=f"vtd{os.getpid() % 10000}-", clients=2, topology="direct", log=lambda m: None)
    lab.up()
    try:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lab.ns("server") in names and lab.ns("client2") in names
        assert lab.ns("internet") not in names and lab.ns("app") not in names   # no router, no app
        for c in lab.client_names():
            assert lab.run(c, "ping", "-c", "1", "-W", "2", SERVER_PUBLIC).returncode == 0, c
            # One hop: the server's address is on-link, not behind a gateway.
            assert "via" not in lab.run(c, "ip", "route", "get", SERVER_PUBLIC).stdout
        # The server answers for any of its addresses on any cable; a tunnel address must not
        # answer until a tunnel carries it (else a bench would measure the bare cable).
        lab.run("server", "ip", "addr", "add", "10.0.0.1/24", "dev", "lo", check=True)
        assert lab.run("client", "ping", "-c", "1", "-W", "1", "10.0.0.1").returncode != 0
        assert lab.run("server", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    finally:
        lab.down()
    assert lab.ns("server") not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_bench_names_a_bad_path_in_one_line(tmp_path):
    for spec, words in ((f"vpnedu@{tmp_path}", "has no vpnedu/ package"),
                        (f"wireguard-go@{tmp_path}/nothing", "no executable file at"),
                        ("wireguard", "unknown path 'wireguard'")):
        r = bench("--paths", f"bare,{spec}", "--json", str(tmp_path / "b.json"), timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "b.json").exists()
    # --proxies measures one thing on one topology: the tunnel bench's options are named, not ignored.
    r = bench("--proxies", "--paths", "bare", "--topology", "router", "--json", str(tmp_path / "b.json"), timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--proxies takes no --paths, --topology" in r.stderr
    assert not (tmp_path / "b.json").exists()


@pytest.mark.root
def test_a_daemon_that_exits_ends_the_wait_for_its_tunnel_with_its_last_line():
    """A path whose daemon dies during set-up is reported at once with what it said, not after
    the ping timeout as "no ping" (the bench records the line as that round's reason)."""
    from vpnedu.bench.tunnels import Tunnel
    from vpnedu.errors import VpneduError
    lab = Lab(prefix=f"vtx{os.getpid() % 10000}-", clients=1, topology="direct", log=lambda m: None)
    lab.up()
    try:
        tun = Tunnel(lab)
        tun.name, tun.target = "broken", "10.0.0.1"
        tun.procs.append(lab.spawn("client", "broken-client", "sh", "-c",
                                   "echo starting; echo 'vpnedu: error: cannot add a rule: File exists'; exit 3"))
        t0 = time.monotonic()
        with pytest.raises(VpneduError) as e:
            tun.wait_ping(timeout=30)
        assert time.monotonic() - t0 < 15
        assert "status 3" in e.value.problem and "cannot add a rule: File exists" in e.value.problem, e.value
        assert "broken-client.log" in e.value.fix
    finally:
        lab.down()


def test_the_table_says_when_a_path_failed_in_some_rounds():
    """A median over fewer rounds than the run had is named as such, with the reason, in the row."""
    from vpnedu.bench import Results, Settings, table
    r = Results(Settings(rounds=3, tests=["tcp1_up"], paths=["bare", "vpnedu-wireguard"]))
    r.mbps = {"bare": {"tcp1_up": [10.0, 11.0, 12.0]}, "vpnedu-wireguard": {"tcp1_up": [5.0, 7.0]}}
    r.skipped = {"vpnedu-wireguard": "failed: vpnedu-wireguard: a daemon exited (status 1)"}
    section = table(r).split("TCP throughput")[1].split("Idle ping")[0]
    rows = {line.split("]")[1].split()[0]: line for line in section.splitlines() if line.startswith("  [")}
    assert "(only 2 of 3 rounds; failed: vpnedu-wireguard: a daemon exited (status 1))" in rows["vpnedu-wireguard"]
    assert "6.0" in rows["vpnedu-wireguard"] and "only" not in rows["bare"]


@pytest.mark.root
def test_an_iperf3_server_stuck_on_a_vanished_client_is_restarted_not_blamed_on_the_path():
    """When a path's tunnel goes down before iperf3's last exchange crossed it, the server waits
    for a client that is gone (120 s by default) and answers the next path "busy".  The bench
    starts a fresh server and the next test runs."""
    from vpnedu.bench import Bench, Settings
    require_tool("iperf3")
    lab = Lab(prefix=f"vti{os.getpid() % 10000}-", clients=1, topology="direct", log=lambda m: None)
    lab.up()
    stuck = None
    try:
        b = Bench(Settings(seconds=1, rounds=1, tests=["tcp1_up"], paths=["bare"]), lab, lambda m: None, lambda m: None)
        b.start_iperf_server(5201)
        # A client that started a long test and then froze: the server is busy with it.  Its
        # connection must be up before the probe: a probe that got in first would hold the
        # server itself, the long client would be the one told "busy" and exit.
        def start_stuck() -> subprocess.Popen:
            return subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "iperf3", "-c", SERVER_PUBLIC,
                                     "-p", "5201", "-t", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stuck = start_stuck()
        busy = ""
        for _ in range(100):
            if stuck.poll() is not None:
                stuck = start_stuck()
            held = lab.run("server", "ss", "-Htn", "state", "established", "( sport = :5201 )").stdout
            if held.strip():
                busy = lab.run("client", "iperf3", "-c", SERVER_PUBLIC, "-p", "5201", "-t", "1", "-J").stdout
                if "busy" in busy:
                    break
            time.sleep(0.1)
        assert "busy" in busy, busy
        stuck.send_signal(19)    # SIGSTOP: it holds its sockets and never finishes
        assert b.iperf(SERVER_PUBLIC, []) > 0
    finally:
        if stuck is not None:
            stuck.kill()
            stuck.wait()
        lab.down()


@pytest.mark.root
def test_clients_at_once_start_on_fresh_iperf3_servers():
    """The clients-at-once test starts its iperf3 clients together, with no retry: a server still
    held by the last path's vanished client made it fail "busy" (seen in a bench run).  It now
    starts fresh servers first."""
    from vpnedu.bench import Bench, Settings
    require_tool("iperf3")
    lab = Lab(prefix=f"vtc{os.getpid() % 10000}-", clients=2, topology="direct", log=lambda m: None)
    lab.up()
    stuck = None
    try:
        b = Bench(Settings(seconds=1, rounds=1, tests=["tcp1_up"], paths=["bare"], concurrency_clients=2),
                  lab, lambda m: None, lambda m: None)
        b.start_iperf_server(5201)
        stuck = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "iperf3", "-c", SERVER_PUBLIC,
                                  "-p", "5201", "-t", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if "busy" in lab.run("client", "iperf3", "-c", SERVER_PUBLIC, "-p", "5201", "-t", "1", "-J").stdout:
                break
            time.sleep(0.1)
        stuck.send_signal(19)
        b.concurrency()
        c = b.r.concurrency
        assert c.get("clients") == 2 and len(c["per_client_mbit_s"]) == 2 and c["aggregate_mbit_s"] > 0, c
    finally:
        if stuck is not None:
            stuck.kill()
            stuck.wait()
        lab.down()
