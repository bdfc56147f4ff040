"""Exercise: the client's route change, and its undo.

When the tunnel is up, the client must make the kernel hand it the traffic for
the tunnel -- and only that (see :mod:`vpnedu.net.routes` and
:meth:`vpnedu.node.client.Client.plan_routes`):

* **full tunnel** (the server's AllowedIPs hold ``0.0.0.0/0``): first a host
  route to the server's public address via the *old* path (else the encrypted
  packets would be routed into the tunnel they make up), then ``0.0.0.0/1`` and
  ``128.0.0.0/1`` via the server's tunnel address.  Each half is more specific
  than the default route, so they win without deleting it -- and the old
  default takes over again the moment they are removed (wg-quick's trick for
  hosts without policy routing);
* **split tunnel**: one route per IPv4 prefix of AllowedIPs, except those
  already inside the client's own tunnel subnet (the address on the TUN
  device brings that route with it).

The undo removes what was added, newest first, as vpnedu's journal does, so a
crash half-way through can always be unwound.

This is the classic method, which needs nothing but plain routes.  vpnedu's own client
now does a full tunnel with policy routing instead, as wg-quick does (its own table, a
firewall mark and two ``ip rule``, for IPv4 and IPv6; see :mod:`vpnedu.net.routes`), so the
check compares with :func:`classic_plan`, the reference this exercise keeps.

The student writes ``plan_routes(cfg, route_to)`` and ``undo_routes(plan)``.
The check compares the plan with :func:`classic_plan` on hidden
configs, applies plan and undo to a simulated host's routing table (lookups must
go the right way, and the table must come back exactly), and finally runs the
simulated VPN with the student's planner inside the real client.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
from dataclasses import dataclass

from ..errors import VpneduError
from ..net.routes import FULL_TUNNEL_HALVES, Route
from .checking import Case, CaseFailed, describe_exception, expect

TITLE = "client routes"
PARTS = ("plan", "undo")
HINT_FULL = ("full tunnel: (endpoint/32, old gateway, old device), then ('0.0.0.0/1', gateway, ifname) and "
             "('128.0.0.0/1', gateway, ifname) -- in that order")
HINT_SPLIT = "split tunnel: one (prefix, gateway, ifname) per IPv4 AllowedIPs prefix outside your own subnet"


@dataclass(frozen=True)
class RouteConfig:
    """What the route planner needs from a client's config.

    ``allowed_ips``: the server's AllowedIPs (IPv4 and IPv6 networks);
    ``endpoint``: the server's public address; ``gateway``: the server's tunnel
    address (the first host of the tunnel subnet); ``ifname``: the TUN device;
    ``addresses``: the client's own tunnel addresses (``Address = 10.0.0.2/24``).
    """

    allowed_ips: tuple
    endpoint: str
    gateway: str | None
    ifname: str = "vpnedu0"
    addresses: tuple = (ipaddress.ip_interface("10.0.0.2/24"),)

    @classmethod
    def make(cls, allowed: str, endpoint: str = "203.0.113.2", gateway: str | None = "10.0.0.1",
             ifname: str = "vpnedu0", addresses: str = "10.0.0.2/24") -> "RouteConfig":
        return cls(tuple(ipaddress.ip_network(a.strip()) for a in allowed.split(",")), endpoint, gateway,
                   ifname, tuple(ipaddress.ip_interface(a.strip()) for a in addresses.split(",")))

    @classmethod
    def of_client(cls, client) -> "RouteConfig":
        return cls(tuple(client.server.allowed_ips), client.server.endpoint[0], client.gateway(),
                   client.ifname, tuple(client.cfg.interface.addresses))


def classic_plan(cfg: RouteConfig, route_to) -> list[tuple[str, str | None, str]]:
    """The reference answer: the full tunnel by ``0.0.0.0/1`` + ``128.0.0.0/1`` and a host route
    to the endpoint (IPv4 only), the split tunnel as one route per prefix outside the client's
    own subnet.  :meth:`Client.plan_routes` decides *what* goes into the tunnel the same way;
    only *how* a full tunnel is installed differs (policy routing there)."""
    v4 = [n for n in cfg.allowed_ips if n.version == 4]
    if any(n.prefixlen == 0 for n in v4):
        via = route_to(cfg.endpoint)
        if via.dev == cfg.ifname:
            raise VpneduError("the server's endpoint is routed into the tunnel itself",
                              "remove stale vpnedu routes with 'vpnedu cleanup'")
        return [(f"{cfg.endpoint}/32", via.gateway, via.dev),
                *((half, cfg.gateway, cfg.ifname) for half in FULL_TUNNEL_HALVES)]
    own = [a.network for a in cfg.addresses if a.version == 4]
    return [(str(n), cfg.gateway, cfg.ifname) for n in v4 if not any(n.subnet_of(o) for o in own)]


def real_plan(cfg: RouteConfig, route_to) -> list[tuple[str, str | None, str]]:
    """What the check expects (:func:`classic_plan`)."""
    return classic_plan(cfg, route_to)


def client_host(ifname: str = "vpnedu0", addresses=("10.0.0.2/24",), gateway: str = "198.51.100.1",
                dev: str = "eth0", address: str = "198.51.100.2/24", extra=()):
    """A simulated host like the lab's client, with its TUN device already up."""
    from ..sim.host import SimHost
    from ..sim.internet import SimInternet
    h = SimHost("client", SimInternet())
    h.add_address(dev, address)
    h.add_route("default", gateway, dev)
    for a in addresses:
        h.add_address(ifname, a)
    for dst, gw, d in extra:
        h.add_route(dst, gw, d)
    return h


def _normal(routes) -> list[tuple[str, str | None, str]]:
    out = []
    for r in routes:
        expect(isinstance(r, (tuple, list)) and len(r) == 3,
               f"each route should be a (destination, gateway, device) tuple, got {r!r}")
        dst, gw, dev = r
        out.append((str(ipaddress.ip_network(str(dst), strict=False)), None if gw is None else str(gw), str(dev)))
    return out


def _route(host, dst, gw, dev) -> Route:
    net = ipaddress.ip_network(dst, strict=False)
    name = "default" if net.prefixlen == 0 else (str(net.network_address) if net.prefixlen == 32 else str(net))
    return Route(name, gw, dev)


def _compare_plan(plan, cfg: RouteConfig, host, what: str, hint: str) -> list:
    want = real_plan(cfg, host.route_to)
    got = plan(cfg, host.route_to)
    expect(isinstance(got, (list, tuple)), f"{what}: plan_routes returned {type(got).__name__}, expected a list")
    got = _normal(got)
    if sorted(got, key=str) == sorted(_normal(want), key=str) and got != _normal(want):
        raise CaseFailed(f"{what}: the right routes in the wrong order: {got}",
                         "add the host route to the endpoint first: until it exists, the halves would "
                         "send the tunnel's own packets into the tunnel")
    expect(got == _normal(want), f"{what}: your plan is {got}, expected {_normal(want)}", hint)
    return got


def _full(plan, undo):
    _compare_plan(plan, RouteConfig.make("0.0.0.0/0, ::/0"), client_host(), "the lab's full-tunnel config", HINT_FULL)


def _split(plan, undo):
    _compare_plan(plan, RouteConfig.make("10.0.0.0/24"), client_host(), "split tunnel, AllowedIPs = 10.0.0.0/24",
                  "10.0.0.0/24 is the client's own tunnel subnet: the TUN device's address already routes it")
    _compare_plan(plan, RouteConfig.make("10.0.0.0/24, 192.168.50.0/24, 172.16.0.0/12"), client_host(),
                  "split tunnel with two more prefixes", HINT_SPLIT)


def _endpoint_path(plan, undo):
    host = client_host(extra=[("203.0.113.0/24", None, "eth0")])
    _compare_plan(plan, RouteConfig.make("0.0.0.0/0"), host, "an endpoint on a directly connected network",
                  "ask route_to(endpoint) for the old path; its gateway may be None (on-link)")
    host = client_host(dev="wlan0", gateway="192.168.1.1", address="192.168.1.20/24")
    _compare_plan(plan, RouteConfig.make("0.0.0.0/0", endpoint="198.18.7.7"), host,
                  "a client on wlan0 and another endpoint", "use what route_to(endpoint) says, not fixed names")


def _into_tunnel(plan, undo):
    host = client_host(extra=[("0.0.0.0/1", "10.0.0.1", "vpnedu0"), ("128.0.0.0/1", "10.0.0.1", "vpnedu0")])
    cfg = RouteConfig.make("0.0.0.0/0")
    try:
        got = plan(cfg, host.route_to)
    except VpneduError:
        return
    except NotImplementedError:
        raise
    except Exception as e:
        raise CaseFailed(f"stale tunnel routes: {describe_exception(e)}, expected VpneduError",
                         "raise VpneduError('...', 'how to fix it') from vpnedu.errors") from None
    raise CaseFailed(f"stale tunnel routes send the endpoint into the tunnel, but your plan went ahead: {got}",
                     "if route_to(endpoint) leaves by the TUN device itself, refuse with VpneduError "
                     "(vpnedu says: remove stale vpnedu routes with 'vpnedu cleanup')")


def _ipv6(plan, undo):
    _compare_plan(plan, RouteConfig.make("0.0.0.0/0, ::/0, fd00::/64"), client_host(),
                  "AllowedIPs with IPv6 prefixes", "this client routes IPv4 only: skip IPv6 networks")
    _compare_plan(plan, RouteConfig.make("10.0.0.0/24, 192.0.2.0/24, fd00::/64"), client_host(),
                  "a split tunnel with an IPv6 prefix", "this client routes IPv4 only: skip IPv6 networks")


def _apply_and_undo(plan, undo, cfg: RouteConfig, checks: dict[str, str], what: str):
    host = client_host()
    before = host.table()
    steps = _normal(plan(cfg, host.route_to))
    for dst, gw, dev in steps:
        host.add_route(dst, gw, dev)
    for address, dev in checks.items():
        r = host.lookup(address)
        expect(r is not None and r.dev == dev, f"{what}: after your routes, {address} leaves by "
               f"{r.dev if r else 'nowhere'}, expected {dev}", HINT_FULL)
    removal = undo(list(steps))
    expect(isinstance(removal, (list, tuple)), f"undo_routes returned {type(removal).__name__}, expected a list")
    removal = _normal(removal)
    expect(sorted(removal, key=str) == sorted(steps, key=str),
           f"{what}: undo_routes({steps}) gave {removal}", "undo exactly what the plan added, nothing else")
    expect(removal == list(reversed(steps)), f"{what}: undo_routes gave {removal}: not newest first",
           "undo newest first, as vpnedu's journal does: the host route to the endpoint must be the last to go")
    for dst, gw, dev in removal:
        host.remove_route(_route(host, dst, gw, dev))
    expect(host.table() == before, f"{what}: after the undo the table is {[str(r) for r in host.table()]}, "
           f"before it was {[str(r) for r in before]}")


def _table(plan, undo):
    _apply_and_undo(plan, undo, RouteConfig.make("0.0.0.0/0"),
                    {"203.0.113.2": "eth0", "192.0.2.80": "vpnedu0", "8.8.8.8": "vpnedu0", "200.1.2.3": "vpnedu0",
                     "198.51.100.1": "eth0"}, "full tunnel")
    _apply_and_undo(plan, undo, RouteConfig.make("10.0.0.0/24, 192.168.50.0/24"),
                    {"192.168.50.9": "vpnedu0", "10.0.0.1": "vpnedu0", "192.0.2.80": "eth0"}, "split tunnel")
    _apply_and_undo(plan, undo, RouteConfig.make("10.0.0.0/24"), {"192.0.2.80": "eth0"}, "an empty plan")


@contextlib.contextmanager
def student_planner_in_lab(plan):
    """The simulated lab's client uses ``plan`` in place of
    :meth:`~vpnedu.node.client.Client.plan_routes` (its routes go into the main table)."""
    from ..course import simulated
    real = simulated.SimClient

    class StudentClient(real):
        def plan_routes(self, route_to):
            return plan(RouteConfig.of_client(self), route_to)

    simulated.SimClient = StudentClient
    try:
        yield
    finally:
        simulated.SimClient = real


def _running(plan, undo):
    from ..course.simulated import SimLab
    from ..sim.topology import APP_ADDRESS, CLIENT_NET, SERVER_PUBLIC
    lab = SimLab()
    try:
        before = lab.routes("client")
        with student_planner_in_lab(plan):
            lab.start_server()
            lab.start_client()
            ping = lab.ping("client", APP_ADDRESS, count=2)
            expect(ping.ok and lab.app_log()[-1].startswith(SERVER_PUBLIC),
                   f"full tunnel with your planner: {ping}; the app server saw {lab.app_log()[-1:]}",
                   "the app server should see the VPN server's address: the ping went through the tunnel")
            lab.stop_client()
            lab.start_client(split=True)
            ping = lab.ping("client", APP_ADDRESS, count=1)
            inner = lab.ping("client", "10.0.0.1", count=1)
            expect(ping.ok and lab.app_log()[-1].startswith(f"{CLIENT_NET}.2") and inner.ok,
                   f"split tunnel with your planner: {ping}; {inner}", HINT_SPLIT)
            lab.stop_client()
        expect(lab.routes("client") == before, "the client's table was not restored after the VPN stopped")
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


def cases() -> list[Case]:
    return [
        Case("full tunnel: the lab's config", _full, HINT_FULL),
        Case("split tunnel", _split, HINT_SPLIT),
        Case("the endpoint's old path comes from route_to", _endpoint_path, HINT_FULL),
        Case("an endpoint routed into the tunnel is refused", _into_tunnel,
             "raise VpneduError when route_to(endpoint).dev is the TUN device"),
        Case("IPv6 prefixes are not IPv4 routes", _ipv6, "ipaddress networks have a .version"),
        Case("your plan and undo on a host's routing table", _table,
             "undo_routes returns the plan's routes, newest first"),
        Case("the running VPN with your planner inside the real client", _running, HINT_FULL),
    ]
