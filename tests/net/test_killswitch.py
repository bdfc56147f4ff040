"""The kill switch and the IPv6 block without root: the config keys (strict values, one-line
errors, written only when on), what a config asks for (:func:`vpnedu.net.killswitch.plan`), and
the nftables text the table is built from.  The root tests (tests/lab/test_leak.py,
tests/node/test_killswitch_root.py) install that text for real and watch the wire."""

import ipaddress

import pytest

from vpnedu import config, report
from vpnedu.errors import ConfigError
from vpnedu.net import killswitch
from vpnedu.node import wgquick
from vpnedu.protocol import keys

PRIV = keys.encode(keys.generate_private_key())
PUB = keys.encode(keys.public_key(keys.generate_private_key()))
EP4 = ("203.0.113.2", 51820)
EP6 = ("2001:db8:5::2", 51820)
DUAL = ["0.0.0.0/0", "::/0"]
V4 = ["0.0.0.0/0"]


def client(*lines: str, allowed: str = "0.0.0.0/0, ::/0") -> str:
    return (f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.2/24\n" + "".join(f"{x}\n" for x in lines)
            + f"\n[Peer]\nPublicKey = {PUB}\nAllowedIPs = {allowed}\nEndpoint = 203.0.113.2:51820\n")


def itf(*lines: str) -> config.InterfaceConfig:
    return config.loads(client(*lines), "c.conf").interface


# ------------------------------------------------------------------------------- the config keys
@pytest.mark.parametrize("value, expected", [
    ("true", "on"), ("True", "on"), ("yes", "on"), ("ON", "on"),
    ("false", "off"), ("no", "off"), ("Off", "off"), ("lan", "lan"), ("LAN", "lan")])
def test_killswitch_values(value, expected):
    assert itf(f"KillSwitch = {value}").kill_switch == expected


@pytest.mark.parametrize("value, expected", [
    ("auto", "auto"), ("AUTO", "auto"), ("true", "on"), ("yes", "on"), ("on", "on"),
    ("false", "off"), ("no", "off"), ("off", "off")])
def test_block_ipv6_values(value, expected):
    assert itf(f"BlockIPv6 = {value}").block_ipv6 == expected


@pytest.mark.parametrize("line, key", [
    ("KillSwitch = maybe", "KillSwitch"), ("KillSwitch = 1", "KillSwitch"), ("KillSwitch = auto", "KillSwitch"),
    ("KillSwitch =", "KillSwitch"), ("BlockIPv6 = perhaps", "BlockIPv6"), ("BlockIPv6 = lan", "BlockIPv6"),
    ("blockipv6 = enabled", "BlockIPv6")])
def test_a_bad_value_is_one_line_naming_the_line_the_key_and_the_fix(line, key):
    with pytest.raises(ConfigError) as e:
        config.loads(client(line), "c.conf")
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(f"c.conf:4: {key}: ") and "is not one of: true, yes, on, false, no, off" in text, text
    assert f"write {key} = " in e.value.fix, e.value.fix


def test_written_only_when_not_the_default_so_a_plain_file_stays_a_wg_quick_file():
    plain = config.loads(client("KillSwitch = off", "BlockIPv6 = auto"))
    text = config.dumps(plain)
    assert "KillSwitch" not in text and "BlockIPv6" not in text
    for lines, want in ((("KillSwitch = yes",), ["KillSwitch = true"]),
                        (("KillSwitch = lan", "BlockIPv6 = no"), ["KillSwitch = lan", "BlockIPv6 = false"]),
                        (("BlockIPv6 = on",), ["BlockIPv6 = true"])):
        cfg = config.loads(client(*lines))
        text = config.dumps(cfg)
        assert [x for x in text.splitlines() if x.startswith(("KillSwitch", "BlockIPv6"))] == want
        assert config.dumps(config.loads(text)) == text                  # reads back the same
        assert "KillSwitch" not in config.dumps_wg(cfg) and "BlockIPv6" not in config.dumps_wg(cfg)
    assert {"KillSwitch", "BlockIPv6"} <= set(config.VPNEDU_KEYS)       # WireGuard's apps would refuse them


def test_a_server_says_it_does_not_apply_them():
    cfg = config.loads(client("KillSwitch = true", "BlockIPv6 = false"), "s.conf")
    notes = wgquick.notes(cfg, "vpnedu0", "server")
    assert [n.split(" in ")[0] for n in notes] == ["note: KillSwitch", "note: BlockIPv6"], notes
    assert wgquick.notes(cfg, "vpnedu0", "client") == []


# ------------------------------------------------------------------------------- what is asked for
def test_off_by_default_and_for_a_dual_stack_or_split_tunnel():
    for allowed in (DUAL, ["10.0.0.0/24"], ["10.0.0.0/24", "fd00::/64"]):
        assert killswitch.plan("vpnedu0", itf(), allowed, EP4, ipv6=True) is None


def test_an_ipv4_only_full_tunnel_blocks_ipv6_by_default():
    g = killswitch.plan("vpnedu0", itf(), V4, EP4, ipv6=True, lan=lambda fam: {6: ["2001:db8:c::/64"]}[fam])
    assert g.families == (6,) and g.reason.startswith("BlockIPv6 = auto")
    assert g.lan == ("2001:db8:c::/64",)        # what a ::/0 tunnel would also reach directly
    # ... but not without IPv6 on the host, not with BlockIPv6 = false, not with Table = off.
    assert killswitch.plan("vpnedu0", itf(), V4, EP4, ipv6=False) is None
    assert killswitch.plan("vpnedu0", itf("BlockIPv6 = false"), V4, EP4, ipv6=True) is None
    assert killswitch.plan("vpnedu0", itf("Table = off"), V4, EP4, ipv6=True) is None
    # BlockIPv6 = true: whatever AllowedIPs say (Table = off too).
    for allowed in (V4, ["10.0.0.0/24"], DUAL):
        assert killswitch.plan("vpnedu0", itf("BlockIPv6 = true", "Table = off"), allowed, EP4, ipv6=True).families == (6,)


def test_the_kill_switch_guards_both_families_and_asks_for_the_lan_only_with_lan():
    asked = []

    def lan(fam):
        asked.append(fam)
        return {4: ["198.51.100.0/24"], 6: ["2001:db8:c::/64", "fe80::/64"]}[fam]
    for allowed in (DUAL, V4, ["10.0.0.0/24"]):
        g = killswitch.plan("vpnedu0", itf("KillSwitch = true"), allowed, EP4, ipv6=True, lan=lan)
        assert g.families == (4, 6) and g.reason == "KillSwitch = true" and g.lan == ()
    assert asked == []
    g = killswitch.plan("vpnedu0", itf("KillSwitch = lan"), DUAL, EP4, ipv6=True, lan=lan)
    assert g.lan == ("198.51.100.0/24", "224.0.0.0/24", "2001:db8:c::/64", "fe80::/64", "ff02::/16")
    # BlockIPv6 = false exempts IPv6 from it; a host without IPv6 has only IPv4 to guard.
    assert killswitch.plan("vpnedu0", itf("KillSwitch = true", "BlockIPv6 = false"), DUAL, EP4,
                           ipv6=True).families == (4,)
    assert killswitch.plan("vpnedu0", itf("KillSwitch = on"), DUAL, EP4, ipv6=False).families == (4,)


# ------------------------------------------------------------------------------- the ruleset text
FULL = """\
table inet vpnedu-killswitch-vpnedu0 {
	chain guard {
		oifname "lo" accept comment "loopback: local services, the host's own addresses"
		oifname "vpnedu0" accept comment "into the tunnel: vpnedu encrypts it"
		meta mark 0x0000ca6c accept comment "the tunnel's own UDP (its sockets' fwmark)"
		ip daddr 203.0.113.2 udp dport 51820 accept comment "the tunnel's own UDP, to the server"
		icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept comment "IPv6 neighbour discovery (RFC 4861): IPv6's ARP"
		meta nfproto ipv4 udp sport 68 udp dport 67 accept comment "DHCP: keep the LAN address"
		ip6 daddr ff02::1:2 udp sport 546 udp dport 547 accept comment "DHCPv6: keep the LAN address"
	}
	chain output {
		type filter hook output priority filter; policy accept;
		jump guard
		counter reject with icmpx admin-prohibited comment "anything else would leave outside the tunnel: refused"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		jump guard
		counter drop comment "anything else forwarded would leave outside the tunnel"
	}
}
"""


def test_the_full_tunnels_kill_switch_table():
    g = killswitch.Guard("vpnedu0", (4, 6), EP4, mark=51820, reason="KillSwitch = true")
    assert g.ruleset() == FULL
    assert g.table == "vpnedu-killswitch-vpnedu0"
    line = g.describe()
    assert line.startswith("added nftables table inet vpnedu-killswitch-vpnedu0 (KillSwitch = true): "
                           "IPv4 and IPv6 leaving outside vpnedu0 is dropped"), line
    assert "203.0.113.2:51820 (fwmark 0xca6c)" in line


def test_the_ipv6_block_guards_ipv6_only_and_lets_an_ipv6_endpoint_through():
    text = killswitch.Guard("wg-home", (6,), EP6, lan=("2001:db8:c::/64",)).ruleset()
    lines = [x.strip() for x in text.splitlines()]
    assert lines[0] == "table inet vpnedu-killswitch-wg-home {"
    assert 'ip6 daddr 2001:db8:5::2 udp dport 51820 accept comment "the tunnel\'s own UDP, to the server"' in lines
    assert 'ip6 daddr { 2001:db8:c::/64 } accept comment "the local network"' in lines
    assert ('meta nfproto ipv6 counter reject with icmpx admin-prohibited comment '
            '"any other IPv6 would leave outside the tunnel: refused"') in lines
    assert 'meta nfproto ipv6 counter drop comment "any other IPv6 forwarded would leave outside the tunnel"' in lines
    # Nothing about IPv4: it is not guarded (no mark rule either: a split tunnel has none).
    assert not [x for x in lines if x.startswith(("ip daddr", "meta mark", "meta nfproto ipv4"))], lines
    # An IPv4 endpoint needs no rule in an IPv6-only guard; an IPv4-only guard has no IPv6 rule.
    assert "203.0.113.2" not in killswitch.Guard("vpnedu0", (6,), EP4).ruleset()
    v4 = killswitch.Guard("vpnedu0", (4,), EP6, mark=0x1234).ruleset()
    assert "icmpv6" not in v4 and "ip6" not in v4 and "meta nfproto ipv4 counter reject" in v4
    assert "meta mark 0x00001234 accept" in v4


def test_every_subnet_in_the_lan_rule_is_a_network_of_its_family():
    g = killswitch.plan("vpnedu0", itf("KillSwitch = lan"), DUAL, EP4, ipv6=True,
                        lan=lambda fam: {4: ["198.51.100.0/24"], 6: ["fe80::/64"]}[fam])
    text = g.ruleset()
    assert "ip daddr { 198.51.100.0/24, 224.0.0.0/24 } accept" in text
    assert "ip6 daddr { fe80::/64, ff02::/16 } accept" in text
    for n in g.lan:
        ipaddress.ip_network(n)


def test_names_nft_cannot_take_are_made_safe_and_status_says_what_is_guarded():
    assert killswitch.table_name("wg0@home") == "vpnedu-killswitch-wg0_home"
    g = killswitch.Guard("vpnedu0", (6,), EP4, reason="BlockIPv6 = true")
    st = {"interface": "vpnedu0", "role": "client", "pid": 1, "public_key": PUB, "listen_port": 1,
          "addresses": ["10.0.0.2/24"], "suite": "wireguard", "peers": [], "kill_switch": g.status()}
    assert ("kill switch: IPv6 outside the tunnel dropped (BlockIPv6 = true; "
            "nft list table inet vpnedu-killswitch-vpnedu0)") in report.format_status(st)
