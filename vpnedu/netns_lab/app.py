"""The lab's application server and a tiny HTTP client.

``python -m vpnedu.netns_lab.app serve --port 80 --log access.log`` runs an HTTP
server that writes the *source address* of every request to its log -- the
proof that the application server sees the VPN server, not the client.
``GET /`` answers with the address it saw; ``GET /bytes/N`` sends N bytes;
``GET /random/N`` sends N pseudo-random bytes whose SHA-256 :func:`random_sha256`
can recompute (to check a big download arrived intact); ``GET /drip/S`` trickles
a little data for S seconds (a flow that stays open long enough to look at).

With ``--tls-port 443 --cert app-cert.pem --key app-key.pem`` it serves the same pages over HTTPS
too (Python's :mod:`ssl`), logging the same way; :func:`make_certificates` makes those files: a
small certificate authority of the lab's own and a certificate it signs for the app's name and
addresses, so a client that trusts the CA (``curl --cacert app-ca.pem``) checks the app's
identity for real -- through ``CONNECT`` a proxy in between sees only ciphertext.

Beside HTTP it runs two more services, so the proxy can be tried on each protocol:
a TCP echo service (port 7, RFC 862) and a DNS-like UDP name service (port 53):
a datagram ``<id> <name>`` is answered with ``<id> <name> A <address> seen-from <source>``.

``python -m vpnedu.netns_lab.app fetch URL`` prints the response body (so the lab needs
no curl).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import socket
import ssl
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def random_chunks(n: int, chunk: int = 65536):
    """N deterministic pseudo-random bytes, in chunks (SHAKE-128 of the chunk's number)."""
    i = 0
    while n > 0:
        size = min(chunk, n)
        yield hashlib.shake_128(i.to_bytes(8, "big")).digest(chunk)[:size]
        n -= size
        i += 1


def random_sha256(n: int) -> str:
    h = hashlib.sha256()
    for c in random_chunks(n):
        h.update(c)
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    log_path: str | None = None
    _lock = threading.Lock()

    def _number(self, default: float) -> float:
        """The number in /what/NUMBER, or ``default``."""
        try:
            return max(0.0, float(self.path.split("/")[2]))
        except (ValueError, IndexError):
            return default

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        src = self.client_address[0]
        if src.startswith("::ffff:") and "." in src:   # an IPv4 peer of the dual-stack socket
            src = src[len("::ffff:"):]
        with self._lock, open(self.log_path or "/dev/null", "a") as f:
            f.write(f"{src} GET {self.path}\n")
        if self.path.startswith("/random/"):
            n = int(self._number(0))
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for c in random_chunks(n):
                self.wfile.write(c)
            return
        if self.path.startswith("/drip/"):
            seconds = min(self._number(1.0), 60.0)
            ticks = max(1, int(seconds * 10))
            self.send_response(200)
            self.send_header("Content-Length", str(ticks * 1024))
            self.end_headers()
            for _ in range(ticks):
                self.wfile.write(b"." * 1024)
                self.wfile.flush()
                time.sleep(0.1)
            return
        if self.path.startswith("/bytes/"):
            n = int(self._number(0))
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"v" * 65536
            while n > 0:
                self.wfile.write(chunk[:n])
                n -= len(chunk)
            return
        body = f"hello from the app server; your address is {src}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _echo_service(port: int) -> None:
    """TCP echo (RFC 862): send back whatever arrives, until the client closes its side."""
    def handle(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _name_service(port: int, answer: str) -> None:
    """A DNS-like request/response service on UDP."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, src = s.recvfrom(2048)
        s.sendto(data.strip() + f" A {answer} seen-from {src[0]}".encode(), src)


def serve(port: int, log: str, echo_port: int = 7, dns_port: int = 53, answer: str = "192.0.2.80",
          tls_port: int = 0, cert: str | None = None, key: str | None = None) -> None:
    _Handler.log_path = log
    ThreadingHTTPServer.allow_reuse_address = True
    if echo_port:
        threading.Thread(target=_echo_service, args=(echo_port,), daemon=True).start()
    if dns_port:
        threading.Thread(target=_name_service, args=(dns_port, answer), daemon=True).start()
    if tls_port:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        tls = DualStackTLSServer(("::", tls_port), _Handler)
        tls.context = ctx
        threading.Thread(target=tls.serve_forever, daemon=True).start()
    with DualStackHTTPServer(("::", port), _Handler) as srv:
        srv.serve_forever()


class DualStackHTTPServer(ThreadingHTTPServer):
    """One listening socket for both families (``[::]`` with IPV6_V6ONLY off: an IPv4 peer shows
    as ``::ffff:203.0.113.2``, which the log writes as 203.0.113.2)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class DualStackTLSServer(DualStackHTTPServer):
    """The same server behind TLS.  The handshake runs in each connection's own thread (not in
    ``accept``), so a client that connects and says nothing holds up no one else."""

    context: ssl.SSLContext

    def finish_request(self, request, client_address) -> None:
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except OSError:          # ssl.SSLError too: a client that gave up, or does not trust us
            return
        with conn:
            self.RequestHandlerClass(conn, client_address, self)


def make_certificates(directory: Path, names: list[str], addresses: list[str]) -> dict[str, Path]:
    """A certificate authority for the lab (``app-ca.pem``, the file clients trust) and a server
    certificate it signs for ``names`` and ``addresses`` (``app-cert.pem``, key ``app-key.pem``),
    written into ``directory``; returns their paths by role (``ca``, ``cert``, ``key``).  Fresh
    keys each time (EC P-256), valid from a day ago for 30 days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpnedu lab CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or addresses)[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory = Path(directory)
    paths = {"ca": directory / "app-ca.pem", "cert": directory / "app-cert.pem", "key": directory / "app-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


def fetch(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vpnedu.netns_lab.app")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=80)
    s.add_argument("--log", required=True)
    s.add_argument("--echo-port", type=int, default=7)
    s.add_argument("--dns-port", type=int, default=53)
    s.add_argument("--tls-port", type=int, default=0, help="also serve HTTPS here (needs --cert and --key)")
    s.add_argument("--cert", help="the server certificate (PEM), for --tls-port")
    s.add_argument("--key", help="its private key (PEM)")
    f = sub.add_parser("fetch")
    f.add_argument("url")
    f.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        if a.tls_port and not (a.cert and a.key):
            ap.error("--tls-port needs --cert and --key")
        serve(a.port, a.log, a.echo_port, a.dns_port, tls_port=a.tls_port, cert=a.cert, key=a.key)
        return 0
    try:
        sys.stdout.buffer.write(fetch(a.url, a.timeout))
    except OSError as e:
        print(f"fetch: {a.url}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
