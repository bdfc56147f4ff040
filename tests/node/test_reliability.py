"""Reliability under load, faults and hostile input, for real in the namespace lab: a handshake
flood answered with cookies while established clients keep working and a new client still gets
in; twenty namespaced clients handshaking and pinging at once; a download across a lossy,
duplicating, reordering, delaying network; SIGKILL at random moments; a server restart; keys
refused past REJECT_AFTER_TIME; garbage on the control socket and the UDP port."""

import json
import subprocess
import sys
import time

import pytest

from vpnedu import config
from vpnedu.netns_lab.topology import SERVER_PUBLIC
from vpnedu.protocol.keys import encode

from ..lablib import ping_count, provision, start_client, start_server, status, stop, wait_for

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
        # The promise: all of them in within a few seconds (daemon start-up included).
        assert took < 10, f"{n} clients took {took:.1f} s to handshake"
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


class EventTail:
    """``vpnedu events --json --kind ...`` on a lab host: the daemon's live events, read by another
    process.  ``sync()`` sends a junk datagram to the daemon's UDP port from inside its namespace
    (over loopback, past any impairment) and waits until its ``packet.dropped`` (malformed) event
    arrives: then the subscription is live, and every event before that datagram has been read."""

    def __init__(self, lab, host: str, *kinds: str):
        from ..lablib import vpnedu
        self.lab, self.host, self.name = lab, host, f"events-{host}"
        self.port = status(lab, host)["listen_port"]
        args = [a for k in ("packet.dropped", *kinds) for a in ("--kind", k)]
        self.proc = lab.spawn(host, self.name, *vpnedu("events", "--json", *args))
        self.probes = 0
        self.sync()

    def events(self) -> list[dict]:
        path = self.lab.dir / f"{self.name}.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(x) for x in lines if x.startswith("{")]

    def _probes_seen(self) -> int:
        return sum(1 for e in self.events() if e["kind"] == "packet.dropped"
                   and (e["fields"].get("source") or "").startswith("127.0.0.1:"))

    def sync(self, timeout: float = 15) -> None:
        end = time.time() + timeout
        want = self.probes + 1
        while time.time() < end:
            self.lab.run(self.host, sys.executable, "-c", "import socket, sys; socket.socket(socket.AF_INET, "
                         "socket.SOCK_DGRAM).sendto(b'\\x09probe', ('127.0.0.1', int(sys.argv[1])))",
                         str(self.port))
            t = time.time() + 0.5
            while time.time() < t:
                seen = self._probes_seen()
                if seen >= want:
                    self.probes = seen
                    return
                time.sleep(0.02)
        raise AssertionError(f"no live events from {self.host}: {self.events()[-5:]}")

    def drops(self, reason: str) -> list[dict]:
        return [e for e in self.of("packet.dropped") if e["fields"].get("reason") == reason]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events() if e["kind"] == kind]

    def close(self) -> None:
        stop(self.proc)


def udp_receive_errors(lab, host: str) -> int:
    """Datagrams the kernel of ``host`` dropped before a socket read them (receive buffer full)."""
    snmp = lab.run(host, "cat", "/proc/net/snmp").stdout
    lines = [x.split() for x in snmp.splitlines() if x.startswith("Udp:")]
    udp = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return udp["RcvbufErrors"] + udp["InErrors"]


def test_a_download_survives_loss_duplication_and_reordering(lab_factory):
    """The issue's bad network (``vpnedu lab up --loss 5 --dup 1 --reorder 2 --delay 20ms``): 5% of
    the VPN's datagrams lost, 1% duplicated, 2% held back so that later ones overtake them, all
    delayed 20 ms.  A 20 MB HTTP download through the tunnel arrives intact, and the replay
    windows drop every duplicated data packet: exactly one ``packet.dropped`` event (reason
    replay) per duplicate whose two copies the impairment relay delivered.

    Why "delivered": the relay rolls loss once per datagram, before duplication, so both copies of
    a duplicate are sent unless a ``sendto`` fails; copies still held back (delayed) when the relay
    stops are never sent.  The relay counts the duplicates whose two copies both left
    (``duplicated_data_delivered``); the receiving kernels' UDP receive errors are checked to be zero,
    so every one of those copies reached a daemon.  No rekey happens (default timers), the replay
    window (8,000+ counters) is far wider than the ~44 ms by which a packet can be overtaken, so
    only a second copy can be a replay -- the equality is exact."""
    from vpnedu.netns_lab.app import random_sha256
    from vpnedu.netns_lab.topology import APP_ADDRESS
    n = 20 * 1024 * 1024
    lab = lab_factory()
    lab.impair(loss=5, dup=1, reorder=2, delay_ms=20, seed=7)
    provision(lab)
    server = start_server(lab)
    tails = {"server": EventTail(lab, "server")}
    client = start_client(lab)
    tails["client"] = EventTail(lab, "client")
    try:
        errors0 = {h: udp_receive_errors(lab, h) for h in tails}
        r = lab.run("client", sys.executable, "-m", "vpnedu.netns_lab.traffic", "download",
                    f"http://{APP_ADDRESS}/random/{n}", timeout=300)
        assert r.returncode == 0, r.stderr[-1000:]
        got = json.loads(r.stdout)
        imp = lab.impair_stats()          # the relay stops: nothing more is lost, duplicated or sent
        for t in tails.values():
            t.sync()                      # every event up to now has been read
        replays = {h: len(t.drops("replay")) for h, t in tails.items()}
        counters = {h: status(lab, h)["counters"].get("dropped.replay", 0) for h in tails}
        errors = {h: udp_receive_errors(lab, h) - errors0[h] for h in tails}
    finally:
        for t in tails.values():
            t.close()
        stop(client)
        stop(server)
    print(f"impairment: {imp}; replay drops (events) {replays}, counters {counters}; download: {got}")
    assert got["bytes"] == n and got["sha256"] == random_sha256(n)
    assert imp["dropped"] > 0 and imp["reordered"] > 0 and imp["duplicated_data"] > 0, imp
    assert 0.04 < imp["dropped"] / imp["received"] < 0.06, imp
    assert 0.005 < imp["duplicated"] / imp["received"] < 0.015, imp
    assert imp["reordered"] / imp["received"] > 0.01, imp
    assert errors == {"client": 0, "server": 0}, errors
    assert replays == counters, (replays, counters)
    assert sum(replays.values()) == imp["duplicated_data_delivered"], (replays, imp)
    assert imp["duplicated_data_delivered"] >= imp["duplicated_data"] - 5, imp   # a few held back at the stop


def _rtts(out: str) -> list[float]:
    import re
    return [float(m) for m in re.findall(r"time=([0-9.]+) ms", out)]


def test_lab_up_with_a_bad_network_from_the_command_line():
    """The issue's command as a user types it: ``vpnedu lab up --loss 5 --dup 1 --reorder 2
    --delay 20ms``.  ``vpnedu lab status`` says the router impairs the VPN's datagrams; a ping
    through the tunnel crosses the relay twice (request and reply), each crossing 20 ms late,
    while a plain ping of the server (ICMP, not the VPN's UDP port) is not delayed; and
    ``vpnedu lab down`` leaves no namespace behind."""
    import os

    from vpnedu.netns_lab.topology import Lab

    from ..lablib import vpnedu
    prefix = f"vt{os.getpid() % 10000}cli-"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(vpnedu("lab", *args, "--prefix", prefix), capture_output=True, text=True,
                              timeout=120, check=False)

    def namespaces() -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
    assert not namespaces()
    try:
        up = cli("up", "--loss", "5", "--dup", "1", "--reorder", "2", "--delay", "20ms")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "5% loss, 1% duplicated, 2% reordered, +20 ms" in up.stdout, up.stdout
        shown = cli("status")
        lab = Lab.load(prefix, log=lambda s: None)
        provision(lab)
        server = start_server(lab)
        client = start_client(lab)
        # -m 51820: the tunnel's mark, so the plain ping stays outside the full tunnel.
        plain = _rtts(lab.run("client", "ping", "-m", "51820", "-c", "5", "-i", "0.2", "-W", "2",
                              SERVER_PUBLIC).stdout)
        tunnel = _rtts(lab.run("client", "ping", "-c", "40", "-i", "0.05", "-W", "2", "10.0.0.1",
                               timeout=60).stdout)
        stop(client)
        stop(server)
    finally:
        down = cli("down")
    print(f"plain RTTs {plain}; through the impaired tunnel: {tunnel}")
    assert down.returncode == 0 and "lab down" in down.stdout, down.stdout + down.stderr
    assert not namespaces()
    assert len(plain) == 5 and max(plain) < 10, plain
    # 40 pings, each crossing the relay twice with 5% loss: 36 answered on average (sd 1.9); at least 28.
    assert len(tunnel) >= 28, tunnel
    # 2 x 20 ms (+ 24 ms when reordered).  The relay is userspace: on a loaded machine (CI runs
    # tests side by side) its wakeups add a few ms to every crossing (CI saw a median of 60 ms),
    # so the upper bound only tells "delayed once per crossing" from "twice" (80 ms and more).
    assert 40 <= min(tunnel) < 75, tunnel
    assert shown.returncode == 0, shown.stderr
    assert "5% loss" in shown.stdout and "20 ms" in shown.stdout, shown.stdout


def test_kill_9_at_random_moments_never_leaves_the_host_half_changed(lab_factory):
    """Twelve times (twenty in the soak run): start server (NAT or proxy forwarding) and client while the client pings the
    server's tunnel address and the app server through the tunnel, SIGKILL both at a random moment
    (during set-up, or during traffic once the client has its handshake), then repair the host -- alternately by the next start (the
    daemons, started again, undo what the killed ones left behind; a graceful stop then restores
    the rest) and by 'vpnedu cleanup'.  After every repair each host is exactly as before: routes,
    rules, addresses, devices, nftables, sysctls.  Both repair paths must have met a host that the
    kill really left changed, and pings must have crossed the tunnel before some of the kills."""
    import os
    import random
    import signal

    from ..lablib import snapshot, vpnedu
    rng = random.Random(20261125)
    lab = lab_factory()
    provision(lab)
    hosts = ("client", "server")
    before = {h: snapshot(lab, h) for h in hosts}
    dirty = {"next start": 0, "cleanup": 0}
    answered = []         # per iteration: tunnel pings answered before the kill
    t0 = time.time()
    for i in range(20 if os.environ.get("VPNEDU_SOAK") else 12):     # the soak run does all twenty
        mode = rng.choice(["nat", "proxy"])
        repair = "next start" if i % 2 == 0 else "cleanup"
        srv = lab.spawn("server", "vpn-server", *vpnedu("server", "-c", f"{lab.dir}/server.conf",
                                                        "--forwarding", mode))
        cli = lab.spawn("client", "vpn-client", *vpnedu("client", "-c", f"{lab.dir}/client.conf"))
        # Pings through the tunnel from the start (until the tunnel is up, ping fails at once: retry).
        traffic = [subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "sh", "-c",
                                     f"while :; do ping -n -i 0.02 -W 1 -c 100000 {dst}; sleep 0.02; done"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    start_new_session=True) for dst in ("10.0.0.1", "192.0.2.80")]
        # The moment: during set-up (a time after the start), or during traffic (a time after the
        # client's first handshake) -- chosen by the seed, so both kinds happen however fast or
        # loaded the machine is.
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.05, 0.6))
        else:
            wait_for(lambda: (st := status(lab, "client")) and st["peers"][0].get("latest_handshake"), timeout=30,
                     what=f"round {i}: the client's handshake", proc=cli)
            time.sleep(rng.uniform(0.05, 0.5))
        for p in rng.sample([srv, cli], 2):
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        for t in traffic:
            os.killpg(t.pid, signal.SIGKILL)
        outs = [t.communicate(timeout=10)[0] for t in traffic]
        answered.append(outs[0].count("bytes from 10.0.0.1"))
        changed = [h for h in hosts if snapshot(lab, h) != before[h]]
        dirty[repair] += bool(changed)
        if repair == "next start":
            server = start_server(lab, "--forwarding", mode)
            client = start_client(lab)
            assert ping_count(lab, "client", "10.0.0.1", count=3)[1] >= 2, (i, mode)
            assert stop(client) == 0 and stop(server) == 0, (i, mode)
            killed = {"server": srv.pid, "client": cli.pid}
            for h in changed:   # the new daemon said it cleaned up after the killed one
                log = (lab.dir / f"vpn-{h}.log").read_text()
                assert f"did not exit cleanly (pid {killed[h]})" in log, (i, h, log[-800:])
        else:
            for h in hosts:
                r = lab.run(h, *vpnedu("cleanup"))
                assert r.returncode == 0, r.stderr
        for h in hosts:
            assert snapshot(lab, h) == before[h], (i, h, mode, repair)
    took = time.time() - t0
    print(f"{len(answered)} rounds of kills in {took:.0f} s; host left changed before repair: {dirty}; "
          f"tunnel pings answered before each kill: {answered}")
    assert dirty["next start"] >= 2 and dirty["cleanup"] >= 2, dirty
    assert sum(1 for a in answered if a) >= 4 and sum(1 for a in answered if not a) >= 2, answered
    # No journal is left behind either.
    probe = "from vpnedu.net.journal import Journal; print(Journal('vpnedu0').path.exists())"
    assert [lab.run(h, sys.executable, "-c", probe).stdout.strip() for h in hosts] == ["False", "False"]


def test_server_restart_mid_transfer_client_rehandshakes_and_traffic_resumes(lab_factory):
    """The server restarts while the client is sending: the client's packets under the old keys
    get no answer, so after KEEPALIVE + REKEY_TIMEOUT (shortened here to 2 + 1 s) it starts one
    new handshake, which the fresh server answers at once, and the pings flow again."""
    timers = "keepalive_timeout=2,rekey_timeout=1"
    lab = lab_factory()
    provision(lab)
    server = start_server(lab, "--timers", timers)
    client = start_client(lab, "client", None, "--timers", timers)
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "ping", "-i", "0.1", "-w", "14",
                               "-D", "10.0.0.1"], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    hs_before = status(lab, "client")["counters"].get("handshakes_completed", 0)
    stop(server)
    t_down = time.time()
    server = start_server(lab, "--timers", timers)
    out, _ = pinger.communicate(timeout=30)
    st = status(lab, "client")
    replies = [float(line[1:line.index("]")]) for line in out.splitlines() if "bytes from" in line]
    after = [t for t in replies if t > t_down]
    assert after, out[-500:]
    gap = after[0] - t_down
    assert gap < 2 + 1 + 2, f"traffic resumed {gap:.1f} s after the restart"
    assert st["counters"]["handshakes_completed"] == hs_before + 1
    assert len([t for t in after]) > 50          # and kept flowing for the rest of the run
    stop(client)
    stop(server)


def test_control_socket_survives_garbage_and_refuses_other_users(lab_factory, tmp_path):
    from ..lablib import vpnedu
    lab = lab_factory()
    provision(lab)
    server = start_server(lab)
    sock = lab.run("server", sys.executable, "-c",
                   "from vpnedu.node import control as c; print(c.pick_socket())").stdout.strip()
    probe = r'''
import json, os, socket, sys
def ask(payload, shut=True):
    s = socket.socket(socket.AF_UNIX); s.settimeout(15); s.connect(sys.argv[1])
    try:
        s.sendall(payload)
        if shut: s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the daemon may hang up before reading it all (a 3 MB line, say)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:   # a timeout, or a reset: the daemon hung up on a 3 MB line
            break
        if not chunk: break
        data += chunk
        continue
    s.close()
    return data.decode(errors="replace")
out = {}
out["binary"] = ask(os.urandom(300) + b"\n")
out["not_json"] = ask(b"status please\n")
out["array"] = ask(b"[1, 2]\n")
out["bad_cmd"] = ask(b'{"cmd": 42}\n')
out["huge"] = ask(b"x" * (3 << 20))
out["empty"] = ask(b"")
print(json.dumps(out))
'''
    r = lab.run("server", sys.executable, "-c", probe, sock, timeout=120)
    assert r.stdout.strip(), r.stderr
    answers = json.loads(r.stdout)
    # A line longer than the daemon reads is cut off: an error reply, or just a hang-up.
    assert answers["huge"] == "" or "error" in answers["huge"]
    for name in ("binary", "not_json", "array", "bad_cmd"):
        reply = json.loads(answers[name].splitlines()[0])
        assert "error" in reply and "Traceback" not in answers[name], (name, answers[name])
    # The daemon is still there and answers properly.
    assert status(lab, "server")["role"] == "server"

    # Another user on the machine: the socket file is owner-only; even if its mode were opened up,
    # the daemon checks who is calling (SO_PEERCRED) and refuses.
    os_mode = lab.run("server", "stat", "-c", "%a", sock).stdout.strip()
    assert os_mode == "600"
    # (/run/vpnedu is 0700 too; reach the socket through a hard link in a directory others may enter.)
    import os
    import tempfile
    opened = tempfile.mkdtemp(prefix="vpnedu-test-", dir="/run")
    try:
        os.chmod(opened, 0o755)
        link = os.path.join(opened, "ctl.sock")
        os.link(sock, link)
        os.chmod(link, 0o666)
        # The daemon may refuse and hang up before the request is even written: its answer is
        # still there to read.
        intruder = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(sys.argv[1])\n"
            "try:\n"
            "    s.sendall(b'{\"cmd\": \"status\"}\\n')\n"
            "except BrokenPipeError:\n"
            "    pass\n"
            "print(s.recv(4096).decode())\n")
        r = lab.run("server", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                    "-c", intruder, link)
        assert "permission denied" in r.stdout and '"peers"' not in r.stdout, r.stdout + r.stderr
    finally:
        import shutil
        shutil.rmtree(opened)
    lab.run("server", "chmod", "600", sock, check=True)

    # And the CLI refuses to talk to a control socket someone else owns (it could be a fake).
    import pwd
    import socket as _socket
    fake = tmp_path / "fake.sock"
    s = _socket.socket(_socket.AF_UNIX)
    s.bind(str(fake))
    s.listen(1)
    nobody = pwd.getpwnam("nobody")
    import os
    os.chown(fake, nobody.pw_uid, nobody.pw_gid)
    r = subprocess.run([*vpnedu("status", "--socket", str(fake))], capture_output=True, text=True, check=False)
    s.close()
    assert r.returncode != 0 and "belongs to another user" in r.stderr and "Traceback" not in r.stderr
    stop(server)


def test_hostile_datagrams_on_the_real_udp_port_get_no_reply(lab_factory):
    lab = lab_factory()
    provision(lab)
    server = start_server(lab)
    start_client(lab)
    # Datagrams dropped (not the kernel's own IPv6 chatter -- router solicitations, MLD -- on the
    # dual-stack TUN device, which no peer's AllowedIPs hold: "no-route").
    def dropped(st):
        return sum(v for k, v in st["counters"].items() if k.startswith("dropped.") and k != "dropped.no-route")
    drops0 = dropped(status(lab, "server"))
    probe = r'''
import os, socket, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 51820)   # outside the client's full tunnel
payloads = [b"", b"\x01", b"\x04\0\0\0", os.urandom(65000), b"\x01\0\0\0" + os.urandom(144),
            b"\x01\0\0\0" + os.urandom(500), b"\x02\0\0\0" + os.urandom(10), b"\x03\0\0\0" + os.urandom(60),
            b"\x04\0\0\0" + os.urandom(1500), b"\x09\0\0\0" + os.urandom(100), b"GET / HTTP/1.1\r\n\r\n"]
sent = 0
for p in payloads * 20:
    s.sendto(p, ("203.0.113.2", 51820)); sent += 1
replies = 0
try:
    while True:
        s.recv(65535); replies += 1
except socket.timeout:
    pass
print(json.dumps({"sent": sent, "replies": replies}))
'''
    r = lab.run("client", sys.executable, "-c", probe, timeout=60)
    res = json.loads(r.stdout)
    assert res == {"sent": 220, "replies": 0}
    st = status(lab, "server")
    assert dropped(st) - drops0 == 220, st["counters"]
    assert ping_count(lab, "client", "10.0.0.1", count=5) == (5, 5)   # and it still serves its client
    stop(server)


@pytest.mark.soak
def test_soak_memory_and_descriptors_stay_flat(lab_factory):
    """Minutes of traffic from three clients (pings, HTTP downloads, reconnects) while the
    server's memory and open descriptors are sampled: both must stay flat. Runs only when asked:
    VPNEDU_SOAK=1 (VPNEDU_SOAK_SECONDS, default 300)."""
    import os
    seconds = float(os.environ.get("VPNEDU_SOAK_SECONDS", "300"))
    lab = lab_factory(clients=3)
    names = lab.client_names()
    provision(lab, clients=names)
    server = start_server(lab, "--forwarding", "proxy")
    clients = {c: start_client(lab, c) for c in names}
    pid = status(lab, "server")["pid"]

    def sample():
        rss = next(int(x.split()[1]) for x in open(f"/proc/{pid}/status") if x.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    samples = []
    end = time.time() + seconds
    i = 0
    while time.time() < end:
        c = names[i % len(names)]
        lab.run(c, sys.executable, "-m", "vpnedu.netns_lab.traffic", "download", "http://192.0.2.80/random/2000000",
                timeout=60)
        lab.run(c, "ping", "-c", "20", "-i", "0.01", "-q", "10.0.0.1", timeout=30)
        if i % 5 == 4:   # a client reconnects: a new process, a new handshake
            stop(clients[c])
            clients[c] = start_client(lab, c)
        time.sleep(1.0)
        samples.append(sample())
        i += 1
    third = max(1, len(samples) // 3)
    early = sorted(s[0] for s in samples[:third])[third // 2]
    late = sorted(s[0] for s in samples[-third:])[third // 2]
    print(f"soak {seconds:g} s, {len(samples)} samples: RSS {early} -> {late} KiB, fds {samples[0][1]} -> {samples[-1][1]}")
    assert late - early < max(8192, early * 0.1), samples
    assert max(s[1] for s in samples[-third:]) <= max(s[1] for s in samples[:third]) + 2, samples
    for p in clients.values():
        stop(p)
    stop(server)


def _transport_counters(lab, rules: dict[str, str]) -> dict[str, int]:
    """nftables counters on the internet router, one rule per name (see the test below)."""
    r = lab.run("internet", "nft", "-j", "list", "table", "ip", "vt_transport", check=True)
    out = json.loads(r.stdout)
    got = {}
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") in rules:
            got[rule["comment"]] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return got


def test_keys_past_reject_after_time_are_refused_then_a_new_handshake_recovers(lab_factory):
    """REJECT_AFTER_TIME with real daemons (timers shortened: rekey after 4 s, reject after 6 s).
    Pings run both ways; right after the handshake the client daemon is frozen (SIGSTOP), so no
    rekey can complete: the server tries one (it gets no answer) and keeps sending under the old
    keys until they are 6 s old, then declares the session expired and sends no transport message
    under them again -- only handshake initiations.  Meanwhile the server's last transport messages
    under the old keys wait in the frozen client's socket.  After SIGCONT the client refuses them
    (``packet.dropped``, reason expired-session), refuses to send under its own expired keys
    (``session.expired``), and a new handshake brings the pings back.  The internet router counts
    (nftables) the transport messages by receiver index: none under the old session's indices leaves
    either end after its expiry."""
    import signal
    rekey, reject = 4.0, 6.0
    timers = f"rekey_after_time={rekey:g},reject_after_time={reject:g},keepalive_timeout=1,rekey_timeout=0.5"
    lab = lab_factory()
    provision(lab)
    server = start_server(lab, "--timers", timers)
    tails = {"server": EventTail(lab, "server", "session", "handshake", "timer")}
    client = start_client(lab, "client", None, "--timers", timers)
    frozen = False
    pingers = []
    try:
        tails["client"] = EventTail(lab, "client", "session", "handshake")
        for host, dst in (("client", "10.0.0.1"), ("server", "10.0.0.2")):
            pingers.append(subprocess.Popen(["ip", "netns", "exec", lab.ns(host), "ping", "-D", "-i", "0.1",
                                             "-W", "1", "-w", "60", dst], stdout=subprocess.PIPE, text=True))
        time.sleep(0.3)
        cst = status(lab, "client")
        old = cst["peers"][0]["session"]
        client.send_signal(signal.SIGSTOP)
        frozen = True
        t_stop = time.time()
        # Frozen before REKEY_AFTER_TIME: the client has not started (and never will start) a rekey.
        assert cst["counters"]["handshakes_completed"] == 1
        assert t_stop - cst["peers"][0]["latest_handshake"] < rekey
        srv_session = status(lab, "server")["peers"][0]["session"]
        assert srv_session and srv_session["remote_index"] == old["local_index"], (old, srv_session)
        assert srv_session["local_index"] == old["remote_index"]

        def le(i: int) -> str:       # the index as it appears on the wire (little-endian), for nft
            return hex(int.from_bytes(i.to_bytes(4, "little"), "big"))
        to_client = f"ip saddr {SERVER_PUBLIC} udp sport 51820 @th,64,32 0x04000000"
        to_server = f"ip daddr {SERVER_PUBLIC} udp dport 51820 @th,64,32 0x04000000"
        rules = {"to-client": to_client, "to-client-old": f"{to_client} @th,96,32 {le(old['local_index'])}",
                 "to-server": to_server, "to-server-old": f"{to_server} @th,96,32 {le(old['remote_index'])}"}
        lab.run("internet", "nft", "-f", "-", check=True, input="table ip vt_transport {\n chain transit {\n"
                "  type filter hook forward priority 0; policy accept;\n" + "".join(
                    f'  {r} counter comment "{name}"\n' for name, r in rules.items()) + " }\n}\n")
        # The server notices nothing coming back, tries a rekey (unanswered), and at 6 s gives up the keys.
        wait_for(lambda: tails["server"].of("session.expired"), timeout=reject + 5,
                 what="the server's session.expired")
        at_expiry = _transport_counters(lab, rules)
        expired = tails["server"].of("session.expired")[0]["fields"]
        time.sleep(2.0)                          # the client stays frozen well past its own keys' expiry
        before_cont = _transport_counters(lab, rules)
        client.send_signal(signal.SIGCONT)
        frozen = False
        t_cont = time.time()
        wait_for(lambda: (st := status(lab, "client")) and st["peers"][0]["session"]
                 and st["peers"][0]["session"]["local_index"] != old["local_index"], timeout=10,
                 what="a new session after SIGCONT")
        time.sleep(3.0)
        for p in pingers:
            p.send_signal(signal.SIGINT)
        outs = [p.communicate(timeout=10)[0] for p in pingers]
        end = _transport_counters(lab, rules)
        for t in tails.values():
            t.sync()
        cst = status(lab, "client")
    finally:
        if frozen:
            client.send_signal(signal.SIGCONT)
        for p in pingers:
            if p.poll() is None:
                p.kill()
        for t in tails.values():
            t.close()
        stop(client)
        stop(server)
    print(f"frozen {t_cont - t_stop:.1f} s; server's session.expired {expired}; nft {at_expiry} -> "
          f"{before_cont} -> {end}")
    # The server used the old keys until REJECT_AFTER_TIME, and then never again.
    assert expired["local_index"] == old["remote_index"] and reject <= expired["age"] < reject + 1, expired
    assert tails["server"].of("timer.rekey"), "the server should have tried to rekey"
    assert at_expiry["to-client-old"] > 0, at_expiry            # the rule matches the old index (sanity)
    assert end["to-client-old"] == at_expiry["to-client-old"], (at_expiry, end)
    # The frozen client sent nothing (the rules went in after SIGSTOP); once thawed, it sent transport
    # messages -- none under the old keys.
    assert before_cont["to-server"] == 0 and end["to-server-old"] == 0 and end["to-server"] > 0, end
    # The thawed client refused the server's old-key messages that had waited in its socket ...
    refused = tails["client"].drops("expired-session")
    print(f"client: {len(refused)} old-key messages refused after SIGCONT")
    assert refused, tails["client"].events()[-20:]
    # ... and sent nothing under its own expired keys (the nft counter above: to-server-old == 0).
    # Whether it also says so with a session.expired depends on what it does first when thawed:
    # send a ping (the old keys are found expired), or answer the server's new initiation (the
    # new session simply replaces them).  If it said so, it was about the old keys, past their time.
    cexp = [e["fields"] for e in tails["client"].of("session.expired")]
    assert all(c["local_index"] == old["local_index"] and c["age"] >= reject for c in cexp), cexp
    # A new handshake (a new session) and the pings flow again, both ways, within a few seconds.
    assert cst["peers"][0]["session"]["local_index"] != old["local_index"]
    for out in outs:
        stamps = [float(x[1:x.index("]")]) for x in out.splitlines() if x[:1] == "[" and "bytes from" in x]
        after = [t for t in stamps if t > t_cont]
        assert after and after[0] - t_cont < 3, out[-600:]
        assert len(after) >= 20, out[-600:]


def test_long_session_across_several_rekeys_loses_nothing(lab_factory):
    """With REKEY_AFTER_TIME shortened to 2 s (REJECT_AFTER_TIME 4 s, REKEY_TIMEOUT 1 s) on both ends, ten seconds of
    pings cross several rekeys -- and not one ping is lost."""
    timers = "rekey_after_time=2,reject_after_time=4,rekey_timeout=1"
    lab = lab_factory()
    provision(lab)
    server = start_server(lab, "--timers", timers)
    client = start_client(lab, "client", None, "--timers", timers)
    before = status(lab, "client")["counters"].get("handshakes_completed", 0)
    got = ping_count(lab, "client", "10.0.0.1", count=200)   # 0.05 s apart: 10 s
    cc, sc = status(lab, "client")["counters"], status(lab, "server")["counters"]
    assert got == (200, 200), (cc, sc)
    after = status(lab, "client")["counters"]["handshakes_completed"]
    srv = status(lab, "server")["counters"]
    assert after - before >= 3, (before, after)
    assert srv.get("dropped.expired-session", 0) == 0
    stop(client)
    stop(server)
