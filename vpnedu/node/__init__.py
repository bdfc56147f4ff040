"""The daemons: :class:`~vpnedu.node.server.Server` and :class:`~vpnedu.node.client.Client`,
and the control socket through which other programs watch them."""
