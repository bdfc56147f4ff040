"""The relay of a daemon's events into a notebook (vpnedu.course.DaemonFeed, widgets.daemon_bus).

It must keep trying (a daemon still starting, a daemon restarted) and, while it cannot reach the
daemon, say so in the widgets -- an empty event log or flow table must never stand for "nothing
happened" when the truth is "nothing arrived".
"""

import time

import pytest

pytest.importorskip("ipywidgets")

from vpnedu.events import EventLog  # noqa: E402
from vpnedu.node import control  # noqa: E402
from vpnedu.widgets import EventLogView, FlowTableView, daemon_bus  # noqa: E402


def _until(pred, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_feed_that_cannot_connect_says_so_in_the_widgets(tmp_path):
    path = tmp_path / "vpnedu0@1.sock"
    bus = daemon_bus(path)
    log = EventLogView(bus, names=("server",), subscribe=["handshake", "session"])
    flows = FlowTableView(bus=bus, title="server's proxy flow table")
    try:
        _until(lambda: bus.feed.problem, what="the feed to give up its first attempt")
        log.refresh()
        assert "not receiving the daemon&#x27;s events" in log.table.value, log.table.value
        assert "does not exist" in log.table.value
        text = flows.as_text()
        assert text.startswith(f"(not receiving the daemon's events ({path}): control socket {path} does not exist")
        assert "retrying" in text and "(no flows)" in text
        _until(lambda: "not receiving" in flows.value, what="the flow table's notice")
        assert bus.feed.thread.is_alive()   # still trying, not dead
    finally:
        bus.feed.close()
    assert not bus.feed.thread.is_alive() and bus.feed.notice() == ""


@pytest.mark.root
def test_the_feed_waits_for_the_daemon_and_follows_it_across_a_restart(lab_factory):
    """Started before the daemon, the feed connects when it comes up (and gets the handshake from
    its history); when the daemon stops, the widgets say so; when it is back, so are its events,
    each relayed once."""
    from tests.lablib import provision, start_client, start_server, stop
    lab = lab_factory()
    provision(lab)
    path = control.netns_socket_path(lab.ns("client"))
    bus = daemon_bus(path)
    got = EventLog(bus, kinds=["session.established", "feed"])
    view = EventLogView(bus, names=("client",), subscribe="session")
    server = client = None
    try:
        _until(lambda: bus.feed.problem, what="the feed to find no daemon")
        server = start_server(lab, "--forwarding", "none")
        client = start_client(lab)
        assert bus.feed.wait_for("session.established", 0, timeout=30)
        assert bus.feed.problem is None
        stop(client)
        client = None
        _until(lambda: bus.feed.problem, what="the feed to notice the stop")
        view.refresh()
        assert "not receiving the daemon&#x27;s events" in view.table.value
        client = start_client(lab)
        assert bus.feed.wait_for("session.established", 1, timeout=30)
        view.refresh()
        assert "not receiving" not in view.table.value
        kinds = got.kinds()
        assert kinds.count("session.established") == 2, kinds      # once each: no history repeated
        # (the first feed.lost may come before this log subscribed; feed.connected only follows one)
        first = kinds.index("session.established")
        assert "feed.connected" in kinds[:first] and "feed.lost" in kinds[first:], kinds
        assert "feed.connected" in kinds[kinds.index("feed.lost", first):], kinds
    finally:
        bus.feed.close()
        for p in (client, server):
            if p is not None:
                stop(p)
