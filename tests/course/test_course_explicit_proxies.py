"""``lab.explicit_proxy_fetch(via)``, notebook 05's explicit proxies, in both labs.

A page fetched with curl through the server's SOCKS5 (10.0.0.1:1080) or HTTP proxy
(10.0.0.1:3128, CONNECT or a forwarded request): the proxy's flow row has the proto, the client's
tunnel address and the server's own end; the app's log shows the server's public address; the
client's outer link carried only WireGuard datagrams to the server's endpoint, the URL's marker
unreadable there.  The simulation has no explicit proxies: it gives the command and a note.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import require_tool
from vpnedu.course import RealLab, SimLab, side_by_side


def test_the_simulation_says_what_the_real_lab_shows():
    lab = SimLab()
    try:
        lab.start_server()
        lab.start_client()
        got = [lab.explicit_proxy_fetch(via) for via in ("socks5", "http-connect")]
    finally:
        lab.down()
    assert [g.command.split()[4] for g in got] == ["--socks5-hostname", "--proxytunnel"]
    assert all(not g.ok and g.flows == [] and g.marker_visible is None for g in got)
    text = side_by_side(got)
    assert text.count("The simulation has no explicit proxies") == 1           # the shared note, once
    assert "the real lab's client runs:" in text and "curl printed" not in text
    assert max(len(line) for line in text.splitlines()) <= 78


@pytest.mark.root
@pytest.mark.slow
def test_the_real_lab_fetches_through_each_proxy():
    require_tool("curl")
    require_tool("tcpdump")
    lab = RealLab(prefix=f"h18c{os.getpid() % 10000}-", out=lambda s: None)
    try:
        lab.up()
        got = {via: lab.explicit_proxy_fetch(via) for via in ("socks5", "http-connect", "http")}  # starts both
        for via, f in got.items():
            assert f.ok and f.outcome == "hello from the app server; your address is 203.0.113.2", (via, f.outcome)
            (row,) = f.flows
            assert (row.proto, row.destination, row.state) == (via, "192.0.2.80:80", "closed"), row
            assert row.client.startswith("10.0.0.2:") and row.proxy.startswith("203.0.113.2:"), row
            # Up: the request (for a forwarded one, the head the proxy rewrote and sent on).
            assert row.bytes_down > 0 and row.bytes_up > 0, row
            assert f.app_log == [f"203.0.113.2 GET /{f.marker}"]
            assert f.only_tunnel and len(f.tunnel_packets()) >= 4, f.on_wire
            assert f.marker_visible is False
        text = side_by_side([got["socks5"], got["http-connect"]])
        assert "socks5: marker readable on the client's link: False" in text
        assert max(len(line) for line in text.splitlines()) <= 78
    finally:
        lab.down()
