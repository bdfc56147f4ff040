"""An HTTP proxy on the server's tunnel address (port 3128): ``CONNECT`` and absolute URIs.

A client configured with ``http_proxy=http://10.0.0.1:3128`` (or ``curl -x``) speaks HTTP/1.1 to
the proxy in one of two ways (RFC 9110 section 9.3.6, RFC 9112 section 3.2):

``CONNECT app.example:443 HTTP/1.1``  (the *authority form*)
    "Open a TCP connection to app.example:443 for me."  The proxy answers ``200`` and from then
    on relays bytes both ways (:func:`.tcp.relay`): HTTPS goes through it end to end encrypted,
    the proxy sees only the name and port.

``GET http://app.example/page HTTP/1.1``  (the *absolute form*)
    "Fetch this URL for me."  The proxy connects to app.example:80 itself and forwards the
    request in *origin form* (``GET /page HTTP/1.1``), minus the hop-by-hop headers that were
    meant for the proxy alone (RFC 9110 section 7.6.1: ``Connection`` and the headers it names,
    ``Proxy-Connection``, ``Keep-Alive``, ``Proxy-Authorization``, ``TE``, ``Trailer``,
    ``Transfer-Encoding``... ), with ``Connection: close`` so that the answer ends when the
    server closes; the answer is relayed as it comes.  One request per connection: the proxy
    closes after it (simple, and always correct).

Errors are answered with a status code and a one-line reason (RFC 9110 section 15): 400 for a
request it cannot read, 403 for a destination it will not reach (the server's own loopback,
multicast, link-local), 405 for a method on a non-``http`` URI... 407 (with
``Proxy-Authenticate: Basic``) when users are configured and the request has no right
``Proxy-Authorization: Basic`` (RFC 7617), 502 when the destination refuses or the name does not
resolve, 504 when it does not answer in time, 408 when the request head itself does not arrive
within :data:`HEAD_TIMEOUT` (a client sending a byte a second).

As for :mod:`.socks5`, parsing is pure (:func:`parse_head`) and the IO is in :class:`HttpProxy`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field

from .service import ExplicitService
from .socks5 import check_login, open_upstream

DEFAULT_PORT = 3128
#: The request line and headers must fit in this many bytes, and arrive within HEAD_TIMEOUT.
MAX_HEAD = 16384
HEAD_TIMEOUT = 10.0
#: Headers for this hop only (RFC 9110 section 7.6.1; RFC 9112 section 6.1 for Transfer-Encoding,
#: which this proxy does not decode: the request body passes as it is, see parse_head).
HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
              "te", "trailer", "upgrade"}
REASONS = {200: "Connection established", 400: "Bad Request", 403: "Forbidden",
           405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
           502: "Bad Gateway",
           504: "Gateway Timeout"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HttpError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Head:
    method: str
    target: str                     #: as sent: ``host:port`` (CONNECT) or ``http://host/...``
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    host: str = ""
    port: int = 80
    path: str = "/"                 #: the origin form, for a forwarded request

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def split_host_port(text: str, default: int | None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with a ``default``) a bare host -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", text) or \
        re.fullmatch(r"([A-Za-z0-9_.-]+)(?::(\d{1,5}))?", text)
    if not m or (m.group(2) is None and default is None):
        raise HttpError(400, f"{text[:80]!r} is not host:port")
    port = int(m.group(2)) if m.group(2) is not None else default
    if not 0 < port < 65536:
        raise HttpError(400, f"port {port} is out of range")
    return m.group(1), port


def parse_head(data: bytes) -> Head | None:
    """The request line and headers (RFC 9112 sections 3 and 5) -> :class:`Head`, ``None``
    while the blank line that ends them has not arrived.  Raises :class:`HttpError` (400) on
    anything malformed or too long, 405 on a method other than CONNECT for an authority form
    or an absolute URI that is not ``http://`` (HTTPS goes through CONNECT)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise HttpError(400, f"request head longer than {MAX_HEAD} bytes")
        return None
    if end > MAX_HEAD:
        raise HttpError(400, f"request head longer than {MAX_HEAD} bytes")
    try:
        text = data[:end].decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "undecodable request head") from None
    line, *rest = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not re.fullmatch(r"HTTP/1\.[01]", parts[2]):
        raise HttpError(400, f"{line[:80]!r} is not an HTTP/1.x request line")
    method, target, version = parts
    headers = []
    for h in rest:
        name, sep, value = h.partition(":")
        if not sep or not _TOKEN.fullmatch(name):      # also refuses obsolete line folding (RFC 9112 5.2)
            raise HttpError(400, f"{h[:80]!r} is not a header line")
        headers.append((name, value.strip(" \t")))
    head = Head(method, target, version, headers)
    if method == "CONNECT":
        head.host, head.port = split_host_port(target, None)
        return head
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)", target)
    if not m:
        raise HttpError(400, f"{target[:80]!r} is not an absolute URI (a proxy needs http://host/...)")
    if m.group(1).lower() != "http":
        raise HttpError(405, f"{m.group(1)}:// is not proxied here; use CONNECT for https")
    if "@" in m.group(2):
        raise HttpError(400, "user information in the URI is not forwarded")
    head.host, head.port = split_host_port(m.group(2), 80)
    head.path = m.group(3) or "/"
    if head.header("transfer-encoding") is not None and head.header("content-length") is not None:
        raise HttpError(400, "both Transfer-Encoding and Content-Length (RFC 9112 section 6.3)")
    return head


def basic_credentials(value: str | None) -> tuple[bytes, bytes] | None:
    """``Proxy-Authorization: Basic base64(user:password)`` (RFC 7617) -> (user, password)."""
    if not value:
        return None
    scheme, _, b64 = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


def forwarded_head(head: Head) -> bytes:
    """The request as the origin server gets it: origin form, hop-by-hop headers removed (and
    those ``Connection`` names), ``Connection: close``, and ``Host`` made from the URI's
    authority, whatever the client's ``Host`` said (RFC 9112 section 3.2.2: a proxy MUST
    generate it from the target URI rather than forward the received one)."""
    named = {t.strip().lower() for t in (head.header("connection") or "").split(",") if t.strip()}
    drop = HOP_BY_HOP | named | {"host"}
    lines = [f"{head.method} {head.path} {head.version}",
             "Host: " + (f"[{head.host}]" if ":" in head.host else head.host)
             + (f":{head.port}" if head.port != 80 else "")]
    lines += [f"{k}: {v}" for k, v in head.headers if k.lower() not in drop]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


def response(status: int, reason: str = "", extra: tuple[str, ...] = ()) -> bytes:
    """A short response from the proxy itself (its body says why, in one line)."""
    body = (reason + "\n").encode() if status != 200 else b""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", *extra]
    if status != 200:
        lines += ["Content-Type: text/plain", f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpProxy(ExplicitService):
    """The HTTP proxy service (the arguments of :class:`.service.ExplicitService`)."""

    proto = "http"
    flow_protos = ("http-connect", "http")

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> Head:
        """Up to the blank line, and not a byte more: a request body, or TLS a client sends
        early after its CONNECT, stays in the reader for the relay."""
        try:
            data = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(400, f"request head longer than {MAX_HEAD} bytes") from None
        except asyncio.IncompleteReadError:
            raise EOFError from None
        head = parse_head(data)
        if head is None:  # pragma: no cover - readuntil returned the blank line
            raise HttpError(400, "no end of the request head")
        return head

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client, peer: str) -> None:
        try:
            head = await asyncio.wait_for(self._read_head(reader), HEAD_TIMEOUT)
        except HttpError as e:
            return self.refuse(writer, client, e.reason, response(e.status, e.reason))
        except asyncio.TimeoutError:
            return self.refuse(writer, client, f"request head not done in {HEAD_TIMEOUT:g} s",
                                response(408, f"the request head did not arrive within {HEAD_TIMEOUT:g} s"))
        except (EOFError, OSError):
            return self.refuse(writer, client, "closed before a request")
        if self.users:
            cred = basic_credentials(head.header("proxy-authorization"))
            if cred is None or not check_login(self.users, *cred):
                return self.refuse(writer, client, "no or wrong Proxy-Authorization",
                                    response(407, "this proxy needs a username and password",
                                             ('Proxy-Authenticate: Basic realm="vpnedu"',)))
        proto = "http-connect" if head.method == "CONNECT" else "http"
        flow = self.table.new(proto, client, (head.host, head.port), peer)
        flow.state = "connecting"
        try:
            up = await open_upstream(head.host, head.port, self.connect_timeout)
        except PermissionError as e:
            return self._fail(writer, flow, 403, str(e))
        except asyncio.TimeoutError:
            return self._fail(writer, flow, 504, f"{head.host}:{head.port} did not answer")
        except OSError as e:
            return self._fail(writer, flow, 502, f"{head.host}:{head.port}: {e.strerror or e}")
        if proto == "http-connect":
            await self.relay_after(flow, reader, writer, up, to_client=response(200))
        else:
            await self.relay_after(flow, reader, writer, up, to_upstream=forwarded_head(head))

    def _fail(self, writer, flow, status: int, reason: str) -> None:
        writer.write(response(status, reason))
        writer.close()
        self.table.close(flow, f"{status} {reason}")
