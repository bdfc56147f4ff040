"""``vpnedu lab demo``: the seed's demo, step by step, on one machine.

Each step prints what it does and what it shows, and records the facts in a
:class:`DemoResult` so the test suite can check every claim the narration makes.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import report
from ..errors import VpneduError
from ..flows import FlowRow
from .topology import APP_ADDRESS, APP_ADDRESS6, APP_PORT, APP_TLS_PORT, SERVER_PUBLIC, SERVER_PUBLIC6, Lab, require_tool, stop_process


@dataclass
class DemoResult:
    routes_before: list[str] = field(default_factory=list)
    routes_during: list[str] = field(default_factory=list)
    #: A full tunnel's rules and table (``ip rule``, ``ip route show table 51820``), both families.
    rules_during: list[str] = field(default_factory=list)
    route_to_app: str = ""
    route_to_endpoint: str = ""
    routes_after: list[str] = field(default_factory=list)
    client_tun: str = ""
    server_tun: str = ""
    ping_client_to_server: bool = False
    ping_server_to_client: bool = False
    http_body: str = ""
    app_sources: list[str] = field(default_factory=list)
    marker: str = ""
    outer_packets: list[str] = field(default_factory=list)
    marker_in_client_capture: bool = True
    marker_in_server_capture: bool = False
    #: The server's flow table during a request, per forwarding mode ("nat", "proxy").
    flows: dict[str, list[FlowRow]] = field(default_factory=dict)
    #: The source address the app logged, per forwarding mode.
    app_source_by_mode: dict[str, str] = field(default_factory=dict)
    #: The same over IPv6 (a fetch of http://[2001:db8:a::80]/), per forwarding mode.
    app_source6_by_mode: dict[str, str] = field(default_factory=dict)
    ok: bool = False


def _host_port(tcpdump_addr: str) -> str:
    """tcpdump writes 198.51.100.2.51536; show it as 198.51.100.2:51536."""
    host, _, port = tcpdump_addr.rpartition(".")
    return f"{host}:{port}" if host.count(".") == 3 else tcpdump_addr


def _ping_ok(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == 0 and " 0% packet loss" in r.stdout


def _ping_summary(r: subprocess.CompletedProcess) -> str:
    """ping's 'N packets transmitted, M received, ...' line (or its error)."""
    lines = r.stdout.strip().splitlines()
    return lines[-2] if len(lines) >= 2 else (r.stderr.strip() or r.stdout.strip())


def housekeeping(packet: str, names: dict[str, str] | None = None) -> str | None:
    """What a link-local packet of a capture is, in words; None for traffic.

    A link that comes up chatters on its own: ARP asks for a neighbour's MAC address, and IPv6
    (on by default, even with no IPv6 address configured) gives every interface a link-local
    address (fe80::/64, RFC 4291 2.5.6), checks it is unique with a neighbour solicitation from
    the unspecified address :: (RFC 4862 5.4), joins multicast groups (MLD listener reports,
    RFC 3810) and asks the routers on the link to announce themselves (router solicitation to
    ff02::2, RFC 4861 6.3.7); IPv4 multicast members report to 224.0.0.22 (IGMPv3, RFC 3376).
    Routers never forward any of it (link-local scope, 224.0.0.0/24 included: RFC 5771): it is
    not traffic, and no leak around the tunnel.  ``names`` maps a link-local address to whose it is
    ("the client's own"), so the narration can say who asked.
    """
    if packet.startswith("ARP"):
        return "ARP: finding a neighbour's MAC address on the LAN"
    parts = packet.split()
    if len(parts) >= 4 and parts[2] == "->" and parts[3].startswith("224.0.0."):
        return f"IPv4 link-local multicast ({parts[0]} to {parts[3]}: group membership reports)"
    if len(parts) < 4 or parts[0] != "IP6":
        return None
    src, dst = parts[1], parts[3].rstrip(":")
    if not (src == "::" or src.startswith("fe80:")) or not dst.startswith("ff02:"):
        return None
    if "router solicitation" in packet:
        who = (names or {}).get(src, "a host on the link")
        return f"IPv6 router solicitation from {who} link-local address {src} to ff02::2 (all routers)"
    if "neighbor solicitation" in packet or "neighbor advertisement" in packet:
        return "IPv6 neighbour discovery (duplicate address detection for a link-local address)"
    if "multicast listener report" in packet:
        return "IPv6 multicast listener reports (MLD: the groups an interface joined)"
    return f"IPv6 link-local housekeeping to {dst}"


def capture_summary(packets: list[str], names: dict[str, str] | None = None, limit: int = 6) -> str:
    """The narration of a capture of the client's outer link: the traffic (the tunnel's UDP),
    then, apart and said to be what it is, the link's own housekeeping (see :func:`housekeeping`)."""
    traffic = sorted({p for p in packets if housekeeping(p) is None})
    # A few kinds, one line each (the client's own first); all of them, however few the traffic lines.
    chatter = sorted({h for p in packets if (h := housekeeping(p, names)) is not None},
                     key=lambda h: ("the client's own" not in h, h))
    lines = ["the client's outer link carried only:"]
    lines += [f"  {p}" for p in traffic[:limit]] or ["  (nothing)"]
    if chatter:
        lines.append("besides the link's own housekeeping (link-local: it never leaves the LAN, not traffic):")
        lines += [f"  {h}" for h in chatter]
    return "\n".join(lines)


class Demo:
    def __init__(self, lab: Lab, out: Callable[[str], None] = print, suite: str = "wireguard",
                 keep: bool = False, forwarding: str = "nat"):
        if forwarding not in ("nat", "proxy", "both"):
            raise VpneduError(f"unknown forwarding {forwarding!r}", "choose nat, proxy or both")
        self.forwarding = forwarding
        self.modes = ["nat", "proxy"] if forwarding == "both" else [forwarding]
        self.lab = lab
        self.out = out
        self.suite = suite
        self.keep = keep
        self.procs: dict[str, subprocess.Popen] = {}
        self.result = DemoResult()

    # ---------------------------------------------------------------- helpers
    def step(self, title: str) -> None:
        self.out("")
        self.out(f"=== {title}")

    def show(self, text: str, indent: str = "    ") -> None:
        for line in text.rstrip().splitlines():
            self.out(indent + line)

    def vpnedu(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab.run(host, *self.lab.vpnedu(*args), check=check)

    def wait_status(self, host: str, want: Callable[[dict], bool], what: str, timeout: float = 25) -> dict:
        end = time.time() + timeout
        last = ""
        while time.time() < end:
            r = self.vpnedu(host, "status", "--json", check=False)
            if r.returncode == 0:
                st = json.loads(r.stdout)
                if want(st):
                    return st
            last = r.stderr.strip()
            p = self.procs.get(host)
            if p is not None and p.poll() is not None:
                break
            time.sleep(0.1)
        log = (self.lab.dir / f"vpn-{host}.log")
        tail = log.read_text()[-800:] if log.exists() else last
        raise VpneduError(f"[{host}] {what} did not happen; its log ends with: {tail.strip()}")

    def routes(self, host: str) -> list[str]:
        return [line.strip() for line in self.lab.run(host, "ip", "route").stdout.splitlines() if line.strip()]

    def policy(self, host: str) -> list[str]:
        """``ip rule`` and ``ip route show table 51820``, both families: a full tunnel's routing."""
        out = []
        for fam in ("-4", "-6"):
            out += [f"ip {fam} rule: {line.strip()}" for line in self.lab.run(host, "ip", fam, "rule").stdout.splitlines()
                    if "51820" in line or "suppress" in line]
            out += [f"ip {fam} route show table 51820: {line.strip()}" for line in
                    self.lab.run(host, "ip", fam, "route", "show", "table", "51820").stdout.splitlines() if line.strip()]
        return out

    # ---------------------------------------------------------------- the steps
    def run(self) -> DemoResult:
        lab, res = self.lab, self.result
        try:
            self.step("1. The lab: four hosts in network namespaces, joined by veth cables")
            if not lab.exists():
                lab.up()
            self.show(f"client  {lab.client_address('client')}/24  (a laptop on some LAN)\n"
                      f"internet router between them\n"
                      f"server  {SERVER_PUBLIC}/24  (the VPN server's public address)\n"
                      f"app     {APP_ADDRESS}:{APP_PORT}  (an HTTP server that logs who connects; HTTPS on "
                      f"{APP_TLS_PORT})")

            self.step("2. The client's routing table before the VPN")
            res.routes_before = self.routes("client")
            self.show("\n".join(res.routes_before))
            self.show("-> the default gateway is the LAN router 198.51.100.1")

            self.step("3. Provisioning: server keys, then a client config (like PiVPN)")
            d = lab.dir
            self.show(self.vpnedu("server", "server", "init", "-c", f"{d}/server.conf", "--force",
                                  "--endpoint", SERVER_PUBLIC, "--suite", self.suite).stdout)
            self.show(self.vpnedu("server", "server", "add-client", "client", "-c", f"{d}/server.conf").stdout)

            self.step(f"4. Start the VPN server (forwarding: {self.modes[0]}) and the client")
            st = self.start_vpn(self.modes[0])
            self.show(f"handshake complete; client {st['addresses'][0]}, server endpoint "
                      f"{st['peers'][0]['endpoint']}")

            self.step("5. A new TUN interface on both hosts")
            res.client_tun = lab.run("client", "ip", "-brief", "addr", "show", "vpnedu0").stdout.strip()
            res.server_tun = lab.run("server", "ip", "-brief", "addr", "show", "vpnedu0").stdout.strip()
            self.show(f"client: {res.client_tun}\nserver: {res.server_tun}")
            if "UNKNOWN" in res.client_tun + res.server_tun:
                self.show("-> UNKNOWN is the link's operational state, not a fault: a TUN device has no cable,\n"
                          "   so no carrier the kernel could sense; the device is up and carries the tunnel")

            self.step("6. The client's routing now: everything but the tunnel's own packets goes into the tunnel")
            res.routes_during = self.routes("client")
            for r in res.routes_during:
                self.out(("  + " if r not in res.routes_before else "    ") + r)
            res.rules_during = self.policy("client")
            for line in res.rules_during:
                self.out("    " + line)
            get = lab.run("client", "ip", "route", "get", APP_ADDRESS).stdout.split("\n")[0].strip()
            own = lab.run("client", "ip", "route", "get", SERVER_PUBLIC, "mark", "51820").stdout.split("\n")[0].strip()
            res.route_to_app, res.route_to_endpoint = get, own
            self.out(f"    $ ip route get {APP_ADDRESS}\n      {get}")
            self.out(f"    $ ip route get {SERVER_PUBLIC} mark 51820\n      {own}")
            self.show("-> the main table keeps its default route; 'not fwmark 0xca6c' sends every unmarked packet\n"
                      "   to table 51820 (default dev vpnedu0), 'suppress_prefixlength 0' lets the main table answer\n"
                      f"   for all but its default; the tunnel's own UDP to {SERVER_PUBLIC} carries the mark and stays on the LAN")

            self.step("7. Ping over the tunnel, both ways")
            r = lab.run("client", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.1")
            res.ping_client_to_server = _ping_ok(r)
            self.show("client -> server (the client pings 10.0.0.1): " + _ping_summary(r))
            r = lab.run("server", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.2")
            res.ping_server_to_client = _ping_ok(r)
            self.show("server -> client (the server pings 10.0.0.2): " + _ping_summary(r))

            self.step(f"8. Browse the app server through the VPN ({self.modes[0]}), capturing both sides "
                      "of the server")
            self.flow_table(self.modes[0])
            res.marker = "vpnedu-marker-" + secrets.token_hex(6)
            caps = {h: self.capture(h) for h in ("client", "server")}
            r = lab.run("client", *lab.python("-m", "vpnedu.netns_lab.app", "fetch",
                                                     f"http://{APP_ADDRESS}:{APP_PORT}/{res.marker}"))
            time.sleep(0.3)
            files = {h: self.stop_capture(h, p) for h, p in caps.items()}
            res.http_body = r.stdout.strip()
            self.show(f"client got: {res.http_body or r.stderr.strip()}")
            res.app_sources = [line.split()[0] for line in lab.app_log() if res.marker in line]
            res.app_source_by_mode[self.modes[0]] = res.app_sources[0] if res.app_sources else ""
            self.show(f"app's log: request from {', '.join(res.app_sources) or 'nobody'} "
                      f"(the server's public address, not the client's)")
            self.fetch6(self.modes[0])
            res.outer_packets = self.describe_capture("client", files["client"])
            res.marker_in_client_capture = res.marker.encode() in files["client"].read_bytes()
            res.marker_in_server_capture = res.marker.encode() in files["server"].read_bytes()
            self.show(capture_summary(res.outer_packets, self.link_local_names()))
            self.show(f"marker text in the client's capture: {res.marker_in_client_capture}; "
                      f"on the server's public side (after decryption and NAT): {res.marker_in_server_capture}")
            if self.suite == "null-teaching":
                self.show("(null-teaching: the tunnel is NOT encrypted, so the marker shows on the client's link)")

            if len(self.modes) > 1:
                self.step("8b. The same request through the server's transport-layer proxy")
                self.stop()
                self.start_vpn("proxy")
                self.show("server restarted with --forwarding proxy; client reconnected")
                self.flow_table("proxy")
                marker = res.marker + "-proxy"
                r = lab.run("client", *lab.python("-m", "vpnedu.netns_lab.app", "fetch",
                                                         f"http://{APP_ADDRESS}:{APP_PORT}/{marker}"))
                src = [line.split()[0] for line in lab.app_log() if marker in line]
                res.app_source_by_mode["proxy"] = src[0] if src else ""
                self.show(f"client got: {r.stdout.strip() or r.stderr.strip()}")
                self.fetch6("proxy")
                self.side_by_side()

            self.step("9. Stop the client and the server: every change is undone")
            self.stop()
            res.routes_after = self.routes("client")
            self.show("\n".join(res.routes_after))
            self.show("-> identical to step 2" if res.routes_after == res.routes_before else "-> DIFFERENT from step 2!")
            hidden = res.marker_in_client_capture == (self.suite == "null-teaching")
            res.ok = (res.ping_client_to_server and res.ping_server_to_client and SERVER_PUBLIC in res.http_body
                      and res.app_sources == [SERVER_PUBLIC] and res.routes_after == res.routes_before
                      and hidden and res.marker_in_server_capture
                      and all(res.app_source_by_mode.get(m) == SERVER_PUBLIC for m in self.modes)
                      and all(res.app_source6_by_mode.get(m) == SERVER_PUBLIC6 for m in self.modes)
                      and all(any(f.destination == f"{APP_ADDRESS}:{APP_PORT}" for f in res.flows.get(m, []))
                              for m in self.modes))
            self.out("")
            self.out("demo " + ("complete: every step did what it says" if res.ok else "FAILED: see above"))
            return res
        finally:
            self.stop()
            if not self.keep:
                lab.down()

    def fetch6(self, mode: str) -> None:
        """The same request over IPv6: the tunnel carries both families (AllowedIPs ::/0 too),
        and the app sees the server's IPv6 address, not the client's."""
        marker = f"{self.result.marker}-{mode}-v6"
        r = self.lab.run("client", *self.lab.python("-m", "vpnedu.netns_lab.app", "fetch",
                                                    f"http://[{APP_ADDRESS6}]:{APP_PORT}/{marker}"))
        src = [line.split()[0] for line in self.lab.app_log() if marker in line]
        self.result.app_source6_by_mode[mode] = src[0] if src else ""
        self.show(f"the same over IPv6 (http://[{APP_ADDRESS6}]/): "
                  + (f"app's log: request from {src[0]}" if src else f"failed: {r.stderr.strip()[-200:]}"))

    def start_vpn(self, forwarding: str) -> dict:
        d, lab = self.lab.dir, self.lab
        extra = ["--allow-null-teaching"] if self.suite == "null-teaching" else []
        from ..node.control import netns_socket_path, wait_ready
        self.procs["server"] = lab.spawn("server", "vpn-server",
                                         *lab.vpnedu("server", "-c", f"{d}/server.conf", "--forwarding",
                                                     forwarding, *extra))
        wait_ready(netns_socket_path(lab.ns("server")), self.procs["server"], d / "vpn-server.log",
                   what="the vpnedu server")
        self.procs["client"] = lab.spawn("client", "vpn-client",
                                         *lab.vpnedu("client", "-c", f"{d}/client.conf", *extra))
        wait_ready(netns_socket_path(lab.ns("client")), self.procs["client"], d / "vpn-client.log",
                   what="the vpnedu client")
        return self.wait_status("client", lambda st: st["peers"][0].get("latest_handshake"), "the handshake")

    def flow_table(self, mode: str) -> None:
        """Show the server's flow table while a slow HTTP request (the app's /drip) is open."""
        lab = self.lab
        slow = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"),
                                 *lab.python("-m", "vpnedu.netns_lab.app", "fetch", f"http://{APP_ADDRESS}:{APP_PORT}/drip/2")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            want = f"{APP_ADDRESS}:{APP_PORT}"
            st = self.wait_status("server", lambda st: any(f.destination == want and f.bytes_down > 0
                                                           for f in map(FlowRow.from_dict, st.get("flows", []))),
                                  f"a flow to {want} in the {mode} flow table", timeout=10)
            self.result.flows[mode] = [FlowRow.from_dict(d) for d in st.get("flows", [])]
            self.show("the server's flow table during a slow request (vpnedu status --flows):")
            self.show(report.format_flows(st), "      ")
        finally:
            slow.wait(15)

    def side_by_side(self) -> None:
        """The HTTP flow as each forwarding mode saw it, in two columns."""
        rows = []
        for mode in self.modes:
            f = next((f for f in self.result.flows.get(mode, [])
                      if f.destination == f"{APP_ADDRESS}:{APP_PORT}"), None)
            legs = (f.client, f.proxy, f.destination) if f is not None else ("?", "?", "?")
            rows.append((mode, *legs, self.result.app_source_by_mode.get(mode, "?")))
        self.show("nat and proxy side by side:")
        for line in report.text_table(rows, ("", "client end", "server end", "destination", "app saw")):
            self.show(line, "      ")
        self.show("-> nat: the kernel rewrote the client's packets (conntrack remembers the mapping);\n"
                  "   proxy: the server ended the client's connection and opened its own.\n"
                  "   Either way the app only ever sees the server.")

    def stop(self) -> None:
        for host in ("client", "server"):
            p = self.procs.pop(host, None)
            if p is not None:
                stop_process(p, grace=10)

    # ---------------------------------------------------------------- captures
    def capture(self, host: str) -> subprocess.Popen:
        """tcpdump on a host's eth0, writing the pcap to our stdout pipe (tcpdump's AppArmor
        profile may forbid it to write files outside a few directories)."""
        tcpdump = require_tool("tcpdump", "tcpdump")
        path = self.lab.dir / f"{host}-eth0.pcap"
        log = self.lab.dir / f"tcpdump-{host}.log"
        with open(path, "wb") as out, open(log, "wb") as err:
            p = subprocess.Popen(["ip", "netns", "exec", self.lab.ns(host), tcpdump, "-i", "eth0", "-U", "--immediate-mode", "-n",
                                  "-s", "0", "-w", "-"], stdout=out, stderr=err, start_new_session=True)
        end = time.time() + 5
        while time.time() < end and b"listening on" not in log.read_bytes():
            time.sleep(0.05)
        return p

    def stop_capture(self, host: str, p: subprocess.Popen):
        p.send_signal(signal.SIGINT)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
        return self.lab.dir / f"{host}-eth0.pcap"

    def link_local_names(self) -> dict[str, str]:
        """Whose each IPv6 link-local address on the client's LAN is: the client's own eth0, or
        the internet router's end of the cable."""
        names = {}
        for host, who in (("client", "the client's own"), ("internet", "the LAN router's")):
            r = self.lab.run(host, "ip", "-j", "-6", "addr", "show", "scope", "link")
            try:
                for link in json.loads(r.stdout or "[]"):
                    for a in link.get("addr_info", []):
                        names[a["local"]] = who
            except (ValueError, KeyError):
                pass
        return names

    def describe_capture(self, host: str, path) -> list[str]:
        r = subprocess.run([require_tool("tcpdump", "tcpdump"), "-r", str(path), "-nn", "-q", "-t"],
                           capture_output=True, text=True)
        out = []
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0] == "IP":
                src, dst = (_host_port(x.rstrip(":")) for x in (parts[1], parts[3]))
                out.append(f"{parts[4].rstrip(',')} {src} -> {dst}")
            elif parts:
                out.append(line.split(", length")[0])
        return out
