#!/usr/bin/env python3
"""Make fedfleet's implementation modules private: ``fedfleet/pkg/mod.py`` -> ``fedfleet/pkg/_mod.py``.

Usage (on a clean checkout; idempotent, a second run changes nothing):

    python tools/privatize.py [REPO]          # default REPO: the current directory
    python tools/privatize.py REPO --dry-run  # print the plan, touch nothing

What it does, discovered from the tree (no hard-coded module list):

1. Every package under ``src/fedfleet`` (a folder with ``__init__.py``; not ``fedfleet`` itself,
   not ``_proto``) has its public modules (``name.py``, not ``_*``) ``git mv``-ed to ``_name.py``.
   Kept public: ``__init__``/``__main__``, modules already private, and a module that its package
   exports *as a module* (``from fedfleet.data import partition`` with ``partition`` in ``__all__``).
2. References are rewritten in src/, tests/, bench/, docs/, examples/, README.md, mkdocs.yml,
   pyproject.toml, .github/: dotted names (imports, strings, mock/monkeypatch targets,
   ``:mod:``/``:class:`` roles), file paths (``src/fedfleet/sim/engine.py``, ``sim/engine.py``) and
   ``from fedfleet.pkg import mod`` (-> ``from fedfleet.pkg import _mod as mod``). A role or a
   Markdown mention ``fedfleet.pkg.mod.Name`` where the package exports ``Name`` becomes
   ``fedfleet.pkg.Name``. Logger names (``getLogger("fedfleet.net.server")``) are names, not
   modules: left alone.
3. ``from fedfleet.pkg._mod import a, b`` outside ``fedfleet.pkg`` becomes
   ``from fedfleet.pkg import a, b`` when the package's ``__all__`` has every name; in src/ only
   where that adds no import cycle. Then each package in EXPORTS gets the listed names added
   to its ``__init__`` (decisions made by hand, applied only where the name exists).
4. Appends ``test_private_modules_stay_inside_their_package`` to tests/test_layering.py.
5. Prints what it renamed, what it rewrote, and every reference it could not rewrite (old names
   left in text, src modules importing another package's private module).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

SCAN_DIRS = ("src", "tests", "bench", "docs", "examples", ".github")
SCAN_FILES = ("README.md", "mkdocs.yml", "pyproject.toml")
SUFFIXES = {".py", ".pyi", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".ini", ".rst"}
ROLE = r":(?:mod|class|func|meth|data|attr|exc|obj):`~?"

# Names a package exports so that modules outside it need not reach into its private modules
# (decided module by module: each was already used across packages and is meant to be public).
EXPORTS: dict[str, list[tuple[str, str]]] = {}

# Hand fixes after the mechanical rewrite: (file, text after the rewrite, replacement); applied
# only where the text is found, so a file changed on main in the meantime is reported, not broken.
POST_FIXES: list[tuple[str, str, str]] = [
    # the sanity check of the import graph: sim's engine now imports the client package
    (
        "tests/test_layering.py",
        'assert "fedfleet.client._protocol" in graph["fedfleet.sim._engine"]',
        'assert "fedfleet.client" in graph["fedfleet.sim._engine"]',
    ),
    # a docstring line one character too long after ``he`` became ``_he``
    (
        "src/fedfleet/strategies/_he_fedavg.py",
        "   sum_k n_k delta_k / n - FedAvg's mean delta (bit-exact to :func:`fedfleet.privacy._he.\n"
        "   fixed_point_mean` for Paillier, within :data:`fedfleet.privacy._he_ckks.CKKS_TOLERANCE`"
        " for CKKS);",
        "   sum_k n_k delta_k / n - FedAvg's mean delta (bit-exact to\n"
        "   :func:`fedfleet.privacy._he.fixed_point_mean` for Paillier, within\n"
        "   :data:`fedfleet.privacy._he_ckks.CKKS_TOLERANCE` for CKKS);",
    ),
    # bare file names next to their package
    (
        "src/fedfleet/net/_servicer.py",
        "round loop that opens and closes tasks is in ``server.py``.",
        "round loop that opens and closes tasks is in ``_server.py``.",
    ),
    (
        "docs/architecture.md",
        "| `_codec/` (`frame.py`, `messages.py`) |",
        "| `_codec/` (`_frame.py`, `_messages.py`) |",
    ),
]

LAYERING_TEST = """

# src modules that still reach into another package's private module (written by
# privatize.py when the modules went private): debt to pay down by exporting the name from the
# package or moving the code below both. The list may only shrink: the test fails on an edge
# that is not listed and on a listed edge that is gone.
# privatize: known private imports begin
KNOWN_PRIVATE_IMPORTS: frozenset[tuple[str, str]] = frozenset()
# privatize: known private imports end


def _private_owner(module: str) -> str | None:
    # fedfleet.pkg._mod -> fedfleet.pkg; fedfleet._x (fedfleet's own internals) -> None
    parts = module.split(".")
    for i, part in enumerate(parts):
        if i > 1 and part.startswith("_"):
            return ".".join(parts[:i])
    return None


def private_imports_from_outside(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    \"\"\"Edges ``a -> b`` where ``b`` is a private module of a package (``fedfleet.pkg._mod``)
    and ``a`` is not inside that package. Inside: the package, its modules and its subpackages
    (``fedfleet.net.secure`` may use ``fedfleet.net._hooks``). ``fedfleet._x`` modules and
    packages (``fedfleet._codec``, ``fedfleet._extras``) are fedfleet's own internal layer, open to
    every fedfleet module; their own private modules are not.\"\"\"
    bad = set()
    for module in sorted(graph):
        for dep in sorted(graph[module]):
            owner = _private_owner(dep)
            if owner and not (module == owner or module.startswith(owner + ".")):
                bad.add((module, dep))
    return bad


def test_private_modules_stay_inside_their_package():
    # tests/ may import private modules; src/ may not reach into another package's: it imports
    # the package's public names (its __init__), which is what the package promises to keep
    found = private_imports_from_outside(import_graph())
    new = sorted(found - KNOWN_PRIVATE_IMPORTS)
    assert not new, (
        "a module imports another package's private module; import the name from the package "
        "(export it there if it is meant to be public) or move the code:\\n"
        + "\\n".join(f"  {a} -> {b}" for a, b in new)
    )
    gone = sorted(KNOWN_PRIVATE_IMPORTS - found)
    assert not gone, "no longer imported, drop from KNOWN_PRIVATE_IMPORTS: " + repr(gone)


def test_private_import_rule_catches_an_offence():
    graph = {
        "fedfleet.sim._engine": {"fedfleet.strategies._fedavg", "fedfleet.sim._clock"},
        "fedfleet.net.secure._rounds": {"fedfleet.net._hooks", "fedfleet._codec", "fedfleet._extras"},
        "fedfleet.cli": {"fedfleet._extras", "fedfleet.runs"},
    }
    assert private_imports_from_outside(graph) == {
        ("fedfleet.sim._engine", "fedfleet.strategies._fedavg")
    }
"""


def sh(root: Path, *args: str) -> str:
    return subprocess.run(args, cwd=root, check=True, capture_output=True, text=True).stdout


def module_name(src: Path, path: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def static_all(init: Path) -> list[str]:
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                try:
                    return list(ast.literal_eval(node.value))  # type: ignore[arg-type]
                except ValueError:
                    return []
    return []


def modules_exported_as_modules(pkg: str, init: Path) -> set[str]:
    """Submodules the package's __init__ binds as modules (``from pkg import mod``)."""
    found = set()
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == pkg and not node.level:
            found |= {a.asname or a.name for a in node.names}
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(pkg + ".") and a.name.count(".") == pkg.count(".") + 1:
                    found.add(a.name.rsplit(".", 1)[1])
    return found


class Plan:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.src = root / "src"
        self.pkgroot = self.src / "fedfleet"
        self.packages: dict[str, Path] = {}
        for init in sorted(self.pkgroot.rglob("__init__.py")):
            rel = init.parent.relative_to(self.pkgroot).parts
            if not rel or "_proto" in rel or "__pycache__" in rel:
                continue
            self.packages[module_name(self.src, init)] = init.parent
        self.exports = {p: set(static_all(d / "__init__.py")) for p, d in self.packages.items()}
        # old dotted name -> new dotted name; and the files to move
        self.moves: list[tuple[Path, Path]] = []
        self.renamed: dict[str, str] = {}
        for pkg, folder in self.packages.items():
            as_modules = modules_exported_as_modules(pkg, folder / "__init__.py")
            public_modules = as_modules & self.exports[pkg]
            for f in sorted(folder.glob("*.py")):
                stem = f.stem
                if stem.startswith("_") or stem in public_modules:
                    continue
                self.moves.append((f, f.with_name("_" + stem + ".py")))
                self.renamed[f"{pkg}.{stem}"] = f"{pkg}._{stem}"
            # already private with no public twin: stale references to the old name (a rerun)
            for f in sorted(folder.glob("_*.py")):
                stem = f.stem[1:]
                if stem.startswith("_") or (folder / f"{stem}.py").exists():
                    continue
                if stem in self.exports[pkg] or not stem:
                    continue
                self.renamed.setdefault(f"{pkg}.{stem}", f"{pkg}._{stem}")

    def package_of(self, dotted: str) -> str:
        return dotted.rsplit(".", 1)[0]


def text_files(root: Path) -> list[Path]:
    files = []
    for d in SCAN_DIRS:
        base = root / d
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                parts = p.relative_to(root).parts
                if (
                    p.is_file()
                    and p.suffix in SUFFIXES
                    and "_proto" not in parts
                    and "__pycache__" not in parts
                ):
                    files.append(p)
    files += [root / f for f in SCAN_FILES if (root / f).is_file()]
    return files


def rewrite_text(plan: Plan, path: Path, text: str, log: list[str]) -> str:
    """Dotted names, file paths, ``from pkg import mod``."""
    is_md = path.suffix in {".md", ".rst"}
    olds = sorted(plan.renamed, key=len, reverse=True)
    if not olds:
        return text
    dotted = re.compile(
        r"(?P<role>"
        + ROLE
        + r")?(?<![\w.])(?P<old>"
        + "|".join(re.escape(o) for o in olds)
        + r")(?![\w])(?P<tail>\.[A-Za-z_]\w*)?"
    )

    def sub_dotted(m: re.Match[str]) -> str:
        old, tail, role = m["old"], m["tail"] or "", m["role"] or ""
        pkg, stem = old.rsplit(".", 1)
        new = plan.renamed[old]
        name = tail[1:]
        if name and name in plan.exports.get(pkg, ()) and (role or is_md):
            return f"{role}{pkg}.{name}"
        if stem in plan.exports.get(pkg, ()) and not tail:
            # fedfleet.strategies.fedprox: the module, or the function the package exports?
            before = m.string[max(0, m.start() - 7) : m.start()]
            after = m.string[m.end() : m.end() + 8]
            if not (before.endswith("import ") or after.startswith(" import")):
                return m.group(0)
        return f"{role}{new}{tail}"

    out = []
    for line in text.splitlines(keepends=True):
        if "getLogger(" in line or "logger=" in line:
            out.append(line)
            continue
        out.append(dotted.sub(sub_dotted, line))
    text = "".join(out)

    # file paths: src/fedfleet/sim/engine.py, fedfleet/sim/engine.py, sim/engine.py (+ :line)
    for old, new in sorted(plan.renamed.items(), key=lambda kv: -len(kv[0])):
        rel_old = "/".join(old.split(".")[1:]) + ".py"
        rel_new = "/".join(new.split(".")[1:]) + ".py"
        text = re.sub(r"(?<![\w])" + re.escape(rel_old) + r"(?![\w])", rel_new, text)

    # from fedfleet.pkg import mod[, ...]: Python only (parsed, so multi-line imports work)
    if path.suffix == ".py":
        text = rewrite_module_imports(plan, path, text, log)
    return text


def rewrite_module_imports(plan: Plan, path: Path, text: str, log: list[str]) -> str:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and not node.level and node.module):
            continue
        if node.module not in plan.packages:
            continue
        hit = [a for a in node.names if f"{node.module}.{a.name}" in plan.renamed]
        if not hit:
            continue
        # skip a package's export of a function that shares its module's name (fedprox)
        hit = [a for a in hit if a.name not in plan.exports.get(node.module, ())]
        if not hit:
            continue
        edits.append(node)
    for node in sorted(edits, key=lambda n: n.lineno, reverse=True):  # type: ignore[assignment]
        assert node.end_lineno is not None
        indent = lines[node.lineno - 1][: node.col_offset]
        names = []
        for a in node.names:
            full = f"{node.module}.{a.name}"
            if full in plan.renamed and a.name not in plan.exports.get(node.module or "", ()):
                priv = plan.renamed[full].rsplit(".", 1)[1]
                names.append(f"{priv} as {a.asname or a.name}")
            else:
                names.append(a.name + (f" as {a.asname}" if a.asname else ""))
        first = lines[node.lineno - 1]
        last = lines[node.end_lineno - 1]
        trailer = last[last.index(")") + 1 :] if "(" in first and ")" in last else ""
        if not trailer:
            # keep a trailing comment on the last line
            code_end = node.end_col_offset or len(last.rstrip("\n"))
            trailer = last[code_end:]
        stmt = f"{indent}from {node.module} import {', '.join(names)}{trailer}"
        if not stmt.endswith("\n"):
            stmt += "\n"
        lines[node.lineno - 1 : node.end_lineno] = [stmt]
        log.append(f"  {path}: line {node.lineno}: from {node.module} import <module> -> private")
    return "".join(lines)


# ---- import graph (the rules of tests/test_layering.py) ----


def src_modules(src: Path) -> dict[str, Path]:
    mods = {}
    for path in sorted((src / "fedfleet").rglob("*.py")):
        if "_pb2" in path.name or "__pycache__" in path.parts:
            continue
        mods[module_name(src, path)] = path
    return mods


def imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")
        package = base if path.name == "__init__.py" else base[:-1]
        package = package[: len(package) - (node.level - 1)]
        prefix = ".".join(package + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def import_graph(src: Path) -> dict[str, set[str]]:
    mods = src_modules(src)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for name in imported(module, path, node):
                if name in mods and name != module:
                    graph[module].add(name)
    return graph


def sccs(graph: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(comp)
    return found


def owner_of_private(dotted: str) -> str | None:
    """``fedfleet.pkg._mod`` -> ``fedfleet.pkg``; None for public modules and ``fedfleet._x``."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if i > 1 and part.startswith("_"):
            return ".".join(parts[:i])
    return None


def inside(module: str, owner: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def publicize(plan: Plan, files: list[Path], log: list[str]) -> None:
    """``from fedfleet.pkg._mod import names`` -> ``from fedfleet.pkg import names`` outside pkg
    when pkg exports every name; in src only where no import cycle appears."""
    src_files = set(src_modules(plan.src).values())
    changed_src: dict[Path, list[tuple[int, str, str]]] = {}
    for path in files:
        if path.suffix != ".py":
            continue
        text = path.read_text()
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        me = module_name(plan.src, path) if path in src_files else "tests"
        lines = text.splitlines(keepends=True)
        edits = []
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module and not node.level):
                continue
            owner = owner_of_private(node.module)
            if owner is None or owner not in plan.exports or inside(me, owner):
                continue
            if node.module.count(".") != owner.count(".") + 1:
                continue  # a private subpackage's module: leave it
            if all(a.name in plan.exports[owner] for a in node.names):
                edits.append((node, owner))
        for node, owner in sorted(edits, key=lambda e: e[0].lineno, reverse=True):
            first = lines[node.lineno - 1]
            new = first.replace(f"from {node.module} import", f"from {owner} import", 1)
            if new == first:
                continue
            lines[node.lineno - 1] = new
            if path in src_files:
                changed_src.setdefault(path, []).append((node.lineno, node.module, owner))
            log.append(f"  {path.relative_to(plan.root)}:{node.lineno}: {node.module} -> {owner}")
        path.write_text("".join(lines))
    # undo, in src, publicized imports that close an import cycle
    while True:
        comps = sccs(import_graph(plan.src))
        undo = []
        for path, items in changed_src.items():
            me = module_name(plan.src, path)
            for item in items:
                _, private, owner = item
                if any(me in c and owner in c for c in comps):
                    undo.append((path, item))
        if not undo:
            break
        for path, (lineno, private, owner) in undo:
            lines = path.read_text().splitlines(keepends=True)
            lines[lineno - 1] = lines[lineno - 1].replace(
                f"from {owner} import", f"from {private} import", 1
            )
            path.write_text("".join(lines))
            changed_src[path].remove((lineno, private, owner))
            log.append(
                f"  kept {path.relative_to(plan.root)}:{lineno}: from {private} "
                f"(importing {owner} would close an import cycle)"
            )


def add_exports(plan: Plan, log: list[str]) -> None:
    for pkg, items in EXPORTS.items():
        folder = plan.packages.get(pkg)
        if folder is None:
            continue
        init = folder / "__init__.py"
        text = init.read_text()
        names = static_all(init)
        for private, name in items:
            if name in names:
                continue
            mod_path = plan.src / (private.replace(".", "/") + ".py")
            if not mod_path.exists() or not re.search(
                rf"^(def|class) {name}\b|^{name}\s*[:=]", mod_path.read_text(), re.M
            ):
                log.append(f"  EXPORTS: {name} not found in {private}; skipped")
                continue
            text = re.sub(
                r"^(__all__ = \[)",
                f"from {private} import {name}  # noqa: E402\n\n\\1",
                text,
                count=1,
                flags=re.M,
            )
            names.append(name)
            text = re.sub(
                r"^__all__ = \[.*?^\]",
                "__all__ = [\n" + "".join(f'    "{n}",\n' for n in sorted(names)) + "]",
                text,
                count=1,
                flags=re.M | re.S,
            )
            log.append(f"  {pkg} now exports {name} (from {private})")
        init.write_text(text)
        plan.exports[pkg] = set(names)


def leftovers(plan: Plan, files: list[Path]) -> list[str]:
    out = []
    olds = sorted(plan.renamed, key=len, reverse=True)
    dotted = re.compile(r"(?<![\w.])(" + "|".join(re.escape(o) for o in olds) + r")(?![\w])")
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in dotted.finditer(line):
                pkg, stem = m[1].rsplit(".", 1)
                if "getLogger(" in line or "logger=" in line or stem in plan.exports[pkg]:
                    continue
                out.append(f"  {path.relative_to(plan.root)}:{n}: {line.strip()[:110]}")
    # bare file names (`engine.py`) of renamed modules, where no public module has that name
    public_stems = {p.stem for p in plan.pkgroot.rglob("*.py") if not p.stem.startswith("_")}
    stems = {o.rsplit(".", 1)[1] for o in olds} - public_stems
    if stems:
        bare = re.compile(r"(?<![\w/.])(" + "|".join(sorted(stems)) + r")\.py\b")
        for path in files:
            if path.suffix not in {".md", ".py", ".toml", ".yml"}:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if bare.search(line):
                    out.append(
                        f"  bare name: {path.relative_to(plan.root)}:{n}: {line.strip()[:100]}"
                    )
    graph = import_graph(plan.src)
    for module in sorted(graph):
        for dep in sorted(graph[module]):
            owner = owner_of_private(dep)
            if owner and not inside(module, owner):
                out.append(f"  src import (in KNOWN_PRIVATE_IMPORTS): {module} -> {dep}")
    return out


def add_layering_test(plan: Plan, log: list[str]) -> None:
    test = plan.root / "tests" / "test_layering.py"
    if not test.exists():
        return
    text = test.read_text()
    if "def test_private_modules_stay_inside_their_package" not in text:
        text = text.rstrip("\n") + "\n" + LAYERING_TEST
        log.append("  tests/test_layering.py: + test_private_modules_stay_inside_their_package")
    graph = import_graph(plan.src)
    edges = sorted(
        (m, d) for m in graph for d in graph[m] if (o := owner_of_private(d)) and not inside(m, o)
    )
    body = "".join(f'        ("{a}", "{b}"),\n' for a, b in edges)
    known = (
        "KNOWN_PRIVATE_IMPORTS: frozenset[tuple[str, str]] = frozenset(\n    {\n"
        + body
        + "    }\n)\n"
        if edges
        else "KNOWN_PRIVATE_IMPORTS: frozenset[tuple[str, str]] = frozenset()\n"
    )
    text = re.sub(
        r"(# privatize: known private imports begin\n).*?(# privatize: known private imports end)",
        lambda m: m[1] + known + m[2],
        text,
        flags=re.S,
    )
    test.write_text(text)
    log.append(f"  tests/test_layering.py: KNOWN_PRIVATE_IMPORTS = {len(edges)} edges")


def post_fixes(root: Path, log: list[str]) -> None:
    for rel, old, new in POST_FIXES:
        path = root / rel
        text = path.read_text() if path.exists() else ""
        if old in text:
            path.write_text(text.replace(old, new))
            log.append(f"  hand fix applied in {rel}")
        elif new not in text:
            log.append(f"  HAND FIX NOT APPLIED (text not found) in {rel}: {old[:80]!r}")


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    dry = "--dry-run" in argv
    root = Path(args[0] if args else ".").resolve()
    plan = Plan(root)
    print(f"packages: {', '.join(sorted(plan.packages))}")
    print(f"renaming {len(plan.moves)} modules:")
    for old, new in plan.moves:
        print(f"  {old.relative_to(root)} -> {new.name}")
    if dry:
        return 0
    for old, new in plan.moves:
        sh(root, "git", "mv", str(old.relative_to(root)), str(new.relative_to(root)))
    log: list[str] = []
    files = text_files(root)
    rewritten = 0
    for path in files:
        text = path.read_text()
        new = rewrite_text(plan, path, text, log)
        if new != text:
            path.write_text(new)
            rewritten += 1
    print(f"rewrote references in {rewritten} files")
    add_exports(plan, log)
    print("imports of private modules from outside their package, now from the package:")
    publicize(plan, files, log)
    add_layering_test(plan, log)
    post_fixes(root, log)
    print("\n".join(log))
    left = leftovers(plan, files)
    edges = [x for x in left if "src import (in KNOWN" in x]
    text_left = [x for x in left if x not in edges]
    print(
        f"src imports of another package's private module: {len(edges)} (listed in "
        "tests/test_layering.py KNOWN_PRIVATE_IMPORTS; --verbose prints them)"
    )
    if "--verbose" in argv:
        print("\n".join(edges))
    print(
        f"references not rewritten ({len(text_left)}):" if text_left else "no text reference left"
    )
    print("\n".join(text_left))
    ruff = next((a.split("=", 1)[1] for a in argv if a.startswith("--ruff=")), None)
    ruff = ruff or shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if Path(ruff).exists() or shutil.which(ruff):
        # import order changes with the names (_base sorts before aggregators); then the format
        dirs = [d for d in ("src", "tests", "bench", "examples") if (root / d).is_dir()]
        subprocess.run([ruff, "check", "--select", "I", "--fix", "-q", *dirs], cwd=root)
        subprocess.run([ruff, "format", "-q", *dirs], cwd=root)
        print(f"ran {ruff} check --select I --fix and ruff format on {' '.join(dirs)}")
        long = subprocess.run(
            [ruff, "check", "--select", "E501", "--output-format", "concise", *dirs],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if "E501" in long:
            print("lines now too long (wrap by hand):\n" + long)
    else:
        print("ruff not found (--ruff=PATH): run ruff check --select I --fix and ruff format")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
