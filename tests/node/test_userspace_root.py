"""vpnedu-wg as a userspace WireGuard: the unmodified wg(8) tool configures it, two of them
tunnel to each other, and it interoperates with wireguard-go -- all in namespaces the tests
create and delete."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import require_tool
from tests.wglib import Netns, dump, genkey, sh, vpnedu_wg, wait_for, wg
from vpnedu.node.uapi_socket import socket_path

pytestmark = pytest.mark.root


@pytest.fixture
def lab():
    require_tool("wg")
    n = Netns(f"vwg{os.getpid() % 10000}")
    try:
        yield n
    finally:
        n.close()


def keyfile(tmp_path, name, key):
    p = tmp_path / name
    p.write_text(key + "\n")
    p.chmod(0o600)
    return str(p)


def ping(lab, ns, addr, count=3):
    return lab.run(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", addr, check=False).returncode == 0


def addresses(lab, ns, ifname, host):
    lab.run(ns, "ip", "addr", "add", f"10.0.16.{host}/24", "dev", ifname)
    lab.run(ns, "ip", "addr", "add", f"fd00:16::{host}/64", "dev", ifname, "nodad")
    lab.run(ns, "ip", "link", "set", ifname, "up")


def test_wg_configures_two_vpnedu_wg_interfaces_that_tunnel(lab, tmp_path):
    ia, ib = f"{lab.tag}x", f"{lab.tag}y"
    # Background mode: the command returns once the device and the socket exist.
    assert lab.start(lab.a, ia, foreground=False, log=tmp_path / "a.log") is None
    assert socket_path(ia).exists() and oct(socket_path(ia).stat().st_mode & 0o777) == "0o600"
    assert lab.run(lab.a, "ip", "link", "show", ia).returncode == 0
    pb = lab.start(lab.b, ib, log=tmp_path / "b.log")
    # It starts empty: no key, no port, no peers.
    assert wg("show", ia, "dump").stdout.strip() == "(none)\t(none)\t0\toff"
    ka, pa = genkey()
    kb, pb_pub = genkey()
    wg("set", ia, "private-key", keyfile(tmp_path, "a.key", ka), "listen-port", "51001",
       "peer", pb_pub, "allowed-ips", "10.0.16.2/32,fd00:16::2/128", "endpoint", "192.0.2.2:51002")
    conf_b = tmp_path / "b.conf"
    conf_b.write_text(f"[Interface]\nPrivateKey = {kb}\nListenPort = 51002\n\n"
                      f"[Peer]\nPublicKey = {pa}\nAllowedIPs = 10.0.16.1/32, fd00:16::1/128\n")
    wg("setconf", ib, str(conf_b))
    addresses(lab, lab.a, ia, 1)
    addresses(lab, lab.b, ib, 2)
    assert ping(lab, lab.a, "10.0.16.2") and ping(lab, lab.a, "fd00:16::2")
    assert ping(lab, lab.b, "10.0.16.1") and ping(lab, lab.b, "fd00:16::1")

    iface, peers = dump(ib)
    assert iface[:3] == [kb, pb_pub, "51002"]
    (peer,) = peers
    assert peer[0] == pa and peer[2] == "192.0.2.1:51001"          # learned from its packets (roaming)
    assert peer[3] == "10.0.16.1/32,fd00:16::1/128" and int(peer[4]) > time.time() - 60
    assert int(peer[5]) > 0 and int(peer[6]) > 0
    shown = wg("showconf", ia).stdout
    assert f"PrivateKey = {ka}" in shown and "ListenPort = 51001" in shown and "Endpoint = 192.0.2.2:51002" in shown
    alldump = wg("show", "all", "dump").stdout
    assert any(line.startswith(f"{ia}\t{ka}") for line in alldump.splitlines())
    assert any(line.startswith(f"{ib}\t{pa}") for line in alldump.splitlines())

    # vpnedu's own status and events work on it too (its control socket, in its namespace).
    st = json.loads(lab.run(lab.b, sys.executable, "-m", "vpnedu", "status", "--interface", ib, "--json").stdout)
    assert st["role"] == "userspace" and st["peers"][0]["public_key"] == pa and st["listen_port"] == 51002
    assert st["peers"][0]["transfer_rx"] > 0

    # addconf adds a peer, syncconf goes back to the file without touching the live session.
    _, extra = genkey()
    more = tmp_path / "more.conf"
    more.write_text(f"[Peer]\nPublicKey = {extra}\nAllowedIPs = 10.0.16.99/32\n")
    wg("addconf", ib, str(more))
    assert set(wg("show", ib, "peers").stdout.split()) == {pa, extra}
    hs_before = dict(line.split("\t") for line in wg("show", ib, "latest-handshakes").stdout.splitlines())[pa]
    wg("syncconf", ib, str(conf_b))
    assert wg("show", ib, "peers").stdout.split() == [pa]
    assert wg("show", ib, "latest-handshakes").stdout == f"{pa}\t{hs_before}\n"
    assert ping(lab, lab.b, "10.0.16.1")

    # IPv6 as the outer transport: b learns a's IPv6 address and port.
    wg("set", ia, "peer", pb_pub, "endpoint", "[2001:db8:16::2]:51002")
    assert ping(lab, lab.a, "10.0.16.2")
    assert wg("show", ib, "endpoints").stdout.strip() == f"{pa}\t[2001:db8:16::1]:51001"

    # A bad value: wg fails, the interface is as it was.
    before = wg("showconf", ia).stdout
    r = wg("set", ia, "listen-port", "51001", "peer", pb_pub, "allowed-ips", "10.0.16.0/33", check=False)
    assert r.returncode != 0
    assert wg("showconf", ia).stdout == before

    # fwmark: set, shown, cleared; the tunnel goes on.
    wg("set", ia, "fwmark", "0x1234")
    assert wg("show", ia, "fwmark").stdout.strip() == "0x1234"
    assert ping(lab, lab.a, "10.0.16.2")
    wg("set", ia, "fwmark", "off")
    assert wg("show", ia, "fwmark").stdout.strip() == "off"

    # The device deleted (where it is): the daemon exits and removes its socket.
    lab.run(lab.a, "ip", "link", "del", ia)
    wait_for(lambda: not socket_path(ia).exists(), 5, f"{ia}'s socket to go")
    # SIGTERM: the same, and the device goes with the process.
    pb.send_signal(signal.SIGTERM)
    assert pb.wait(10) == 0
    assert not socket_path(ib).exists()
    assert lab.run(lab.b, "ip", "link", "show", ib, check=False).returncode != 0
    assert "device started" in (tmp_path / "b.log").read_text()


def test_a_second_instance_for_the_same_name_is_refused(lab, tmp_path):
    name = f"{lab.tag}d"
    lab.start(lab.a, name, log=tmp_path / "1.log")
    r = lab.run(lab.b, *vpnedu_wg(), "-f", name, check=False)
    assert r.returncode != 0 and "in use" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_vpnedu_wg_and_wireguard_go_interoperate(lab, tmp_path):
    """Both configured only with wg: IPv4 and IPv6 inside and outside, rekeys, roaming."""
    wggo = require_tool("wireguard-go")
    ia, ib = f"{lab.tag}v", f"{lab.tag}g"
    # vpnedu-wg with short timers, so that it rekeys (as initiator) within the test.
    lab.start(lab.a, ia, log=tmp_path / "v.log", env={"VPNEDU_TIMERS": "rekey_after_time=4"})
    lab.start(lab.b, ib, program=[wggo], log=tmp_path / "g.log")
    ka, pa = genkey()
    kb, pb = genkey()
    psk = keyfile(tmp_path, "psk", wg("genpsk").stdout.strip())
    wg("set", ia, "private-key", keyfile(tmp_path, "a", ka), "listen-port", "51011",
       "peer", pb, "preshared-key", psk, "allowed-ips", "10.0.16.2/32,fd00:16::2/128", "endpoint", "192.0.2.2:51012")
    wg("set", ib, "private-key", keyfile(tmp_path, "b", kb), "listen-port", "51012",
       "peer", pa, "preshared-key", psk, "allowed-ips", "10.0.16.1/32,fd00:16::1/128")
    addresses(lab, lab.a, ia, 1)
    addresses(lab, lab.b, ib, 2)
    assert ping(lab, lab.a, "10.0.16.2") and ping(lab, lab.b, "fd00:16::1")
    assert wg("show", ib, "endpoints").stdout.strip() == f"{pa}\t192.0.2.1:51011"
    first = int(wg("show", ia, "latest-handshakes").stdout.split()[1])
    assert first > 0
    # A rekey: after rekey_after_time the vpnedu side starts a new handshake on its next send.
    time.sleep(5)
    assert ping(lab, lab.a, "10.0.16.2", count=5)
    wait_for(lambda: int(wg("show", ia, "latest-handshakes").stdout.split()[1]) > first, 10, "a rekey")
    assert ping(lab, lab.b, "10.0.16.1")
    # IPv6 outside; then wireguard-go moves to another port and vpnedu-wg follows it (roaming).
    wg("set", ia, "peer", pb, "endpoint", "[2001:db8:16::2]:51012")
    assert ping(lab, lab.a, "fd00:16::2")
    assert wg("show", ib, "endpoints").stdout.strip() == f"{pa}\t[2001:db8:16::1]:51011"
    wg("set", ib, "listen-port", "51013")
    assert ping(lab, lab.b, "10.0.16.1")
    assert wg("show", ia, "endpoints").stdout.strip() == f"{pb}\t[2001:db8:16::2]:51013"
    # Transfer counters agree across implementations (same messages, both ends).
    ta = wg("show", ia, "transfer").stdout.split()
    tb = wg("show", ib, "transfer").stdout.split()
    assert int(ta[1]) > 0 and int(ta[2]) > 0 and int(tb[1]) > 0 and int(tb[2]) > 0


def _connect(name):
    import socket as _s
    c = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
    c.connect(str(socket_path(name)))
    return c


def _talk(c, text: str) -> str:
    c.sendall(text.encode())
    buf = b""
    while not buf.endswith(b"\n\n"):
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_the_socket_protocol_under_abuse_while_the_tunnel_runs(lab, tmp_path):
    """Every kind of bad input, a 10 MB message, 200 connections at once, a client that never
    reads and one that hangs up mid-message: the daemon answers each correctly, keeps its tunnel
    up, and ends with the file descriptors it started with."""
    import threading
    ia, ib = f"{lab.tag}s", f"{lab.tag}t"
    pa_proc = lab.start(lab.a, ia, log=tmp_path / "a.log")
    lab.start(lab.b, ib, log=tmp_path / "b.log")
    ka, pa = genkey()
    kb, pb = genkey()
    wg("set", ia, "private-key", keyfile(tmp_path, "a", ka), "listen-port", "51021",
       "peer", pb, "allowed-ips", "10.0.16.2/32", "endpoint", "192.0.2.2:51022")
    wg("set", ib, "private-key", keyfile(tmp_path, "b", kb), "listen-port", "51022",
       "peer", pa, "allowed-ips", "10.0.16.1/32")
    addresses(lab, lab.a, ia, 1)
    addresses(lab, lab.b, ib, 2)
    assert ping(lab, lab.a, "10.0.16.2")
    # The daemon's own pid (ip netns exec execs it, so the Popen pid is the daemon).
    pid = pa_proc.pid
    time.sleep(0.5)
    base_fds = _fds(pid)
    # Pings from b, one after the other, while we hammer a's socket.
    stop = threading.Event()
    lost = []

    def pinger():
        while not stop.is_set():
            if lab.run(lab.b, "ping", "-c", "1", "-W", "2", "10.0.16.1", check=False).returncode != 0:
                lost.append(time.time())
    t = threading.Thread(target=pinger)
    t.start()
    try:
        c = _connect(ia)
        pbhex = __import__("base64").b64decode(pb).hex()
        # errno replies, as wireguard-go gives them; the connection stays usable after each.
        assert _talk(c, "set=1\nbogus=1\n\n") == "errno=-22\n\n"
        assert _talk(c, "set=1\nprivate_key=zz\n\n") == "errno=-22\n\n"
        assert _talk(c, "set=1\nno equals sign\n\n") == "errno=-71\n\n"
        assert _talk(c, f"set=1\npublic_key={pbhex}\nallowed_ip=10.0.16.0/24\nallowed_ip=nonsense\n\n") == "errno=-22\n\n"
        assert "allowed_ip=10.0.16.0/24" not in _talk(c, "get=1\n\n")     # the failed set changed nothing
        # A port in use in the daemon's namespace: -EADDRINUSE, and the whole set is refused.
        holder = subprocess.Popen(["ip", "netns", "exec", lab.a, sys.executable, "-c",
                                   "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                   "s.bind(('0.0.0.0', 51030)); print('bound', flush=True); time.sleep(60)"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "bound"
            assert _talk(c, f"set=1\nlisten_port=51030\npublic_key={pbhex}\nremove=true\n\n") == "errno=-98\n\n"
        finally:
            holder.kill()
            holder.wait()
        got = _talk(c, "get=1\n\n")
        assert "listen_port=51021\n" in got and pbhex in got
        assert _talk(c, "set=1\n" + "x" * 100_000 + "=1\n\n") == "errno=-71\n\n"   # a line too long
        c.close()
        # A 10 MB set: a new peer with 400,000 allowed IPs, then a get of all of it.
        big = "".join(f"allowed_ip=172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32\n" for i in range(400_000))
        assert len(big) > 10_000_000
        _, px = genkey()
        c = _connect(ia)
        pxhex = __import__("base64").b64decode(px).hex()
        assert _talk(c, f"set=1\npublic_key={pxhex}\n{big}\n") == "errno=0\n\n"
        reply = _talk(c, "get=1\n\n")
        assert reply.count("allowed_ip=") == 400_001 and reply.endswith("errno=0\n\n")
        c.close()
        # A client that never reads a 10 MB reply, and one that hangs up in the middle of a set.
        never = _connect(ia)
        never.sendall(b"get=1\n\n")
        half = _connect(ia)
        half.sendall(f"set=1\npublic_key={pxhex}\nremove=true\n".encode())
        half.close()
        # 200 connections at once, each a get.
        conns = [_connect(ia) for _ in range(200)]
        for s in conns:
            s.sendall(b"get=1\n\n")
        for s in conns:
            assert _talk(s, "").endswith("errno=0\n\n")
            s.close()
        assert pxhex in _talk(_connect(ia), "get=1\n\n")    # the half message removed nothing
        c = _connect(ia)
        assert _talk(c, f"set=1\npublic_key={pxhex}\nremove=true\n\n") == "errno=0\n\n"
        c.close()
        never.close()
    finally:
        stop.set()
        t.join()
    assert ping(lab, lab.a, "10.0.16.2")
    assert len(lost) <= 1, lost
    assert pa_proc.poll() is None
    wait_for(lambda: _fds(pid) <= base_fds, 10, f"the daemon's fds back to {base_fds} (now {_fds(pid)})")


def test_wg_quick_brings_a_vpnedu_wg_tunnel_up_and_down(lab, tmp_path):
    """An unchanged wg-quick file; wg-quick uses vpnedu-wg because the kernel module is missing."""
    require_tool("wg-quick")
    if os.path.exists("/sys/module/wireguard"):
        pytest.skip("the wireguard kernel module is loaded: wg-quick would use it, not vpnedu-wg")
    program = vpnedu_wg()
    if len(program) != 1:
        pytest.skip("the vpnedu-wg console script is not installed (pip install -e .)")
    ka, pa = genkey()
    kb, pb = genkey()
    # b (no endpoint: it waits to be contacted) first, so that a's first initiation finds it.
    names = {lab.b: f"{lab.tag}r", lab.a: f"{lab.tag}q"}
    confs = {
        lab.a: f"[Interface]\nPrivateKey = {ka}\nAddress = 10.0.16.1/24, fd00:16::1/64\nListenPort = 51041\n\n"
               f"[Peer]\nPublicKey = {pb}\nAllowedIPs = 10.0.16.2/32, fd00:16::2/128, 10.99.0.0/16\n"
               f"Endpoint = 192.0.2.2:51042\nPersistentKeepalive = 25\n",
        lab.b: f"[Interface]\nPrivateKey = {kb}\nAddress = 10.0.16.2/24, fd00:16::2/64\nListenPort = 51042\n\n"
               f"[Peer]\nPublicKey = {pa}\nAllowedIPs = 10.0.16.1/32, fd00:16::1/128\n",
    }
    env = ["env", f"WG_QUICK_USERSPACE_IMPLEMENTATION={program[0]}"]
    for ns, name in names.items():
        lab.names.append(name)
        conf = tmp_path / f"{name}.conf"
        conf.write_text(confs[ns])
        conf.chmod(0o600)
        r = lab.run(ns, *env, "wg-quick", "up", str(conf), check=False)
        assert r.returncode == 0, r.stderr
        assert "Falling back to slow userspace implementation" in r.stderr
    assert ping(lab, lab.a, "10.0.16.2") and ping(lab, lab.b, "fd00:16::1")
    # wg-quick's routes for the AllowedIPs are in place, through the vpnedu-wg interface.
    assert f"10.99.0.0/16 dev {names[lab.a]}" in lab.run(lab.a, "ip", "route").stdout
    assert wg("show", names[lab.a], "persistent-keepalive").stdout.split()[1] == "25"
    for ns, name in names.items():
        r = lab.run(ns, *env, "wg-quick", "down", str(tmp_path / f"{name}.conf"), check=False)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not socket_path(name).exists(), 5, f"{name}'s daemon to exit")
        assert lab.run(ns, "ip", "link", "show", name, check=False).returncode != 0
    assert "10.99.0.0/16" not in lab.run(lab.a, "ip", "route").stdout


def test_the_device_moved_to_another_namespace_right_after_creation(lab, tmp_path):
    """The netns trick, raced: the device is moved back and forth while the daemon watches it
    (each of its looks may find the device in neither namespace, mid-move); it must never take
    that for a deletion.  Then it follows the device's MTU where the device ends up."""
    name = f"{lab.tag}m"
    lab.names.append(name)
    lab.start(lab.a, name, foreground=False, log=tmp_path / "m.log")
    moves = ("end=$((SECONDS+5)); while ((SECONDS < end)); do "
             f"ip -n {lab.a} link set {name} netns {lab.b}; ip -n {lab.b} link set {name} netns {lab.a}; done; "
             f"ip -n {lab.a} link set {name} netns {lab.b}")
    sh("bash", "-c", moves, timeout=60)
    lab.run(lab.b, "ip", "link", "set", name, "up", "mtu", "34736")
    time.sleep(1.5)
    log = (tmp_path / "m.log").read_text()
    assert socket_path(name).exists(), log[-2000:]
    assert lab.run(lab.b, "ip", "link", "show", name, check=False).returncode == 0
    assert "-> 34736" in log
    lab.run(lab.b, "ip", "link", "del", name)
    wait_for(lambda: not socket_path(name).exists(), 5, "the daemon to exit")
