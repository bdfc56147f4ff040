"""The simulated lab's four hosts: the namespace lab's topology, in this process.

The same hosts and the same addresses as the real namespace lab (:mod:`vpnedu.netns_lab.topology`,
from which the addresses come)::

     client 198.51.100.2 --- internet (198.51.100.1 | 203.0.113.1 | 192.0.2.1) --- server 203.0.113.2
                                                 |
                                        app 192.0.2.80 (answers ping and UDP, logs who asked)

and IPv6 on every link, as there: the client 2001:db8:c::2, the server 2001:db8:5::2, the app
2001:db8:a::80, the router ::1 on each.

The app host's UDP services stand in for the real lab's HTTP server: ``whoami``
(:data:`APP_UDP_PORT`) answers with the address that asked and logs it; ``echo``
(:data:`ECHO_PORT`, RFC 862) sends every datagram back (the throughput test uses it).
"""

from __future__ import annotations

from typing import Callable

from ..netns_lab.topology import (APP_ADDRESS, APP_ADDRESS6, APP_NET, APP_NET6, CLIENT_NET, CLIENT_NET6, SERVER_NET,
                                  SERVER_NET6, SERVER_PUBLIC, SERVER_PUBLIC6)
from .host import SimHost
from .internet import SimInternet

__all__ = ["APP_ADDRESS", "APP_ADDRESS6", "APP_NET", "APP_UDP_PORT", "CLIENT_NET", "ECHO_PORT", "SERVER_NET",
           "SERVER_PUBLIC", "SERVER_PUBLIC6", "build_hosts"]

APP_UDP_PORT = 8080
ECHO_PORT = 7


def build_hosts(internet: SimInternet, clock: Callable[[], float]) -> dict[str, SimHost]:
    """The client, the router "internet", the server and the app host, cabled to ``internet``:
    addresses, default routes, the router's forwarding and the app's services."""
    hosts = {}
    inet = hosts["internet"] = SimHost("internet", internet, clock)
    for dev, addr, addr6 in (("br0", f"{CLIENT_NET}.1/24", f"{CLIENT_NET6}::1/64"),
                             ("s0", f"{SERVER_NET}.1/24", f"{SERVER_NET6}::1/64"),
                             ("a0", f"{APP_NET}.1/24", f"{APP_NET6}::1/64")):
        inet.add_address(dev, addr)
        inet.add_address(dev, addr6)
    inet.forwarding = True
    for name, addr, gw, addr6, gw6 in (
            ("client", f"{CLIENT_NET}.2/24", f"{CLIENT_NET}.1", f"{CLIENT_NET6}::2/64", f"{CLIENT_NET6}::1"),
            ("server", f"{SERVER_PUBLIC}/24", f"{SERVER_NET}.1", f"{SERVER_PUBLIC6}/64", f"{SERVER_NET6}::1"),
            ("app", f"{APP_ADDRESS}/24", f"{APP_NET}.1", f"{APP_ADDRESS6}/64", f"{APP_NET6}::1")):
        h = hosts[name] = SimHost(name, internet, clock)
        h.add_address("eth0", addr)
        h.add_address("eth0", addr6)
        h.add_route("default", gw, "eth0")
        h.add_route("::/0", gw6, "eth0")
    app = hosts["app"]

    def answer(payload: bytes, src: tuple[str, int]) -> bytes:
        app.app_log.append(f"{src[0]} UDP {payload.decode(errors='replace')}")
        return f"hello from the app server; your address is {src[0]}".encode()
    app.udp_services[APP_UDP_PORT] = answer
    app.udp_services[ECHO_PORT] = lambda payload, src: payload
    return hosts
