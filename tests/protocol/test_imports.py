"""The protocol core is sans-IO, and this test reads its imports to prove it.

Every module of ``vpnedu/protocol`` -- and every vpnedu module they import, transitively --
may import nothing that does IO or keeps time or randomness of its own: no event loop, no
threads, no sockets, no clock, no operating system.  Time comes in as ``now``; randomness as
an injected ``random(n)``.  (A third-party library such as ``cryptography`` may use ``os``
inside; that is not the protocol doing IO.)
"""

import ast
import functools
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


# ---------------------------------------------------------------------------- the top floor: no circles, no privates
@functools.cache
def all_modules() -> dict[str, Path]:
    """Every module of vpnedu by name (a package by its own name)."""
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_nodes(tree: ast.Module, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run: at module level only (also inside a module-level ``if``,
    ``try`` or class body), or everywhere (functions included).  ``if TYPE_CHECKING:`` blocks
    never run, so they are left out."""
    found = []

    def visit(node, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit_one(sub, top)
                continue
            visit_one(child, top)

    def visit_one(child, top: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if not module_level:
                visit(child, False)
        else:
            visit(child, top)

    visit(tree, True)
    return found


def import_graph(module_level: bool) -> dict[str, set[str]]:
    """Which vpnedu modules each vpnedu module imports.  ``from . import x`` counts as importing
    submodule ``x`` when there is one; importing ``a.b.c`` also runs ``a`` and ``a.b``, except the
    packages the importer itself lives in (they are loaded before it anyway)."""
    mods = all_modules()
    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets = set()
        for node in import_nodes(ast.parse(path.read_text()), module_level):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "vpnedu"}
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vpnedu":
                continue
            for a in node.names:
                targets.add(f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target)
        edges = set()
        for t in targets:
            parts = t.split(".")
            for i in range(2, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in mods and name != mod and not (i < len(parts) and mod.startswith(name + ".")):
                    edges.add(name)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan): each is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


#: Circles through imports inside functions that are known and accepted: none (the journal's undo
#: table used to be filled by imports; it is an explicit table now).  A new circle fails.
KNOWN_CIRCLES: list[set[str]] = []
#: The layers below the course: none of them may import the course, the command line or the widgets,
#: at any level (a notebook's convenience must never become a daemon's dependency).
LOWER = ("vpnedu.protocol", "vpnedu.packet", "vpnedu.node", "vpnedu.net", "vpnedu.proxy", "vpnedu.sim",
         "vpnedu.netns_lab", "vpnedu.datapath", "vpnedu.events", "vpnedu.flows", "vpnedu.report", "vpnedu.config")
UPPER = ("vpnedu.course", "vpnedu.cli", "vpnedu.widgets")


def test_no_import_circle_at_module_level_anywhere():
    graph = import_graph(module_level=True)
    assert "vpnedu.course.commands" in graph["vpnedu.cli"]     # it did read them
    assert cycles(graph) == []


def test_no_import_circle_even_through_imports_inside_functions():
    """An import inside a function hides a circle from Python, not from a reader: the top floor
    (cli, course, the namespace lab, the simulation, the widgets) has none at all."""
    found = cycles(import_graph(module_level=False))
    assert [c for c in found if set(c) not in KNOWN_CIRCLES] == []


def under(module: str, packages: tuple[str, ...]) -> bool:
    """Is ``module`` one of ``packages`` or inside one (``vpnedu.netns_lab`` does not hold ``vpnedu.exercises``)?"""
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_layers_below_never_import_the_course_cli_or_widgets():
    graph = import_graph(module_level=False)
    assert under("vpnedu.netns_lab.demo", LOWER) and not under("vpnedu.exercises.nat", LOWER)
    bad = {m: sorted(t for t in ts if under(t, UPPER)) for m, ts in graph.items() if under(m, LOWER)}
    assert {m: b for m, b in bad.items() if b} == {}


def test_the_circle_finder_finds_a_circle_hidden_in_a_function():
    graph = {"vpnedu.a": {"vpnedu.b"}, "vpnedu.b": {"vpnedu.c"}, "vpnedu.c": {"vpnedu.a"}, "vpnedu.d": {"vpnedu.a"}}
    assert cycles(graph) == [["vpnedu.a", "vpnedu.b", "vpnedu.c"]]
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import vpnedu.x\ndef f():\n    import vpnedu.y\n")
    names = lambda nodes: [a.name for n in nodes for a in n.names]   # noqa: E731
    assert names(import_nodes(tree, module_level=True)) == ["os"]
    assert names(import_nodes(tree, module_level=False)) == ["os", "vpnedu.y"]


def private_imports(tree: ast.Module, module: str) -> list[str]:
    """``from M import _name`` (any M) and ``M._name`` where ``M`` is a vpnedu module imported
    here: a private name used outside its module.  Dunders (``__version__``) are public, and a
    module may be *bound* to a private alias (``from .packet import ip as _ip``)."""
    mods = all_modules()
    package = module if mods[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    found, aliases = [], {}

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                if f"{target}.{a.name}" in mods:
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
                elif private(a.name):
                    found.append(f"{module}:{node.lineno}: from {target} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if any(private(part) for part in a.name.split(".")[1:]):
                    found.append(f"{module}:{node.lineno}: import {a.name}")
                if a.name in mods:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and private(node.attr)):
            found.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr} (of {aliases[node.value.id]})")
    return found


def test_no_module_uses_a_private_name_of_another():
    found = [line for mod, path in all_modules().items() for line in private_imports(ast.parse(path.read_text()), mod)]
    assert found == []


def test_the_private_name_check_sees_them():
    tree = ast.parse("from vpnedu.course.feed import _Hidden, DaemonFeed\nfrom . import __version__\n"
                     "from vpnedu.packet import ip as _ip\nfrom vpnedu.node import control\n"
                     "x = control._secret + _ip.PROTO_UDP\n")
    assert private_imports(tree, "vpnedu.cli") == [
        "vpnedu.cli:1: from vpnedu.course.feed import _Hidden", "vpnedu.cli:5: control._secret (of vpnedu.node.control)"]
