"""The notebook widgets, fed by real events (a simulated lab's daemons, or a real EventBus)."""

import re
import struct
import time

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from vpnedu.events import EventBus  # noqa: E402
from vpnedu.flows import FlowRow  # noqa: E402
from vpnedu.course import SimLab  # noqa: E402
from vpnedu.widgets import (ControlPanel, CountersView, EventLogView, FlowTableView, HandshakeLadder,  # noqa: E402
                            RouteTableView, ThroughputPlot)


@pytest.fixture
def lab():
    lab = SimLab()
    yield lab
    lab.down()


def test_ladder_shows_every_field_of_a_real_handshake(lab):
    ladder = HandshakeLadder(lab.client_events, lab.server_events)
    assert not ladder.completed and "waiting for the handshake" in ladder.value
    lab.start_server()
    lab.start_client()
    assert ladder.completed and ladder.confirmed
    ini, resp = ladder.messages
    status = lab.status("client")["peers"][0]["session"]
    assert ini.fields["sender_index"] == status["local_index"]
    assert resp.fields["sender_index"] == status["remote_index"]
    assert resp.fields["receiver_index"] == ini.fields["sender_index"]
    for name in ("ephemeral", "encrypted_static", "encrypted_timestamp", "timestamp", "mac1", "mac2", "static"):
        assert name in ini.fields and f">{name}</tspan>" in ladder.value
    assert ini.fields["mac2"] == "0" * 32  # no cookie: the server is not under load
    assert "encrypted_nothing" in ladder.value and "HANDSHAKE COMPLETE" in ladder.value
    assert ladder.value.startswith("<svg")


def test_ladder_pairs_events_arriving_in_any_order():
    """Two daemons' event streams arrive on separate threads: the responder's may come first."""
    ini, resp = EventBus(), EventBus()
    ladder = HandshakeLadder(ini, resp)
    resp.emit("handshake.initiation.received", "c", sender_index=7, ephemeral="E", static="S", timestamp=1.0,
              mac1="m", mac2="0")
    resp.emit("handshake.response.sent", "c", sender_index=9, receiver_index=7, ephemeral="F", mac1="n", mac2="0")
    resp.emit("session.established", "c", role="responder", local_index=9, remote_index=7)
    ini.emit("handshake.initiation.sent", "s", sender_index=7, ephemeral="E", encrypted_static="aa",
             encrypted_timestamp="bb", timestamp=1.0, mac1="m", mac2="0")
    assert not ladder.completed
    ini.emit("handshake.response.received", "s", sender_index=9, receiver_index=7, ephemeral="F", mac1="n", mac2="0")
    ini.emit("session.established", "s", role="initiator", local_index=7, remote_index=9)
    assert ladder.completed and len(ladder.messages) == 2
    resp.emit("session.confirmed", "c", local_index=9)
    assert ladder.confirmed


def test_the_field_table_keeps_wire_order_whichever_side_spoke_first():
    """The initiation's fields come from both daemons' events; the table lists them in the
    order they sit in the message, not in the order the threads delivered them."""
    def emit_initiation(bus_order):
        ini, resp = EventBus(), EventBus()
        ladder = HandshakeLadder(ini, resp)
        for side in bus_order:
            if side == "resp":
                resp.emit("handshake.initiation.received", "c", sender_index=7, ephemeral="E", static="S",
                          timestamp=1.0, mac1="m", mac2="0")
            else:
                ini.emit("handshake.initiation.sent", "s", sender_index=7, ephemeral="E", encrypted_static="aa",
                         encrypted_timestamp="bb", timestamp=1.0, mac1="m", mac2="0")
        return [row[1] for row in ladder.field_table().rows]
    first = emit_initiation(["resp", "ini"])
    assert first == emit_initiation(["ini", "resp"])
    assert first == ["sender_index", "ephemeral", "encrypted_static", "static", "encrypted_timestamp",
                     "timestamp", "mac1", "mac2"]


def test_event_log_filters_and_stays_bounded(lab):
    log = EventLogView(lab.client_events, lab.server_events, names=("client", "server"), limit=50)
    lab.start_server()
    lab.start_client()
    lab.tamper_next()
    lab.ping("client", "10.0.0.1", count=20)
    log.refresh()
    assert len(log.events) == 50  # bounded
    log.kind_filter.value = "packet.dropped"
    lab.tamper_next()
    log.refresh()
    shown = log.visible()
    assert shown and all(e.kind == "packet.dropped" for _, e in shown)
    assert "bad-mac" in log.table.value and "vpnedu-drop" in log.table.value
    log.kind_filter.value = ""
    log.layer_filter.value = "data"
    assert all(e.layer == "data" for _, e in log.visible())


def test_event_log_throttles_but_shows_the_last_event():
    bus = EventBus()
    log = EventLogView(bus)
    for i in range(200):
        bus.emit("timer.keepalive", "p", mode=f"m{i}")
    time.sleep(0.6)  # the pending render fires
    assert "m199" in log.table.value


def test_counters_flatten_status_and_show_drops(lab):
    lab.start_server()
    lab.start_client()
    lab.tamper_next()
    view = CountersView(lambda: lab.status("server"), title="server")
    assert view.values["dropped.bad-mac"] == 1 and view.values["client.packets_rx"] >= 1
    assert "dropped.bad-mac" in view.value
    lab.stop_server()
    view.refresh()
    assert "no vpnedu daemon runs" in view.value


def test_route_table_highlights_the_change(lab):
    lab.start_server()
    before = lab.routes("client")
    lab.start_client()
    view = RouteTableView(before, lab.routes("client"))
    # A full tunnel leaves the main table alone (policy routing) but for the tunnel's subnet.
    assert view.added == ["10.0.0.0/24 dev vpnedu0"] and not view.removed
    assert view.value.count("<tr class='vpnedu-added'>") == len(view.added) == 1
    view.update(lab.routes("client"), before)
    assert view.removed == ["10.0.0.0/24 dev vpnedu0"]


def test_flow_table_from_status_list_and_from_proxy_events():
    bus = EventBus()
    table = FlowTableView([], bus=bus)
    assert "no flows" in table.value
    common = dict(proto="tcp", client="10.0.0.2:40000", proxy="203.0.113.2:51000", destination="192.0.2.80:80")
    bus.emit("proxy.flow.opened", "alice", **common)
    assert len(table.flows) == 1 and "203.0.113.2:51000" in table.value and ">open<" in table.value
    bus.emit("proxy.flow.closed", "alice", **common, bytes_up=120, bytes_down=4567, age=1.5, reason="fin")
    row = next(iter(table.flows.values()))
    assert row.bytes_down == 4567 and row.state == "closed (fin)" and row.peer == "alice"
    assert "4.46 KiB" in table.value   # bytes written as 'vpnedu status --flows' writes them
    table.update([FlowRow(**{**common, "proto": "udp"}, state="established", bytes_up=1, bytes_down=2, age=0.3)])
    assert [f.proto for f in table.flows.values()] == ["udp"]


def test_throughput_plot_updates_in_place_with_bounded_memory(lab):
    lab.start_server()
    lab.start_client()
    plot = ThroughputPlot(maxlen=5, interval=0.2)
    first = plot.image.value
    stats = plot.follow(lab.traffic("vpnedu", seconds=1.5, interval=0.1), "vpnedu")
    assert stats["mbit_up"] > 0 and stats["mbit_down"] > 0
    assert len(plot.series["vpnedu"]) == 5  # bounded: only the latest samples
    assert plot.draws >= 4 and plot.image.value != first
    assert plot.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", plot.image.value[16:24]) == (720, 378)  # one figure, same size every time


def test_control_panel_buttons_start_and_stop_the_daemons(lab):
    panel = ControlPanel(lab)
    assert "server: stopped, client: stopped" in panel.status.value
    panel.buttons["start client"].click()
    assert "start the server first" in panel.status.value
    panel.buttons["start server"].click()
    panel.buttons["start client"].click()
    assert "server: running, client: running" in panel.status.value
    assert lab.ping("client", "10.0.0.1").ok
    panel.buttons["stop client"].click()
    panel.buttons["stop server"].click()
    assert "server: stopped, client: stopped" in panel.status.value


def test_flow_table_heads_the_server_end_as_such_and_says_closed_once():
    """NAT has no proxy: the column is the server's end of the flow (what the destination sees), as
    'vpnedu status --flows' heads it.  A flow that ended normally reads "closed", not "closed (closed)"."""
    bus = EventBus()
    table = FlowTableView([], bus=bus)
    assert "<th>server end</th>" in table.value and "<th>proxy</th>" not in table.value
    common = dict(proto="tcp", client="10.0.0.2:40000", proxy="203.0.113.2:51000", destination="192.0.2.80:80")
    bus.emit("proxy.flow.opened", "alice", **common)
    bus.emit("proxy.flow.closed", "alice", **common, bytes_up=1, bytes_down=2, age=0.1, reason="closed")
    assert next(iter(table.flows.values())).state == "closed" and "closed (closed)" not in table.as_text()
    bus.emit("proxy.flow.closed", "alice", **common, bytes_up=1, bytes_down=2, age=0.1, reason="reset")
    assert next(iter(table.flows.values())).state == "closed (reset)"


def test_events_name_their_peer_and_write_indices_in_hex(lab):
    """The server's drop of the client's tampered packet reads as the server's, about peer client;
    every view writes a session index the same way (hex, as vpnedu handshake-demo does)."""
    log = EventLogView(lab.client_events, lab.server_events, names=("client", "server"))
    ladder = HandshakeLadder(lab.client_events, lab.server_events)
    lab.start_server()
    lab.start_client()
    ev = lab.tamper_next()
    text = str(ev)
    assert "packet.dropped peer=client reason=bad-mac" in text and "[client]" not in text, text
    index = ladder.messages[0].fields["sender_index"]
    log.refresh()
    for view in (log.table.value, ladder.value, ladder.field_table()._repr_html_(), repr(ladder.field_table())):
        assert f"{index:#010x}" in view
    assert f"sender_index={index:#010x}" in log.table.value
    established = next(e for _, e in log.events if e.kind == "session.established")
    assert re.search(r"local_index=0x[0-9a-f]{8} remote_index=0x[0-9a-f]{8}", str(established)), str(established)


def test_throughput_plot_keeps_up_and_down_apart_and_the_legend_off_the_curves():
    """Equal rates each way (an echo) once drew one line over the other, under a legend inside the axes."""
    plot = ThroughputPlot(title="client link: Mbit/s each way")
    for i in range(6):
        plot.add("vpnedu", i * 0.5, i * 125_000, i * 125_000)   # 2 Mbit/s up and exactly the same down
    plot.draw()
    plot.figure.canvas.draw()
    up, down = plot.ax_up, plot.ax_down
    assert [line.get_label() for line in up.get_lines()] == [line.get_label() for line in down.get_lines()] == ["vpnedu"]
    assert up.get_lines()[0].get_ydata()[-1] == down.get_lines()[0].get_ydata()[-1] == 2.0
    assert up.get_ylabel() == down.get_ylabel() == "Mbit/s" and "Mbit/s" in plot.figure.get_suptitle()
    legend = plot.legend.get_window_extent()
    assert not legend.overlaps(up.get_window_extent()) and not legend.overlaps(down.get_window_extent())
