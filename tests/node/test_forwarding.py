"""The server's two ways out for clients -- kernel NAT and the transport-layer proxy -- driven
for real in the namespace lab: a 100 MB download, 500 concurrent TCP echoes, a UDP
request/response, ping, a refused connection, an idle TCP connection and one the application
resets mid-stream, each through the tunnel, with the flow table watched and the server's file
descriptors counted before and after."""

import json
import os
import threading
import time

import pytest

from vpnedu.netns_lab.app import random_sha256
from vpnedu.netns_lab.topology import APP_ADDRESS, SERVER_PUBLIC

from ..conftest import require_tool
from ..lablib import (ping_count, provision, snapshot, start_client, start_server, status, stop, vpnedu, wait_for,
                      wait_ready)

pytestmark = pytest.mark.root
BIG = 100 * 1024 * 1024


class Vpn:
    def __init__(self, lab, mode, server, client):
        self.lab, self.mode, self.server, self.client = lab, mode, server, client

    def traffic(self, *args: str, timeout: float = 180) -> dict:
        r = self.lab.run("client", *self.lab.python("-m", "vpnedu.netns_lab.traffic", *args), timeout=timeout)
        assert r.stdout.strip(), r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    def status(self) -> dict:
        return status(self.lab, "server")

    def flows(self) -> list[dict]:
        return self.status().get("flows", [])

    def server_pid(self) -> int:
        return self.status()["pid"]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.server_pid()}/fd"))

    def rss_kib(self) -> int:
        for line in open(f"/proc/{self.server_pid()}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def watch_flows(self):
        """Poll the flow table in the background; returns (seen dict, stop function)."""
        seen: dict[tuple, dict] = {}
        done = threading.Event()

        def run():
            while not done.is_set():
                for f in self.flows():
                    seen[(f["proto"], f["client"], f["destination"])] = f
                time.sleep(0.3)
        t = threading.Thread(target=run, daemon=True)
        t.start()

        def stop_watching():
            done.set()
            t.join(5)
            return seen
        return stop_watching

    def no_flows_left(self, proto: str | None = None) -> bool:
        return not [f for f in self.flows() if proto in (None, f["proto"])
                    and (self.mode == "proxy" or f["state"] not in ("time-wait", "close"))]


@pytest.fixture(scope="module", params=["proxy", "nat"])
def vpn(request):
    from vpnedu.netns_lab.topology import Lab
    require_tool("nft")
    mode = request.param
    lab = Lab(prefix=f"vf{os.getpid() % 10000}{mode[0]}-", clients=1, log=lambda s: None)
    try:
        lab.up()
        provision(lab)
        before = snapshot(lab, "server")
        server = start_server(lab, "--forwarding", mode, "--proxy-idle", "tcp=20,udp=2,icmp=2")
        client = start_client(lab)
        v = Vpn(lab, mode, server, client)
        v.fds_at_start = v.fds()
        yield v
        stop(client)
        stop(server)
        # A normal exit puts back every table, rule, route and sysctl either mode made.
        assert snapshot(lab, "server") == before
    finally:
        lab.down()


def spawn_traffic(lab, name: str, *args: str):
    """Start ``python -m vpnedu.netns_lab.traffic ARGS`` on the client in the background."""
    return lab.spawn("client", name, *lab.python("-m", "vpnedu.netns_lab.traffic", *args))


def traffic_lines(lab, name: str) -> list[dict]:
    log = lab.dir / f"{name}.log"
    text = log.read_text() if log.exists() else ""
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def held_connection(lab, name: str, proc) -> str:
    """The client address:port of a ``traffic hold`` once it has connected."""
    def connected():
        return next((d["connected"] for d in traffic_lines(lab, name) if "connected" in d), None)
    return wait_for(connected, timeout=15, what=f"{name} to connect", proc=proc, log=lab.dir / f"{name}.log")


def finish(proc, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout)


def test_forwarding_mode_is_reported(vpn):
    st = vpn.status()
    assert st["forwarding"] == vpn.mode
    # A live flow -- a TCP connection held open to the echo service -- is a row of the text table.
    hold = spawn_traffic(vpn.lab, "hold-status", "hold", APP_ADDRESS, "7", "--seconds", "15")
    try:
        local = held_connection(vpn.lab, "hold-status", hold)
        wait_for(lambda: any(f["client"] == local for f in vpn.flows()), timeout=10, what="the flow listed")
        r = vpn.lab.run("server", *vpnedu("status", "--flows"))
    finally:
        finish(hold)
    assert r.returncode == 0, r.stderr
    assert f"via {vpn.mode}" in r.stdout
    lines = r.stdout.splitlines()
    head = next(x for x in lines if x.split()[:2] == ["proto", "client"])
    assert head.split()[2:6] == ["server", "end", "destination", "state"], head
    rows = [x.split() for x in lines if local in x.split()]
    assert len(rows) == 1, r.stdout
    proto, client, server_end, destination, state = rows[0][:5]
    assert (proto, client, destination, state) == ("tcp", local, f"{APP_ADDRESS}:7", "established"), rows
    # The server's own end: the proxy's socket, or the address and port NAT rewrote the client's to.
    assert server_end.startswith(SERVER_PUBLIC + ":") and int(server_end.rsplit(":", 1)[1]) > 0, rows


def test_http_download_of_100_mb_arrives_intact(vpn):
    rss_before = vpn.rss_kib()
    stop_watching = vpn.watch_flows()
    got = vpn.traffic("download", f"http://{APP_ADDRESS}/random/{BIG}")
    seen = stop_watching()
    assert got["bytes"] == BIG
    assert got["sha256"] == random_sha256(BIG)
    # The flow table showed the download while it ran: the client, the server's own end, the app.
    http = [f for f in seen.values() if f["proto"] == "tcp" and f["destination"] == f"{APP_ADDRESS}:80"]
    assert http, seen
    assert http[0]["client"].startswith("10.0.0.2:") and http[0]["proxy"].startswith(SERVER_PUBLIC + ":")
    assert max(f["bytes_down"] for f in http) > 0
    # Backpressure: relaying 100 MB did not pile it up in the server's memory.
    assert vpn.rss_kib() - rss_before < 40 * 1024
    # Either way the application server saw the VPN server, never the client.
    assert vpn.lab.app_log()[-1].startswith(SERVER_PUBLIC)


def test_500_concurrent_tcp_connections_each_echo_64_kib(vpn):
    fds_before = vpn.fds()
    stop_watching = vpn.watch_flows()
    got = vpn.traffic("echo", APP_ADDRESS, "7", "--connections", "500", "--size", "65536")
    seen = stop_watching()
    assert got["ok"] == 500, got
    # The flow table listed the echoes while they ran: many distinct client ports to the echo port.
    echoes = {client for proto, client, dst in seen if proto == "tcp" and dst == f"{APP_ADDRESS}:7"}
    assert len(echoes) >= 100, f"only {len(echoes)} echo flows seen in the flow table"
    assert all(c.startswith("10.0.0.2:") for c in echoes), echoes
    if vpn.mode == "proxy":
        # The flows closed after the echoes; the proxy's table is empty and its sockets are gone.
        wait_for(lambda: vpn.no_flows_left("tcp"), timeout=15, what="proxy TCP flows to close")
        st = vpn.status()
        assert st["flow_totals"]["closed"] >= 500
        wait_for(lambda: vpn.fds() <= fds_before, timeout=15, what="file descriptors back to before")
    else:
        # conntrack keeps closed flows for a while (TIME_WAIT: 120 s) and lists them as such; a
        # connection that ended in a reset is CLOSE, kept only 10 s, which a loaded run may outlast.
        after = [f for f in vpn.flows() if f["destination"] == f"{APP_ADDRESS}:7"]
        assert len({f["client"] for f in after}) >= 450, f"{len(after)} conntrack entries for the echoes"
        states = {f["state"] for f in after}
        assert states <= {"time-wait", "close", "fin-wait", "last-ack", "close-wait"}, states
        assert vpn.fds() <= fds_before


def test_udp_request_response_through_the_server(vpn):
    got = vpn.traffic("query", APP_ADDRESS, "53", "app.lab")
    assert got["answer"] is not None, got
    assert got["answer"].endswith(f"app.lab A {APP_ADDRESS} seen-from {SERVER_PUBLIC}")
    # The reply comes from the address the client asked, whichever mode relays it.
    assert got["from"] == f"{APP_ADDRESS}:53"
    flows = [f for f in vpn.flows() if f["proto"] == "udp" and f["destination"] == f"{APP_ADDRESS}:53"]
    assert flows and flows[0]["client"] == got["local"].replace("0.0.0.0", "10.0.0.2")
    assert flows[0]["proxy"].startswith(SERVER_PUBLIC + ":")
    if vpn.mode == "proxy":
        assert flows[0]["bytes_up"] > 0 and flows[0]["bytes_down"] > 0
        # The idle timeout (2 s here) closes the flow and its sockets.
        wait_for(lambda: vpn.no_flows_left("udp"), timeout=10, what="idle UDP flow to close")


def test_ping_through_the_server(vpn):
    sent, received = ping_count(vpn.lab, "client", APP_ADDRESS, count=10)
    assert received == sent == 10
    flows = [f for f in vpn.flows() if f["proto"] == "icmp" and f["destination"].startswith(APP_ADDRESS)]
    assert flows, vpn.flows()
    if vpn.mode == "proxy":
        assert flows[0]["rtt_ms"] > 0
        wait_for(lambda: vpn.no_flows_left("icmp"), timeout=10, what="idle ICMP flow to close")


def test_closed_port_is_refused_fast(vpn):
    got = vpn.traffic("connect", APP_ADDRESS, "81")
    assert got["result"] == "Connection refused", got
    assert got["seconds"] < 2


def test_events_show_proxy_flows_opening_and_closing(vpn):
    if vpn.mode != "proxy":
        pytest.skip("flow events come from the proxy")
    ev = vpn.lab.spawn("server", "flow-events", *vpnedu("events", "--kind", "proxy.flow", "--json", "--count", "2"))
    time.sleep(1.0)
    got = vpn.traffic("connect", APP_ADDRESS, "80")
    assert got["result"] == "connected"
    ev.wait(20)
    lines = [json.loads(x) for x in (vpn.lab.dir / "flow-events.log").read_text().splitlines() if x.startswith("{")]
    kinds = [e["kind"] for e in lines]
    assert kinds == ["proxy.flow.opened", "proxy.flow.closed"], lines
    opened, closed = lines
    assert opened["fields"]["destination"] == f"{APP_ADDRESS}:80"
    assert opened["fields"]["proxy"].startswith(SERVER_PUBLIC + ":")
    assert closed["fields"]["reason"] in ("closed", "reset")


@pytest.fixture
def short_idle_proxy():
    """A lab of its own whose proxy closes TCP flows idle for 2 s (the module's server waits 20 s)."""
    from vpnedu.netns_lab.topology import Lab
    lab = Lab(prefix=f"vf{os.getpid() % 10000}i-", clients=1, log=lambda s: None)
    try:
        lab.up()
        provision(lab)
        server = start_server(lab, "--forwarding", "proxy", "--proxy-idle", "tcp=2")
        client = start_client(lab)
        v = Vpn(lab, "proxy", server, client)
        v.fds_at_start = v.fds()
        yield v
        stop(client)
        stop(server)
    finally:
        lab.down()


def test_idle_tcp_connection_is_closed_after_the_idle_timeout(vpn, request):
    if vpn.mode == "nat":
        # NAT leaves the connection end to end: vpnedu sets no idle timeout, and conntrack keeps an
        # established TCP entry for days (nf_conntrack_tcp_timeout_established).  The same silent
        # connection the proxy closes below is still alive afterwards.
        got = vpn.traffic("hold", APP_ADDRESS, "7", "--seconds", "3", "--then-echo")
        assert got["result"] == "open" and got["echo"] is True, got
        return
    v = request.getfixturevalue("short_idle_proxy")
    ev = v.lab.spawn("server", "idle-events", *vpnedu("events", "--kind", "proxy.flow.closed", "--json",
                                                      "--count", "1"))
    time.sleep(0.5)
    hold = spawn_traffic(v.lab, "hold-idle", "hold", APP_ADDRESS, "7", "--seconds", "15")
    try:
        local = held_connection(v.lab, "hold-idle", hold)
        # Listed while it is open (and silent) ...
        wait_for(lambda: any(f["client"] == local and f["state"] == "established" for f in v.flows()),
                 timeout=5, what="the held flow listed")
        hold.wait(15)
    finally:
        finish(hold)
    got = traffic_lines(v.lab, "hold-idle")[-1]
    # ... then the proxy closed it: the client's read ended, well before its own 15 s.
    assert got["result"] in ("eof", "reset") and got["bytes"] == 0, got
    assert 1.5 < got["seconds"] < 8, got
    assert not [f for f in v.flows() if f["client"] == local]
    ev.wait(10)
    [closed] = [json.loads(x) for x in (v.lab.dir / "idle-events.log").read_text().splitlines()
                if x.startswith("{")]
    assert closed["kind"] == "proxy.flow.closed"
    assert closed["fields"]["reason"] == "idle", closed
    assert (closed["fields"]["client"], closed["fields"]["destination"]) == (local, f"{APP_ADDRESS}:7")
    wait_for(lambda: v.fds() <= v.fds_at_start, timeout=10, what="the idle flow's sockets closed")


def test_reset_by_the_application_mid_stream_reaches_the_client(vpn):
    """The application server greets, then aborts the connection (RST): the client reads the
    greeting, then a reset -- at once, not at the idle timeout."""
    port = "8007"
    srv = vpn.lab.spawn("app", "reset-server",
                        *vpn.lab.python("-m", "vpnedu.netns_lab.traffic", "reset-server", port))
    try:
        vpn.lab.wait_for_port("app", int(port))
        got = vpn.traffic("hold", APP_ADDRESS, port, "--seconds", "10")
    finally:
        finish(srv)
    assert (got["result"], got["bytes"]) == ("reset", len(b"hello\n")), got
    assert got["seconds"] < 3, got
    if vpn.mode == "proxy":
        wait_for(lambda: not [f for f in vpn.flows() if f["client"] == got["local"]], timeout=5,
                 what="the reset flow to leave the table")


def test_nothing_leaks_after_all_the_flows(vpn):
    """Last in the module: every flow above has ended, so the server holds the same file
    descriptors as when it started (sockets, listeners and all)."""
    if vpn.mode == "proxy":
        wait_for(lambda: vpn.no_flows_left(), timeout=30, what="every proxied flow to close")
    wait_for(lambda: vpn.fds() <= vpn.fds_at_start, timeout=15,
             what=f"server fds back to {vpn.fds_at_start} (now {vpn.fds()})")


def test_the_server_lifts_its_open_files_soft_limit_for_the_proxies(lab_factory):
    """Started with a login shell's soft limit of 1024 open files (and a hard one of 8192), the
    server raises the soft limit to the hard one -- two sockets per proxied connection -- and
    says so among its changes."""
    require_tool("prlimit")
    lab = lab_factory()
    provision(lab)
    p = lab.spawn("server", "vpn-server", "prlimit", "--nofile=1024:8192", "--",
                  *vpnedu("server", "-c", f"{lab.dir}/server.conf"))
    try:
        wait_ready(lab, "server", p)
        st = status(lab, "server")
        limits = open(f"/proc/{st['pid']}/limits").read()
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["8192", "8192"]
                   for line in limits.splitlines()), limits
        assert "raised this process's open-files limit from 1024 to 8192 (two sockets per proxied connection)" \
            in st["changes"], st["changes"]
    finally:
        assert stop(p) == 0
