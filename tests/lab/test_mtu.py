"""MTU and MSS in the namespace lab (issue 17): the classic "the handshake works, small pages load,
large ones hang", and what prevents it.

The router drops ICMP "fragmentation needed" and "packet too big" (Lab.pmtu_black_hole), as
firewalls that filter ICMP do, so path MTU discovery cannot help anybody.

* The server's link is 1280 bytes: the client's tunnel (1440, its own path is Ethernet) announces
  an MSS the server's uplink cannot carry.  With ``ClampMSS = false`` a large download from the
  app server hangs -- the app's full-size segments die at the router, and the ICMP that would say
  so too; with the clamp (the default) the server rewrites both ends' MSS on the SYNs and the
  download completes, byte for byte, through the tunnel (the app's log shows the server).
* The client's LAN is 1280 bytes: without ``MTU =`` the client measures it (1280 - 60, down to a
  multiple of 16: 1216; 1280 when the tunnel carries IPv6), the kernel's device says the same, and
  large downloads pass with nothing dropped; an ``MTU =`` wins; bad values are one line and
  change nothing.
"""

import hashlib
import os
import re

import pytest

from vpnedu import config
from vpnedu.netns_lab.app import random_sha256
from vpnedu.netns_lab.topology import APP_ADDRESS, APP_ADDRESS6, APP_PORT, SERVER_PUBLIC, SERVER_PUBLIC6, Lab

from ..lablib import provision, snapshot, start_client, start_server, status, stop, vpnedu, wait_for, wait_ready

pytestmark = [pytest.mark.root, pytest.mark.slow]

SIZE = 8_000_000        # a "large page": thousands of full-size segments


def make_lab(**link_mtu) -> Lab:
    lab = Lab(prefix=f"vtm{os.getpid() % 1000}-", log=lambda s: None, link_mtu=link_mtu)
    lab.up()
    lab.pmtu_black_hole()
    return lab


@pytest.fixture
def server_link_1280():
    lab = None
    try:
        lab = make_lab(server=1280)
        yield lab
    finally:
        if lab is not None:
            lab.down()


@pytest.fixture
def client_link_1280():
    lab = None
    try:
        lab = make_lab(client=1280)
        yield lab
    finally:
        if lab is not None:
            lab.down()


@pytest.fixture
def client_link_1300():
    lab = None
    try:
        lab = make_lab(client=1300)
        yield lab
    finally:
        if lab is not None:
            lab.down()


def download(lab: Lab, url: str, seconds: float = 8) -> tuple[int, int, str]:
    """curl's exit status (28: timed out), the bytes it got, and their SHA-256."""
    out = lab.dir / "download.bin"
    out.unlink(missing_ok=True)
    r = lab.run("client", "curl", "-sS", "-g", "--max-time", str(seconds), "-o", str(out), "-w", "%{size_download}",
                url, timeout=seconds + 20)
    data = out.read_bytes() if out.exists() else b""
    return r.returncode, len(data), hashlib.sha256(data).hexdigest()


def live_mss(lab: Lab) -> tuple[int, int]:
    """The MSS each end of a TCP connection through the tunnel sends with (``ss -ti``: mss), on
    the client and on the app server, while a slow download keeps it open."""
    p = lab.spawn("client", "drip", "curl", "-s", "-o", "/dev/null", f"http://{APP_ADDRESS}/drip/3")

    def mss(host: str, *match: str):
        out = lab.run(host, "ss", "-Hti", "state", "established", *match).stdout
        m = re.search(r"\bmss:(\d+)", out)
        return int(m.group(1)) if m else None
    try:
        client = wait_for(lambda: mss("client", "dst", APP_ADDRESS), what="the client's connection")
        app = wait_for(lambda: mss("app", "sport", "=", f":{APP_PORT}"), what="the app server's connection")
    finally:
        p.wait(15)
    return client, app


def test_a_large_download_hangs_behind_a_pmtu_black_hole_without_the_mss_clamp(server_link_1280):
    lab = server_link_1280
    provision(lab, ipv4_only=True)
    before = {h: snapshot(lab, h) for h in ("client", "server")}
    noclamp = lab.dir / "server-noclamp.conf"
    cfg = config.load(lab.dir / "server.conf")
    cfg.interface.clamp_mss = False
    config.save(cfg, noclamp)
    assert "ClampMSS = false" in noclamp.read_text() and "ClampMSS" not in (lab.dir / "server.conf").read_text()
    url = f"http://{APP_ADDRESS}/random/{SIZE}"

    # ClampMSS = false: the handshake works, a small page loads through the tunnel, a large one hangs.
    srv = lab.spawn("server", "vpn-server-noclamp", *vpnedu("server", "-c", str(noclamp)))
    wait_ready(lab, "server", srv, name="vpn-server-noclamp")
    cli = start_client(lab)
    try:
        st_c, st_s = status(lab, "client"), status(lab, "server")
        assert (st_c["mtu"], st_c["mtu_source"]) == (1440, f"route to {SERVER_PUBLIC} via eth0 (mtu 1500) - 60")
        # The server measures its 1280-byte uplink: the smaller of its two default routes' results.
        assert st_s["mtu"] == 1200 and st_s["mtu_source"].startswith("IPv6 default route via eth0 (mtu 1280) - 80")
        assert st_s["clamp_mss"] is False
        assert "maxseg" not in lab.run("server", "nft", "list", "table", "ip", "vpnedu_vpnedu0").stdout
        r = lab.run("client", "curl", "-sS", "--max-time", "10", f"http://{APP_ADDRESS}/")
        assert f"your address is {SERVER_PUBLIC}" in r.stdout, r.stdout + r.stderr
        client_mss, app_mss = live_mss(lab)
        # Both ends send segments too big for the server's 1280-byte link (IP + TCP headers: 40).
        assert client_mss + 40 > 1280 and app_mss + 40 > 1280, (client_mss, app_mss)
        drops = lab.black_hole_drops()
        rc, got, _ = download(lab, url)
        assert rc == 28 and got < SIZE // 2, (rc, got)          # curl: "Operation timed out"
        assert lab.black_hole_drops() > drops                   # the router's "fragmentation needed"s
    finally:
        assert stop(cli) == 0
        assert stop(srv) == 0
    assert snapshot(lab, "server") == before["server"] and snapshot(lab, "client") == before["client"]
    # The app's end of the hung download would go on retransmitting its too-big segments for
    # minutes (each one another dropped ICMP); close it, as its timeout would.
    lab.run("app", "ss", "-K", "-tn", "dst", SERVER_PUBLIC, check=True)
    assert lab.run("app", "ss", "-tnH", "dst", SERVER_PUBLIC).stdout.strip() == ""

    # The default, ClampMSS = true: the same download completes, and nothing needs an ICMP.
    srv = start_server(lab)
    cli = start_client(lab)
    try:
        assert status(lab, "server")["clamp_mss"] is True
        nft = lab.run("server", "nft", "list", "table", "ip", "vpnedu_vpnedu0").stdout
        for way in ("iifname", "oifname"):
            assert f'{way} "vpnedu0" tcp flags syn tcp option maxseg size set rt mtu' in nft, nft
        client_mss, app_mss = live_mss(lab)
        # Both ends now fit the server's tunnel device (1200), and so its uplink too.
        assert client_mss + 40 <= 1200 and app_mss + 40 <= 1200, (client_mss, app_mss)
        drops = lab.black_hole_drops()
        assert download(lab, url) == (0, SIZE, random_sha256(SIZE))
        assert lab.black_hole_drops() == drops
        fetched = [line for line in lab.app_log() if line.endswith(f"GET /random/{SIZE}")]
        assert fetched == [f"{SERVER_PUBLIC} GET /random/{SIZE}"] * 2, lab.app_log()   # through the tunnel
    finally:
        assert stop(cli) == 0
        assert stop(srv) == 0
    assert snapshot(lab, "server") == before["server"] and snapshot(lab, "client") == before["client"]


def test_the_client_measures_its_narrow_link_and_an_mtu_line_wins(client_link_1280):
    lab = client_link_1280
    provision(lab, ipv4_only=True)
    before = {h: snapshot(lab, h) for h in ("client", "server")}

    # Bad values: one line naming the problem and the fix, exit 1, nothing changed.
    good = (lab.dir / "server.conf").read_text()
    for host, line, words in (("server", "MTU = 100", "MTU: 100 is too small"),
                              ("server", "MTU = abc", "MTU: 'abc' is not a number"),
                              ("server", "ClampMSS = maybe", "ClampMSS: 'maybe' is not true or false"),
                              ("client", "MTU = abc", "MTU: 'abc' is not a number")):
        bad = lab.dir / f"bad-{host}.conf"
        src = good if host == "server" else (lab.dir / "client.conf").read_text()
        bad.write_text(src.replace("[Interface]\n", f"[Interface]\n{line}\n", 1))
        bad.chmod(0o600)
        r = lab.run(host, *vpnedu(host, "-c", str(bad)))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, (line, r.returncode, r.stderr)
        assert lines[0].startswith(f"vpnedu: error: {bad}:2: {words}") and "Traceback" not in r.stderr + r.stdout
        assert "remove the line" in lines[0] or "use true" in lines[0], lines[0]
        assert snapshot(lab, host) == before[host], line

    url = f"http://{APP_ADDRESS}/random/{SIZE}"
    srv = start_server(lab)
    try:
        cli = start_client(lab)
        try:
            st = status(lab, "client")
            assert st["mtu"] == 1216, st["mtu_source"]
            assert st["mtu_source"].startswith(f"route to {SERVER_PUBLIC} via eth0 (mtu 1280) - 60 = 1220, "
                                               "rounded down to 1216"), st["mtu_source"]
            assert "mtu 1216 " in lab.run("client", "ip", "link", "show", "vpnedu0").stdout
            assert f"tunnel MTU 1216: route to {SERVER_PUBLIC} via eth0 (mtu 1280) - 60" in \
                (lab.dir / "vpn-client.log").read_text()
            assert "  mtu: 1216 (route to" in lab.run("client", *vpnedu("status")).stdout
            srv_st = status(lab, "server")
            assert srv_st["mtu"] == 1408 and srv_st["mtu_source"].startswith("IPv6 default route via eth0 (mtu 1500)")
            # The server's larger MTU pads nothing of ours past the narrow LAN: no ICMP was needed.
            assert download(lab, url) == (0, SIZE, random_sha256(SIZE))
            assert lab.black_hole_drops() == 0
        finally:
            assert stop(cli) == 0

        # MTU = wins, even one larger than the path: the router fragments the tunnel's datagrams
        # (they carry no DF), so the download still passes the black hole.
        forced = lab.dir / "client-mtu.conf"
        cfg = config.load(lab.dir / "client.conf")
        cfg.interface.mtu = 1300
        config.save(cfg, forced)
        cli = start_client(lab, "client", str(forced))
        try:
            st = status(lab, "client")
            assert (st["mtu"], st["mtu_source"]) == (1300, f"MTU = 1300 in {forced}")
            assert "mtu 1300 " in lab.run("client", "ip", "link", "show", "vpnedu0").stdout
            # A single full-size packet each way (1250 + 28 = 1278 bytes inside, a 1338-byte datagram):
            # the server's reply crosses the 1280-byte LAN only because the router may fragment it.
            r = lab.run("client", "ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", "1250", "10.0.0.1")
            assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
            assert download(lab, url) == (0, SIZE, random_sha256(SIZE))
            assert lab.black_hole_drops() == 0
        finally:
            assert stop(cli) == 0
    finally:
        assert stop(srv) == 0

    # A tunnel that carries IPv6 keeps IPv6's minimum, 1280, and with it its IPv6 address.
    (lab.dir / "client.conf").unlink()
    provision(lab)
    srv = start_server(lab)
    cli = start_client(lab)
    try:
        st = status(lab, "client")
        assert st["mtu"] == 1280 and "= 1220, raised to 1280: IPv6's minimum" in st["mtu_source"], st
        v6 = next(a for a in st["addresses"] if ":" in a).split("/")[0]
        assert f"inet6 {v6}/" in lab.run("client", "ip", "-6", "addr", "show", "dev", "vpnedu0").stdout
        six = f"http://[{APP_ADDRESS6}]/random/{SIZE}"
        assert download(lab, six) == (0, SIZE, random_sha256(SIZE))
        assert f"{SERVER_PUBLIC6} GET /random/{SIZE}" in lab.app_log()
        assert lab.black_hole_drops() == 0
    finally:
        assert stop(cli) == 0
        assert stop(srv) == 0
    assert snapshot(lab, "server") == before["server"] and snapshot(lab, "client") == before["client"]


def test_a_narrow_ipv6_path_gets_no_datagram_padded_past_it(client_link_1300):
    """An IPv6 Endpoint across a 1300-byte LAN: 1300 - 80 = 1220, rounded down to 1216.  The
    server's MTU is larger (1408), and WireGuard pads every packet to a multiple of 16 up to the
    sender's MTU: a 1220-byte packet would leave the server as 1232 + 80 = 1312 bytes, which no
    IPv6 router fragments -- each full-size segment of a download would die at the LAN, its
    "packet too big" in the black hole.  A 1216-byte one pads to itself: 1296 bytes."""
    lab = client_link_1300
    provision(lab, ipv4_only=True)
    conf = lab.dir / "client6.conf"
    conf.write_text((lab.dir / "client.conf").read_text().replace(
        f"Endpoint = {SERVER_PUBLIC}:51820", f"Endpoint = [{SERVER_PUBLIC6}]:51820"))
    conf.chmod(0o600)
    srv = start_server(lab)
    cli = start_client(lab, "client", str(conf))
    try:
        st = status(lab, "client")
        assert st["mtu"] == 1216 and st["mtu_source"].startswith(
            f"route to {SERVER_PUBLIC6} via eth0 (mtu 1300) - 80 = 1220, rounded down to 1216"), st["mtu_source"]
        assert status(lab, "server")["mtu"] == 1408
        url = f"http://{APP_ADDRESS}/random/{SIZE}"
        assert download(lab, url) == (0, SIZE, random_sha256(SIZE))
        assert f"{SERVER_PUBLIC} GET /random/{SIZE}" in lab.app_log()
        assert lab.black_hole_drops() == 0
    finally:
        assert stop(cli) == 0
        assert stop(srv) == 0
