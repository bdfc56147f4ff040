"""Message layouts, and parsers that only ever raise the project's error type."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnedu.errors import ConfigError, KeyFormatError, MessageError
from vpnedu.packet.ip import IPv4Packet
from vpnedu.protocol import keys
from vpnedu.protocol import messages as m
from vpnedu import config


def test_sizes_match_the_wireguard_paper():
    assert len(m.HandshakeInitiation(1, bytes(32), bytes(48), bytes(28)).to_bytes()) == 148
    assert len(m.HandshakeResponse(1, 2, bytes(32), bytes(16)).to_bytes()) == 92
    assert len(m.CookieReply(1, bytes(24), bytes(32)).to_bytes()) == 64
    assert len(m.TransportData(1, 2, bytes(16)).to_bytes()) == 32


def test_header_layout_is_little_endian_with_reserved_zeros():
    d = m.HandshakeResponse(0x01020304, 0x0A0B0C0D, bytes(32), bytes(16)).to_bytes()
    assert d[:4] == b"\x02\x00\x00\x00"
    assert d[4:8] == bytes([4, 3, 2, 1]) and d[8:12] == bytes([0x0D, 0x0C, 0x0B, 0x0A])
    t = m.TransportData(7, 0x0102030405060708, b"x" * 16).to_bytes()
    assert t[:16] == b"\x04\x00\x00\x00\x07\x00\x00\x00" + bytes([8, 7, 6, 5, 4, 3, 2, 1])


@pytest.mark.parametrize("msg", [
    m.HandshakeInitiation(5, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16),
    m.HandshakeResponse(5, 6, b"e" * 32, b"n" * 16, b"1" * 16, b"2" * 16),
    m.CookieReply(9, b"n" * 24, b"c" * 32),
    m.TransportData(9, 12345, b"p" * 48),
])
def test_roundtrip(msg):
    assert m.parse(msg.to_bytes()) == msg


@pytest.mark.parametrize("data,words", [
    (b"", "too short"),
    (b"\x07\x00\x00\x00" + bytes(144), "unknown message type 7"),
    (b"\x01\x00\x01\x00" + bytes(144), "reserved"),
    (b"\x01\x00\x00\x00" + bytes(100), "must be 148 bytes, got 104"),
    (b"\x02\x00\x00\x00" + bytes(91), "must be 92 bytes"),
    (b"\x04\x00\x00\x00" + bytes(20), "at least 32 bytes"),
])
def test_malformed_messages_name_the_problem(data, words):
    with pytest.raises(MessageError, match=words):
        m.parse(data)


def test_from_bytes_refuses_the_wrong_type():
    with pytest.raises(MessageError, match="expected a handshake response, got a handshake initiation"):
        m.HandshakeResponse.from_bytes(m.HandshakeInitiation(1, bytes(32), bytes(48), bytes(28)).to_bytes())


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda t, rest: bytes([t, 0, 0, 0]) + rest, st.integers(0, 255),
                           st.binary(max_size=200))))
def test_every_message_parser_raises_only_messageerror(data):
    for fn in (m.parse, m.HandshakeInitiation.from_bytes, m.HandshakeResponse.from_bytes,
               m.CookieReply.from_bytes, m.TransportData.from_bytes, IPv4Packet.parse):
        try:
            fn(data)
        except MessageError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_key_decoder_raises_only_keyformaterror(text):
    try:
        assert len(keys.decode(text)) == 32
    except KeyFormatError:
        pass


_LINE = st.one_of(
    st.sampled_from(["[Interface]", "[Peer]", "PrivateKey = " + keys.encode(bytes(range(32))),
                     "PublicKey = " + keys.encode(bytes(32)), "AllowedIPs = 10.0.0.0/24",
                     "Endpoint = 1.2.3.4:5", "Address = 10.0.0.1/24", "ListenPort = 51820", "MTU = x"]),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12))
def test_config_parser_raises_only_configerror(lines):
    try:
        config.loads("\n".join(lines), source="fuzz.conf")
    except ConfigError as e:
        assert str(e).startswith("fuzz.conf")
