"""The ``vpnedu`` command line.

Every user error ends as one line on stderr -- ``vpnedu: error: <what is
wrong>; <how to fix it>`` -- and exit status 1 (77 when the user may not do it, e.g.
talk to root's daemon), never a traceback.  No message ever shows a private or
pre-shared key.

Which config file: ``-c FILE`` wins.  Without it, ``vpnedu server`` runs
``./server.conf`` (what ``server init`` wrote) and ``vpnedu client`` the one client
config in the current folder (a ``NAME.conf`` that ``server add-client`` wrote:
one ``[Peer]`` named ``server``); if there are several, it lists them.  Either
says which file it picked.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from . import __version__, report
from .course.commands import course_cli
from .errors import NotPermitted, VpneduError
from .protocol import keys as _keys
from .protocol.suites import SUITES, InsecureSuiteWarning, choose_aead


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, "-V", "--version", prog_name="vpnedu")
@click.pass_context
def cli(ctx) -> None:
    """vpnedu: a WireGuard-compatible VPN in Python that shows how it works.

    Start with 'vpnedu handshake-demo' (no root needed).
    """
    if ctx.invoked_subcommand is None:      # a bare 'vpnedu': the help, and success
        click.echo(ctx.get_help())


@cli.command()
def genkey() -> None:
    """Print a new private key (like 'wg genkey')."""
    click.echo(_keys.encode(_keys.generate_private_key()))


@cli.command()
def pubkey() -> None:
    """Read a private key on stdin, print its public key (like 'wg pubkey')."""
    from .files import KEY_LIMIT, read_stdin
    data = read_stdin("private key", KEY_LIMIT)
    if not data.strip():
        raise VpneduError("no private key on standard input", "pipe one in: vpnedu genkey | vpnedu pubkey")
    click.echo(_keys.encode(_keys.public_key(_keys.decode(data, "private key"))))


@cli.command()
def genpsk() -> None:
    """Print a new pre-shared key (like 'wg genpsk')."""
    click.echo(_keys.encode(_keys.generate_psk()))


@cli.command("handshake-demo")
@click.option("--suite", type=click.Choice(list(SUITES)), default="wireguard", show_default=True,
              help="Cipher suite both peers use.")
@click.option("--allow-null-teaching", is_flag=True,
              help="Permit the null-teaching suite (tunnel data NOT encrypted).")
def handshake_demo(suite: str, allow_null_teaching: bool) -> None:
    """Two in-memory peers: a handshake and a ping, every message's fields printed."""
    from .demo import handshake_demo as run

    if not run(suite, allow_insecure=allow_null_teaching, out=click.echo):
        raise VpneduError("the demo's ping did not get through", "please report this as a bug")


# ---------------------------------------------------------------------------- daemons
def _load_config(path: str, allow_null_teaching: bool):
    from . import config as _config
    cfg = _config.load(path)
    if allow_null_teaching:
        cfg.interface.allow_null_teaching = True
    return cfg


def _default_config(role: str) -> str:
    """The config a daemon runs when no -c is given: ./server.conf for the server, the one
    client config in the current folder for the client (see the module docstring)."""
    from pathlib import Path
    if role == "server":
        if not Path("server.conf").exists():
            raise VpneduError(f"no config given, and no server.conf in {os.getcwd()}",
                              "run 'vpnedu server -c FILE', or create one here with 'vpnedu server init'")
        click.echo("using ./server.conf (no -c given)")
        return "server.conf"
    found = _client_configs(Path("."))
    if len(found) == 1:
        click.echo(f"using ./{found[0]} (the only client config here; -c FILE picks another)")
        return found[0]
    if not found:
        raise VpneduError(f"no config given, and no client config in {os.getcwd()}",
                          "run 'vpnedu client -c FILE' (the server's 'vpnedu server add-client NAME' writes NAME.conf)")
    raise VpneduError(f"no config given, and {os.getcwd()} holds {len(found)} client configs: {', '.join(found)}",
                      f"pick one: vpnedu client -c {found[0]}")


def _client_configs(folder) -> list[str]:
    """The NAME.conf files in ``folder`` that 'server add-client' wrote: one [Peer], named server."""
    from . import config as _config
    from . import files
    out = []
    for p in sorted(folder.glob("*.conf")):
        if p.name == "server.conf":
            continue
        try:
            c = _config.loads(files.read_text(p, "config"), str(p))
        except VpneduError:
            continue
        if len(c.peers) == 1 and c.peers[0].name == "server":
            out.append(p.name)
    return out


def _print_events(bus, kinds: tuple[str, ...]) -> None:
    if kinds:
        bus.subscribe(lambda ev: click.echo(str(ev)), kinds=list(kinds))


def _node_options(f):
    f = click.option("--interface", "ifname", default="vpnedu0", show_default=True,
                     help="Name of the TUN device.")(f)
    f = click.option("--show", "show", multiple=True, metavar="KIND",
                     help="Print events of this kind (or prefix, e.g. handshake) as they happen.")(f)
    f = click.option("--allow-null-teaching", is_flag=True,
                     help="Permit CipherSuite = null-teaching (tunnel data NOT encrypted).")(f)
    f = click.option("--keylog", type=click.Path(dir_okay=False),
                     help="Write session secrets for Wireshark's WireGuard dissector (wg.keylog_file).")(f)
    f = click.option("--timers", "timers", metavar="NAME=S,...",
                     help="Shorten WireGuard's timers for a lab, e.g. rekey_after_time=5.")(f)
    f = click.option("--datapath", default="fast", show_default=True, metavar="fast|simple",
                     help="'simple': one packet at a time through the readable protocol core; 'fast': "
                          "batches with TSO/GRO and UDP GSO/GRO (turn one off with e.g. fast,no-tso).")(f)
    return f


@cli.group(invoke_without_command=True)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="Server config file.")
@click.option("--forwarding", type=click.Choice(["nat", "proxy", "none"]), default=None,
              help="How clients reach the outside world: kernel NAT (masquerade, the default), the "
                   "server's transport-layer proxy, or not at all. Overrides 'Forwarding =' in the config.")
@click.option("--proxy-idle", metavar="PROTO=S,...",
              help="Proxy idle timeouts, e.g. tcp=600,udp=30,icmp=30 (the defaults).")
@click.option("--socks-port", metavar="PORT|off",
              help="SOCKS5 for the peers on the tunnel addresses (default 1080). Overrides 'SocksPort ='.")
@click.option("--http-proxy-port", metavar="PORT|off",
              help="The HTTP proxy for the peers on the tunnel addresses (default 3128). Overrides "
                   "'HTTPProxyPort ='.")
@click.option("--dns-forwarder/--no-dns-forwarder", default=None,
              help="Answer the peers' DNS on the tunnel addresses, port 53 (default on). Overrides "
                   "'DNSForwarder ='.")
@_node_options
@click.pass_context
def server(ctx, config_path, forwarding, proxy_idle, socks_port, http_proxy_port, dns_forwarder, ifname, show,
           allow_null_teaching, keylog, timers, datapath) -> None:
    """Run the VPN server (or provision it: 'server init', 'server add-client')."""
    if ctx.invoked_subcommand is not None:
        return
    config_path = config_path or _default_config("server")
    from . import config as _config
    from .node.base import parse_timers
    from .node.server import Server
    from .proxy import parse_idle
    cfg = _load_config(config_path, allow_null_teaching)
    for key, value, flag in (("SocksPort", socks_port, "--socks-port"),
                             ("HTTPProxyPort", http_proxy_port, "--http-proxy-port"),
                             ("DNSForwarder", None if dns_forwarder is None else str(dns_forwarder).lower(),
                              "--dns-forwarder")):
        if value is not None:
            _config.override(cfg, key, value, flag)
    node = Server(cfg, ifname=ifname, forwarding=forwarding,
                  proxy_idle=parse_idle(proxy_idle), log=click.echo, keylog=keylog, timers=parse_timers(timers),
                  datapath=datapath)
    _print_events(node.events, show)

    def ready(n):
        click.echo(f"vpnedu server up: interface {n.ifname} {', '.join(map(str, n.cfg.interface.addresses))}, "
                   f"UDP port {n.listen_port}, {len(n.device.peers)} peer(s), suite {n.suite.name}, "
                   f"forwarding {n.forwarding}")
        for c in n.changes:
            click.echo(f"  {c}")
    node.run(ready, restore_signals=False)   # the process ends next: keep ignoring late signals
    click.echo("vpnedu server stopped; host restored")


@server.command("init")
@click.option("-c", "--config", "config_path", default="server.conf", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--endpoint", help="HOST[:PORT] where clients will reach this server.")
@click.option("--port", default=51820, show_default=True, type=click.IntRange(1, 65535))
@click.option("--subnet", default="10.0.0.0/24", show_default=True)
@click.option("--ipv6-prefix", "ipv6_prefix", metavar="PREFIX",
              help="The tunnel's IPv6 subnet (default: a random ULA fdXX:XXXX:XXXX::/64, RFC 4193).")
@click.option("--ipv4-only", is_flag=True, help="No IPv6 in the tunnel (the clients' IPv6 stays outside it).")
@click.option("--suite", type=click.Choice(list(SUITES)), default="wireguard", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing config.")
def server_init(config_path, endpoint, port, subnet, ipv6_prefix, ipv4_only, suite, force) -> None:
    """Write a server config with fresh keys (IPv4 and IPv6 tunnel addresses)."""
    from .provision import init_server
    ep = _endpoint(endpoint, port) if endpoint else None
    cfg = init_server(config_path, endpoint=ep, port=port, subnet=subnet, force=force, suite=suite,
                      ipv6=not ipv4_only, ipv6_subnet=ipv6_prefix)
    addrs = ", ".join(str(a) for a in cfg.interface.addresses)
    click.echo(f"wrote {config_path} (mode 0600): address {addrs}, UDP port {port}")
    click.echo(f"server public key: {_keys.encode(cfg.interface.public_key)}")


@server.command("add-client")
@click.argument("name")
@click.option("-c", "--config", "config_path", default="server.conf", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--endpoint", help="HOST[:PORT] of the server, if 'server init' was not told.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to write NAME.conf.")
@click.option("--split", is_flag=True, help="Route only the tunnel subnet through the VPN (split tunnel).")
@click.option("--dns", multiple=True, help="DNS server (or search domain) for the client config "
              "(default: the server's tunnel addresses, when its DNSForwarder is on).")
@click.option("--no-dns", "no_dns", is_flag=True, help="Write no DNS = line into the client config.")
@click.option("--qr", "qr_terminal", is_flag=True,
              help="Also print NAME.conf as a QR code, for WireGuard's phone apps to scan.")
@click.option("--qr-png", "qr_png", type=click.Path(dir_okay=False),
              help="Also write NAME.conf as a QR code into this PNG file (mode 0600: it holds the private key).")
def server_add_client(name, config_path, endpoint, out_dir, split, dns, no_dns, qr_terminal, qr_png) -> None:
    """Add a client: next free address, fresh keys, NAME.conf written."""
    from .node import control
    from .provision import add_client
    ep = _endpoint(endpoint, 51820) if endpoint else None
    if qr_png:
        from .qr import check_png_path
        check_png_path(qr_png)       # before anything is written: a bad path changes nothing
    if no_dns and dns:
        raise VpneduError("--dns and --no-dns contradict each other", "give one of them")
    path, peer, _ = add_client(config_path, name, out_dir=out_dir, endpoint=ep, split=split,
                               dns=[] if no_dns else (list(dns) or None))
    client_cfg = _load_config(str(path), False)
    addresses = client_cfg.interface.addresses
    what = " and ".join(str(a.ip) for a in addresses)
    click.echo(f"wrote {path} (mode 0600): {name}'s address in the tunnel is {what} "
               f"(Address = {', '.join(map(str, addresses))} in {path.name}: "
               + " and ".join(f"the /{a.network.prefixlen} says the whole {a.network}" for a in addresses)
               + " is on the tunnel)")
    click.echo(f"added [Peer] {name} to {config_path}: the server sends packets for "
               f"{' and '.join(map(str, peer.allowed_ips))} to "
               f"{name} (AllowedIPs = {', '.join(map(str, peer.allowed_ips))} in {os.path.basename(config_path)})")
    for sock in control.find_sockets():
        try:
            st = _ask(sock, {"cmd": "status"})
            if st.get("role") == "server":
                r = _ask(sock, {"cmd": "reload"})
                click.echo(f"told the running server ({st['interface']}): {r['added']} peer(s) added")
        except VpneduError as e:
            click.echo(f"note: could not tell the daemon on {sock} ({e}); restart it to use the new client")
    if qr_terminal or qr_png:
        _show_qr(str(path), qr_terminal, qr_png)


def _show_qr(path: str, on_terminal: bool, png: str | None) -> None:
    """Encode the config file at ``path`` -- its bytes exactly as written -- as a QR code, on the
    terminal and/or into ``png`` (see vpnedu/qr.py).  Only the code holds the private key: no
    line printed here shows it."""
    from . import files, qr
    data = files.read_bytes(path, "config", files.CONFIG_LIMIT).data
    code = qr.make(data)
    warn = qr.warning(data.decode("utf-8", "replace"))
    if warn:
        click.echo(f"vpnedu: warning: {warn}", err=True)
    if on_terminal:
        click.echo(f"{path} as a QR code (version {code.version}, {code.symbol_size(border=qr.BORDER)[0]} modules "
                   "square); scan it with WireGuard's app, 'Add a tunnel' > 'Scan from QR code':")
        click.echo(qr.terminal(code, color=sys.stdout.isatty()))
    if png:
        qr.save_png(code, png)
        click.echo(f"wrote {png} (mode 0600): {path} as a QR code; it holds the private key like the file itself")


def _endpoint(text: str, default_port: int) -> tuple[str, int]:
    import ipaddress

    from .config import parse_endpoint
    try:
        return str(ipaddress.ip_address(text)), default_port     # 203.0.113.2, 2001:db8::2
    except ValueError:
        pass                  # not a bare address: a name, or HOST:PORT / [v6]:PORT
    try:
        return parse_endpoint(text) if ":" in text else (text, default_port)
    except ValueError as e:
        raise VpneduError(f"--endpoint: {e}", "write HOST or HOST:PORT, e.g. 203.0.113.2:51820 or [2001:db8::2]:51820") from None


@cli.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Client config file (wg-quick format); default: the one NAME.conf here that "
                   "'server add-client' wrote.")
@click.option("--handshake-timeout", default=20.0, show_default=True, type=float,
              help="Give up if the server has not answered after this many seconds.")
@_node_options
def client(config_path, handshake_timeout, ifname, show, allow_null_teaching, keylog, timers, datapath) -> None:
    """Connect to a VPN server: TUN device, handshake, routes through the tunnel."""
    from .node.base import parse_timers
    from .node.client import Client
    config_path = config_path or _default_config("client")
    node = Client(_load_config(config_path, allow_null_teaching), ifname=ifname,
                  handshake_timeout=handshake_timeout, log=click.echo, keylog=keylog,
                  timers=parse_timers(timers), datapath=datapath)
    _print_events(node.events, show)

    def ready(n):
        click.echo(f"vpnedu client up: interface {n.ifname} {', '.join(map(str, n.cfg.interface.addresses))}, "
                   f"server {n.server.endpoint[0]}:{n.server.endpoint[1]}, suite {n.suite.name}")
    node.run(ready, restore_signals=False)   # the process ends next: keep ignoring late signals
    click.echo("vpnedu client stopped; host restored")


# ---------------------------------------------------------------------------- watching
def _not_permitted(path, folder: bool = False) -> NotPermitted:
    """Why this user cannot open the control socket ``path`` (or any socket in the run
    folder ``path``, with ``folder``): whose it is, and what to run instead."""
    import pwd
    from pathlib import Path
    ctx = click.get_current_context(silent=True)
    cmd = ctx.command_path if ctx is not None else "vpnedu status"
    p = Path(path)
    # The first folder on the way that this user may not enter (/run/vpnedu is 0700, root's).
    way = [*reversed(p.parents), *([p] if folder else [])]
    blocked = next((d for d in way if not os.access(d, os.X_OK)), None)
    what = blocked or p
    try:
        st = what.stat()
        owner = pwd.getpwuid(st.st_uid).pw_name
        detail = f"{what} is mode {st.st_mode & 0o777:04o}, owner {owner}"
    except (OSError, KeyError):
        owner, detail = "root", f"{what} is closed to you"
    how = f"run it as root: sudo {cmd}" if owner == "root" else f"run it as {owner} (or as root)"
    subject = f"the daemons' control sockets in {p} are" if folder else f"the control socket {p} is"
    return NotPermitted(f"{subject} only for {owner} ({detail})", how)


def _ask(path, req: dict) -> dict:
    """:func:`vpnedu.node.control.request`, with a user who may not open the socket told so."""
    from .node import control
    try:
        return control.request(path, req)
    except PermissionError:
        raise _not_permitted(path) from None


def _sockets(ifname: str | None, sock: str | None, every: bool = False) -> list:
    """The control sockets to talk to: ``--socket``, else the daemon of ``--interface``, else the
    only one (``every``: all) in this network namespace.  A run folder this user may not enter
    is said so: the daemons there are root's, and "no daemon is running" would be wrong."""
    from .net import journal
    from .node import control
    if sock:
        return [control.pick_socket(ifname, sock)]
    paths = control.find_sockets(ifname)
    if not paths:
        if journal.RUN_DIR.exists() and not os.access(journal.RUN_DIR, os.X_OK):
            raise _not_permitted(journal.RUN_DIR, folder=True)
        control.pick_socket(ifname)  # raises the friendly error
    return paths if every else paths[:1]


@cli.command()
@click.option("--interface", "ifname", help="Which daemon (default: every one in this network namespace).")
@click.option("--socket", "sock", type=click.Path(), help="Control socket path.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--flows", is_flag=True, help="Also list the server's forwarded flows (proxy or NAT).")
def status(ifname, sock, as_json, flows) -> None:
    """Show running daemons like 'wg show': peers, endpoints, latest handshake, transfer."""
    import json
    paths = _sockets(ifname, sock, every=True)
    for i, path in enumerate(paths):
        st = _ask(path, {"cmd": "status"})
        if i:
            click.echo("")
        click.echo(json.dumps(st, indent=2, default=str) if as_json else report.format_status(st))
        if flows and not as_json:
            click.echo("")
            click.echo(report.format_flows(st))


@cli.command()
@click.option("--interface", "ifname", help="Which daemon (default: the only one in this network namespace).")
@click.option("--socket", "sock", type=click.Path(), help="Control socket path.")
def reload(ifname, sock) -> None:
    """Re-read a running daemon's config file, keeping live sessions (like 'wg syncconf')."""
    r = _ask(_sockets(ifname, sock)[0], {"cmd": "reload"})
    if "error" in r:
        raise VpneduError(f"reload failed: {r['error']}", "fix the config file, then run 'vpnedu reload' again")
    click.echo(f"reloaded: {r['added']} peer(s) added, {r['removed']} removed, {r.get('updated', 0)} updated")


@cli.command()
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind or prefix (repeatable).")
@click.option("--layer", "layers", multiple=True, help="Only events of this layer (repeatable).")
@click.option("--interface", "ifname", help="Which daemon.")
@click.option("--socket", "sock", type=click.Path(), help="Control socket path.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=int, default=0, help="Stop after this many events.")
@click.option("--recent", type=click.IntRange(min=0), default=None, metavar="N",
              help="First print the last N events the daemon kept (0: all it kept; it keeps the last 256 "
                   "that are not per-packet), then follow.")
@click.option("--list", "list_kinds", is_flag=True, help="List every event kind and what it means.")
def events(kinds, layers, ifname, sock, as_json, count, recent, list_kinds) -> None:
    """Tail a running daemon's live event stream (--recent N: its recent history first).

    Events go to stdout; what the command is doing (the history, then waiting) to stderr, so
    '--json | jq' reads only events."""
    import json
    from .events import CATALOGUE, Event
    if list_kinds:
        for k, v in CATALOGUE.items():
            click.echo(f"{k:<32} {v}")
        return
    from .node import control
    path = _sockets(ifname, sock)[0]
    what = (f"events of kind{'s' if len(kinds) > 1 else ''} " + ", ".join(kinds)) if kinds else "events of every kind"
    if layers:
        what += f" in layer{'s' if len(layers) > 1 else ''} " + ", ".join(layers)
    history = (True if recent == 0 else recent) if recent is not None else False
    n = 0
    with control.EventSubscription(path, list(kinds) or None, list(layers) or None, history=history) as sub:
        if recent is not None:
            if sub.history:
                click.echo(f"vpnedu events: the {sub.history} most recent {what} the daemon kept:", err=True)
            else:
                click.echo(f"vpnedu events: the daemon kept no {what} (it keeps these kinds: "
                           f"{', '.join(control.HISTORY_KINDS)})", err=True)
        waiting = f"vpnedu events: waiting for {what} from {path} (Ctrl-C stops)"
        if not sub.history:
            click.echo(waiting, err=True)
        for i, d in enumerate(sub, 1):
            click.echo(json.dumps(d) if as_json else str(Event.from_dict(d)))
            n += 1
            if count and n >= count:
                break
            if i == sub.history:
                click.echo(waiting, err=True)
        else:
            click.echo("vpnedu events: the daemon closed the stream (it stopped)", err=True)


# ---------------------------------------------------------------------------- the lab
@cli.group()
def lab() -> None:
    """The namespace lab: client, internet router, server and app server on one machine (root)."""


def _lab_options(f):
    f = click.option("--prefix", default="vpnedu-", show_default=True,
                     help="Namespace name prefix (keeps several labs apart).")(f)
    return f


@lab.command("up")
@_lab_options
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 50))
@click.option("-v", "--verbose", is_flag=True, help="Print every ip command.")
@click.option("--loss", type=click.FloatRange(0, 100), default=0, help="Percent of VPN datagrams the router drops.")
@click.option("--dup", type=click.FloatRange(0, 100), default=0, help="Percent it sends twice.")
@click.option("--reorder", type=click.FloatRange(0, 100), default=0, help="Percent it holds back (reordering).")
@click.option("--delay", default="0ms", help="Delay added to each VPN datagram, e.g. 20ms.")
@click.option("--mtu", "mtus", multiple=True, metavar="LINK=N",
              help="The MTU of one of the router's links: client (the clients' LAN), server or app, "
                   "e.g. --mtu server=1280 (the others: 1500).")
@click.option("--pmtu-black-hole", is_flag=True,
              help="The router drops ICMP 'fragmentation needed' / 'packet too big', as many firewalls do.")
def lab_up(prefix, clients, verbose, loss, dup, reorder, delay, mtus, pmtu_black_hole) -> None:
    """Create the lab's namespaces, cables, addresses and app server (optionally a bad network)."""
    from .netns_lab.topology import Lab
    try:
        delay_ms = float(delay[:-2]) if delay.endswith("ms") else float(delay) * 1000
    except ValueError:
        raise VpneduError(f"--delay {delay!r} is not a time", "write e.g. 20ms or 0.02") from None
    link_mtu = {}
    for m in mtus:
        link, _, n = m.partition("=")
        if not n.isdigit():
            raise VpneduError(f"--mtu {m!r} is not LINK=N", "write e.g. --mtu server=1280")
        link_mtu[link.strip()] = int(n)
    lb = Lab(prefix=prefix, clients=clients, verbose=verbose, log=click.echo, link_mtu=link_mtu)
    lb.up()
    click.echo(f"lab up: namespaces {', '.join(lb.ns(h) for h in lb.hosts())}")
    for link, n in link_mtu.items():
        click.echo(f"the {link} link's MTU is {n}")
    if pmtu_black_hole:
        lb.pmtu_black_hole()
        click.echo("the internet router drops ICMP 'fragmentation needed' and 'packet too big' (a PMTU black hole)")
    if loss or dup or reorder or delay_ms:
        lb.impair(loss, dup, reorder, delay_ms)
        click.echo(f"the internet router now impairs UDP port 51820: {loss:g}% loss, {dup:g}% duplicated, "
                   f"{reorder:g}% reordered, +{delay_ms:g} ms")
    click.echo(f"run commands on a host with: ip netns exec {lb.ns('client')} <command>")


@lab.command("down")
@_lab_options
def lab_down(prefix) -> None:
    """Stop the lab's processes and delete its namespaces."""
    from .netns_lab.topology import Lab
    lb = Lab.load(prefix)
    existed = lb.exists()
    lb.down()
    click.echo("lab down" if existed else "no lab was up; nothing left behind")


@lab.command("status")
@_lab_options
def lab_status(prefix) -> None:
    """Show the lab's hosts and their addresses."""
    from .netns_lab.topology import Lab
    lb = Lab.load(prefix)
    if not lb.exists():
        raise VpneduError(f"the lab '{prefix}' is not up", "start it with 'vpnedu lab up'")
    for h in lb.hosts():
        addrs = lb.run(h, "ip", "-brief", "-4", "addr").stdout.split("\n")
        shown = "; ".join(" ".join(a.split()[::2]) for a in addrs if a.strip() and not a.startswith("lo"))
        click.echo(f"{h:<9} {lb.ns(h):<20} {shown}")
    from .netns_lab.impair import describe, running
    imp = running(lb._procs.get("impair"))
    click.echo(f"the internet router impairs UDP port {imp.port}: {describe(imp)}" if imp
               else "the internet router forwards everything unimpaired")


@lab.command("demo")
@_lab_options
@click.option("--suite", type=click.Choice(list(SUITES)), default="wireguard", show_default=True)
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards.")
@click.option("--forwarding", type=click.Choice(["nat", "proxy", "both"]), default="both", show_default=True,
              help="The server's forwarding mode; 'both' runs the request through NAT, then the proxy.")
def lab_demo(prefix, suite, keep, forwarding) -> None:
    """The seed's demo, narrated step by step: routes, TUN, pings, HTTP via the server, capture."""
    from .netns_lab.demo import Demo
    from .netns_lab.topology import Lab
    res = Demo(Lab(prefix=prefix, log=click.echo), out=click.echo, suite=suite, keep=keep,
               forwarding=forwarding).run()
    if not res.ok:
        raise VpneduError("the demo did not show what it should (see the steps above)",
                          "run 'vpnedu lab down' and try again; report it if it persists")


# ---------------------------------------------------------------------------- benchmarks
@cli.command()
@click.option("--quick", is_flag=True, help="One round of 1 s per test: a correctness run (about 90 s), not numbers.")
@click.option("--rounds", type=click.IntRange(1, 20), help="Rounds (paths alternate within each); default 3.")
@click.option("--seconds", type=click.IntRange(1, 120), help="Seconds per iperf3 test; default 10.")
@click.option("--paths", help="Comma-separated (';' when a spec has commas) subset of: bare, vpnedu-wireguard, "
                              "vpnedu-wireguard-simple, vpnedu-aes256gcm, vpnedu-null-teaching, wireguard-go, "
                              "openvpn; or vpnedu-SUITE@DATAPATH (e.g. vpnedu-wireguard@fast,no-tun-gro), "
                              "vpnedu@TREE (another vpnedu source tree, e.g. a git worktree of an older commit), "
                              "wireguard-go@PATH (another wireguard-go build).")
@click.option("--tests", "tests_", help="Comma-separated subset of: tcp1_up, tcp1_down, tcp4_up, tcp4_down.")
@click.option("--topology", type=click.Choice(["direct", "router"]), default="direct", show_default=True,
              help="direct: a veth cable per client straight into the server; router: across the lab's "
                   "router namespace (a forwarding hop that favours UDP GSO bursts).")
@click.option("--json", "json_path", is_flag=False, flag_value="-", default="bench.json", show_default=True,
              metavar="[FILE]", help="Write the results as JSON to FILE; a bare --json writes them to stdout "
                                     "(and the table to stderr).")
@click.option("--chart", "--png", "png_path", type=click.Path(dir_okay=False), default="bench.png",
              show_default=True, help="Bar chart of the medians (PNG).")
@click.option("--prefix", default="vb-", show_default=True, help="Namespace name prefix of the bench lab.")
@click.option("--proxies", is_flag=True,
              help="Instead: one 20 MiB download through NAT, SOCKS5, HTTP CONNECT and the transparent proxy, "
                   "side by side (router topology), then 500 SOCKS5 connections at once.")
def bench(quick, rounds, seconds, paths, tests_, topology, json_path, png_path, prefix, proxies) -> None:
    """Throughput, RTT, CPU/GB, RSS and handshake rate: vpnedu vs wireguard-go vs OpenVPN vs bare (root)."""
    from .bench import TESTS, Bench, Settings, chart, table
    from .bench.tunnels import spec_problem
    from .netns_lab.topology import Lab
    from .node.base import has_net_admin
    if proxies:
        given = [f for f, v in (("--seconds", seconds), ("--paths", paths), ("--tests", tests_),
                                ("--topology", topology != "direct")) if v]
        if given:
            raise VpneduError(f"--proxies takes no {', '.join(given)}: it downloads one file four ways on the "
                              "router topology", "leave them out (--quick, --rounds, --json and --prefix apply)")
        return _bench_proxies(quick, rounds, json_path, prefix)
    s = Settings.quick() if quick else Settings()
    s.topology = topology
    if rounds:
        s.rounds = rounds
    if seconds:
        s.seconds = seconds
    if paths:
        wanted = [p.strip() for p in paths.split(";" if ";" in paths else ",") if p.strip()]
        if not wanted:
            raise VpneduError(f"--paths {paths!r} names no path", "give e.g. --paths bare,vpnedu-wireguard")
        for p in wanted:
            problem = spec_problem(p)
            if problem:
                raise VpneduError(f"--paths: {problem}")
        if len(set(wanted)) != len(wanted):
            raise VpneduError(f"--paths {paths!r} names a path twice", "name each path once")
        s.paths = wanted
    if tests_:
        s.tests = [t.strip() for t in tests_.split(",") if t.strip()]
        if not s.tests or any(t not in TESTS for t in s.tests):
            raise VpneduError(f"--tests {tests_!r}", "choose from: " + ", ".join(TESTS))
    if not has_net_admin():
        raise VpneduError("vpnedu bench needs root: it builds a namespace lab", "run it with sudo")
    lab = Lab(prefix=prefix, clients=s.concurrency_clients, topology=topology, log=lambda m: None)
    res, say = _run_bench(lab, lambda say: Bench(s, lab, log=say), table, json_path)
    why = chart(res, png_path)
    say("")
    say(f"wrote {'the JSON to stdout' if json_path == '-' else json_path}"
        + (f" and {png_path}" if why is None else f" (no chart: {why})"))


def _run_bench(lab, make, table, json_path: str):
    """Bring ``lab`` up, run the benchmark ``make(say)`` builds, always take the lab down; print
    its table and write its JSON (``json_path`` "-": to stdout, and everything else to stderr).
    Returns the results and the ``say`` that prints beside them."""
    import json as _json
    to_stdout = json_path == "-"
    say = (lambda m: click.echo(m, err=True)) if to_stdout else click.echo
    try:
        lab.up()
        res = make(say).run()
    finally:
        lab.down()
    say("")
    say(table(res))
    data = _json.dumps(res.to_json(), indent=2)
    if to_stdout:
        click.echo(data)
    else:
        with open(json_path, "w") as f:
            f.write(data + "\n")
    return res, say


def _bench_proxies(quick: bool, rounds: int | None, json_path: str, prefix: str) -> None:
    from .bench.proxies import ProxyBench, ProxySettings, table
    from .netns_lab.topology import Lab
    from .node.base import has_net_admin
    if not has_net_admin():
        raise VpneduError("vpnedu bench needs root: it builds a namespace lab", "run it with sudo")
    s = ProxySettings.quick() if quick else ProxySettings()
    if rounds:
        s.rounds = rounds
    lab = Lab(prefix=prefix, topology="router", log=lambda m: None)
    _run_bench(lab, lambda say: ProxyBench(s, lab, log=say), table, json_path)
    if json_path != "-":
        click.echo(f"\nwrote {json_path}")


# ---------------------------------------------------------------------------- configs and captures
@cli.group()
def conf() -> None:
    """Read, check and convert wg-quick configuration files."""


@conf.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def conf_check(path) -> None:
    """Check a config and summarise it."""
    from . import config as _config
    from .node import wgquick
    c = _config.load(path)
    if _config.looks_like_server(c):
        _config.check_server(c)
    pub = c.interface.public_key
    click.echo(f"{path}: OK, suite {c.interface.cipher_suite}, "
               f"address {', '.join(map(str, c.interface.addresses)) or '(none)'}, "
               f"public key {_keys.encode(pub) if pub else '(no private key)'}, {len(c.peers)} peer(s)")
    itf = c.interface
    if itf.table:
        meaning = {"off": "the client adds no routes", "auto": "the client's routes go into the main table",
                   "main": "the client's routes go into the main table"}
        click.echo(f"  Table = {itf.table}: "
                   + meaning.get(itf.table, f"the client's routes go into table {itf.table}, none into main"))
    if itf.fwmark:
        click.echo(f"  FwMark = {itf.fwmark:#x}: the tunnel's UDP packets carry this mark")
    if itf.mtu:
        click.echo(f"  MTU = {itf.mtu}: the tunnel device's MTU (without it the daemon measures the path)")
    if not itf.clamp_mss:
        click.echo("  ClampMSS = false: a server in nat mode leaves the MSS of forwarded TCP as it is")
    if itf.dns:
        from .net.resolver import split
        servers, domains = split(itf.dns)
        click.echo(f"  DNS = {', '.join(itf.dns)}: the client uses "
                   + (f"the name server(s) {', '.join(servers)}" if servers else "the host's name servers")
                   + (f" and searches {', '.join(domains)}" if domains else "") + " while it runs")
    hooks = [f"{len(v)} {k}" for k, v in itf.hooks.items() if v]
    if hooks:
        why = wgquick.hook_refusal(c)
        click.echo(f"  hooks: {', '.join(hooks)} (run with bash -c, %i = the interface); "
                   + (f"a daemon would refuse them: {why}" if why else "allowed: root's file, writable only by root"))
    for note in wgquick.notes(c, "<interface>"):
        click.echo(f"  {note}")


@conf.command("import")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here (mode 0600) instead of stdout.")
@click.option("--address", multiple=True, help="Tunnel address to add (wg showconf output has none).")
def conf_import(path, output, address) -> None:
    """Take a wg-quick file or 'wg showconf' output and write it as a vpnedu config."""
    import ipaddress
    from . import config as _config
    from .files import CONFIG_LIMIT, read_stdin
    text = read_stdin("config", CONFIG_LIMIT) if path == "-" else None
    c = _config.loads(text, "<stdin>") if text is not None else _config.load(path)
    for a in address:
        try:
            c.interface.addresses.append(ipaddress.ip_interface(a))
        except ValueError:
            raise VpneduError(f"--address {a!r} is not an address with prefix", "e.g. --address 10.0.0.2/24") from None
    if output:
        _config.save(c, output)
        click.echo(f"wrote {output} (mode 0600)")
    else:
        click.echo(_config.dumps(c), nl=False)


@conf.command("qr")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--png", "png", type=click.Path(dir_okay=False), help="Write the QR code into this PNG file "
              "(mode 0600) instead of printing it.")
def conf_qr(path, png) -> None:
    """Show a client config as a QR code (the file's bytes as they are), for WireGuard's apps."""
    from . import config as _config
    from .qr import check_png_path
    if png:
        check_png_path(png)
    _config.load(path)       # a config vpnedu refuses is not worth scanning: its error, in one line
    _show_qr(path, not png, png)


@conf.command("export")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--wg", "wg_format", is_flag=True, help="Only what 'wg setconf' reads (like 'wg-quick strip').")
def conf_export(path, wg_format) -> None:
    """Print a vpnedu config in wg-quick format (or wg(8) format)."""
    from . import config as _config
    c = _config.load(path)
    if c.interface.cipher_suite != "wireguard":
        click.echo(f"vpnedu: warning: CipherSuite {c.interface.cipher_suite} is vpnedu-only; "
                   "WireGuard peers cannot use this config", err=True)
    click.echo(_config.dumps_wg(c) if wg_format else _config.dumps(c), nl=False)


@cli.command()
@click.option("-i", "--interface", "iface", default="eth0", show_default=True, help="Outer interface to record.")
@click.option("-w", "--write", "out", type=click.Path(dir_okay=False), help="Record to this pcap file.")
@click.option("-r", "--read", "pcap", type=click.Path(exists=True, dir_okay=False), help="Decode this pcap file.")
@click.option("--port", default=51820, show_default=True, help="The tunnel's UDP port.")
@click.option("--keylog", type=click.Path(exists=True, dir_okay=False),
              help="With -r: decrypt using a key log from --keylog.")
@click.option("-c", "--count", default=0, help="With -w: stop after this many packets.")
@click.option("--duration", default=0.0, help="With -w: stop after this many seconds.")
def capture(iface, out, pcap, port, keylog, count, duration) -> None:
    """Record the tunnel's outer packets (tcpdump), or decode a recording (tshark's WireGuard dissector)."""
    from . import capture as cap
    if pcap:
        for row in cap.decode(pcap, port, keylog):
            click.echo(cap.describe(row))
        return
    if not out:
        raise VpneduError("nothing to do", "record with -w FILE, or decode with -r FILE [--keylog KEYLOG]")
    cap.record(iface, out, port, count, duration, echo=click.echo)


@cli.command()
def cleanup() -> None:
    """Undo whatever a crashed vpnedu left in this network namespace (routes, devices, NAT...)."""
    from .net.journal import recover_all
    n = recover_all(click.echo)
    click.echo(f"cleanup: undid {n} change(s)" if n else "cleanup: nothing to undo")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    prefix = "WARNING" if issubclass(category, InsecureSuiteWarning) else "warning"
    click.echo(f"vpnedu: {prefix}: {message}", err=True)


# ---------------------------------------------------------------------------- the course (vpnedu/course/)
cli.add_command(course_cli)



# ---------------------------------------------------------------------------- lab exercises (vpnedu/exercises/)
@cli.group("labs")
def labs_cli() -> None:
    """Classroom lab exercises: students build parts of the VPN; checks say at once if they are right."""


@labs_cli.command("list")
def labs_list() -> None:
    """The exercises, their notebooks and what each teaches."""
    from .exercises import EXERCISES
    for ex in EXERCISES.values():
        click.echo(f"{ex.name:<8} {ex.notebook:<28} ~{ex.minutes} min  {ex.goal}")


@labs_cli.command("build")
@click.option("--out", "out_dir", default="labs-build", show_default=True, type=click.Path(file_okay=False),
              help="Writes OUT/student/*.ipynb, OUT/instructor/*.ipynb and OUT/nbgrader/source/.")
@click.option("--source", "source_dir", type=click.Path(file_okay=False, exists=True),
              help="The source notebooks (default: the exercises/ folder of this checkout).")
def labs_build(out_dir, source_dir) -> None:
    """Make the student version (solutions stripped) and the instructor version of every exercise."""
    from .exercises.build import build
    written = build(out_dir, source_dir)
    for kind, paths in written.items():
        click.echo(f"{kind:<10} {len(paths)} notebook(s) in {os.path.join(out_dir, kind)}")


@labs_cli.command("check")
@click.argument("notebooks", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--kernel", "kernel_name", help="Jupyter kernel to run them in (default: the notebook's own).")
def labs_check(notebooks, kernel_name) -> None:
    """Run students' notebooks headless and print each check's verdict and the points (exit 1 if any failed)."""
    from .exercises.grade import grade_notebook
    failed = 0
    for path in notebooks:
        grades = grade_notebook(path, kernel_name)
        total = sum(g.points for g in grades)
        click.echo(f"{path}: {sum(g.score for g in grades):g}/{total:g} points")
        for g in grades:
            click.echo(f"  [{g.grade_id}] " + g.verdict.replace("\n", "\n    "))
        failed += sum(not g.ok for g in grades)
    if failed:
        raise VpneduError(f"{failed} check(s) did not pass", "the verdicts above name the case and give a hint")


_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every VpneduError into one line."""
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", InsecureSuiteWarning)
    try:
        try:
            choose_aead(os.environ.get("VPNEDU_AEAD"))   # which library makes the AEAD calls
            cli.main(args=argv, prog_name="vpnedu", standalone_mode=False)
        except VpneduError as e:
            from .node.control import AccessRefused
            if isinstance(e, AccessRefused) and e.by_system and e.path is not None:
                raise _not_permitted(e.path) from None   # whose socket it is, and what to run
            raise
    except VpneduError as e:
        click.echo(f"vpnedu: error: {e}", err=True)
        return e.exit_code
    except _NoArgsIsHelp as e:   # a bare 'vpnedu conf': its help is what was asked for
        click.echo(e.ctx.get_help())
        return 0
    except PermissionError as e:  # the system said no: who may, not a bug report
        click.echo(f"vpnedu: error: permission denied{f' on {e.filename}' if e.filename else ''}; "
                   "run it as the owner of the file, or as root", err=True)
        return NotPermitted.exit_code
    except click.exceptions.Abort:
        click.echo("vpnedu: interrupted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"vpnedu: error: {e.format_message()} (see 'vpnedu --help')", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("vpnedu: interrupted", err=True)
        return 130
    except Exception as e:  # a bug: still one line, with the traceback on request
        if os.environ.get("VPNEDU_DEBUG"):
            raise
        click.echo(f"vpnedu: internal error: {type(e).__name__}: {e} (this is a bug; set VPNEDU_DEBUG=1 "
                   "to see the traceback and please report it)", err=True)
        return 70
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
