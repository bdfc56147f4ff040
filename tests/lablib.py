"""Helpers for tests that drive the real tunnel in a namespace lab."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from vpnedu.netns_lab.topology import SERVER_PUBLIC, Lab


def vpnedu(*args: str) -> list[str]:
    return [sys.executable, "-m", "vpnedu", *args]


def provision(lab: Lab, clients=("client",), suite: str = "wireguard", ipv4_only: bool = False) -> None:
    d = lab.dir
    subprocess.run(vpnedu("server", "init", "-c", f"{d}/server.conf", "--endpoint", SERVER_PUBLIC,
                          "--suite", suite, "--force", *(["--ipv4-only"] if ipv4_only else [])),
                   check=True, capture_output=True)
    for c in clients:
        subprocess.run(vpnedu("server", "add-client", c, "-c", f"{d}/server.conf"), check=True,
                       capture_output=True)


def status(lab: Lab, host: str, ifname: str | None = None) -> dict | None:
    """The daemon's ``vpnedu status --json`` (of ``ifname``, else the only one in the namespace)."""
    r = lab.run(host, *vpnedu("status", "--json", *(("--interface", ifname) if ifname else ())))
    return json.loads(r.stdout) if r.returncode == 0 else None


def recent_events(lab: Lab, host: str, kind: str, seconds: float = 1.5) -> list[dict]:
    """The daemon's kept history of ``kind`` on ``host`` (``vpnedu events --recent``, stopped
    after ``seconds``), as the JSON objects it prints."""
    p = subprocess.Popen(["ip", "netns", "exec", lab.ns(host), *vpnedu("events", "--kind", kind, "--recent", "200",
                                                                        "--json")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(seconds)
    p.terminate()
    out, _ = p.communicate(timeout=10)
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def wait_for(pred, timeout: float = 20, what: str = "condition", proc: subprocess.Popen | None = None,
             log=None):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    extra = log.read_text()[-1500:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{extra}")


def _ifname(args) -> str:
    """The interface a daemon was started with (``--interface NAME``; vpnedu0 by default)."""
    args = list(args)
    for i, a in enumerate(args[:-1]):
        if a in ("--interface", "-i"):
            return args[i + 1]
    return "vpnedu0"


def wait_ready(lab: Lab, host: str, p: subprocess.Popen, name: str | None = None,
               ifname: str = "vpnedu0") -> dict:
    """The daemon on ``host`` answers on its control socket (the product's own readiness check)."""
    from vpnedu.node.control import netns_socket_path
    from vpnedu.node.control import wait_ready as ready
    return ready(netns_socket_path(lab.ns(host), ifname), p, lab.dir / f"{name or 'vpn-' + host}.log",
                 what=f"the vpnedu daemon on {host}")


def start_server(lab: Lab, *extra: str) -> subprocess.Popen:
    p = lab.spawn("server", "vpn-server", *vpnedu("server", "-c", f"{lab.dir}/server.conf", *extra))
    wait_ready(lab, "server", p, ifname=_ifname(extra))
    return p


def start_client(lab: Lab, host: str = "client", conf: str | None = None, *extra: str) -> subprocess.Popen:
    conf = conf or f"{lab.dir}/{host}.conf"
    p = lab.spawn(host, f"vpn-{host}", *vpnedu("client", "-c", conf, *extra))
    ifname = _ifname(extra)
    wait_ready(lab, host, p, ifname=ifname)
    wait_for(lambda: (st := status(lab, host, ifname)) and st["peers"][0].get("latest_handshake"),
             what=f"{host} handshake", proc=p, log=lab.dir / f"vpn-{host}.log")
    return p


def stop(p: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> int:
    if p.poll() is None:
        p.send_signal(sig)
    return p.wait(timeout)


def snapshot(lab: Lab, host: str) -> dict:
    """What a user would compare: routes, addresses, links, nftables, forwarding."""
    def out(*cmd):
        return lab.run(host, *cmd).stdout
    return {
        "routes": out("ip", "route"),
        "addrs": out("ip", "-brief", "addr"),
        "links": out("ip", "-brief", "link").replace("UNKNOWN", "").split(),
        "nft": out("nft", "list", "ruleset"),
        "forwarding": out("sysctl", "-n", "net.ipv4.ip_forward"),
        "forwarding6": out("sysctl", "-n", "net.ipv6.conf.all.forwarding"),
        "rules": out("ip", "rule"),
        "rules6": out("ip", "-6", "rule"),
        "routes6": out("ip", "-6", "route"),
        "tunnel_table": out("ip", "route", "show", "table", "51820") + out("ip", "-6", "route", "show", "table", "51820"),
        "src_valid_mark": out("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark"),
        "proxy_routes": out("ip", "route", "show", "table", "7670"),
        "proxy_routes6": out("ip", "-6", "route", "show", "table", "7670"),
        "conntrack": out("sysctl", "-n", "net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_timestamp"),
    }


def ping(lab: Lab, host: str, dst: str, count: int = 3) -> bool:
    r = lab.run(host, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst)
    return r.returncode == 0 and " 0% packet loss" in r.stdout


def iperf(lab: Lab, server_host: str, server_addr: str, client_host: str, nbytes: str = "50M",
          reverse: bool = False) -> dict:
    """Move ``nbytes`` with iperf3 over TCP; returns iperf3's JSON result."""
    srv = lab.spawn(server_host, f"iperf3-{server_host}", "iperf3", "-s", "-1", "-B", server_addr)
    wait_for(lambda: lab.run(server_host, "ss", "-Htln", "sport = :5201").stdout.strip(), what="iperf3 server")
    args = ["iperf3", "-c", server_addr, "-n", nbytes, "-J"] + (["-R"] if reverse else [])
    r = lab.run(client_host, *args, timeout=120)
    srv.wait(30)
    assert r.returncode == 0, r.stdout[-800:] + r.stderr
    return json.loads(r.stdout)


def ping_count(lab: Lab, host: str, dst: str, count: int = 20) -> tuple[int, int]:
    """(sent, received) for ``count`` pings."""
    r = lab.run(host, "ping", "-c", str(count), "-i", "0.05", "-W", "2", dst, timeout=60)
    import re
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (count, 0)


def plant_dead_sockets(paths) -> list[tuple]:
    """Leave at each path what a killed (SIGKILL) daemon leaves: its control socket file, bound
    and listened on by nobody.  Daemons' sockets are named after their network namespace's inode,
    which the kernel hands on to later namespaces, so a fresh lab can meet such files.  Returns
    what :func:`remove_planted` takes away again (only files still ours: a daemon replaces them)."""
    import os
    import socket
    planted = []
    for path in paths:
        if os.path.exists(path):
            continue   # already a dead daemon's file: the same condition
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()
        planted.append((str(path), os.stat(path).st_ino))
    return planted


def remove_planted(planted) -> None:
    import os
    for path, ino in planted:
        try:
            if os.stat(path).st_ino == ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
