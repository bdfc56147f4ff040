"""``vpnedu course ...``: what the course notebooks show, as commands.

``vpnedu course sim`` runs the whole course on the simulated network as text (no root);
``tun`` and ``attack`` are the two steps the real lab runs inside a namespace;
``suites`` compares the cipher suites.  (The rest of the course is ``vpnedu lab``,
``vpnedu status`` and ``vpnedu events``.)
"""

from __future__ import annotations

import json

import click

from .. import report
from ..events import EventLog


@click.group("course")
def course_cli() -> None:
    """What the course notebooks show, as commands (the simulated lab needs no root)."""


@course_cli.command("tun")
@click.option("--name", default="tun-demo", show_default=True, help="Name of the TUN device to create.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (device and raw hex).")
@click.option("--sim", is_flag=True, help="Use a simulated host's in-memory TUN device (no root).")
def course_tun(name: str, as_json: bool, sim: bool) -> None:
    """Create a TUN device, ping an address routed into it, read the raw packet and decode it
    (notebook 01).  Without --sim: needs root, run it in a lab namespace
    ('ip netns exec vpnedu-client vpnedu course tun')."""
    from .interface import TunReading
    if sim:
        from .simulated import SimLab
        reading = SimLab().tun_demo(name)
    else:
        from .tun import read_one_packet_from_tun
        reading = TunReading.from_packet(name, read_one_packet_from_tun(name), "real TUN device")
    if as_json:
        click.echo(json.dumps({"device": reading.device, "raw": reading.raw.hex(), "mode": reading.mode}))
    else:
        click.echo(str(reading))


@course_cli.command("attack")
@click.argument("mode", type=click.Choice(["tamper", "replay"]))
@click.option("--server", required=True, help="HOST:PORT of the VPN server.")
@click.option("--timeout", default=10.0, show_default=True)
def course_attack(mode: str, server: str, timeout: float) -> None:
    """Wait for one data packet to the server, then send it a tampered or replayed copy
    (notebook 03; root: a packet socket).  Watch the server's
    'vpnedu events --kind packet.dropped': reason bad-mac, or replay."""
    from ..config import parse_endpoint
    from .attack import attack
    click.echo(json.dumps(attack(mode, parse_endpoint(server), timeout)))


@course_cli.command("suites")
@click.option("--packets", default=2000, show_default=True)
def course_suites(packets: int) -> None:
    """Compare the cipher suites: speed of the AEAD in this process, and bytes of overhead (notebook 03)."""
    from .suites import compare_suites
    for row in compare_suites(packets):
        click.echo(str(row))


@course_cli.command("sim")
@click.option("--suite", default="wireguard", show_default=True,
              type=click.Choice(["wireguard", "aes256gcm", "null-teaching"]))
@click.option("--split", is_flag=True, help="Split tunnel: only 10.0.0.0/24 through the VPN.")
def course_sim(suite: str, split: bool) -> None:
    """The whole course on the simulated network (no root): handshake, routes, pings, the
    app server's view, the NAT flow table, a tampered and a replayed packet, the journey of one
    packet, and throughput."""
    from .simulated import SimLab
    lab = SimLab(suite=suite)
    click.echo(lab.banner)
    before = lab.routes("client")
    lab.start_server()
    ladder = EventLog(lab.client_events, kinds=["handshake", "session"])
    lab.start_client(split=split)
    click.echo("\nhandshake (client's events):")
    for ev in ladder.events:
        click.echo(f"  {ev}")
    after = lab.routes("client")
    click.echo("\nclient routes:")
    for r in sorted(set(before) | set(after), key=(before + after).index):
        click.echo(("  - " if r not in after else "  + " if r not in before else "    ") + r)
    st = lab.status("client")
    if st["rules"]:
        click.echo("  the main table keeps its default route; policy routing sends the rest into the tunnel:")
        for line in st["routes_added"] + st["rules"]:
            click.echo(f"  + {line}")
    for dst in ("10.0.0.1", "192.0.2.80", "2001:db8:a::80"):
        click.echo(str(lab.ping("client", dst)))
    click.echo(str(lab.app_request()))
    click.echo(str(lab.app_request(family=6)))
    click.echo("\nflow table (server's NAT):")
    for line in report.flow_table(lab.flows()):
        click.echo(line)
    click.echo(f"\ntampered packet: {lab.tamper_next()}")
    click.echo(f"replayed packet: {lab.replay()}")
    mark = lab.last_hop()
    lab.ping("client", "192.0.2.80", count=1)
    click.echo("\nthe journey of one ping:")
    for hop in lab.trace(mark):
        click.echo(f"  {hop}")
    last = list(lab.traffic("vpnedu", seconds=2))[-1]
    click.echo(f"\nthroughput through the simulated tunnel: {last[1] * 8 / last[0] / 1e6:.1f} Mbit/s up, "
               f"{last[2] * 8 / last[0] / 1e6:.1f} Mbit/s down")
    lab.down()
