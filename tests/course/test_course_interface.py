"""Both course labs are a :class:`vpnedu.course.CourseLab`, call for call.

A notebook is written once for both modes, so every call it may make must exist in both labs
with the same parameters, defaults and result type.  ``typing.Protocol`` declares that; this test
checks it (an ``isinstance`` check of a runtime Protocol would only see that the names exist).
"""

from __future__ import annotations

import inspect
import re
import typing

import pytest

from vpnedu.course import CourseLab, RealLab, SimLab
from vpnedu.course.interface import (ExplicitProxyFetch, MarkerOnWire, TrafficSample, explicit_proxy_command,
                                     side_by_side)
from vpnedu.errors import VpneduError
from vpnedu.flows import FlowRow


def protocol_members(proto) -> dict[str, object]:
    """The methods, properties and attributes the Protocol declares (not object's or Protocol's own)."""
    members = {name: value for name, value in vars(proto).items()
               if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    members.update({name: "attribute" for name in typing.get_type_hints(proto)})
    return members


def sets_in_init(cls, name: str) -> bool:
    """Does ``cls`` have ``name`` as a class attribute, or does its ``__init__`` set ``self.name``?"""
    if any(name in vars(k) for k in cls.__mro__ if k is not object):
        return True
    try:
        source = inspect.getsource(cls.__init__)
    except (OSError, TypeError):
        return False
    return re.search(rf"self\.{name}\s*(:[^=]+)?=", source) is not None


def same_return(want: str, have: str, cls) -> bool:
    """Return annotations (strings: the modules use ``from __future__ import annotations``) agree;
    ``up() -> "CourseLab"`` may say the class itself."""
    if want.strip("'\"") == "CourseLab":
        return have.strip("'\"") in ("CourseLab", cls.__name__)
    return want == have


def mismatches(cls, proto=CourseLab) -> list[str]:
    """How ``cls`` differs from ``proto``: a missing member, a parameter missing or with another
    kind, default or annotation, an extra parameter without a default, another return annotation."""
    problems = []
    for name, want in protocol_members(proto).items():
        if want == "attribute" or isinstance(want, property):
            # Data: a class attribute, an attribute __init__ sets, or a property all read the same.
            have = inspect.getattr_static(cls, name, None)
            if not (isinstance(have, property) or sets_in_init(cls, name)):
                problems.append(f"{name}: missing")
            continue
        have = inspect.getattr_static(cls, name, None)
        if have is None:
            problems.append(f"{name}: missing")
            continue
        w, h = inspect.signature(want), inspect.signature(have)
        hp = dict(h.parameters)
        for pname, wp in w.parameters.items():
            got = hp.pop(pname, None)
            if got is None:
                problems.append(f"{name}: no parameter {pname!r}")
            elif (got.kind, got.default) != (wp.kind, wp.default):
                problems.append(f"{name}({pname}): {got.kind.name} default {got.default!r}, "
                                f"the interface says {wp.kind.name} default {wp.default!r}")
            elif pname != "self" and got.annotation != wp.annotation:
                problems.append(f"{name}({pname}): annotated {got.annotation}, the interface says {wp.annotation}")
        problems += [f"{name}: extra parameter {p!r} without a default" for p, v in hp.items()
                     if v.default is inspect.Parameter.empty and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
        if not same_return(w.return_annotation, h.return_annotation, cls):
            problems.append(f"{name}: returns {h.return_annotation}, the interface says {w.return_annotation}")
    return problems


@pytest.mark.parametrize("cls", [SimLab, RealLab], ids=lambda c: c.__name__)
def test_each_lab_has_every_call_of_the_interface(cls):
    assert mismatches(cls) == []


def test_the_check_sees_a_lab_that_differs():
    class Partial:
        mode = "x"

        def __init__(self):
            self.suite = "wireguard"
            self.client_events = self.server_events = None

        @property
        def banner(self) -> str:
            return ""

        def ping(self, host: str, destination: str, count: int = 5) -> "PingResult":  # noqa: F821
            ...

        def routes(self, host: str = "client", family: int = 4, table: str = "main") -> list[str]:
            ...

        def status(self, host: str, verbose) -> dict:
            ...

    found = mismatches(Partial)
    assert "up: missing" in found and "flows: missing" in found and "dir: missing" in found
    assert any(f.startswith("ping(count): POSITIONAL_OR_KEYWORD default 5") for f in found), found
    assert "status: extra parameter 'verbose' without a default" in found
    assert not any(f.startswith("routes") for f in found)        # an extra parameter with a default is fine
    assert not any(f.startswith(("banner", "mode", "suite", "client_events")) for f in found)


def test_a_simulated_lab_behaves_as_the_interface_says():
    """The results are the declared types, at run time too (what a notebook unpacks)."""
    lab = SimLab()
    try:
        lab.start_server()
        lab.start_client()
        got = lab.marker_on_wire()
        assert isinstance(got, MarkerOnWire) and got.visible is False
        marker, visible = got                                   # notebook 03 unpacks it
        assert marker.startswith("vpnedu-marker-")
        samples = list(lab.traffic("vpnedu", seconds=0.3, interval=0.1))
        assert all(isinstance(s, TrafficSample) for s in samples) and samples[-1].up == samples[-1][1] > 0
    finally:
        lab.down()


def fetched(via: str, port: int, other: list[str] = ()) -> ExplicitProxyFetch:
    """A real lab's fetch as it comes back, made by hand."""
    marker = f"marker-{port:08x}"
    tunnel = [f"UDP 198.51.100.2:{port} -> 203.0.113.2:51820", f"UDP 203.0.113.2:51820 -> 198.51.100.2:{port}"]
    row = FlowRow(via, f"10.0.0.2:{port}", f"203.0.113.2:{port + 1}", "192.0.2.80:80", "closed", 89, 193)
    return ExplicitProxyFetch(via, " ".join(explicit_proxy_command(via, f"http://192.0.2.80/{marker}")), marker,
                              "hello from the app server; your address is 203.0.113.2", True, [row],
                              [f"203.0.113.2 GET /{marker}"], tunnel + list(other), False)


def test_explicit_proxy_fetches_print_side_by_side_in_78_columns():
    socks, connect = fetched("socks5", 40312), fetched("http-connect", 5)
    assert socks.only_tunnel and len(socks.tunnel_packets()) == 2
    text = side_by_side([socks, connect])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 78
    # Each section starts on the same line in both columns, whatever the ports' widths.
    for heading in ("curl printed:", "the proxy's flow table:", "the app server's log:",
                    "a capture of the client's outer link:"):
        (line,) = [x for x in lines if x.startswith(heading)]
        assert line.count(heading) == 2, line
    assert "--socks5-hostname 10.0.0.1:1080" in text and "-x http://10.0.0.1:3128" in text
    assert "socks5 client 10.0.0.2:40312" in text and "http-connect client 10.0.0.2:5" in text
    assert "your address is 203.0.113.2" in text and "and nothing else" in text
    assert lines[-2:] == ["socks5: marker readable on the client's link: False",
                          "http-connect: marker readable on the client's link: False"]
    alone = str(socks)                                     # one fetch: one column, its verdict last
    assert alone.splitlines()[0] == "SOCKS5 (RFC 1928)" and alone.endswith("link: False")


def test_an_explicit_fetch_names_what_else_left_the_client():
    leaky = fetched("socks5", 1, other=["TCP 198.51.100.2:5555 -> 192.0.2.80:80"])
    assert not leaky.only_tunnel
    assert "and 1 other packet(s):" in str(leaky) and "TCP 198.51.100.2:5555 -> 192.0.2.80:80" in str(leaky)
    with pytest.raises(VpneduError, match="no explicit proxy 'socks4'"):
        explicit_proxy_command("socks4", "http://192.0.2.80/")
