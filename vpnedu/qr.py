"""A client config as a QR code: in the terminal, or as a PNG file.

WireGuard's phone apps (Android, iOS) import a tunnel by scanning a QR code whose text is
a wg-quick file -- the same text as ``alice.conf``, byte for byte.  So this module encodes the
file's bytes as they are, and nothing else: no header, no re-formatting (a re-written file
could differ from the one the user keeps, and the app would import something else).

The apps parse strictly: a key they do not know (vpnedu's ``CipherSuite``,
``AllowNullTeaching``, ``Forwarding``) makes them refuse the whole config.  vpnedu's writer
leaves those keys out when they are the defaults (see :mod:`vpnedu.config`), so the file for
the ``wireguard`` suite scans; for another suite the code still encodes the file (vpnedu can
read it back), and :func:`foreign_keys` names what the apps will refuse so the command can say
so.

How a QR code holds the text (ISO/IEC 18004): the bytes go in *byte mode*, protected by
Reed-Solomon error correction; level ``M`` recovers about 15 % of the modules, enough for a
phone camera pointed at a slightly blurred screen.  segno (a maintained, pure-Python
encoder) picks the smallest *version* (21x21 up to 177x177 modules) that holds the text at
that level.

In the terminal, each character cell draws two modules stacked (the upper and lower half
blocks ``▀ ▄ █``), so the code stays square on a terminal whose cells are twice as tall
as wide.  The *light* modules (and the quiet zone of four modules around the code, which a
scanner needs to find the edges) are drawn as blocks: on a terminal with light text on a
dark background that shows dark modules on light, as printed codes are.  When the output is a
terminal the lines are also coloured white-on-black with ANSI escapes, so the code reads the
same way round on a light theme too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import segno

from .config import VPNEDU_KEYS
from .errors import VpneduError

#: Error correction level: M restores ~15 % of damaged modules (ISO/IEC 18004, table 12).
ERROR_LEVEL = "m"
#: The quiet zone around the code, in modules: 4 is what ISO/IEC 18004 asks for.
BORDER = 4
#: Pixels per module in a PNG: 8 makes a ~400-pixel image for a typical client file.
PNG_SCALE = 8

#: Upper and lower module of one character cell -> the character (True: a light module).
_CELLS = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}
#: The ANSI colours that make a block white and a space black, whatever the terminal's theme.
_ANSI_ON, _ANSI_OFF = "\x1b[97;40m", "\x1b[0m"


def make(data: bytes) -> segno.QRCode:
    """The QR code of ``data`` (a config file's bytes), in byte mode at level M.

    A text too long for the largest code (version 40: 2331 bytes at level M) is a
    :class:`~vpnedu.errors.VpneduError` naming the size."""
    try:
        # boost_error=False: keep the level asked for, so the same file always makes the same code.
        return segno.make_qr(data, error=ERROR_LEVEL, mode="byte", boost_error=False)
    except segno.DataOverflowError:
        raise VpneduError(f"the config is {len(data)} bytes, too long for one QR code (at most 2331 at "
                          "error correction level M)",
                          "remove comments and unused lines from it, or copy the file over instead") from None


def matrix(code: segno.QRCode, border: int = BORDER) -> list[list[bool]]:
    """The modules, row by row, with the quiet zone: True for a dark module."""
    return [[bool(m) for m in row] for row in code.matrix_iter(scale=1, border=border)]


def terminal(code: segno.QRCode, color: bool = False) -> str:
    """The code as lines of half-block characters, two module rows per line (see the module
    docstring); ``color`` adds the ANSI escapes for a terminal."""
    rows = matrix(code)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))   # an odd last row: its lower half is quiet zone (light)
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2]):
        # Light (not dark) modules are drawn as blocks.
        line = "".join(_CELLS[(not a, not b)] for a, b in zip(top, bottom))
        lines.append(f"{_ANSI_ON}{line}{_ANSI_OFF}" if color else line)
    return "\n".join(lines)


def check_png_path(path: str | os.PathLike) -> Path:
    """Refuse, before anything is written, a PNG path whose folder does not exist or is not writable."""
    p = Path(path)
    folder = p.parent
    if p.is_dir():
        raise VpneduError(f"--qr-png {p}: is a folder", "give a file name, e.g. --qr-png alice.png")
    if not folder.is_dir():
        raise VpneduError(f"--qr-png {p}: the folder {folder} does not exist",
                          f"create it first (mkdir -p {folder}) or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VpneduError(f"--qr-png {p}: the folder {folder} is not writable", "choose another path")
    return p


def save_png(code: segno.QRCode, path: str | os.PathLike) -> Path:
    """Write the code as a PNG readable by its owner only (mode 0600): the picture holds the
    private key as surely as the config file does."""
    p = check_png_path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)     # an existing file keeps its mode through O_CREAT: set it
        with os.fdopen(fd, "wb") as f:
            code.save(f, kind="png", scale=PNG_SCALE, border=BORDER)
    except OSError as e:
        raise VpneduError(f"cannot write {p}: {e.strerror}", "choose another path") from None
    return p


def foreign_keys(text: str) -> list[str]:
    """The vpnedu-only keys set in a config's text, in file order: WireGuard's apps refuse a
    config holding any of them."""
    found = []
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z]+)\s*=", line)
        if m:
            key = next((k for k in VPNEDU_KEYS if k.lower() == m.group(1).lower()), None)
            if key and key not in found:
                found.append(key)
    return found


def warning(text: str) -> str | None:
    """The one-line warning for a config WireGuard's apps will refuse, or None."""
    keys = foreign_keys(text)
    if not keys:
        return None
    return (f"this config sets {', '.join(keys)} (vpnedu-only): WireGuard's apps will not accept the QR code; "
            "vpnedu reads it")
