"""The namespace lab: client, internet router, server and app server on one machine.

Four network namespaces with veth cables between them (:mod:`.topology`), the narrated demo
``vpnedu lab demo`` (:mod:`.demo`), the app server and client traffic the tests drive
(:mod:`.app`, :mod:`.traffic`), a bad-network relay (:mod:`.impair`) and wireguard-go as a
peer (:mod:`.wireguard_go`).  The command is still ``vpnedu lab``; the package says *netns*
because the course's lab (:mod:`vpnedu.course`, real or simulated) is built on top of it.
"""

from .topology import Lab

__all__ = ["Lab"]
