"""The real tunnel in the namespace lab: TUN devices, routes, NAT, real pings and HTTP.

Every test makes its own namespaces (documentation addresses only) and deletes them,
even when it fails.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from vpnedu.netns_lab.demo import Demo
from vpnedu.netns_lab.topology import APP_ADDRESS, SERVER_PUBLIC, SERVER_PUBLIC6
from vpnedu.protocol import keys

from ..lablib import ping, provision, snapshot, start_client, start_server, status, stop, vpnedu, wait_for

pytestmark = pytest.mark.root


def test_the_seed_demo_every_step(lab_factory):
    lab = lab_factory(up=False)
    lines = []
    res = Demo(lab, out=lines.append, forwarding="both").run()
    assert res.routes_before[0] == "default via 198.51.100.1 dev eth0"
    # Policy routing: the main table keeps its default; the app is reached through the tunnel's
    # table, the endpoint (with the tunnel's mark) through the LAN.
    assert res.routes_during[0] == "default via 198.51.100.1 dev eth0"
    assert "ip -4 rule: 32765:\tnot from all fwmark 0xca6c lookup 51820" in res.rules_during
    assert "ip -6 rule: 32764:\tfrom all lookup main suppress_prefixlength 0" in res.rules_during
    assert any(r.startswith("ip -4 route show table 51820: default dev vpnedu0") for r in res.rules_during)
    assert res.route_to_app.startswith(f"{APP_ADDRESS} dev vpnedu0 table 51820")
    assert res.route_to_endpoint.startswith(f"{SERVER_PUBLIC} via 198.51.100.1 dev eth0")
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
        http = [f for f in res.flows[mode] if f.destination == "192.0.2.80:80"]
        assert http and http[0].client.startswith("10.0.0.2:"), (mode, res.flows[mode])
        assert http[0].proxy.startswith(SERVER_PUBLIC + ":")
        assert res.app_source_by_mode[mode] == SERVER_PUBLIC
        assert res.app_source6_by_mode[mode] == SERVER_PUBLIC6          # IPv6 through the tunnel too
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
                      "not from all fwmark 0xca6c lookup 51820", "0% packet loss",
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
    assert "routing change:" in log and "+ default dev vpnedu0 table 51820" in log
    assert "+ -6 default dev vpnedu0 table 51820" in log, log
    assert "+ ip -4 rule priority 32765 not fwmark 0xca6c table 51820" in log, log
    assert "+ ip -6 rule priority 32764 table main suppress_prefixlength 0" in log, log
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

    # 3. SIGKILL: the policy rules stay behind (the device and its routes go with the process)
    # ... until the next start cleans them up.
    cli = start_client(lab)
    stop(cli, signal.SIGKILL)
    left = snapshot(lab, "client")
    assert "lookup 51820" in left["rules"] and "lookup 51820" in left["rules6"]
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
    drops = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(ev["kind"] == "packet.dropped" and ev["fields"]["reason"] == "unknown-peer" for ev in drops), drops
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
    body = lab.run("client", sys_python(), "-m", "vpnedu.netns_lab.app", "fetch", f"http://{APP_ADDRESS}/").stdout
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


# ------------------------------------------------------------------- wg-quick's Table, FwMark, hooks
def with_interface_lines(lab, name: str, *lines: str, base: str = "client.conf"):
    """A copy of the lab's ``base`` config with ``lines`` added to its [Interface] (root's, 0600)."""
    text = (lab.dir / base).read_text().replace("[Interface]\n", "[Interface]\n" + "".join(f"{x}\n" for x in lines), 1)
    path = lab.dir / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def not_kernel_made(routes: str) -> list[str]:
    """``ip route`` without the routes the kernel makes by itself for an address's own subnet
    (``proto kernel``: 10.0.0.0/24 dev vpnedu0 appears with Address = 10.0.0.2/24, wg-quick's too)."""
    return [r for r in routes.splitlines() if "proto kernel" not in r]


def test_table_off_adds_no_route_at_all(lab_factory):
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    before = snapshot(lab, "client")
    conf = with_interface_lines(lab, "off.conf", "Table = off")
    cli = start_client(lab, "client", str(conf))
    during = lab.run("client", "ip", "route").stdout
    assert not_kernel_made(during) == not_kernel_made(before["routes"]), during
    assert "51820" not in lab.run("client", "ip", "rule").stdout and SERVER_PUBLIC not in during
    # The tunnel itself works: its own subnet is on the device.
    r = lab.run("client", "ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", "vpnedu0", "10.0.0.1")
    assert r.returncode == 0, r.stdout
    log = (lab.dir / "vpn-client.log").read_text()
    assert "routing table: unchanged (Table = off)" in log, log
    assert stop(cli) == 0
    assert snapshot(lab, "client") == before


def test_table_n_puts_the_routes_there_and_fwmark_marks_the_tunnels_packets(lab_factory):
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    before = snapshot(lab, "client")
    # Count the client's UDP packets to the server's port: all of them, and the marked ones.
    lab.run("client", "nft", "-f", "-", check=True, input=(
        "table inet vtmark {\n chain out {\n  type filter hook output priority 0; policy accept;\n"
        "  udp dport 51820 counter\n  meta mark 0x1234 udp dport 51820 counter\n }\n}\n"))
    conf = with_interface_lines(lab, "t1234.conf", "Table = 1234", "FwMark = 0x1234")
    cli = start_client(lab, "client", str(conf))
    main = lab.run("client", "ip", "route").stdout
    assert not_kernel_made(main) == not_kernel_made(before["routes"]), main     # nothing in main
    t1234 = lab.run("client", "ip", "route", "show", "table", "1234").stdout
    assert "default dev vpnedu0" in t1234, t1234                                  # 0.0.0.0/0, as it is
    nft = lab.run("client", "nft", "list", "table", "inet", "vtmark").stdout
    counters = [int(x) for x in re.findall(r"counter packets (\d+)", nft)]
    assert len(counters) == 2 and counters[0] >= 1 and counters[1] == counters[0], counters  # every one marked
    st = status(lab, "client")
    assert st["fwmark"] == 0x1234 and st["table"] == "1234"
    text = lab.run("client", *vpnedu("status")).stdout
    assert "fwmark: 0x1234" in text and "routing table: 1234" in text, text

    # The table is the way into the tunnel once a rule sends traffic there; the mark keeps the
    # tunnel's own packets out of it (wg-quick's 'ip rule not fwmark ... table ...').
    fetch = (sys_python(), "-m", "vpnedu.netns_lab.app", "fetch", f"http://{APP_ADDRESS}/")
    assert "your address is 198.51.100.2" in lab.run("client", *fetch).stdout   # no rule yet: direct
    lab.run("client", "ip", "rule", "add", "not", "fwmark", "0x1234", "table", "1234", "pref", "100", check=True)
    body = lab.run("client", *fetch).stdout
    assert f"your address is {SERVER_PUBLIC}" in body, body                      # through the tunnel
    lab.run("client", "ip", "rule", "del", "pref", "100", check=True)
    lab.run("client", "nft", "delete", "table", "inet", "vtmark", check=True)
    assert stop(cli) == 0
    assert lab.run("client", "ip", "route", "show", "table", "1234").stdout.strip() == ""
    assert snapshot(lab, "client") == before


HOOKS = (
    'PreUp = echo "PreUp %i $(ip -o link show %i 2>/dev/null | wc -l)" >> {out}',
    'PostUp = echo "PostUp %i $(ip -o link show %i | wc -l) $(ip route show table 51820 | wc -l)" >> {out}',
    'PostUp = echo "PostUp-second %i" >> {out}',
    'PreDown = echo "PreDown %i $(ip -o link show %i | wc -l)" >> {out}',
    'PostDown = echo "PostDown %i $(ip -o link show %i 2>/dev/null | wc -l)" >> {out}',
)


def test_hooks_run_in_wg_quick_order_with_the_interface_name(lab_factory):
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    before = snapshot(lab, "client")
    out = lab.dir / "hooks.out"
    conf = with_interface_lines(lab, "hooks.conf", *(h.format(out=out) for h in HOOKS))
    cli = start_client(lab, "client", str(conf), "--interface", "hk0")
    assert ping(lab, "client", "10.0.0.1")
    assert stop(cli) == 0
    # PreUp before the device exists, PostUp once it and the routes are there (both PostUps, in
    # file order), PreDown while it still exists, PostDown after it is gone; %i is the name.
    assert out.read_text().splitlines() == ["PreUp hk0 0", "PostUp hk0 1 1", "PostUp-second hk0",
                                            "PreDown hk0 1", "PostDown hk0 0"]
    log = (lab.dir / "vpn-client.log").read_text()
    assert '[#] PreUp: echo "PreUp hk0' in log, log
    assert snapshot(lab, "client") == before


def test_hooks_are_refused_from_a_file_others_may_write_and_a_failing_postup_restores_the_host(lab_factory):
    import pwd
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    before = snapshot(lab, "client")
    out = lab.dir / "hooks.out"
    conf = with_interface_lines(lab, "hooks.conf", *(h.format(out=out) for h in HOOKS))

    conf.chmod(0o620)             # group-writable: whoever is in the group could run commands as root
    r = lab.run("client", *vpnedu("client", "-c", str(conf)))
    one_line_error(r, "PreUp/PostUp/PreDown/PostDown refused: the file is writable by group (mode 0620)")
    assert f"chmod 600 {conf}" in r.stderr
    conf.chmod(0o602)
    r = lab.run("client", *vpnedu("client", "-c", str(conf)))
    one_line_error(r, "writable by others")
    conf.chmod(0o600)
    nobody = pwd.getpwnam("nobody")
    os.chown(conf, nobody.pw_uid, nobody.pw_gid)   # not root's
    r = lab.run("client", *vpnedu("client", "-c", str(conf)))
    one_line_error(r, f"refused: the file belongs to uid {nobody.pw_uid}, not root")
    assert not out.exists()       # no hook ran
    assert snapshot(lab, "client") == before

    # A failing PostUp stops the start, and vpnedu undoes what it did; no PreDown/PostDown runs.
    os.chown(conf, 0, 0)
    failing = with_interface_lines(lab, "failing.conf", HOOKS[0].format(out=out), "PostUp = exit 3",
                                   HOOKS[4].format(out=out))
    r = lab.run("client", *vpnedu("client", "-c", str(failing)))
    one_line_error(r, "the PostUp command 'exit 3' failed (exit status 3); vpnedu did not start")
    assert out.read_text().splitlines() == ["PreUp vpnedu0 0"]
    assert snapshot(lab, "client") == before
    # A failing PreUp: nothing was changed yet, nothing else runs.
    failing = with_interface_lines(lab, "failing-pre.conf", "PreUp = false", HOOKS[1].format(out=out))
    r = lab.run("client", *vpnedu("client", "-c", str(failing)))
    one_line_error(r, "the PreUp command 'false' failed (exit status 1)")
    assert out.read_text().splitlines() == ["PreUp vpnedu0 0"]
    assert snapshot(lab, "client") == before

    # SaveConfig = true would have vpnedu rewrite the file: refused by name.
    saving = with_interface_lines(lab, "save.conf", "SaveConfig = true")
    r = lab.run("client", *vpnedu("client", "-c", str(saving)))
    one_line_error(r, "save.conf:2: SaveConfig: 'true' asks to write the running state back into this file")
    assert snapshot(lab, "client") == before


def test_root_daemons_socket_as_a_normal_user_and_a_bad_psk_on_reload(lab_factory):
    """A normal user asking a root daemon: one line saying who may and how (exit 77), not
    'internal error'.  And a reload whose config has a bad PSK: an error that does not show it."""
    import base64
    lab = lab_factory()
    provision(lab)
    start_server(lab)
    sock = lab.run("server", sys_python(), "-c",
                   "from vpnedu.node import control; print(control.find_sockets()[0])").stdout.strip()
    assert sock.startswith("/run/vpnedu/"), sock
    as_nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    for args in (("status", "--socket", sock), ("status",), ("reload",)):
        r = lab.run("server", *as_nobody, *vpnedu(*args))
        assert r.returncode == 77, (args, r.returncode, r.stderr)
        one_line_error(r, "only for root")
        assert f"run it as root: sudo vpnedu {args[0]}" in r.stderr and "internal error" not in r.stderr

    psk = keys.generate_psk()
    bad = keys.encode(psk)[:-2]
    with open(lab.dir / "server.conf", "a") as f:
        f.write(f"\n[Peer]\nPublicKey = {keys.encode(keys.public_key(keys.generate_private_key()))}\n"
                f"PresharedKey = {bad}\n")
    r = lab.run("server", *vpnedu("reload"))
    one_line_error(r, "PresharedKey: preshared key is not 32 bytes of base64")
    shown = r.stdout + r.stderr + (lab.dir / "vpn-server.log").read_text()
    assert bad[:12] not in shown and psk.hex()[:16] not in shown.lower(), shown
    assert base64.b64encode(psk).decode()[4:16] not in shown
