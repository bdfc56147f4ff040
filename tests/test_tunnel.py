"""The real tunnel in the namespace lab: TUN devices, routes, NAT, real pings and HTTP.

Every test makes its own namespaces (documentation addresses only) and deletes them,
even when it fails.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from vpnedu.lab.demo import Demo
from vpnedu.lab.topology import APP_ADDRESS, SERVER_PUBLIC
from vpnedu.protocol import keys

from .lablib import ping, provision, snapshot, start_client, start_server, status, stop, vpnedu, wait_for

pytestmark = pytest.mark.root


def test_the_seed_demo_every_step(lab_factory):
    lab = lab_factory(up=False)
    lines = []
    res = Demo(lab, out=lines.append, forwarding="both").run()
    assert res.routes_before[0] == "default via 198.51.100.1 dev eth0"
    assert any(r.startswith("0.0.0.0/1 via 10.0.0.1 dev vpnedu0") for r in res.routes_during)
    assert any(r.startswith("128.0.0.0/1 via 10.0.0.1 dev vpnedu0") for r in res.routes_during)
    assert any(r.startswith(f"{SERVER_PUBLIC} via 198.51.100.1 dev eth0") for r in res.routes_during)
    assert "10.0.0.2/24" in res.client_tun and "10.0.0.1/24" in res.server_tun
    assert res.ping_client_to_server and res.ping_server_to_client
    assert f"your address is {SERVER_PUBLIC}" in res.http_body
    assert res.app_sources == [SERVER_PUBLIC]
    # The marker crossed the client's link only inside encrypted UDP to the server's port.
    assert not res.marker_in_client_capture and res.marker_in_server_capture
    # (Besides ARP and IPv6 link-local neighbour discovery, which never leave the LAN.)
    assert res.outer_packets and all(p.startswith("UDP") for p in res.outer_packets
                                     if "ARP" not in p and not p.startswith("IP6 fe80:"))
    assert all("51820" in p for p in res.outer_packets if p.startswith("UDP"))
    assert res.routes_after == res.routes_before
    # The same request through NAT and through the proxy: each flow table showed the HTTP flow from
    # the client's tunnel address, with the server's public address as the server's end.
    for mode in ("nat", "proxy"):
        http = [f for f in res.flows[mode] if f["destination"] == "192.0.2.80:80"]
        assert http and http[0]["client"].startswith("10.0.0.2:"), (mode, res.flows[mode])
        assert http[0]["proxy"].startswith(SERVER_PUBLIC + ":")
        assert res.app_source_by_mode[mode] == SERVER_PUBLIC
    text = "\n".join(lines)
    assert "flows: 1 via nat" in text or "via nat" in text
    assert "nat and proxy side by side:" in text
    assert res.ok


def test_null_teaching_shows_the_marker_on_the_client_link(lab_factory):
    lab = lab_factory(up=False)
    res = Demo(lab, out=lambda s: None, suite="null-teaching").run()
    assert res.marker_in_client_capture and res.marker_in_server_capture and res.ok


def test_the_readme_demo_command_runs_and_leaves_nothing_behind():
    """'vpnedu lab demo' (what scripts/demo.sh runs) as a user runs it: every step, then no trace."""
    prefix = f"vd{os.getpid() % 10000}-"
    try:
        r = subprocess.run(vpnedu("lab", "demo", "--prefix", prefix), capture_output=True, text=True,
                           timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        out = r.stdout
        for words in ("-> the default gateway is the LAN router 198.51.100.1",
                      "+ 0.0.0.0/1 via 10.0.0.1 dev vpnedu0", "0% packet loss",
                      f"app's log: request from {SERVER_PUBLIC}", "nat and proxy side by side",
                      "marker text in the client's capture: False", "-> identical to step 2",
                      "demo complete: every step did what it says"):
            assert words in out, (words, out[-3000:])
        assert "Traceback" not in r.stderr
    finally:
        subprocess.run(vpnedu("lab", "down", "--prefix", prefix), capture_output=True, timeout=60)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in left


def test_host_is_restored_after_exit_sigterm_and_sigkill(lab_factory):
    lab = lab_factory()
    provision(lab)
    before = {h: snapshot(lab, h) for h in ("client", "server")}

    # 1. Normal exit, asked over the control socket.
    srv = start_server(lab)
    cli = start_client(lab)
    during = snapshot(lab, "client")
    assert during["routes"] != before["client"]["routes"] and "vpnedu0" in during["links"]
    assert "masquerade" in snapshot(lab, "server")["nft"]
    assert ping(lab, "client", "10.0.0.1")
    # The client told its user what it changed in the routing table.
    log = (lab.dir / "vpn-client.log").read_text()
    assert "routing table change:" in log and "+ 0.0.0.0/1 via 10.0.0.1" in log
    assert "+ 128.0.0.0/1 via 10.0.0.1" in log and f"+ {SERVER_PUBLIC} via 198.51.100.1 dev eth0" in log, log
    lab.run("client", *vpnedu("status"))
    r = lab.run("client", sys_python(), "-c",
                "from vpnedu.node import control as c; print(c.request(c.pick_socket(), {'cmd': 'stop'}))")
    assert "stopping" in r.stdout
    assert cli.wait(15) == 0
    assert snapshot(lab, "client") == before["client"]

    # 2. SIGTERM, and Ctrl-C (SIGINT).
    cli = start_client(lab)
    assert stop(cli, signal.SIGTERM) == 0
    assert snapshot(lab, "client") == before["client"]
    cli = start_client(lab)
    assert stop(cli, signal.SIGINT) in (0, 130)
    assert snapshot(lab, "client") == before["client"]

    # 3. SIGKILL: the host route to the server stays behind ... until the next start cleans it up.
    cli = start_client(lab)
    stop(cli, signal.SIGKILL)
    left = snapshot(lab, "client")
    assert f"{SERVER_PUBLIC} via" in left["routes"]
    cli = start_client(lab)
    assert "cleaning up after a previous vpnedu" in (lab.dir / "vpn-client.log").read_text()
    assert ping(lab, "client", "10.0.0.1")
    assert stop(cli) == 0
    assert snapshot(lab, "client") == before["client"]

    # 4. The server: SIGKILL leaves NAT and forwarding; 'vpnedu cleanup' removes them.
    stop(srv, signal.SIGKILL)
    left = snapshot(lab, "server")
    assert "masquerade" in left["nft"] and left["forwarding"].strip() == "1"
    r = lab.run("server", *vpnedu("cleanup"))
    assert r.returncode == 0 and "undid" in r.stdout
    assert snapshot(lab, "server") == before["server"]

    # 5. And a server killed with SIGKILL is cleaned up by its own next start.
    srv = start_server(lab)
    stop(srv, signal.SIGKILL)
    srv = start_server(lab)
    assert stop(srv) == 0
    assert snapshot(lab, "server") == before["server"]


def sys_python():
    import sys
    return sys.executable


def test_two_clients_ping_each_other_through_the_server(lab_factory):
    lab = lab_factory(clients=2)
    provision(lab, clients=("client",))
    start_server(lab)
    start_client(lab, "client")
    # A client added while the server runs is picked up without a restart.
    r = lab.run("server", *vpnedu("server", "add-client", "client2", "-c", f"{lab.dir}/server.conf"))
    assert "1 peer(s) added" in r.stdout, r.stdout + r.stderr
    start_client(lab, "client2")
    assert ping(lab, "client", "10.0.0.3")
    assert ping(lab, "client2", "10.0.0.2")
    st = status(lab, "server")
    assert {p["name"] for p in st["peers"] if p["latest_handshake"]} == {"client", "client2"}


def test_unknown_client_gets_no_reply_and_the_server_reports_a_drop(lab_factory):
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    events = subprocess.Popen(["ip", "netns", "exec", lab.ns("server"),
                               *vpnedu("events", "--json", "--kind", "packet.dropped", "--count", "1")],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    # A client config with a fresh key the server has never seen.
    conf = (lab.dir / "client.conf").read_text().splitlines()
    conf = [f"PrivateKey = {keys.encode(keys.generate_private_key())}" if line.startswith("PrivateKey") else line
            for line in conf]
    (lab.dir / "stranger.conf").write_text("\n".join(conf) + "\n")
    (lab.dir / "stranger.conf").chmod(0o600)
    before = snapshot(lab, "client")
    # Watch the stranger's link for anything at all coming back from the server.
    pcap = lab.dir / "stranger.pcap"
    tcpdump = lab.spawn("client", "tcpdump", "tcpdump", "-ni", "eth0", "-U", "--immediate-mode",
                        "-w", str(pcap), f"src host {SERVER_PUBLIC}")
    wait_for(lambda: "listening on eth0" in (lab.dir / "tcpdump.log").read_text(), what="tcpdump", proc=tcpdump)
    r = lab.run("client", *vpnedu("client", "-c", str(lab.dir / "stranger.conf"), "--handshake-timeout", "2"))
    time.sleep(0.5)
    assert ping(lab, "client", SERVER_PUBLIC, count=1)   # proof that the capture sees the server
    time.sleep(0.3)
    tcpdump.terminate()
    tcpdump.wait(10)
    from vpnedu import capture as cap
    seen = [row["_ws.col.Protocol"] for row in cap.decode(pcap)]
    assert seen == ["ICMP"], (seen, (lab.dir / "tcpdump.log").read_text())    # the ping's reply; to the stranger: no response, no cookie, nothing
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("vpnedu: error: no handshake response from "
                                                        f"{SERVER_PUBLIC}:51820 after 2 s; check the server's public key")
    assert "Traceback" not in r.stderr
    assert snapshot(lab, "client") == before
    out, _ = events.communicate(timeout=10)
    ev = json.loads(out.splitlines()[0])
    assert ev["kind"] == "packet.dropped" and ev["fields"]["reason"] == "unknown-peer"
    st = status(lab, "server")
    assert st["counters"].get("dropped.unknown-peer", 0) >= 1
    assert st["counters"].get("handshake_responses_sent", 0) == 0


def test_status_and_events_from_another_process(lab_factory):
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    events = subprocess.Popen(["ip", "netns", "exec", lab.ns("server"),
                               *vpnedu("events", "--kind", "handshake", "--kind", "session", "--count", "3")],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    start_client(lab)
    out, _ = events.communicate(timeout=15)
    assert "handshake.initiation.received" in out and "handshake.response.sent" in out
    assert "session.established" in out and "role=responder" in out
    assert ping(lab, "client", "10.0.0.1")
    r = lab.run("server", *vpnedu("status"))
    assert r.returncode == 0
    assert "interface: vpnedu0 (server" in r.stdout and "peer: " in r.stdout and "(client)" in r.stdout
    assert "endpoint: 198.51.100.2:" in r.stdout and "latest handshake: " in r.stdout
    assert "seconds ago" in r.stdout or "second ago" in r.stdout
    st = status(lab, "server")
    assert st["peers"][0]["transfer_rx"] > 0 and st["peers"][0]["transfer_tx"] > 0


def test_split_tunnel_routes_only_the_vpn_subnet(lab_factory):
    lab = lab_factory()
    d = lab.dir
    subprocess.run(vpnedu("server", "init", "-c", f"{d}/server.conf", "--endpoint", SERVER_PUBLIC), check=True,
                   capture_output=True)
    subprocess.run(vpnedu("server", "add-client", "client", "--split", "-c", f"{d}/server.conf"), check=True,
                   capture_output=True)
    start_server(lab)
    start_client(lab)
    routes = lab.run("client", "ip", "route").stdout
    assert "default via 198.51.100.1 dev eth0" in routes and "0.0.0.0/1" not in routes
    assert ping(lab, "client", "10.0.0.1")
    body = lab.run("client", sys_python(), "-m", "vpnedu.lab.app", "fetch", f"http://{APP_ADDRESS}/").stdout
    assert "your address is 198.51.100.2" in body  # not through the VPN: the app sees the client


def one_line_error(r: subprocess.CompletedProcess, words: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("vpnedu: error: ") and words in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_situations_get_one_line_and_leave_the_host_unchanged(lab_factory):
    lab = lab_factory()
    provision(lab)
    d = lab.dir
    before = {h: snapshot(lab, h) for h in ("client", "server")}

    # Not root.
    r = lab.run("client", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                *vpnedu("client", "-c", "/dev/null"))
    one_line_error(r, "")
    import shutil
    import tempfile
    from pathlib import Path
    public = Path(tempfile.mkdtemp(prefix="vpnedu-test-"))
    try:
        public.chmod(0o755)
        (public / "client.conf").write_text((d / "client.conf").read_text())
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.chown(public / "client.conf", nobody.pw_uid, nobody.pw_gid)   # nobody's own key file, 0600
        (public / "client.conf").chmod(0o600)
        r = lab.run("client", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    *vpnedu("client", "-c", str(public / "client.conf")))
        one_line_error(r, "needs root")
    finally:
        shutil.rmtree(public)

    # A server that never answers.
    r = lab.run("client", *vpnedu("client", "-c", str(d / "client.conf"), "--handshake-timeout", "1"))
    one_line_error(r, "no handshake response")

    # Port in use.
    blocker = lab.spawn("server", "blocker", sys_python(), "-c",
                        "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                        "s.bind(('0.0.0.0', 51820)); time.sleep(60)")
    time.sleep(0.5)
    r = lab.run("server", *vpnedu("server", "-c", str(d / "server.conf")))
    one_line_error(r, "UDP port 51820 is already in use")
    blocker.kill()
    blocker.wait()

    # Malformed config and a bad key.
    (d / "bad.conf").write_text("[Interface]\nPrivateKey = abc\n")
    r = lab.run("client", *vpnedu("client", "-c", str(d / "bad.conf")))
    one_line_error(r, "bad.conf:2: PrivateKey: private key is not 32 bytes of base64 (3 characters, not 44")
    r = lab.run("client", *vpnedu("client", "-c", str(d / "missing.conf")))
    one_line_error(r, "no such file")

    # No TUN driver: /dev/net/tun hidden under an empty tmpfs in a mount namespace of its own.
    r = lab.run("client", "unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /dev/net && exec "$@"',
                "sh", *vpnedu("client", "-c", str(d / "client.conf")))
    one_line_error(r, "/dev/net/tun is missing")
    assert "modprobe tun" in r.stderr

    # An address clash with an existing interface.
    lab.run("client", "ip", "link", "add", "dummy9", "type", "veth", "peer", "name", "dummy9b", check=True)
    lab.run("client", "ip", "addr", "add", "10.0.0.77/24", "dev", "dummy9", check=True)
    r = lab.run("client", *vpnedu("client", "-c", str(d / "client.conf")))
    one_line_error(r, "clashes with 10.0.0.77/24 on interface dummy9")
    lab.run("client", "ip", "link", "del", "dummy9", check=True)

    assert {h: snapshot(lab, h) for h in ("client", "server")} == before


def test_roaming_client_keeps_its_session(lab_factory):
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    start_client(lab)
    assert ping(lab, "client", "10.0.0.1")
    first = status(lab, "server")["peers"][0]
    assert first["endpoint"].startswith("198.51.100.2:")
    # The client's outer address changes (a new Wi-Fi network, a new DHCP lease).
    lab.run("client", "ip", "addr", "del", "198.51.100.2/24", "dev", "eth0", check=True)
    lab.run("client", "ip", "addr", "add", "198.51.100.77/24", "dev", "eth0", check=True)
    lab.run("client", "ip", "route", "replace", "default", "via", "198.51.100.1", check=True)
    lab.run("client", "ip", "route", "replace", f"{SERVER_PUBLIC}/32", "via", "198.51.100.1", check=True)
    assert ping(lab, "client", "10.0.0.1")
    now = status(lab, "server")["peers"][0]
    assert now["endpoint"].startswith("198.51.100.77:")
    # ... with the same session: no new handshake was needed.
    assert now["session"]["local_index"] == first["session"]["local_index"]
    assert now["latest_handshake"] == first["latest_handshake"]
