"""Layers point down: no import cycle in fedfleet, lower layers never import higher ones, and the
generated protobuf code lives in ``fedfleet/_proto`` alone.

The import graph is read from the source, not from ``sys.modules``: every ``import`` and
``from ... import`` counts, including those inside functions and under ``TYPE_CHECKING`` (an
import hidden there is still a dependency). ``from a.b import c`` is an edge to ``a.b`` (its
``__init__`` runs first) and to ``a.b.c`` when that is a module. Generated ``_pb2`` modules are
left out. The same rules as ``shared/hooks/import_cycles.py``, except that a package and one of
its own modules importing each other count as a cycle too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fedfleet"

# lower layers: none of these may reach a higher one
LOWER = (
    "fedfleet._codec",
    "fedfleet.rounds",
    "fedfleet.client",
    "fedfleet.data",
    "fedfleet.privacy",
    "fedfleet.sim",
    "fedfleet.strategies",
    "fedfleet.transforms",
    "fedfleet.models",
)
HIGHER = ("fedfleet.runs", "fedfleet.net", "fedfleet.cli")


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_pb2" in path.name:
            continue
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        package = base if path.name == "__init__.py" else base[:-1]
        package = package[: len(package) - (node.level - 1)]
        prefix = ".".join(package + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the fedfleet modules it imports (statically, anywhere in its source)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for name in _imported(module, path, node):
                if name in mods and name != module:
                    graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "fedfleet.sim.engine" in graph
    assert "fedfleet.client.protocol" in graph["fedfleet.sim.engine"]


def test_cycles_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, (
        f"{len(found)} import cycle(s) in src/fedfleet:\n"
        + "\n".join("  " + " <-> ".join(c) for c in found)
        + "\nbreak each where the dependency points up: import the module, not its package; "
        "move the shared piece below both; or register an implementation from above"
    )


def test_lower_layers_never_import_higher_ones():
    graph = import_graph()
    bad = []
    for module in sorted(graph):
        if not _under(module, LOWER):
            continue
        # reachable, not only direct: a lower module that imports the root package `fedfleet`
        # (whose __init__ imports everything) reaches runs/ through it
        seen, todo = set(), [module]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        up = sorted(d for d in seen if _under(d, HIGHER))
        if up:
            direct = sorted(d for d in graph[module] if _under(d, HIGHER) or d == "fedfleet")
            bad.append(f"  {module} reaches {', '.join(up)} (directly imports: {direct})")
    assert not bad, (
        f"lower layers ({', '.join(LOWER)}) must not import {', '.join(HIGHER)}:\n" + "\n".join(bad)
    )


def test_generated_protobuf_code_lives_in_proto():
    proto = PACKAGE / "_proto"
    assert (proto / "__init__.py").is_file()
    generated = [
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and ("_pb2" in p.name or p.suffix == ".proto") and p.parent != proto
    ]
    assert not generated, (
        "generated protobuf code and its .proto files belong in src/fedfleet/_proto: "
        + ", ".join(str(p.relative_to(SRC)) for p in sorted(generated))
    )
    assert sorted(p.name for p in proto.glob("*.proto")), "no .proto in src/fedfleet/_proto"
