"""The server's two ways out for clients -- kernel NAT and the transport-layer proxy -- driven
for real in the namespace lab: a 100 MB download, 500 concurrent TCP echoes, a UDP
request/response, ping and a refused connection, each through the tunnel, with the flow table
watched and the server's file descriptors counted before and after."""

import json
import os
import threading
import time

import pytest

from vpnedu.lab.app import random_sha256
from vpnedu.lab.topology import APP_ADDRESS, SERVER_PUBLIC

from .conftest import require_tool
from .lablib import ping_count, provision, snapshot, start_client, start_server, status, stop, vpnedu, wait_for

pytestmark = pytest.mark.root
BIG = 100 * 1024 * 1024


class Vpn:
    def __init__(self, lab, mode, server, client):
        self.lab, self.mode, self.server, self.client = lab, mode, server, client

    def traffic(self, *args: str, timeout: float = 180) -> dict:
        r = self.lab.run("client", *self.lab.python("-m", "vpnedu.lab.traffic", *args), timeout=timeout)
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
    from vpnedu.lab.topology import Lab
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


def test_forwarding_mode_is_reported(vpn):
    st = vpn.status()
    assert st["forwarding"] == vpn.mode
    r = vpn.lab.run("server", *vpnedu("status", "--flows"))
    assert r.returncode == 0, r.stderr
    assert f"via {vpn.mode}" in r.stdout


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
    seen = {}

    def watch():
        for f in vpn.flows():
            if f["proto"] == "tcp" and f["destination"] == f"{APP_ADDRESS}:7":
                seen[f["client"]] = f
        return False
    got = vpn.traffic("echo", APP_ADDRESS, "7", "--connections", "500", "--size", "65536")
    assert got["ok"] == 500, got
    watch()
    if vpn.mode == "proxy":
        # The flows closed after the echoes; the proxy's table is empty and its sockets are gone.
        wait_for(lambda: vpn.no_flows_left("tcp"), timeout=15, what="proxy TCP flows to close")
        st = vpn.status()
        assert st["flow_totals"]["closed"] >= 500
        wait_for(lambda: vpn.fds() <= fds_before, timeout=15, what="file descriptors back to before")
    else:
        # conntrack keeps closed flows in TIME_WAIT for a while: they are listed as such.
        states = {f["state"] for f in vpn.flows() if f["destination"] == f"{APP_ADDRESS}:7"}
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


def test_nothing_leaks_after_all_the_flows(vpn):
    """Last in the module: every flow above has ended, so the server holds the same file
    descriptors as when it started (sockets, listeners and all)."""
    if vpn.mode == "proxy":
        wait_for(lambda: vpn.no_flows_left(), timeout=30, what="every proxied flow to close")
    wait_for(lambda: vpn.fds() <= vpn.fds_at_start, timeout=15,
             what=f"server fds back to {vpn.fds_at_start} (now {vpn.fds()})")
