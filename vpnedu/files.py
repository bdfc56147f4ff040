"""Reading the files a user names: a bounded read of a regular file, never an endless one.

A path on the command line can name anything: ``/dev/zero`` (endless), ``/dev/stdin`` or a
FIFO (blocks until someone writes), a directory, a 10 GB log file given by mistake.  A plain
``Path.read_text()`` follows every one of them: it hangs, or grows until the machine swaps.
:func:`read_bytes` is the one reader vpnedu uses for every file a user names (configs,
notebooks to grade):

1. ``open`` with ``O_NONBLOCK``, so that opening a FIFO returns at once instead of waiting for
   a writer (open(2): "O_NONBLOCK ... the open() ... returns without delay" for FIFOs; for a
   regular file the flag has no effect);
2. ``fstat`` the *open file*, not the path: the checks are about the very file that is read,
   so nobody can swap it between the check and the read;
3. refuse anything but a regular file (``S_ISREG``), and a file larger than the limit;
4. read at most ``limit + 1`` bytes, so that a file that grows while it is read is refused too.

:func:`read_stdin` does the same for standard input, which may be a pipe from ``/dev/zero``:
it reads at most ``limit + 1`` bytes and refuses more.

Each refusal is one :class:`~vpnedu.errors.FileRefused` line naming the file and the limit.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import FileRefused

#: A config with 10,000 peers is about 2.5 MB (a [Peer] with a PSK is ~250 bytes); 4 MiB leaves
#: room for that and refuses what cannot be a config.
CONFIG_LIMIT = 4 << 20
#: A key on standard input is 44 characters and a newline; 4 KiB is generous.
KEY_LIMIT = 4096
#: A student's notebook with outputs and a few plots.
NOTEBOOK_LIMIT = 64 << 20

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def human_size(n: int) -> str:
    """``4194304`` -> ``4 MiB`` (binary units, as ``ls -lh`` prints them)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


@dataclass(frozen=True)
class FileData:
    """What :func:`read_bytes` read, with the ``fstat`` of the file it read it from."""

    path: Path
    data: bytes
    uid: int
    mode: int

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FileRefused(f"{self.path}: not a UTF-8 text file (byte {e.start} cannot be decoded)",
                              "give the path of a text file") from None


def read_bytes(path: str | os.PathLike, what: str = "file", limit: int = CONFIG_LIMIT,
               fix: str | None = None) -> FileData:
    """The content of the regular file ``path`` (at most ``limit`` bytes), or one clear error.

    ``what`` names the file in errors ("config", "notebook"); ``fix`` replaces the advice given
    when the file does not exist."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileRefused(f"{p}: no such file", fix or "check the path") from None
    except PermissionError:
        raise FileRefused(f"{p}: permission denied", "run as the file's owner or as root") from None
    except OSError as e:
        raise FileRefused(f"{p}: cannot open it: {e.strerror}", "give the path of a readable file") from None
    try:
        st = os.fstat(fd)
        for test, kind in _KINDS:
            if test(st.st_mode):
                raise FileRefused(f"{p}: is {kind}, not a regular file",
                                  f"give the path of a {what} file" if what != "file" else "give the path of a file")
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{p}: not a regular file", "give the path of a file")
        too_big = FileRefused(f"{p}: {human_size(max(st.st_size, limit + 1))}, larger than the {human_size(limit)} "
                              f"a {what} may be",
                              f"is this really a {what}? vpnedu reads at most {human_size(limit)}")
        if st.st_size > limit:
            raise too_big
        chunks, got = [], 0
        while got <= limit:
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - got))
            except BlockingIOError:   # not possible for a regular file; never spin on it
                break
            except IsADirectoryError:
                raise FileRefused(f"{p}: is a directory, not a regular file", "give the path of a file") from None
            except OSError as e:
                raise FileRefused(f"{p}: cannot read it: {e.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:   # it grew while we read it
            raise too_big
        return FileData(p, b"".join(chunks), st.st_uid, st.st_mode)
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike, what: str = "file", limit: int = CONFIG_LIMIT,
              fix: str | None = None) -> str:
    """:func:`read_bytes`, decoded as UTF-8 (with one clear error if it is not text)."""
    return read_bytes(path, what, limit, fix).text()


def read_stdin(what: str = "input", limit: int = KEY_LIMIT) -> str:
    """Standard input as text: at most ``limit`` bytes, else one line saying so.

    ``sys.stdin.buffer.read(n)`` returns after ``n`` bytes or at end of input, so even a pipe
    from ``/dev/zero`` costs at most ``limit + 1`` bytes of memory."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:     # closed or replaced (e.g. by a test runner)
        data = (sys.stdin.read(limit + 1) if sys.stdin else "").encode("utf-8", "surrogateescape")
    else:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"standard input holds more than the {human_size(limit)} a {what} may be",
                          f"pipe in only the {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused(f"standard input is not UTF-8 text, so it is not a {what}",
                          f"pipe in only the {what}") from None
