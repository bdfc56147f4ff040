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


def test_kill_9_at_random_moments_never_leaves_the_host_half_changed(lab_factory):
    """Twenty times: start server and client, SIGKILL both at a random moment (during set-up,
    during traffic), then let the next start or 'vpnedu cleanup' repair the host. At the end
    the host is exactly as before: routes, rules, addresses, devices, nftables, sysctls."""
    import random
    import signal
    from .lablib import snapshot, vpnedu
    rng = random.Random(20261125)
    lab = lab_factory()
    provision(lab)
    before = {h: snapshot(lab, h) for h in ("client", "server")}
    for i in range(20):
        mode = rng.choice(["nat", "proxy"])
        srv = lab.spawn("server", "vpn-server", sys.executable, "-m", "vpnedu", "server", "-c",
                        f"{lab.dir}/server.conf", "--forwarding", mode)
        cli = lab.spawn("client", "vpn-client", sys.executable, "-m", "vpnedu", "client", "-c",
                        f"{lab.dir}/client.conf")
        time.sleep(rng.uniform(0.05, 2.0))
        for p in rng.sample([srv, cli], 2):
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        if i % 2:  # every other time, 'vpnedu cleanup'; else the next start repairs the host
            for h in ("client", "server"):
                r = lab.run(h, *vpnedu("cleanup"))
                assert r.returncode == 0, r.stderr
                assert snapshot(lab, h) == before[h], (i, h, mode)
    for h in ("client", "server"):
        assert lab.run(h, *vpnedu("cleanup")).returncode == 0
        assert snapshot(lab, h) == before[h]


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
    from .lablib import vpnedu
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
    import tempfile
    import os
    opened = tempfile.mkdtemp(prefix="vpnedu-test-", dir="/run")
    try:
        os.chmod(opened, 0o755)
        link = os.path.join(opened, "ctl.sock")
        os.link(sock, link)
        os.chmod(link, 0o666)
        r = lab.run("server", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                    "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                    "s.sendall(b'{\"cmd\": \"status\"}\\n'); print(s.recv(4096).decode())", link)
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
    r = subprocess.run([*vpnedu("status", "--socket", str(fake))], capture_output=True, text=True)
    s.close()
    assert r.returncode != 0 and "belongs to another user" in r.stderr and "Traceback" not in r.stderr
    stop(server)


def test_hostile_datagrams_on_the_real_udp_port_get_no_reply(lab_factory):
    lab = lab_factory()
    provision(lab)
    server = start_server(lab)
    start_client(lab)
    drops0 = sum(v for k, v in status(lab, "server")["counters"].items() if k.startswith("dropped."))
    probe = r'''
import os, socket, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
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
    drops = sum(v for k, v in st["counters"].items() if k.startswith("dropped."))
    assert drops - drops0 == 220
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
        lab.run(c, sys.executable, "-m", "vpnedu.lab.traffic", "download", "http://192.0.2.80/random/2000000",
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
