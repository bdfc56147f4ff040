"""One flow-row type from every producer, and one way of printing rows and status.

The proxy's flow table, the simulated NAT and the kernel's conntrack (read in
``tests/node/test_forwarding.py`` as root) all give :class:`vpnedu.flows.FlowRow`; the rows cross the
control socket as JSON and come back equal; ``vpnedu status --flows``, the lab demo, the course
command and the notebook's widget print them with :mod:`vpnedu.report`.
"""

import json

import pytest

from vpnedu import report
from vpnedu.errors import VpneduError
from vpnedu.events import EventBus
from vpnedu.flows import FlowRow
from vpnedu.proxy.flows import FlowTable


def test_a_row_survives_the_control_socket_as_json():
    row = FlowRow("tcp", "10.0.0.2:40312", "203.0.113.2:51044", "192.0.2.80:80", "established", 120, 4567,
                  age=1.5, id=3, idle=0.2, peer="alice")
    wire = json.loads(json.dumps(row.to_dict()))
    assert FlowRow.from_dict(wire) == row
    # A newer daemon may send more: the known fields still make the row.
    assert FlowRow.from_dict({**wire, "future": 1}) == row


def test_a_row_without_its_addresses_is_one_clear_error():
    with pytest.raises(VpneduError) as e:
        FlowRow.from_dict({"proto": "udp", "client": "10.0.0.2:1"})
    assert "lacks proxy, destination" in str(e.value) and "versions" in str(e.value)


def test_the_proxy_table_gives_rows():
    clock = iter([10.0, 10.0, 11.0, 12.5]).__next__
    table = FlowTable(EventBus(), clock=clock)
    f = table.new("udp", ("10.0.0.2", 40000), ("192.0.2.80", 53), peer="alice")
    table.opened(f, ("203.0.113.2", 51000))
    table.touch(f, up=30, down=90)
    (row,) = table.snapshot()
    assert row == FlowRow("udp", "10.0.0.2:40000", "203.0.113.2:51000", "192.0.2.80:53", "established", 30, 90,
                          age=2.5, id=1, idle=1.5, peer="alice")


def test_the_simulated_nat_gives_rows_and_every_printer_shows_the_same_cells():
    pytest.importorskip("ipywidgets")
    from vpnedu.course import SimLab
    from vpnedu.widgets import FlowTableView
    lab = SimLab()
    try:
        lab.start_server()
        lab.start_client()
        lab.app_request()
        rows = lab.flows()
        assert rows and all(isinstance(r, FlowRow) for r in rows)
        udp = next(r for r in rows if r.proto == "udp")
        text = report.format_flows({"forwarding": "nat", "flows": [r.to_dict() for r in rows]})
        lines = text.splitlines()
        assert lines[0] == f"flows: {len(rows)} via nat (the kernel's conntrack entries)"
        assert lines[1].split() == ["proto", "client", "server", "end", "destination", "state", "up", "down", "age"]
        cells = report.flow_cells(udp)
        assert any(line.split() == " ".join(cells).split() for line in lines[2:]), text
        view = FlowTableView(rows)
        assert "".join(f"<td>{c}</td>" for c in cells) in view.value
        assert report.flow_line(udp) in view.as_text()
        st = lab.status("client")
        status = report.format_status(st)
        assert status.startswith(f"interface: {st['interface']} (client, pid ")
        assert "latest handshake: " in status and "second" in status and "peer: " in status
    finally:
        lab.down()


def test_format_flows_says_who_keeps_the_table():
    assert report.format_flows({}) == "flows: this daemon is a client; flows are kept by the server"
    assert "forwarding is off" in report.format_flows({"forwarding": "none"})
    assert report.format_flows({"forwarding": "nat", "flows_error": "EPERM"}).endswith("conntrack table: EPERM")
    assert report.format_flows({"forwarding": "proxy", "flows": []}) == \
        "flows: 0 via proxy (the server's own connections)"


def test_a_peers_proxied_use_reads_as_wg_show_words_it():
    usage = {"client": {"socks5": {"flows": 1, "bytes_up": 1229, "bytes_down": 20 * 2**20},
                        "http-connect": {"flows": 2, "bytes_up": 0, "bytes_down": 0}}}
    assert report.proxied_line(usage["client"]) == \
        "3 flows (http-connect 2, socks5 1), 1.20 KiB received, 20.00 MiB sent"
    st = {"interface": "vpnedu0", "role": "server", "pid": 1, "public_key": "K", "listen_port": 51820,
          "addresses": ["10.0.0.1/24"], "suite": "wireguard", "forwarding": "nat", "flows": [],
          "proxy_usage": usage,
          "peers": [{"public_key": "P", "name": "client", "label": "client", "allowed_ips": ["10.0.0.2/32"],
                     "latest_handshake": None, "transfer_rx": 0, "transfer_tx": 0, "proxied": usage["client"]}]}
    assert "  proxied: 3 flows (http-connect 2, socks5 1), 1.20 KiB received, 20.00 MiB sent" in \
        report.format_status(st).splitlines()
    table = report.format_flows(st).splitlines()
    assert table[0] == "flows: 0 via nat (the kernel's conntrack entries)"
    rows = [FlowRow("tcp", "10.0.0.2:1", "203.0.113.2:1", "192.0.2.80:80", "established", 1, 2).to_dict(),
            FlowRow("socks5", "10.0.0.2:2", "203.0.113.2:2", "192.0.2.80:80", "established", 1, 2).to_dict()]
    assert report.format_flows({**st, "flows": rows}).splitlines()[0] == \
        "flows: 1 via nat (the kernel's conntrack entries), 1 of the server's own services"
    assert table[-3].split() == ["peer", "proto", "flows", "up", "down"]
    assert table[-1].split() == ["client", "socks5", "1", "1.20", "KiB", "20.00", "MiB"]


def test_the_pieces():
    assert [report.human_bytes(n) for n in (0, 1023, 1536, 3 * 2**20)] == ["0 B", "1023 B", "1.50 KiB", "3.00 MiB"]
    assert report.ago(None) == "never" and report.ago(100.0, now=101.0) == "1 second ago"
    assert report.ago(0, now=5) == "never" and report.ago(100.0, now=400.0) == "5 minutes ago"
    assert report.text_table([("a", "bbb"), ("cc", "d")], ("x", "y")) == ["x   y", "a   bbb", "cc  d"]
    assert report.text_table([]) == []
