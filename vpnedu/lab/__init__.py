"""The namespace lab: client, internet router, server and app server on one machine."""

from .topology import Lab

__all__ = ["Lab"]
