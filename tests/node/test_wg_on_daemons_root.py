"""``wg`` on a running ``vpnedu server``: the daemons serve /var/run/wireguard/IFNAME.sock too,
so the standard tools see the interface (read) and can change it (write), in the namespace lab."""

import json
import os

import pytest

from tests.conftest import require_tool
from tests.lablib import provision, start_client, start_server, status, stop
from tests.wglib import dump, wg
from vpnedu.node.uapi_socket import socket_path
from vpnedu.protocol.keys import encode, generate_private_key, public_key

pytestmark = pytest.mark.root


def test_wg_show_and_set_on_a_running_vpnedu_server(lab_factory):
    require_tool("wg")
    lab = lab_factory()
    provision(lab)
    ifname = f"vs{os.getpid() % 10000}"        # not vpnedu0: another test's daemon may hold that socket
    server = start_server(lab, "--interface", ifname)
    client = start_client(lab, "client", None, "--interface", f"vc{os.getpid() % 10000}")
    try:
        assert socket_path(ifname).exists()
        assert lab.run("client", "ping", "-c", "3", "-i", "0.2", "10.0.0.1").returncode == 0
        st = status(lab, "server", ifname)
        iface, peers = dump(ifname)
        assert iface[1] == st["public_key"] and iface[2] == str(st["listen_port"])
        (peer,) = peers
        (sp,) = st["peers"]
        assert peer[0] == sp["public_key"] and peer[3] == ",".join(sp["allowed_ips"])
        assert int(peer[4]) == int(sp["latest_handshake"])        # the same handshake, the same second
        # Transfer counts: the same counters, read a moment apart with no traffic in between.
        assert abs(int(peer[5]) - sp["transfer_rx"]) < 300 and abs(int(peer[6]) - sp["transfer_tx"]) < 300
        assert peer[2].split(":")[0] == sp["endpoint"].split(":")[0]

        # wg set on the daemon: as vpnedu reload would, live; visible in status and in the events.
        extra = encode(public_key(generate_private_key()))
        wg("set", ifname, "peer", sp["public_key"], "persistent-keepalive", "7",
           "peer", extra, "allowed-ips", "10.0.0.99/32")
        st2 = status(lab, "server", ifname)
        by_key = {p["public_key"]: p for p in st2["peers"]}
        assert by_key[sp["public_key"]]["persistent_keepalive"] == 7
        assert by_key[extra]["allowed_ips"] == ["10.0.0.99/32"]
        assert by_key[sp["public_key"]]["latest_handshake"] == sp["latest_handshake"]   # session kept
        assert lab.run("client", "ping", "-c", "2", "-i", "0.2", "10.0.0.1").returncode == 0
        r = lab.run("server", *lab.vpnedu("events", "--interface", ifname, "--kind", "config", "--recent", "0",
                                          "--count", "1", "--json"), timeout=30)
        (event,) = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
        assert event["kind"] == "config.set" and event["fields"]["peers_added"] == 1
        assert event["fields"]["peers_updated"] == 1 and event["fields"]["source"] == "wg"
        wg("set", ifname, "peer", extra, "remove")
        assert [p["public_key"] for p in status(lab, "server", ifname)["peers"]] == [sp["public_key"]]
    finally:
        stop(client)
        stop(server)
    assert not socket_path(ifname).exists()
