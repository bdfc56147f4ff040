"""Which lab a notebook gets: the real one when it can run, else the simulation.

:func:`open_lab` picks the mode:

* **real** -- :class:`~vpnedu.course.real.RealLab`: the namespace lab, real TUN devices, the
  real ``vpnedu server`` and ``vpnedu client`` daemons, watched through their control
  sockets.  Needs root.
* **sim** -- :class:`~vpnedu.course.simulated.SimLab`: the same hosts and addresses, the same
  daemon classes and protocol code, on a simulated network.  No root.

``mode=None`` (the default) reads ``VPNEDU_MODE`` (``sim``, ``real`` or ``auto``) and, on
``auto``, takes the real lab when it can (root, ``ip``, ``/dev/net/tun``) and the simulation
otherwise.  Either way it prints a banner saying which mode runs, and why.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import warnings
from typing import Callable

from ..errors import VpneduError
from .interface import CourseLab

MODES = ("auto", "sim", "real")


def real_lab_possible() -> tuple[bool, str]:
    """Can this process run the namespace lab?  (yes/no, and why not)."""
    if os.geteuid() != 0:
        return False, "not root, and the real lab needs root to create network namespaces and TUN devices"
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return False, "'ip' (iproute2) is not installed"
    return True, ""


def choose_mode(mode: str | None = None) -> tuple[str, str]:
    """The mode to run (``sim`` or ``real``) and a sentence saying why."""
    mode = (mode or os.environ.get("VPNEDU_MODE") or "auto").strip().lower()
    if mode not in MODES:
        raise VpneduError(f"unknown course mode {mode!r}", "use 'sim', 'real' or 'auto' (VPNEDU_MODE or MODE)")
    ok, why = real_lab_possible()
    if mode == "real":
        if not ok:
            raise VpneduError(f"the real lab cannot run here: {why}", "run as root, or use MODE = 'sim'")
        return "real", "asked for the real lab"
    if mode == "sim":
        return "sim", "asked for the simulation"
    return ("real", "root and /dev/net/tun are available") if ok else ("sim", why)


#: Width of the banner and of the course's own notes.  A notebook's output area breaks a
#: longer line anywhere, even in the middle of a word, so the course wraps its text itself.
WIDTH = 78


def wrap(text: str, width: int = WIDTH) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken between words only (never
    inside a namespace name such as ``course-client``)."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def open_lab(mode: str | None = None, *, prefix: str | None = None, suite: str = "wireguard",
             out: Callable[[str], None] = print) -> CourseLab:
    """The lab for this notebook, with a banner saying which mode runs and why."""
    chosen, why = choose_mode(mode)
    lab: CourseLab
    if chosen == "real":
        from .real import RealLab
        lab = RealLab(prefix=prefix or os.environ.get("VPNEDU_LAB_PREFIX") or "course-", suite=suite, out=out)
    else:
        from .simulated import SimLab
        lab = SimLab(suite=suite)
    show_warnings_in_one_line()
    out("=" * WIDTH)
    for line in wrap(f"vpnedu course lab: {chosen.upper()} MODE -- {why}") + wrap(lab.banner):
        out(line)
    out("=" * WIDTH)
    return lab.up()


def show_warnings_in_one_line() -> None:
    """Show vpnedu's warnings (choosing the ``null-teaching`` suite) as the command line does:
    ``vpnedu: WARNING: ...``, wrapped between words -- not Python's default, which adds the file
    path and source line of the code that warned.  Other warnings are left as they are."""
    from ..protocol.suites import InsecureSuiteWarning
    previous = warnings.showwarning
    if getattr(previous, "vpnedu_one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, InsecureSuiteWarning):
            return previous(message, category, filename, lineno, file, line)
        print("\n".join(wrap(f"vpnedu: WARNING: {message}")), file=file or sys.stderr)

    show.vpnedu_one_line = True
    warnings.showwarning = show
