"""One row of the server's flow table: a forwarded conversation, whoever keeps it.

The server forwards a tunnel client's traffic to the outside in one of two ways, and
the simulation has a third keeper of the same table:

* ``nat`` -- the kernel rewrites each packet's source and remembers the flow in its
  connection tracking (:mod:`vpnedu.net.conntrack` reads it);
* ``proxy`` -- the server's own process ends each client connection and opens one of its
  own (:mod:`vpnedu.proxy.flows` keeps the live flows);
* the simulated server's NAT (:mod:`vpnedu.sim.host`), which does what the kernel's does.

All three report a flow as a :class:`FlowRow`, and everything that shows flows
(``vpnedu status --flows``, ``vpnedu lab demo``, the notebook's flow table) takes rows,
so the two modes read the same.  A row has three addresses::

    client 10.0.0.2:40312  ==tunnel==>  server end 203.0.113.2:51044  ---->  destination 192.0.2.80:80

The *server end* is what the destination sees: with NAT the server's public address
with the port conntrack rewrote, with the proxy a socket of the server's own.  (Its key is
``proxy`` in the JSON, as in ``vpnedu status --json``, in both modes.)

Over the control socket a row travels as a JSON object: :meth:`FlowRow.to_dict` and
:meth:`FlowRow.from_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import VpneduError


def endpoint_text(address: str, port: int) -> str:
    """``address:port`` as an URL writes it (RFC 3986, section 3.2.2): an IPv6 address in
    brackets, ``[2001:db8::2]:443``, since its own colons would make the port ambiguous."""
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


@dataclass
class FlowRow:
    """A forwarded flow: its three addresses (``"ip:port"``; for ICMP the "port" is the echo
    identifier), its state and the bytes relayed each way (``bytes_up``: client to destination)."""

    proto: str                     #: "tcp", "udp" or "icmp"
    client: str                    #: the client's address inside the tunnel
    proxy: str                     #: the server's end: the address the destination sees
    destination: str               #: where the client is talking to
    state: str = "active"          #: e.g. "established", "closed (reset)"; NAT: conntrack's state
    bytes_up: int = 0
    bytes_down: int = 0
    age: float | None = None       #: seconds since the flow opened (None: not known)
    id: int | None = None          #: the keeper's number for it (proxy flow id, conntrack id)
    idle: float | None = None      #: seconds since its last packet (proxy)
    peer: str | None = None        #: the tunnel peer it belongs to (proxy)
    rtt_ms: float | None = None    #: ICMP through the proxy: the last round trip to the destination
    timeout: int | None = None     #: NAT: seconds until conntrack forgets the flow

    def key(self) -> tuple[str, str, str]:
        """What identifies the flow across updates: protocol, client and destination."""
        return self.proto, self.client, self.destination

    def to_dict(self) -> dict:
        """The row as JSON-friendly values (every field; unknown ones are ``None``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FlowRow":
        """A row from :meth:`to_dict`'s form (a daemon's ``status`` ``flows`` list).  Keys this
        version does not know are ignored (a newer daemon may send more); a missing address or
        protocol is an error that names it."""
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("proto", "client", "proxy", "destination") if k not in d]
        if missing:
            raise VpneduError(f"a flow-table row lacks {', '.join(missing)}: {d!r}",
                              "the daemon and this program are different vpnedu versions; update both")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_event(cls, kind: str, fields: dict, peer: str | None = None) -> "FlowRow":
        """The row a ``proxy.flow.opened`` / ``proxy.flow.closed`` event describes (``fields``:
        the event's): "open", or "closed" with its byte counts and age -- and how it ended when
        that was not both ends finishing ("closed (reset)", "closed (idle)" ...)."""
        row = cls(fields.get("proto") or "", fields.get("client") or "", fields.get("proxy") or "",
                  fields.get("destination") or "", state="open", id=fields.get("id"), peer=peer)
        if kind == "proxy.flow.closed":
            reason = fields.get("reason")
            row.state = f"closed ({reason})" if reason and reason != "closed" else "closed"
            row.bytes_up, row.bytes_down = fields.get("bytes_up", 0), fields.get("bytes_down", 0)
            row.age = fields.get("age")
        return row
