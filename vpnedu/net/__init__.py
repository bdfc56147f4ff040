"""IO adapters for a real Linux host: TUN devices, addresses, routes, NAT, sysctls.

Every change these modules make to the host is first written to a
:class:`~vpnedu.net.journal.Journal`, so that it is undone on exit, on Ctrl-C, on
SIGTERM, and -- after a crash or ``kill -9`` -- on the next start.
"""
