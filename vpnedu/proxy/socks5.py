"""SOCKS5 (RFC 1928) on the server's tunnel address: an *explicit* proxy for the tunnel's peers.

The transparent proxy (:mod:`.tcp`) catches a client's connections without the client
knowing.  SOCKS is the opposite: the client's program (``curl --socks5-hostname``, a browser,
``ssh -o ProxyCommand``) connects to the proxy on purpose and *asks* it to connect onwards.
One TCP connection carries three small binary exchanges, then the relayed bytes:

1. **Method negotiation** (RFC 1928 section 3).  The client offers the authentication methods
   it knows, the server picks one::

       client: VER=5 NMETHODS METHODS...      server: VER=5 METHOD
                 05     02     00 02                   05    02

   ``00`` is "no authentication", ``02`` username/password (RFC 1929); ``FF`` from the
   server means "none of yours is acceptable", and the client must close.
2. **Username/password** (RFC 1929 section 2), only when ``02`` was chosen::

       client: VER=1 ULEN UNAME PLEN PASSWD   server: VER=1 STATUS  (00 success, else failure)

   The password travels in clear *inside the proxy's TCP connection*; here that connection
   runs inside the encrypted tunnel, so only the server reads it.  It is compared with
   :func:`hmac.compare_digest`, whose time does not depend on where the strings differ.
3. **The request** (RFC 1928 sections 4 and 5)::

       client: VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT
       server: VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT

   ``CMD`` 1 is CONNECT, 3 UDP ASSOCIATE (datagrams relayed through a socket of the server's,
   for as long as this connection lasts: :mod:`.socks5_udp`); 2 BIND is answered 07, "command
   not supported".  ``ATYP`` 1 is an IPv4 address (4 bytes), 4 an IPv6 address (16
   bytes), 3 a domain name (one length byte, then the name): the *server* resolves it, which
   is what ``socks5h://`` and ``--socks5-hostname`` ask for, so the client's DNS query never
   leaves its machine.  ``REP`` (section 6) is 00 on success, else why it failed:

   ====  ==============================================================
   01    general SOCKS server failure (also: a malformed request)
   02    connection not allowed by ruleset (here: loopback, multicast...)
   03    network unreachable
   04    host unreachable (also: the name does not resolve, no answer)
   05    connection refused (the destination answered with a RST)
   07    command not supported
   08    address type not supported
   ====  ==============================================================

   ``BND.ADDR:BND.PORT`` is the server's own end of the new connection: the address the
   destination sees (for UDP ASSOCIATE: the relay's address, where the client sends its
   datagrams).  After a success reply the connection is a plain byte pipe (relayed by
   :func:`.tcp.relay`, the transparent proxy's relay), and every failure reply is followed by
   closing the connection (section 6: "MUST terminate the TCP connection shortly after").

The parsing and the replies are pure functions on bytes (no sockets, no clock), so the
hostile-input tests run without a network; :class:`Socks5Server` does the IO.  Each parser
takes the bytes received so far and returns ``None`` while more are needed, the parsed value
when they are complete, or raises :class:`Socks5Error` carrying the reply the RFC prescribes.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable

from . import socks5_udp
from .service import ExplicitService
from .socks5_address import ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, allowed_destination, domain_name
from .tcp import CHUNK

VERSION = 5
#: Authentication methods (RFC 1928 section 3).
NO_AUTH, USERPASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
#: Commands (section 4).
CONNECT, BIND, UDP_ASSOCIATE = 1, 2, 3
#: Reply codes (section 6).
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, NETWORK_UNREACHABLE, HOST_UNREACHABLE, REFUSED = 0, 1, 2, 3, 4, 5
TTL_EXPIRED, COMMAND_NOT_SUPPORTED, ADDRESS_TYPE_NOT_SUPPORTED = 6, 7, 8
REPLY_TEXT = {0: "succeeded", 1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
              3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
              7: "command not supported", 8: "address type not supported"}
#: RFC 1929's sub-negotiation version, and its status bytes (any non-zero status is a failure).
AUTH_VERSION, AUTH_OK, AUTH_FAILED = 1, 0x00, 0x01

DEFAULT_PORT = 1080
#: The whole negotiation (greeting, login, request) must arrive within this many seconds: a
#: client that sends one byte a second is closed rather than holding a connection for ever.
HANDSHAKE_TIMEOUT = 10.0


class Socks5Error(Exception):
    """Malformed or unacceptable input.  ``reply``: the bytes to send before closing (the RFC's
    answer for this case); ``reason``: the one-line cause for the event."""

    def __init__(self, reason: str, reply: bytes):
        super().__init__(reason)
        self.reason, self.reply = reason, reply


# ---------------------------------------------------------------------------- pure: parsing
def parse_greeting(data: bytes) -> list[int] | None:
    """The method-selection message (section 3): ``VER NMETHODS METHODS[NMETHODS]``.

    Returns the offered methods, or ``None`` if ``data`` is still too short.  A wrong version,
    no methods at all, or bytes after the methods (the client must wait for our answer) get
    ``05 FF``: "no acceptable methods" is the only refusal this step has."""
    if len(data) < 2:
        return None
    if data[0] != VERSION:
        raise Socks5Error(f"greeting: version {data[0]}, not 5", bytes([VERSION, NO_ACCEPTABLE]))
    n = data[1]
    if n == 0:
        raise Socks5Error("greeting: no methods offered", bytes([VERSION, NO_ACCEPTABLE]))
    if len(data) < 2 + n:
        return None
    if len(data) > 2 + n:
        raise Socks5Error("greeting: bytes after the methods", bytes([VERSION, NO_ACCEPTABLE]))
    return list(data[2:2 + n])


def choose_method(offered: list[int], need_login: bool) -> int:
    """The method the server picks: username/password when users are configured (and only
    then: a client that offers only "no authentication" is refused), else no authentication."""
    want = USERPASS if need_login else NO_AUTH
    return want if want in offered else NO_ACCEPTABLE


def parse_login(data: bytes) -> tuple[bytes, bytes] | None:
    """RFC 1929's request: ``VER=1 ULEN UNAME PLEN PASSWD`` -> (username, password), ``None``
    while incomplete; a wrong version or an empty username is answered ``01 01`` (failure)."""
    fail = bytes([AUTH_VERSION, AUTH_FAILED])
    if len(data) < 2:
        return None
    if data[0] != AUTH_VERSION:
        raise Socks5Error(f"login: sub-negotiation version {data[0]}, not 1", fail)
    ulen = data[1]
    if ulen == 0:
        raise Socks5Error("login: empty username", fail)
    if len(data) < 3 + ulen:
        return None
    plen = data[2 + ulen]
    end = 3 + ulen + plen
    if len(data) < end:
        return None
    if len(data) > end:
        raise Socks5Error("login: bytes after the password", fail)
    return bytes(data[2:2 + ulen]), bytes(data[3 + ulen:end])


def check_login(users: dict[bytes, bytes], username: bytes, password: bytes) -> bool:
    """Whether the pair is one of ``users``, in time that does not depend on how much of it is
    right: every user is compared, each with :func:`hmac.compare_digest`."""
    ok = False
    for name, secret in users.items():
        ok |= hmac.compare_digest(name, username) & hmac.compare_digest(secret, password)
    return ok


@dataclass(frozen=True)
class Request:
    command: int
    host: str           #: an IP address as text, or the domain name to resolve
    port: int
    atyp: int


def reply(code: int, bound: tuple[str, int] | None = None) -> bytes:
    """A reply (section 6): ``VER REP RSV ATYP BND.ADDR BND.PORT``.  Without ``bound`` (a
    failure) the address is 0.0.0.0:0, as the RFC leaves it unspecified."""
    addr = ipaddress.ip_address(bound[0] if bound else "0.0.0.0")
    atyp = ATYP_IPV4 if addr.version == 4 else ATYP_IPV6
    return bytes([VERSION, code, 0, atyp]) + addr.packed + (bound[1] if bound else 0).to_bytes(2, "big")


def parse_request(data: bytes) -> Request | None:
    """The request (section 4) -> :class:`Request`, ``None`` while incomplete.  Errors answer
    with the section 6 code: wrong version or bytes after the request 01, an unknown address
    type 08, an empty or non-text domain name 04 (it cannot name a host).  The command is not
    judged here (the caller answers 07 to those it does not run)."""
    if len(data) < 5:
        return None
    if data[0] != VERSION:
        raise Socks5Error(f"request: version {data[0]}, not 5", reply(GENERAL_FAILURE))
    cmd, atyp = data[1], data[3]
    if atyp == ATYP_IPV4:
        end = 4 + 4
    elif atyp == ATYP_IPV6:
        end = 4 + 16
    elif atyp == ATYP_DOMAIN:
        end = 5 + data[4]
    else:
        raise Socks5Error(f"request: address type {atyp}", reply(ADDRESS_TYPE_NOT_SUPPORTED))
    if len(data) < end + 2:
        return None
    if len(data) > end + 2:
        raise Socks5Error("request: bytes after the port", reply(GENERAL_FAILURE))
    port = int.from_bytes(data[end:end + 2], "big")
    if atyp == ATYP_DOMAIN:
        raw = bytes(data[5:end])
        host = domain_name(raw)
        if host is None:
            raise Socks5Error(f"request: {raw[:64]!r} is not a domain name", reply(HOST_UNREACHABLE))
    else:
        host = str(ipaddress.ip_address(bytes(data[4:end])))
    return Request(cmd, host, port, atyp)


#: At most this many bytes of negotiation: the largest request (a 255-byte name) is 262.
MAX_MESSAGE = 4 + 1 + 255 + 2


def error_reply(exc: BaseException) -> int:
    """The reply code for a failed connect (section 6)."""
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, socket.gaierror):
        return HOST_UNREACHABLE
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return HOST_UNREACHABLE
    if isinstance(exc, OSError):
        if exc.errno == errno.ENETUNREACH:
            return NETWORK_UNREACHABLE
        if exc.errno in (errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT):
            return HOST_UNREACHABLE
        if exc.errno == errno.ECONNREFUSED:
            return REFUSED
    return GENERAL_FAILURE


# ---------------------------------------------------------------------------- the IO
async def read_message(reader: asyncio.StreamReader, buf: bytearray, parse: Callable):
    """Read until ``parse(buf)`` is complete (or raises).  One byte at a time from the
    reader's buffer (not one system call each): nothing past the message is taken, so bytes a
    client sends early after its request stay in the reader for the relay.  End of file
    mid-message raises ``EOFError`` (``IncompleteReadError`` is one)."""
    while (value := parse(bytes(buf))) is None:
        if len(buf) >= MAX_MESSAGE:
            raise Socks5Error("message too long", b"")
        buf += await reader.readexactly(1)
    buf.clear()
    return value


async def open_upstream(host: str, port: int, timeout: float):
    """Connect to ``host`` (an address, or a name the server resolves) -> (reader, writer).
    Every address a name resolves to must be allowed (a name for 127.0.0.1 is refused like
    127.0.0.1 itself); they are tried in the resolver's order within ``timeout``."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    addrs = [i[4][0] for i in infos]
    if not all(allowed_destination(a) for a in addrs):
        raise PermissionError(f"{host} is a loopback, multicast or link-local address")
    last: BaseException = socket.gaierror(f"{host} has no address")
    deadline = loop.time() + timeout
    for a in dict.fromkeys(addrs):
        try:
            return await asyncio.wait_for(asyncio.open_connection(a, port, limit=CHUNK),
                                          max(0.1, deadline - loop.time()))
        except (OSError, asyncio.TimeoutError) as e:
            last = e
    raise last


class Socks5Server(ExplicitService):
    """The SOCKS5 service on the tunnel's addresses.

    ``sockets``: listening sockets already bound (:func:`.explicit.bind_listeners`);
    ``peer_of(address)``: the tunnel peer whose AllowedIPs hold ``address``, or ``None`` (a
    connection from anywhere else is closed at once, with a ``proxy.refused`` event);
    ``users``: username -> password (empty: no authentication)."""

    proto = "socks5"
    flow_protos = ("socks5", "socks5-udp")
    #: Seconds without a datagram before a UDP association ends (None: :mod:`.socks5_udp`'s
    #: ``ASSOCIATION_IDLE``).
    udp_idle: float | None = None

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.associations: set = set()

    async def close(self) -> None:
        # The UDP associations end first, each closing its own sockets and flows (a task cancelled
        # instead would end the same way, with a traceback in the log).
        for assoc in list(self.associations):
            assoc.end("server stopping")
        tasks = [a.task for a in self.associations if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await super().close()

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client, peer: str) -> None:
        stage = ["greeting"]
        try:
            req = await asyncio.wait_for(self._negotiate(reader, writer, stage), HANDSHAKE_TIMEOUT)
        except Socks5Error as e:
            if e.reply:
                writer.write(e.reply)
            return self.refuse(writer, client, e.reason)
        except asyncio.TimeoutError:
            # Neither RFC has a "too slow"; each stage's own refusal at least says no in a form the
            # client is waiting for: 05 FF, RFC 1929's 01 01, or reply 01.
            writer.write({"greeting": bytes([VERSION, NO_ACCEPTABLE]), "login": bytes([AUTH_VERSION, AUTH_FAILED]),
                          "request": reply(GENERAL_FAILURE)}[stage[0]])
            return self.refuse(writer, client, f"{stage[0]} not done in {HANDSHAKE_TIMEOUT:g} s")
        except (EOFError, OSError):
            return self.refuse(writer, client, "closed during negotiation")
        if req.command == UDP_ASSOCIATE:
            return await self._associate(reader, writer, client, peer, req)
        flow = self.table.new(self.proto, client, (req.host, req.port), peer)
        flow.state = "connecting"
        try:
            up = await open_upstream(req.host, req.port, self.connect_timeout)
        except PermissionError:
            return self._fail(writer, flow, NOT_ALLOWED)
        except (OSError, asyncio.TimeoutError) as e:
            return self._fail(writer, flow, error_reply(e))
        await self.relay_after(flow, reader, writer, up,
                               to_client=reply(SUCCEEDED, up[1].get_extra_info("sockname")[:2]))

    async def _associate(self, reader, writer, client, peer: str, req: Request) -> None:
        """UDP ASSOCIATE (section 7): a relay socket on the tunnel address this connection
        arrived on, its address in the reply, then the association lasts as long as this
        connection (or until it is idle).  ``DST.PORT``, if not 0, is the only client port
        accepted; ``DST.ADDR`` is not used (this connection's source is the client)."""
        if len(self.associations) >= socks5_udp.MAX_ASSOCIATIONS:
            return self.refuse(writer, client, f"UDP ASSOCIATE: {socks5_udp.MAX_ASSOCIATIONS} associations already",
                               reply(GENERAL_FAILURE))
        local = writer.get_extra_info("sockname")[0]
        try:
            relay = socks5_udp.open_relay(local)
        except OSError as e:
            return self.refuse(writer, client, f"UDP ASSOCIATE: no relay socket on {local}: {e.strerror}",
                               reply(GENERAL_FAILURE))
        assoc = socks5_udp.Association(self.table, relay, client[0], req.port, peer, resolve_timeout=self.connect_timeout)
        self.associations.add(assoc)
        why = "server stopping"
        try:
            writer.write(reply(SUCCEEDED, assoc.bound))
            await writer.drain()
            assoc.start()
            why = await assoc.hold(reader, socks5_udp.ASSOCIATION_IDLE if self.udp_idle is None else self.udp_idle)
        except OSError:
            why = "client gone"
        finally:
            assoc.close(why)
            self.associations.discard(assoc)
            writer.close()       # after an idle end: the client learns the association is over

    def _fail(self, writer, flow, code: int) -> None:
        writer.write(reply(code))
        writer.close()       # a FIN after the reply: the client reads the code, then end of file
        self.table.close(flow, f"reply {code:#04x} {REPLY_TEXT[code]}")

    async def _negotiate(self, reader, writer, stage: list[str]) -> Request:
        """The three exchanges; ``stage[0]`` says which one is under way (for a timeout's answer)."""
        buf = bytearray()
        offered = await read_message(reader, buf, parse_greeting)
        method = choose_method(offered, bool(self.users))
        if method == NO_ACCEPTABLE:
            raise Socks5Error("no acceptable method offered"
                              + (" (users are configured: username/password is required)" if self.users else ""),
                              bytes([VERSION, NO_ACCEPTABLE]))
        writer.write(bytes([VERSION, method]))
        stage[0] = "login" if method == USERPASS else "request"
        if method == USERPASS:
            user, password = await read_message(reader, buf, parse_login)
            if not check_login(self.users, user, password):
                raise Socks5Error("wrong username or password", bytes([AUTH_VERSION, AUTH_FAILED]))
            writer.write(bytes([AUTH_VERSION, AUTH_OK]))
            stage[0] = "request"
        req = await read_message(reader, buf, parse_request)
        if req.command not in (CONNECT, UDP_ASSOCIATE):
            name = {BIND: "BIND"}.get(req.command, f"command {req.command}")
            raise Socks5Error(f"{name} is not supported", reply(COMMAND_NOT_SUPPORTED))
        return req
