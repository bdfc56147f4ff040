"""The VPN server: many clients, cryptokey routing, and forwarding to the internet.

On top of what every node does, the server

* listens on a fixed UDP port (``ListenPort``, 51820 by default) so clients can find it;
* routes between clients: a packet from 10.0.0.2 to 10.0.0.3 comes out of the
  tunnel, goes back into the kernel, which routes it to the TUN device again, and
  the core encrypts it for the peer whose AllowedIPs hold 10.0.0.3;
* forwards clients' traffic to the outside world under its own address:
  ``net.ipv4.ip_forward = 1`` plus an nftables masquerade rule (``--forwarding nat``).
"""

from __future__ import annotations

from ..config import DEFAULT_PORT
from ..net import nat, sysctl
from .base import Node

FORWARDING_MODES = ("nat", "none")


class Server(Node):
    role = "server"

    def __init__(self, cfg, *, forwarding: str = "nat", **kw):
        if cfg.interface.listen_port is None:
            cfg.interface.listen_port = DEFAULT_PORT
        super().__init__(cfg, **kw)
        self.forwarding = forwarding

    def setup_role(self) -> None:
        if self.forwarding == "none":
            return
        old = sysctl.set_value(self.journal, "net.ipv4.ip_forward", "1")
        if old != "1":
            self.changes.append("enabled IPv4 forwarding (net.ipv4.ip_forward = 1)")
        for a in self.cfg.interface.addresses:
            if a.version == 4:
                text = nat.install_masquerade(self.journal, str(a.network), self.ifname)
                self.changes.append(f"added nftables table {nat.table_name(self.ifname)}: masquerade "
                                    f"{a.network} leaving any interface but {self.ifname}")
                self.events.emit("nat.added", None, table=nat.table_name(self.ifname), subnet=str(a.network),
                                 ruleset=text)
