"""Jupyter widgets that show a running VPN: events, counters, the handshake, routes, flows, throughput.

Every widget watches an :class:`~vpnedu.events.EventBus`.  In simulated mode
that is the bus the simulated daemons emit into; for a real daemon,
:func:`daemon_bus` relays its control socket's event stream into a local bus
(a background thread), so the same widget works for both.

=====================  ===========================================================
:class:`EventLogView`   the live event log, filtered by kind prefix and layer
:class:`CountersView`   counters (packets, bytes, drops by reason), refreshed on demand
:class:`HandshakeLadder` the handshake as a ladder diagram, every field of every message
:class:`RouteTableView` a routing table before/after, the change highlighted
:class:`FlowTableView`  the server's NAT/proxy flow table
:class:`ThroughputPlot` bytes/s each way, a bounded window, redrawn in place ~2 times a second
:class:`ControlPanel`   start/stop buttons for the server and the client
=====================  ===========================================================
"""

from .controls import ControlPanel
from .flows import FlowTableView
from .ladder import HandshakeLadder
from .live import CountersView, EventLogView, daemon_bus
from .plot import ThroughputPlot
from .routes import RouteTableView

__all__ = ["ControlPanel", "CountersView", "EventLogView", "FlowTableView", "HandshakeLadder", "RouteTableView",
           "ThroughputPlot", "daemon_bus"]
