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
from vpnedu.course.interface import MarkerOnWire, TrafficSample


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
