"""An independent Noise implementation (the `noiseprotocol` package) completes WireGuard's
handshake with vpnedu's core, in both roles, and exchanges transport data with it."""

import pytest
from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection

from vpnedu.events import EventBus, EventLog
from vpnedu.packet.ip import build_icmp_echo
from vpnedu.protocol import messages as m
from vpnedu.protocol import tai64n
from vpnedu.protocol.cookie import MacKeys, add_macs
from vpnedu.protocol.device import Device
from vpnedu.protocol.keys import generate_private_key, generate_psk, public_key
from vpnedu.protocol.suites import SUITES
from vpnedu.sim import FakeClock

REAL_SUITES = ["wireguard", "aes256gcm"]
EP = ("198.51.100.7", 40000)


def noise(suite, initiator: bool, static_priv: bytes, remote_pub: bytes | None, psk: bytes):
    s = SUITES[suite]
    c = NoiseConnection.from_name(s.construction)
    c.set_as_initiator() if initiator else c.set_as_responder()
    c.set_psks(psk=psk)
    c.set_prologue(s.identifier)
    c.set_keypair_from_private_bytes(NoiseKeypair.STATIC, static_priv)
    if remote_pub is not None:
        c.set_keypair_from_public_bytes(NoiseKeypair.REMOTE_STATIC, remote_pub)
    c.start_handshake()
    return c


def make_device(suite, clock):
    bus = EventBus(clock=clock.wall)
    return Device(generate_private_key(), suite=suite, events=bus, wall_offset=clock.wall_offset), bus


@pytest.mark.parametrize("suite", REAL_SUITES)
@pytest.mark.parametrize("with_psk", [False, True])
def test_noise_initiator_vpnedu_responder(suite, with_psk):
    clock = FakeClock()
    server, bus = make_device(suite, clock)
    log = EventLog(bus)
    client_priv, psk = generate_private_key(), (generate_psk() if with_psk else bytes(32))
    server.add_peer(public_key(client_priv), preshared_key=psk if with_psk else None,
                    allowed_ips=["10.0.0.2/32"])
    ini = noise(suite, True, client_priv, server.public_key, psk)

    payload = ini.write_message(tai64n.encode(clock.wall()))
    assert len(payload) == 32 + 48 + 28
    msg = m.HandshakeInitiation(0xCAFE, payload[:32], payload[32:80], payload[80:])
    data, _, _ = add_macs(SUITES[suite], msg.to_bytes(), MacKeys(SUITES[suite], server.public_key), None)
    assert len(data) == 148

    out = server.receive(data, EP, clock.now)
    assert len(out.datagrams) == 1, log.kinds()
    resp = m.HandshakeResponse.from_bytes(out.datagrams[0][0])
    assert resp.receiver == 0xCAFE
    assert ini.read_message(resp.ephemeral + resp.encrypted_nothing) == b""
    assert ini.handshake_finished

    # Transport data: noise encrypts with nonce 0, vpnedu decrypts and delivers the packet.
    ping = build_icmp_echo("10.0.0.2", "10.0.0.1", payload=b"x" * 20)  # 48 bytes: no padding needed
    assert len(ping) % 16 == 0
    ct = ini.encrypt(ping)
    got = server.receive(m.transport_header(resp.sender, 0) + ct, EP, clock.now)
    assert [p for _, p in got.packets] == [ping]
    assert "session.confirmed" in log.kinds()

    # And back: vpnedu encrypts, noise decrypts.
    reply = build_icmp_echo("10.0.0.1", "10.0.0.2", payload=b"y" * 20, reply=True)
    (dgram, dest), = server.send(server.peers[public_key(client_priv)], reply, clock.now)
    assert dest == EP
    hdr = m.TransportData.from_bytes(dgram)
    assert hdr.receiver == 0xCAFE and hdr.counter == 0
    assert ini.decrypt(hdr.encrypted_packet) == reply


@pytest.mark.parametrize("suite", REAL_SUITES)
@pytest.mark.parametrize("with_psk", [False, True])
def test_vpnedu_initiator_noise_responder(suite, with_psk):
    clock = FakeClock()
    client, bus = make_device(suite, clock)
    server_priv, psk = generate_private_key(), (generate_psk() if with_psk else bytes(32))
    server_pub = public_key(server_priv)
    peer = client.add_peer(server_pub, preshared_key=psk if with_psk else None, endpoint=EP,
                           allowed_ips=["10.0.0.0/24"])
    resp = noise(suite, False, server_priv, None, psk)

    (data, dest), = client.initiate(peer, clock.now)
    init = m.HandshakeInitiation.from_bytes(data)
    stamp = resp.read_message(init.ephemeral + init.encrypted_static + init.encrypted_timestamp)
    assert abs(tai64n.decode(stamp) - clock.wall()) < 0.05
    assert resp.noise_protocol.handshake_state.rs.public_bytes == client.public_key

    payload = resp.write_message(b"")
    assert resp.handshake_finished and len(payload) == 48
    r = m.HandshakeResponse(0xBEEF, init.sender, payload[:32], payload[32:])
    data, _, _ = add_macs(SUITES[suite], r.to_bytes(), MacKeys(SUITES[suite], client.public_key), None)
    out = client.receive(data, EP, clock.now)
    # The initiator confirms the session at once with an empty keepalive.
    (ka, _), = out.datagrams
    t = m.TransportData.from_bytes(ka)
    assert (t.receiver, t.counter) == (0xBEEF, 0)
    assert resp.decrypt(t.encrypted_packet) == b""

    ping = build_icmp_echo("10.0.0.2", "10.0.0.1", payload=b"z" * 20)
    (d, _), = client.send(peer, ping, clock.now)
    assert resp.decrypt(m.TransportData.from_bytes(d).encrypted_packet) == ping

    reply = build_icmp_echo("10.0.0.1", "10.0.0.2", payload=b"w" * 20, reply=True)
    got = client.receive(m.transport_header(init.sender, 0) + resp.encrypt(reply), EP, clock.now)
    assert [p for _, p in got.packets] == [reply]
