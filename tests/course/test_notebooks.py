"""Every course notebook, run top to bottom in a real kernel, its outputs checked.

Simulated mode runs everywhere (VPNEDU_MODE=sim, even as root); the real namespace lab runs as root
(VPNEDU_MODE=real, a unique lab prefix, namespaces deleted in ``finally`` even when the notebook fails).
The kernel is this interpreter (the test virtualenv): a kernel spec named ``python3`` is written to a
temporary JUPYTER_PATH, which comes first in Jupyter's search path.
"""

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))

# What a student would look for in each checked cell (tag -> substrings), for both modes,
# and what differs between them.
EXPECT = {
    "00-setup.ipynb": {"check-banner": ["MODE"], "check-status": ["latest handshake:", "peer:", "transfer:"],
                       "check-down": ["lab down"]},
    "01-tun.ipynb": {"check-tun": ["ICMP echo request", "10.99.0.1 > 10.99.0.2", "hex: 45 00",
                                   "destination      10.99.0.2"],
                     "check-vpn-tun": ["'vpnedu0': ['10.0.0.2/24', 'fd", "'vpnedu0': ['10.0.0.1/24', 'fd"]},
    "02-handshake.ipynb": {"check-handshake": ["handshake complete", "initiation sent+received",
                                               "response sent+received"],
                           "check-fields": ["encrypted_static", "encrypted_timestamp", "ephemeral", "mac1",
                                            "mac2", "receiver_index", "TAI64N"],
                           "check-plot": ["vpnedu:", "Mbit/s up"],
                           # The wg section: wg show on the server lists the client, the raw reply
                           # behind it, a wg set seen in the event log, a refused set changing nothing.
                           "check-wg-show": ["interface: vpnedu0", "listening port: 51820", "latest handshake:",
                                             "transfer:", "the one peer listed is the client's public key: True"],
                           "check-wg-get": ["listen_port=51820", "public_key=", "last_handshake_time_sec=",
                                            "rx_bytes=", "allowed_ip=10.0.0.2/32", "errno=0",
                                            "private_key=(64 hex digits: hidden", "= base64"],
                           "check-wg-set": ["reply: errno=0", "persistent_keepalive_interval 0 -> 5",
                                            "config.set source=wg", "peers_updated=1",
                                            "persistent keepalive: every 5 seconds"],
                           "check-wg-bad": ["errno=-22 (EINVAL", "an IPv4 prefix is at most /32", "changed: nothing",
                                            "no config.set", "persistent keepalive now: every 5 seconds",
                                            "1 config event(s) in the log"]},
    "03-encryption.ipynb": {"check-counter": ["0% packet loss", "one counter value per packet"],
                            "check-tamper": ["packet.dropped", "reason=bad-mac"],
                            "check-replay": ["packet.dropped", "reason=replay"],
                            "check-counters": ["'dropped.bad-mac': 1", "'dropped.replay': 1"],
                            "check-suites": ["wireguard", "aes256gcm", "null-teaching", "encrypts=False"],
                            "check-capture": ["suite wireguard: marker readable on the client's link: False",
                                              "suite null-teaching: marker readable on the client's link: True"]},
    "04-routing.ipynb": {"check-full": ["+ default dev vpnedu0 table 51820",
                                        "+ ip -4 rule priority 32765 not fwmark 0xca6c table 51820",
                                        "+ ip -4 rule priority 32764 table main suppress_prefixlength 0",
                                        "+ -6 default dev vpnedu0 table 51820",
                                        "+ ip -6 rule priority 32765 not fwmark 0xca6c table 51820",
                                        "ping 192.0.2.80 from 10.0.0.2"],
                         "check-ipv6": ["default via 2001:db8:c::1 dev eth0", "ping 2001:db8:a::80 from fd",
                                        "2 packets transmitted, 2 received"],
                         "check-leak": ["leak test, KillSwitch = false", "bound to the LAN): answered: it got out",
                                        "leak test, KillSwitch = true", "refused on the client (kill switch)",
                                        "LEAK:", "the link's housekeeping: 0 leaked"],
                         "check-split": ["split tunnel routes:", "ping 192.0.2.80 from 198.51.100.2",
                                         "ping 10.0.0.1 from 10.0.0.2: 2 packets transmitted, 2 received"],
                         "check-restored": ["routing table restored: True"]},
    "05-proxy.ipynb": {"check-app": ["IPv4: reply:", "logged the request from 203.0.113.2",
                                     "IPv6: reply:", "logged the request from 2001:db8:5::2"],
                       "check-flows": ["client 10.0.0.2:", "as 203.0.113.2:", "-> 192.0.2.80"],
                       # SOCKS5 and HTTP CONNECT side by side (the simulation: the commands and a note).
                       "check-explicit": ["SOCKS5 (RFC 1928)", "proto socks5", "HTTP CONNECT (RFC 9110",
                                          "proto http-connect", "--socks5-hostname 10.0.0.1:1080",
                                          "--proxytunnel", "-x http://10.0.0.1:3128", "203.0.113.2"]},
    "06-performance.ipynb": {"check-vpnedu": ["vpnedu:", "Mbit/s up"], "check-compare": ["plain", "Mbit/s up"]},
}
EXPECT_MODE = {
    "sim": {"00-setup.ipynb": {"check-banner": ["SIM MODE", "SIMULATED MODE"]},
            "01-tun.ipynb": {"check-tun": ["(simulated)"]},
            "06-performance.ipynb": {"check-compare": ["wireguard-go needs the real lab"]}},
    "real": {"00-setup.ipynb": {"check-banner": ["REAL MODE", "network namespaces"]},
             "02-handshake.ipynb": {"check-wg-show": ["$ wg show vpnedu0", "# the real /usr/bin/wg, run in",
                                                      "with the server's own /run/wireguard:"],
                                    "check-wg-get": ["| ncat -U", "/wireguard-server/vpnedu0.sock"],
                                    "check-wg-set": ["$ wg set vpnedu0 peer"]},
             "01-tun.ipynb": {"check-tun": ["(real TUN device)"]},
             "05-proxy.ipynb": {"check-proxy": ["your address is 203.0.113.2", "your address is 2001:db8:5::2",
                                                "client 10.0.0.2:",
                                                "as 203.0.113.2:", "-> 192.0.2.80:80", "closed"],
                                "check-explicit": ["socks5 client 10.0.0.2:", "http-connect client 10.0.0.2:",
                                                   "as 203.0.113.2:", "-> 192.0.2.80:80", "closed: up",
                                                   "your address is 203.0.113.2", "203.0.113.2 GET /marker-",
                                                   "to/from 203.0.113.2:51820,", "and nothing else",
                                                   "socks5: marker readable on the client's link: False",
                                                   "http-connect: marker readable on the client's link: False"]},
             "06-performance.ipynb": {"check-compare": ["wireguard-go"]}},
}


# What a student must not see (tag -> substrings), in both modes: a raw Python warning with its file
# path, a peer label that reads as if the client dropped the packet, a proxy flow "closed (closed)",
# a simulation that only says what it lacks.
EXPECT_NOT = {
    "03-encryption.ipynb": {"check-capture": ["InsecureSuiteWarning", ".py:"],
                            "check-tamper": ["[client]"], "check-replay": ["[client]"]},
    "05-proxy.ipynb": {"check-proxy": ["closed (closed)", "not available here"],
                       "check-explicit": ["(no flow)", "(no request)", "other packet(s)", "curl failed",
                                          "not available here"]},
}
# ... and what the newcomer's fixes show instead, per mode.
EXPECT_MODE["sim"].update({
    "02-handshake.ipynb": {"check-wg-show": ["no wg binary in the simulation", "vpnedu's rendering"],
                           "check-wg-set": ["no wg binary in the simulation", "persistent_keepalive_interval=5"]},
    "03-encryption.ipynb": {"check-capture": ["vpnedu: WARNING: cipher suite 'null-teaching' is in use"],
                            "check-tamper": ["the server reported:", "packet.dropped peer=client"]},
    "05-proxy.ipynb": {"check-proxy": ["The simulation forwards with NAT only", "needs the real", "kernel"],
                       "check-explicit": ["The simulation has no explicit proxies", "the real lab's client runs:",
                                          "203.0.113.2 (the server, not the client)",
                                          "only WireGuard datagrams to 203.0.113.2:51820"]},
})
BANNER_WIDTH = 78   # a notebook's output area breaks longer lines anywhere, even mid-word


def printed_text(nb) -> str:
    """Everything the notebook's cells printed (stdout and stderr), tagged or not."""
    return "".join(o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")


def check_newcomer(nb, name: str) -> None:
    """The rough edges a newcomer met: raw HTML printed under widgets that already show it, a banner
    wider than the output area (wrapped mid-word) or with parentheses inside parentheses."""
    printed = printed_text(nb)
    for tag in ("<code>", "</code>", "<br>", "<i>", "<b>"):
        assert tag not in printed, f"{name} prints raw HTML {tag!r}:\n{printed[:2000]}"
    banner = outputs_by_tag(nb).get("check-banner", "")
    for line in banner.splitlines():
        assert len(line) <= BANNER_WIDTH, f"{name}: banner line of {len(line)} characters: {line!r}"
        depth = 0
        for ch in line:
            depth += (ch == "(") - (ch == ")")
            assert depth <= 1, f"{name}: nested parentheses in the banner: {line!r}"


def _counter_grew(text: str) -> bool:
    m = re.search(r"went from (\d+) to (\d+)", text)
    return bool(m) and int(m[2]) - int(m[1]) >= 5   # five pings: five new counter values (or more)


def _all_rates_positive(text: str) -> bool:
    rates = [float(x) for x in re.findall(r"([\d.]+) Mbit/s", text)]
    return bool(rates) and all(r > 0 for r in rates)


def _no_secret_keys(text: str) -> bool:
    """The raw get=1 reply carries the private and pre-shared keys: printed, they are hidden."""
    return not re.search(r"(?:private|preshared)_key=[0-9a-f]{64}", text)


# Checks on the numbers a cell printed (tag -> predicate), for both modes.
EXPECT_TRUE = {
    "02-handshake.ipynb": {"check-wg-get": _no_secret_keys},
    "03-encryption.ipynb": {"check-counter": _counter_grew},
    "06-performance.ipynb": {"check-vpnedu": _all_rates_positive, "check-compare": _all_rates_positive},
}


def run_notebook(name: str, env: dict, kernel_path: Path, timeout: int = 120):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in [*env, "JUPYTER_PATH"]}
    os.environ.update(env)
    os.environ["JUPYTER_PATH"] = str(kernel_path)
    try:
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                         resources={"metadata": {"path": str(NOTEBOOKS)}},
                                         store_widget_state=True)
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs_by_tag(nb) -> dict[str, str]:
    out = {}
    for cell in nb.cells:
        for tag in cell.get("metadata", {}).get("tags", []):
            text = []
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream":
                    text.append(o["text"])
                elif "data" in o and "text/plain" in o["data"]:
                    text.append(o["data"]["text/plain"])
            out[tag] = "".join(text)
    return out


def check(nb, name: str, mode: str) -> None:
    texts = outputs_by_tag(nb)
    want = {tag: list(subs) for tag, subs in EXPECT[name].items()}
    for tag, subs in EXPECT_MODE[mode].get(name, {}).items():
        want.setdefault(tag, []).extend(subs)
    for tag, subs in want.items():
        for s in subs:
            assert s in texts.get(tag, ""), f"{name} [{tag}] lacks {s!r}; it printed:\n{texts.get(tag, '')}"
    for tag, pred in EXPECT_TRUE.get(name, {}).items():
        assert pred(texts.get(tag, "")), f"{name} [{tag}]: {pred.__name__} fails on:\n{texts.get(tag, '')}"
    for tag, subs in EXPECT_NOT.get(name, {}).items():
        for s in subs:
            assert s not in texts.get(tag, ""), f"{name} [{tag}] shows {s!r}:\n{texts.get(tag, '')}"
    check_newcomer(nb, name)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def widget_states(nb) -> dict:
    return nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})


@pytest.mark.parametrize("name", ALL)
def test_notebook_in_simulated_mode(name, kernel_path):
    nb = run_notebook(name, {"VPNEDU_MODE": "sim"}, kernel_path)
    check(nb, name, "sim")
    if name == "02-handshake.ipynb":
        states = widget_states(nb)
        ladders = [s["state"]["value"] for s in states.values()
                   if "vpnedu-ladder" in s["state"].get("_dom_classes", ())]
        assert ladders and "HANDSHAKE COMPLETE" in ladders[0] and "encrypted_static" in ladders[0]
        images = [s for s in states.values() if s["model_name"] == "ImageModel"]
        assert images  # the throughput plot
        logs = [s["state"]["value"] for s in states.values()
                if "vpnedu-eventlog" in s["state"].get("_dom_classes", ())]
        assert any("config.set" in v and "source=wg" in v for v in logs)   # the wg set, in the event log


_WIDGET_REPR = re.compile(r"\b[A-Z]\w*\((?:value|children)=.*?\u2026")   # a widget's text/plain, cut by IPython
_BYTES = re.compile(r"\bhex: [0-9a-f ]+|\bb'(?:[^'\\]|\\.)*'" '|' r'\bb"(?:[^"\\]|\\.)*"')   # raw bytes
# What wg show and vpnedu status word by the clock or by the byte count: "Now" or "3 seconds ago",
# "892 B" or "1.21 KiB" (the unit moves with the number).
_AGE = re.compile(r"(latest handshake: ).*")
_AMOUNT = re.compile(r"\b\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)\b")
_ULA = re.compile(r"\bfd[0-9a-f]{2}:[0-9a-f:]*(?:/\d+)?")
_VARYING = re.compile(r"(?P<ip>\b\d{1,3}(?:\.\d{1,3}){3}\b)|\b0x[0-9a-f]+\b|[A-Za-z0-9+/]{43}=|\b[0-9a-f]{8,}\b|\d+(?:\.\d+)?")


def comparable(nb, prefix: str) -> dict[str, str]:
    """A notebook's tagged outputs with what differs from run to run by nature taken out: keys,
    indices, ports, counters, times, rates and a packet's raw bytes become placeholders, widgets'
    reprs and the lab's name go; addresses, kinds, states, reasons and the order of the lines
    stay.  Two runs of a sound notebook give the same; a race does not."""
    out = {}
    for tag, text in outputs_by_tag(nb).items():
        text = _WIDGET_REPR.sub("<widget>\n", text.replace(prefix, "<lab>-"))
        text = _AMOUNT.sub("<amount>", _AGE.sub(r"\1<age>", text))
        text = _ULA.sub("<ula>", text)   # server init picks a random ULA prefix (RFC 4193)
        text = _VARYING.sub(lambda m: m["ip"] or "#", _BYTES.sub("<bytes>", text))
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        if tag == "check-flows":    # the kernel's conntrack lists flows in its hash order
            lines.sort()
        out[tag] = "\n".join(lines)
    return out


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_notebook_twice_in_fresh_real_labs_gives_the_same_outputs(name, kernel_path):
    """Each notebook, as root in the real namespace lab, run twice in a row, each time in a fresh
    lab: the checks pass both times and the outputs are the same (handshake, flow rows, drops ...).
    The second lab is as a crash can leave the machine: dead daemons' socket files where the new
    daemons' go (see tests.lablib.plant_dead_sockets).  A race (a daemon taken for ready too
    early, events relayed too late or not at all) shows as a difference, not as a student's red
    traceback."""
    from tests.lablib import plant_dead_sockets, remove_planted
    from vpnedu.netns_lab.topology import Lab
    from vpnedu.node.control import netns_socket_path
    runs = []
    for run in (1, 2):
        prefix = f"nb{os.getpid() % 10000}{name[:2]}{run}-"
        lab = Lab(prefix=prefix, log=lambda s: None)
        planted = []
        try:
            if run == 2:
                lab.up()    # the notebook's open_lab() takes an existing lab as it is
                planted = plant_dead_sockets(netns_socket_path(lab.ns(h)) for h in ("client", "server"))
            nb = run_notebook(name, {"VPNEDU_MODE": "real", "VPNEDU_LAB_PREFIX": prefix}, kernel_path, timeout=180)
            check(nb, name, "real")
            assert not lab.exists()  # the notebook's last cell took the lab down
            runs.append(comparable(nb, prefix))
        finally:
            lab.down()
            remove_planted(planted)
    first, second = runs
    assert first.keys() == second.keys()
    for tag in first:
        if first[tag] != second[tag]:
            import difflib
            diff = "\n".join(difflib.unified_diff(first[tag].splitlines(), second[tag].splitlines(),
                                                   "first run", "second run", lineterm=""))
            pytest.fail(f"{name} [{tag}] differs between two runs:\n{diff}")


def test_committed_notebooks_have_no_outputs_and_no_secrets():
    assert len(ALL) == 7
    for name in ALL:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip it " \
                    "(python scripts/strip_notebooks.py)"
        assert "widgets" not in nb.metadata
        text = (NOTEBOOKS / name).read_text()
        assert "PrivateKey" not in text and "PresharedKey" not in text
        assert not re.search(r"[A-Za-z0-9+/]{43}=", text), f"{name}: a base64 key in a committed notebook"


def test_strip_script_finds_and_removes_outputs(tmp_path):
    import subprocess
    script = NOTEBOOKS.parent / "scripts" / "strip_notebooks.py"
    nb = nbformat.read(NOTEBOOKS / "01-tun.ipynb", as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", text="PrivateKey = secret\n")]
    code.execution_count = 3
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    r = subprocess.run([sys.executable, str(script), "--check", str(path)], capture_output=True, text=True)
    assert r.returncode == 1 and "dirty.ipynb" in r.stderr
    r = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "stripped 1" in r.stdout
    clean = nbformat.read(path, as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in clean.cells if c.cell_type == "code")
    assert "secret" not in path.read_text()
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # the committed notebooks are clean


def test_binder_launches_the_course_in_simulated_mode():
    import subprocess
    binder = NOTEBOOKS.parent / "binder"
    assert "-e \".[notebooks]\"" in (binder / "postBuild").read_text()
    r = subprocess.run([str(binder / "start"), sys.executable, "-c",
                        "from vpnedu.course import choose_mode; print(choose_mode()[0])"],
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "VPNEDU_MODE"})
    assert r.stdout.strip() == "sim", r.stderr


def test_the_mode_is_chosen_automatically_and_either_can_be_forced(monkeypatch):
    """No root: the simulation, saying why; MODE in the notebook beats VPNEDU_MODE; nonsense is refused."""
    import subprocess

    from vpnedu.course import choose_mode
    from vpnedu.errors import VpneduError
    monkeypatch.delenv("VPNEDU_MODE", raising=False)
    code = "from vpnedu.course import choose_mode; print(*choose_mode(), sep='|')"
    if os.geteuid() == 0:   # as root: really drop to another user, and also see 'auto' pick the real lab
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                            "-c", code], capture_output=True, text=True, cwd="/",
                           env={**os.environ, "PYTHONPATH": str(NOTEBOOKS.parent)})
        assert choose_mode()[0] == "real"
    else:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().startswith("sim|not root"), r.stdout + r.stderr
    assert choose_mode("sim") == ("sim", "asked for the simulation")
    monkeypatch.setenv("VPNEDU_MODE", "real")
    assert choose_mode("sim")[0] == "sim"
    monkeypatch.setenv("VPNEDU_MODE", "banana")
    with pytest.raises(VpneduError, match="unknown course mode 'banana'"):
        choose_mode()
