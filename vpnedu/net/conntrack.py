"""The kernel's flow table in ``nat`` mode: connection tracking (conntrack) over netlink.

With masquerade, the kernel keeps one *conntrack entry* per flow: the original
direction (client 10.0.0.2:40312 -> 192.0.2.80:80) and the reply direction
as rewritten by NAT (192.0.2.80:80 -> 203.0.113.2:40312).  The reply tuple's
destination is the server's own end of the flow -- the same place the proxy's
own socket has in ``proxy`` mode -- so both modes fill the same flow table, with
:class:`~vpnedu.flows.FlowRow` rows.

Byte counts need ``net.netfilter.nf_conntrack_acct = 1`` and ages need
``nf_conntrack_timestamp = 1``; the server turns both on (journaled) in nat mode.

pyroute2's netlink calls run an event loop of their own, so call :func:`flows`
from a thread when an asyncio loop is running.
"""

from __future__ import annotations

import ipaddress
import socket
import time

from pyroute2 import Conntrack

from ..flows import FlowRow, endpoint_text

_PROTO = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp",
          socket.IPPROTO_ICMPV6: "icmpv6"}
#: enum tcp_conntrack in linux/netfilter/nf_conntrack_tcp.h
TCP_STATES = ("none", "syn-sent", "syn-recv", "established", "fin-wait", "close-wait", "last-ack",
              "time-wait", "close", "syn-sent2")


def _tuple(attr) -> tuple[str, int, str, int, int] | None:
    ip = attr.get_attr("CTA_TUPLE_IP")
    pr = attr.get_attr("CTA_TUPLE_PROTO")
    if ip is None or pr is None:
        return None
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
    proto = pr.get_attr("CTA_PROTO_NUM")
    if proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        sport = pr.get_attr("CTA_PROTO_ICMP_ID") or pr.get_attr("CTA_PROTO_ICMPV6_ID") or 0
        dport = 0
    else:
        sport, dport = pr.get_attr("CTA_PROTO_SRC_PORT") or 0, pr.get_attr("CTA_PROTO_DST_PORT") or 0
    return src, sport, dst, dport, proto


def _bytes(msg, name: str) -> int:
    c = msg.get_attr(name)
    return int(c.get_attr("CTA_COUNTERS_BYTES") or 0) if c is not None else 0


def flows(subnet: str) -> list[FlowRow]:
    """Conntrack entries whose original source lies in ``subnet``, as flow-table rows.  The
    kernel keeps a table per family and dumps the one the request names (``nfgen_family``):
    AF_INET6 for an IPv6 subnet."""
    net = ipaddress.ip_network(subnet, strict=False)
    now_ns = time.clock_gettime_ns(time.CLOCK_REALTIME)
    out = []
    with Conntrack(nfgen_family=socket.AF_INET6 if net.version == 6 else socket.AF_INET) as ct:
        for msg in ct.dump():
            orig, reply = msg.get_attr("CTA_TUPLE_ORIG"), msg.get_attr("CTA_TUPLE_REPLY")
            o = _tuple(orig) if orig is not None else None
            r = _tuple(reply) if reply is not None else None
            if o is None or r is None or o[0] is None or ipaddress.ip_address(o[0]) not in net:
                continue
            if o[4] not in _PROTO or ipaddress.ip_address(o[2]) in net:
                continue  # client-to-client traffic is not forwarded to the outside
            state = "active"
            info = msg.get_attr("CTA_PROTOINFO")
            if info is not None and info.get_attr("CTA_PROTOINFO_TCP") is not None:
                st = info.get_attr("CTA_PROTOINFO_TCP").get_attr("CTA_PROTOINFO_TCP_STATE")
                if st is not None and st < len(TCP_STATES):
                    state = TCP_STATES[st]
            age = None
            ts = msg.get_attr("CTA_TIMESTAMP")
            if ts is not None and ts.get_attr("CTA_TIMESTAMP_START"):
                age = round((now_ns - ts.get_attr("CTA_TIMESTAMP_START")) / 1e9, 3)
            proxy_port = r[3] if o[4] not in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) else r[1]
            out.append(FlowRow(_PROTO[o[4]], endpoint_text(o[0], o[1]), endpoint_text(r[2], proxy_port),
                                   endpoint_text(o[2], o[3]), state,
                               bytes_up=_bytes(msg, "CTA_COUNTERS_ORIG"),
                               bytes_down=_bytes(msg, "CTA_COUNTERS_REPLY"),
                               age=age, id=msg.get_attr("CTA_ID"), timeout=msg.get_attr("CTA_TIMEOUT")))
    return out
