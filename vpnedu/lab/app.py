"""The lab's application server and a tiny HTTP client.

``python -m vpnedu.lab.app serve --port 80 --log access.log`` runs an HTTP
server that writes the *source address* of every request to its log -- the
proof that the application server sees the VPN server, not the client.
``GET /`` answers with the address it saw; ``GET /bytes/N`` sends N bytes.

``python -m vpnedu.lab.app fetch URL`` prints the response body (so the lab needs
no curl).
"""

from __future__ import annotations

import argparse
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    log_path: str | None = None
    _lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        src = self.client_address[0]
        with self._lock, open(self.log_path or "/dev/null", "a") as f:
            f.write(f"{src} GET {self.path}\n")
        if self.path.startswith("/bytes/"):
            try:
                n = int(self.path.split("/")[2])
            except ValueError:
                n = 0
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


def serve(port: int, log: str) -> None:
    _Handler.log_path = log
    ThreadingHTTPServer.allow_reuse_address = True
    with ThreadingHTTPServer(("0.0.0.0", port), _Handler) as srv:
        srv.serve_forever()


def fetch(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vpnedu.lab.app")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=80)
    s.add_argument("--log", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("url")
    f.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        serve(a.port, a.log)
        return 0
    try:
        sys.stdout.buffer.write(fetch(a.url, a.timeout))
    except OSError as e:
        print(f"fetch: {a.url}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
