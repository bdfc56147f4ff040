"""Reliability under load and attack, for real in the namespace lab: a handshake flood answered
with cookies while established clients keep working and a new client still gets in, and twenty
namespaced clients handshaking and pinging at once."""

import json
import subprocess
import sys
import time

import pytest

from vpnedu import config
from vpnedu.lab.topology import SERVER_PUBLIC
from vpnedu.protocol.keys import encode

from .lablib import ping_count, provision, start_client, start_server, status, stop, wait_for

pytestmark = pytest.mark.root


def test_handshake_flood_gets_cookie_replies_and_clients_keep_working(lab_factory):
    lab = lab_factory(clients=3)
    provision(lab, clients=("client", "client3"))
    server = start_server(lab)
    start_client(lab, "client")
    pub = encode(config.load(lab.dir / "server.conf").interface.public_key)
    flood = subprocess.Popen(["ip", "netns", "exec", lab.ns("client2"), sys.executable, "-m",
                              "vpnedu.bench.handshakes", "flood", f"{SERVER_PUBLIC}:51820", pub, "8", "10000"],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    # An established client keeps its session: its data needs no handshake.
    sent, received = ping_count(lab, "client", "10.0.0.1", count=20)
    # A new client arrives during the flood: it gets a cookie, retries with mac2, and is served.
    t0 = time.time()
    newcomer = start_client(lab, "client3")
    joined_after = time.time() - t0
    out, _ = flood.communicate(timeout=60)
    res = json.loads(out)
    st = status(lab, "server")
    assert received >= 18, (sent, received)
    assert joined_after < 15
    assert res["cookie_replies"] > 0 and st["counters"]["cookie_replies_sent"] > 0
    # Unknown keys never got a handshake response, and nobody got more bytes back than they sent.
    assert res["other_replies"] == 0
    assert res["bytes_received"] < res["bytes_sent"] / 2
    client3 = next(p for p in st["peers"] if p["name"] == "client3")
    assert client3["latest_handshake"]
    stop(newcomer)
    stop(server)


def test_twenty_clients_handshake_and_ping_at_once(lab_factory):
    n = 20
    lab = lab_factory(clients=n)
    names = lab.client_names()
    provision(lab, clients=names)
    server = start_server(lab)
    t0 = time.time()
    procs = [lab.spawn(c, f"vpn-{c}", sys.executable, "-m", "vpnedu", "client", "-c", f"{lab.dir}/{c}.conf")
             for c in names]
    try:
        def all_in():
            st = status(lab, "server")
            return st and sum(1 for p in st["peers"] if p.get("latest_handshake")) == n
        wait_for(all_in, timeout=90, what=f"{n} handshakes")
        took = time.time() - t0
        # Each client pings the server, all at the same time.
        pings = [subprocess.Popen(["ip", "netns", "exec", lab.ns(c), "ping", "-c", "10", "-i", "0.1", "-W", "2",
                                   "10.0.0.1"], stdout=subprocess.PIPE, text=True) for c in names]
        outs = [p.communicate(timeout=60)[0] for p in pings]
        lost = [c for c, o in zip(names, outs) if " 0% packet loss" not in o]
        assert not lost, lost
        st = status(lab, "server")
        assert len({p["endpoint"] for p in st["peers"]}) == n
        assert all(p["transfer_rx"] > 0 and p["transfer_tx"] > 0 for p in st["peers"])
        print(f"{n} clients: all handshakes done {took:.1f} s after starting them")
    finally:
        for p in procs:
            stop(p)
        stop(server)


def test_a_download_survives_loss_duplication_and_reordering(lab_factory):
    """5% loss, 1% duplication, 2% reordering on the internet: a 20 MB download through the
    tunnel arrives intact, and the replay windows drop exactly the duplicated data packets."""
    from vpnedu.lab.app import random_sha256
    from vpnedu.lab.topology import APP_ADDRESS
    n = 20 * 1024 * 1024
    lab = lab_factory()
    lab.impair(loss=5, dup=1, reorder=2, delay_ms=1, seed=7)
    provision(lab)
    server = start_server(lab)
    client = start_client(lab)
    r = lab.run("client", sys.executable, "-m", "vpnedu.lab.traffic", "download",
                f"http://{APP_ADDRESS}/random/{n}", timeout=300)
    got = json.loads(r.stdout)
    replays = [status(lab, h)["counters"].get("dropped.replay", 0) for h in ("client", "server")]
    stop(client)
    stop(server)
    imp = lab.impair_stats()
    print(f"impairment: {imp}; replay drops client/server: {replays}; download: {got}")
    assert got["bytes"] == n and got["sha256"] == random_sha256(n)
    assert imp["dropped"] > 0 and imp["reordered"] > 0 and imp["duplicated_data"] > 0, imp
    assert imp["dropped"] / imp["received"] > 0.03
    # Every duplicated data packet whose two copies both arrived was caught by a replay window.
    assert 0.9 * imp["duplicated_data"] <= sum(replays) <= imp["duplicated_data"], (replays, imp)
