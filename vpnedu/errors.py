"""The project's error types.

Every error a user can cause (a bad key, a malformed config line, a packet that
is not a WireGuard message) is a :class:`VpneduError`.  The CLI prints such an
error as one line -- what is wrong and how to fix it -- and never a traceback.
"""

from __future__ import annotations


class VpneduError(Exception):
    """Base class: a problem the user (or the network) caused, with a fix.

    ``problem`` says what is wrong, ``fix`` (optional) says what to do about it.
    ``str(err)`` joins them into the one line the CLI prints, and ``exit_code`` is the
    status the CLI exits with.

    A message never holds a secret: errors about a private or pre-shared key name the file,
    the line and the setting, never the value (a terminal, a log, a screen share would keep it).
    """

    #: The CLI's exit status for this error (sysexits.h-style where one fits).
    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}; {fix}")


class MessageError(VpneduError):
    """Bytes that are not a well-formed WireGuard message.

    Raised by every parser in :mod:`vpnedu.protocol.messages` and
    :mod:`vpnedu.packet`; the protocol core turns it into a ``packet.dropped``
    event with reason ``malformed`` instead of letting it escape.
    """


class KeyFormatError(VpneduError):
    """A key that is not 32 bytes encoded in base64 (WireGuard's key format)."""


class ConfigError(VpneduError):
    """A configuration file problem, naming the file and line."""


class SuiteError(VpneduError):
    """An unknown cipher suite, or an insecure one that was not explicitly enabled."""


class FileRefused(VpneduError):
    """A file vpnedu will not read: missing, not a regular file, too large, not text
    (see :mod:`vpnedu.files`)."""


class NotPermitted(VpneduError):
    """The user may not do this (e.g. talk to a root daemon's control socket): exit status 77,
    ``EX_NOPERM`` of sysexits.h ("You did not have sufficient permission to perform the
    operation")."""

    exit_code = 77
