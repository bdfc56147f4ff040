"""``wg`` in the course: ``lab.wg_show`` / ``wg_get`` / ``wg_set`` / ``wg_send`` in both labs.

What a student checks in notebook 02: ``wg show`` on the server lists the client's public key,
the raw ``get=1`` reply says the same, ``wg set ... persistent-keepalive 5`` changes it (and a
``config.set`` event arrives), a refused set changes nothing.  The simulation runs without root;
the real lab runs the real ``wg`` against the real daemons (root, one lab for every check).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import require_tool
from vpnedu import uapi
from vpnedu.course import RealLab, SimLab
from vpnedu.errors import VpneduError
from vpnedu.report import hex_to_base64


def bad_set(client_hex: str) -> str:
    """A set whose line 3 is fine and whose line 4 is not: all or nothing says line 3 is not applied."""
    return f"set=1\npublic_key={client_hex}\npersistent_keepalive_interval=25\nallowed_ip=10.0.0.2/33\n\n"


def check_wg_on_the_server(lab) -> None:
    """The checks of the notebook's section, for either lab (daemons up)."""
    client_key = lab.status("client")["public_key"]
    server = lab.status("server")
    show = lab.wg_show("server")
    assert show.peers() == [client_key]                       # the server's daemon, not the client's
    assert f"public key: {server['public_key']}" in show.text
    assert show.peer_field(client_key, "allowed ips").split(", ")[0] == "10.0.0.2/32"
    assert show.peer_field(client_key, "latest handshake")
    assert show.peer_field(client_key, "persistent keepalive") is None

    got = lab.wg_get("server")
    reply = got.reply
    assert reply["errno"] == 0 and reply["interface"]["listen_port"] == str(server["listen_port"])
    (peer,) = reply["peers"]
    assert hex_to_base64(peer["public_key"]) == client_key and got.peer(client_key) == peer
    assert int(peer["last_handshake_time_sec"]) > 0 and int(peer["rx_bytes"]) > 0
    printed = str(got)
    assert got.raw.count("private_key=") == 1 and reply["interface"]["private_key"] not in printed
    assert peer["preshared_key"] not in printed                 # the lab's peers have a PSK: hidden too

    done = lab.wg_set("server", "peer", client_key, "persistent-keepalive", "5")
    assert done.ok and done.errno == 0
    assert done.event is not None and done.event.kind == "config.set" and done.event["peers_updated"] == 1
    assert done.event["source"] == "wg"
    assert done.changes == [f"peer {client_key}: persistent_keepalive_interval 0 -> 5"]
    assert lab.wg_show("server").peer_field(client_key, "persistent keepalive") == "every 5 seconds"
    assert lab.status("server")["peers"][0]["persistent_keepalive"] == 5          # the daemon itself
    assert lab.ping("client", "10.0.0.1", count=2).ok                            # the session lived on

    refused = lab.wg_send("server", bad_set(peer["public_key"]))
    assert refused.errno == uapi.EINVAL and not refused.ok
    assert "an IPv4 prefix is at most /32" in refused.problem and "line 4" in refused.problem
    assert refused.changes == [] and refused.event is None
    assert lab.wg_get("server").peer(client_key)["persistent_keepalive_interval"] == "5"   # line 3 not applied
    assert "errno=-22 (EINVAL" in str(refused) and "changed: nothing" in str(refused)

    with pytest.raises(VpneduError, match="not the correct length|not 32 bytes"):
        lab.wg_set("server", "peer", "not-a-key", "remove")

    # The client's full tunnel routes by its fwmark: another mark is refused, whole, and the
    # tunnel lives on (it would otherwise route its own datagrams into itself).
    mark = lab.status("client")["policy_table"]
    moved = lab.wg_send("client", f"set=1\nfwmark={mark + 1}\nlisten_port=0\n\n")
    assert moved.errno == uapi.EINVAL and moved.changes == [] and moved.event is None, moved
    assert f"full tunnel routes by fwmark {mark:#x}" in moved.problem and "FwMark" in moved.problem
    assert lab.wg_get("client").reply["interface"]["fwmark"] == str(mark)
    assert lab.wg_send("client", f"set=1\nfwmark={mark}\n\n").errno == 0        # the same mark: fine
    assert lab.ping("client", "10.0.0.1", count=2).ok


def test_wg_in_the_simulated_lab():
    lab = SimLab()
    try:
        lab.start_server()
        lab.start_client()
        lab.ping("client", "10.0.0.1")
        check_wg_on_the_server(lab)
        show = lab.wg_show("server")
        assert show.tool == "vpnedu" and "no wg binary in the simulation" in show.how
        done = lab.wg_set("server", "peer", show.peers()[0], "persistent-keepalive", "off")
        assert "persistent_keepalive_interval=0" in done.message and done.changes
        # listen-port moves the simulated socket: the client reaches the server there once told.
        server_key = lab.status("server")["public_key"]
        moved = lab.wg_set("server", "listen-port", "51821")
        assert moved.changes == ["listen_port: 51820 -> 51821"] and lab.status("server")["listen_port"] == 51821
        lab.wg_set("client", "peer", server_key, "endpoint", "203.0.113.2:51821")
        assert lab.ping("client", "10.0.0.1", count=2).ok
        # A port in use is EADDRINUSE, and the rest of the message is not applied either.
        lab.hosts["server"].udp_services[5353] = lambda payload, src: None
        busy = lab.wg_send("server", f"set=1\nlisten_port=5353\npublic_key={'ab' * 32}\n\n")
        assert busy.errno == uapi.EADDRINUSE and busy.changes == [] and busy.event is None
        with pytest.raises(VpneduError, match="not an argument this translation knows"):
            lab.wg_set("server", "private-key", "/dev/null")
    finally:
        lab.down()
    with pytest.raises(VpneduError, match="start it"):
        lab.wg_show("server")


def answers_for(path: Path, *public_keys: str) -> bool:
    """Does whoever serves ``path`` (if anyone) have one of these keys (base64) as a peer?  The
    host's /run/wireguard is everyone's: another test's daemon may serve vpnedu0 there meanwhile,
    so the check is that none of *this* lab's daemons does, not that the folder is empty."""
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(str(path))
        s.sendall(b"get=1\n\n")
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    except OSError:
        return False          # no file, or nobody answers on it
    finally:
        s.close()
    peers = {hex_to_base64(p["public_key"]) for p in uapi.parse_get(reply.decode())["peers"]}
    return bool(peers & set(public_keys))


@pytest.mark.root
@pytest.mark.slow
def test_wg_in_the_real_lab_talks_to_each_hosts_own_daemon():
    require_tool("wg")
    lab = RealLab(prefix=f"h16c{os.getpid() % 10000}-", out=lambda s: None)
    try:
        lab.up()
        lab.start_server()
        lab.start_client()
        # Each daemon's socket is in its host's own folder; none landed in the host's /run/wireguard.
        assert (lab.wg_dir("server") / "vpnedu0.sock").exists() and (lab.wg_dir("client") / "vpnedu0.sock").exists()
        assert not answers_for(Path("/run/wireguard/vpnedu0.sock"),
                               lab.status("server")["public_key"], lab.status("client")["public_key"])
        check_wg_on_the_server(lab)
        show = lab.wg_show("server")
        assert show.tool == "wg" and show.how.startswith("$ wg show vpnedu0")
        # ... and on the client, its own daemon: the server is its peer.
        assert lab.wg_show("client").peers() == [lab.status("server")["public_key"]]
    finally:
        lab.down()
    assert not lab.dir.exists() and not lab.exists()
