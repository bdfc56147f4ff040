"""The protocol core is sans-IO, and this test reads its imports to prove it.

Every module of ``vpnedu/protocol`` -- and every vpnedu module they import, transitively --
may import nothing that does IO or keeps time or randomness of its own: no event loop, no
threads, no sockets, no clock, no operating system.  Time comes in as ``now``; randomness as
an injected ``random(n)``.  (A third-party library such as ``cryptography`` may use ``os``
inside; that is not the protocol doing IO.)
"""

import ast
from pathlib import Path

import vpnedu

ROOT = Path(vpnedu.__file__).parent
#: Modules the sans-IO core must never import (``random``: randomness is injected).
FORBIDDEN = {"asyncio", "threading", "socket", "select", "selectors", "time", "os", "subprocess", "random"}


def module_path(name: str) -> Path | None:
    """The file of a vpnedu module ``vpnedu.a.b`` (a package's __init__.py), or None."""
    parts = name.split(".")[1:]
    base = ROOT.joinpath(*parts)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def imports_of(path: Path, module: str) -> set[str]:
    """Every module an import statement in ``path`` names (anywhere in the file, functions
    included), as absolute names."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
            else:
                mod = node.module
            found.add(mod)
            # ``from . import x`` may name a submodule.
            found |= {f"{mod}.{a.name}" for a in node.names if module_path(f"{mod}.{a.name}")}
    return found


def closure(start: list[str]) -> dict[str, set[str]]:
    """The imports of each vpnedu module reachable from ``start``."""
    seen: dict[str, set[str]] = {}
    todo = list(start)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = module_path(mod)
        if path is None:
            continue
        seen[mod] = imports_of(path, mod)
        todo += [m for m in seen[mod] if m.startswith("vpnedu.") or m == "vpnedu"]
    return seen


def protocol_modules() -> list[str]:
    return sorted(f"vpnedu.protocol.{p.stem}" if p.stem != "__init__" else "vpnedu.protocol"
                  for p in (ROOT / "protocol").glob("*.py"))


def test_the_protocol_imports_nothing_that_does_io():
    graph = closure(protocol_modules())
    assert "vpnedu.protocol.device" in graph and "vpnedu.packet.ip" in graph   # it did follow them
    bad = {mod: sorted(m for m in imps if m.split(".")[0] in FORBIDDEN) for mod, imps in graph.items()}
    assert {m: b for m, b in bad.items() if b} == {}
    assert all(m.startswith(("vpnedu.protocol", "vpnedu.packet", "vpnedu.errors")) for m in graph), sorted(graph)


def test_the_check_would_see_a_forbidden_import(tmp_path):
    """The reader is real: it finds an ``import time`` inside a function of a module."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    import time\n    from os import path\n    return time, path\n")
    assert {"time", "os"} <= imports_of(f, "vpnedu.protocol.mod")
