"""The course: a lab behind one set of calls, real or simulated, and the small demos.

The notebooks in ``notebooks/`` only call this package (and :mod:`vpnedu.widgets` to draw)::

    from vpnedu.course import open_lab
    lab = open_lab(MODE)          # the real lab as root, else the simulation; a banner says which
    lab.start_server(); lab.start_client()
    print(lab.ping("client", "10.0.0.1"))

=========================  ====================================================================
:mod:`.mode`               which lab runs (:func:`open_lab`, :func:`choose_mode`) and its banner
:mod:`.interface`          :class:`CourseLab`, the calls both labs provide, and their results
:mod:`.real`               :class:`RealLab`: network namespaces and the real daemons (root)
:mod:`.simulated`          :class:`SimLab`: the same on the simulated network (no root)
:mod:`.feed`               :class:`DaemonFeed`: a real daemon's events relayed to the widgets
:mod:`.tun`                notebook 01 for real: a packet read from a new TUN device
:mod:`.attack`             notebook 03 for real: a captured data packet, replayed or tampered
:mod:`.suites`             notebook 03: the cipher suites' speed and overhead
:mod:`.commands`           ``vpnedu course ...``: the same as commands
=========================  ====================================================================

The layers below do the work: the simulation engine is :mod:`vpnedu.sim`, the namespace lab
:mod:`vpnedu.netns_lab`, the daemons :mod:`vpnedu.node`.  Nothing below imports the course.

The names here are loaded when first used (:func:`__getattr__`): ``vpnedu`` on the command line
imports this package for ``vpnedu course``, and should not pay for the simulation to print a key.
"""

from __future__ import annotations

from .interface import (AppResult, CourseLab, ExplicitProxyFetch, MarkerOnWire, PingResult, TrafficSample,
                        TunReading, WgGet, WgSet, WgShow, side_by_side)
from .mode import MODES, WIDTH, choose_mode, open_lab, real_lab_possible, show_warnings_in_one_line, wrap

__all__ = ["MODES", "WIDTH", "AppResult", "CourseLab", "DaemonFeed", "ExplicitProxyFetch", "MarkerOnWire",
           "PingResult", "RealLab", "SimLab", "SuiteSpeed", "TrafficSample", "TunReading", "WgGet", "WgSet", "WgShow",
           "choose_mode", "compare_suites", "open_lab",
           "real_lab_possible", "show_warnings_in_one_line", "side_by_side", "wrap"]


def __getattr__(name: str):
    """``vpnedu.course.SimLab`` and the like: import their module now (PEP 562).  (Written as
    import statements, so that ``tests/protocol/test_imports.py`` sees these imports too.)"""
    if name == "RealLab":
        from .real import RealLab
        return RealLab
    if name == "SimLab":
        from .simulated import SimLab
        return SimLab
    if name == "DaemonFeed":
        from .feed import DaemonFeed
        return DaemonFeed
    if name in ("compare_suites", "SuiteSpeed"):
        from . import suites
        return getattr(suites, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
