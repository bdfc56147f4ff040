"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) on the server's tunnel address, in the namespace lab
(the server forwarding in ``nat`` mode, then in ``proxy`` mode: the relay is the same, what else the
server does with the tunnel's traffic differs), with a client nobody here wrote: PySocks'
``socksocket(AF_INET, SOCK_DGRAM)``, which asks for the association when it is first used.

* a DNS query to dnsmasq on the lab's router (192.0.2.1) through the relay is answered, with the
  query's id and the address dnsmasq was told to give; dnsmasq logs the server's public address
  as the query's source;
* a datagram to the app server's UDP name service, by address and by a name only the server can
  resolve (socks5h), comes back wrapped with the app's address as its source, and the app says
  it saw the server's public address;
* once the client closes the socket (its control connection), each destination's
  ``proxy.flow.closed`` event (``socks5-udp``) carries the byte counts;
* while an association lasts its flow is in ``vpnedu status --flows``; a datagram to its relay
  port from a source that is not its client (another port of the client, the server itself) is
  not answered, and dropped with a ``proxy.socks5.udp.dropped`` event.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from vpnedu.netns_lab.topology import APP_ADDRESS, SERVER_PUBLIC, Lab

from ..conftest import require_tool
from ..lablib import provision, recent_events, start_client, start_server, status, stop, vpnedu, wait_for

pytestmark = pytest.mark.root
RESOLVER = "192.0.2.1"       # dnsmasq, on the router's app-side address
DNS_NAME = "www.udp.lab"     # dnsmasq answers it with 192.0.2.80
NAME = "app.udp.lab"         # known to the server's namespace only (its /etc/netns/NS/hosts)

#: The client's program: PySocks over the tunnel to 10.0.0.1:1080.  argv: what to do ("once":
#: the exchanges, then close; "hold": the exchanges, then wait for the file argv[2] to appear).
CLIENT = r"""
import json, os, random, socket, struct, sys, time
import socks

def dns_query(qid, name):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)          # RD, one question
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return q + struct.pack(">HH", 1, 1)                           # A, IN

s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "10.0.0.1", 1080)
s.settimeout(5)
out = {}
qid = random.randrange(1, 65536)
query = dns_query(qid, "%(dns_name)s")
s.sendto(query, ("%(resolver)s", 53))
answer, src = s.recvfrom(4096)
out["dns"] = {"sent_id": qid, "id": struct.unpack(">H", answer[:2])[0], "rcode": answer[3] & 15,
              "ancount": struct.unpack(">H", answer[6:8])[0], "a": socket.inet_ntoa(answer[-4:]),
              "src": list(src), "up": len(query), "down": len(answer)}
for key, dst in (("echo", "%(app)s"), ("name", "%(name)s")):
    s.sendto(b"7 " + key.encode(), (dst, 53))
    data, src = s.recvfrom(4096)
    out[key] = {"text": data.decode(), "src": list(src)}
out["relay"] = list(socket.socket.getpeername(s))   # its UDP socket talks to the relay: BND.ADDR:BND.PORT
out["local"] = list(s.getsockname())
print(json.dumps(out), flush=True)
if sys.argv[1] == "hold":
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.05)
s.close()
""" % {"dns_name": DNS_NAME, "resolver": RESOLVER, "app": APP_ADDRESS, "name": NAME}

#: A datagram with a valid header (to the app's name service) from a socket that is not the
#: association's client: prints what came back, or "nothing".
STRANGER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(b"\0\0\0\1" + socket.inet_aton(sys.argv[3]) + (53).to_bytes(2, "big") + b"9 stranger",
         (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recv(4096))
except (socket.timeout, ConnectionRefusedError) as e:
    print("nothing", type(e).__name__)
"""


class Env:
    def __init__(self, lab):
        self.lab = lab
        self.server = self.client = None

    def events(self, kind: str) -> list[dict]:
        """The daemon's kept history of ``kind``."""
        return recent_events(self.lab, "server", kind)


@pytest.fixture(scope="module", params=["nat", "proxy"])
def env(request):
    require_tool("nft")
    dnsmasq = require_tool("dnsmasq")
    lab = Lab(prefix=f"h18u{os.getpid() % 1000}{request.param[0]}-", log=lambda s: None)
    etc = Path("/etc/netns") / lab.ns("server")
    try:
        lab.up()
        provision(lab)
        etc.mkdir(parents=True, exist_ok=True)        # `ip netns exec` mounts it over /etc/hosts
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{APP_ADDRESS} {NAME}\n")
        lab.spawn("internet", "dnsmasq", dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                  "--no-hosts", "--bind-interfaces", f"--listen-address={RESOLVER}", "--pid-file=",
                  f"--address=/{DNS_NAME}/{APP_ADDRESS}", "--log-queries", "--log-facility=-")
        lab.wait_for_udp("internet", 53)
        e = Env(lab)
        e.server = start_server(lab, "--forwarding", request.param)
        e.client = start_client(lab)
        yield e
        stop(e.client)
        stop(e.server)
    finally:
        lab.down()
        shutil.rmtree(etc, ignore_errors=True)


def test_dns_and_echo_through_pysocks(env):
    r = env.lab.run("client", *env.lab.python("-c", CLIENT, "once"), timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    dns = out["dns"]
    assert dns["id"] == dns["sent_id"] and dns["rcode"] == 0 and dns["ancount"] == 1, dns
    assert dns["a"] == APP_ADDRESS and dns["src"] == [RESOLVER, 53], dns
    log = (env.lab.dir / "dnsmasq.log").read_text()
    assert f"query[A] {DNS_NAME} from {SERVER_PUBLIC}" in log, log[-800:]
    # The app's name service answers "<id> <name> A <address> seen-from <source>".
    assert out["echo"]["text"].endswith(f"seen-from {SERVER_PUBLIC}") and out["echo"]["src"] == [APP_ADDRESS, 53]
    assert out["name"]["text"].startswith("7 name A ") and out["name"]["src"] == [APP_ADDRESS, 53]
    assert out["relay"][0] == "10.0.0.1"
    # The socket closed its control connection: the flows closed, with what they carried.
    client = f"10.0.0.2:{out['local'][1]}"
    closed = [e["fields"] for e in env.events("proxy.flow.closed")
              if e["fields"].get("proto") == "socks5-udp" and e["fields"]["client"] == client]
    by_dst = {c["destination"]: c for c in closed}
    c = by_dst[f"{RESOLVER}:53"]
    assert (c["bytes_up"], c["bytes_down"]) == (dns["up"], dns["down"]), c
    assert c["reason"] == "control connection closed" and c["proxy"].startswith(SERVER_PUBLIC + ":"), c
    app = by_dst[f"{APP_ADDRESS}:53"]         # by address and by NAME: one destination, two exchanges
    assert app["bytes_up"] == len("7 echo") + len("7 name") and app["bytes_down"] > app["bytes_up"], app


def test_flow_table_and_strangers(env):
    done = env.lab.dir / "udp-client-done"
    done.unlink(missing_ok=True)
    p = env.lab.spawn("client", "udp-client", *env.lab.python("-c", CLIENT, "hold", str(done)))
    log = env.lab.dir / "udp-client.log"
    try:
        line = wait_for(lambda: next((x for x in log.read_text().splitlines() if x.startswith("{")), None),
                        timeout=15, what="the PySocks client's exchanges", proc=p, log=log)
        out = json.loads(line)
        client = f"10.0.0.2:{out['local'][1]}"
        rows = [f for f in status(env.lab, "server")["flows"] if f["proto"] == "socks5-udp" and f["client"] == client]
        assert sorted(f["destination"] for f in rows) == sorted([f"{RESOLVER}:53", f"{APP_ADDRESS}:53"]), rows
        assert all(f["proxy"].startswith(SERVER_PUBLIC + ":") and f["peer"] == "client" for f in rows), rows
        text = env.lab.run("server", *vpnedu("status", "--flows")).stdout
        assert any(ln.split()[:2] == ["socks5-udp", client] for ln in text.splitlines()), text
        # Strangers to the relay port: another port of the client, and the server's own address.
        relay = [str(x) for x in out["relay"]]
        for host in ("client", "server"):
            r = env.lab.run(host, *env.lab.python("-c", STRANGER, *relay, APP_ADDRESS), timeout=20)
            assert r.stdout.startswith("nothing"), (host, r.stdout, r.stderr)
        dropped = [e["fields"]["reason"] for e in env.events("proxy.socks5.udp.dropped")
                   if e["fields"]["relay"] == ":".join(relay)]
        assert any(x.startswith("source port ") for x in dropped), dropped
        assert any(x.startswith("not the association's client (10.0.0.2)") for x in dropped), dropped
        done.touch()
        assert p.wait(10) == 0
    finally:
        done.touch()
        if p.poll() is None:
            p.kill()
    closed = [e["fields"] for e in env.events("proxy.flow.closed")
              if e["fields"].get("proto") == "socks5-udp" and e["fields"]["client"] == client]
    assert len(closed) == 2 and all(c["bytes_up"] > 0 and c["bytes_down"] > 0 for c in closed), closed
    assert all(c["reason"] == "control connection closed; 2 datagrams dropped" for c in closed), closed
