"""The layering of dasd_lib (docs/architecture.md): each module imports only modules of its
own layer or the ones below, the import graph has no cycle, and dasd_lib modules are
imported at module top, not inside functions. Read from the source with ast, so the test
sees function-level imports too."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "dasd_lib"
# bottom to top; a package name covers its submodules
LAYERS = [
    ["config", "storage", "metrics", "losses", "data"],
    ["backbones"],
    ["model"],
    ["features", "checkpoint", "official"],
    ["train"],
    ["evaluate", "report", "report_html"],
    ["pipeline"],
    ["plots"],
    ["explorer"],
    ["disentangle", "compare", "findings", "study"],
    ["execution", "run_state"],
    ["run", "sweep", "sweep_definition"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# Known exceptions, (importer, imported): none left. A new one needs a reason here.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_INNER: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(node: ast.ImportFrom | ast.Import, importer: str, is_package: bool) -> list[str]:
    """The dasd_lib modules an import statement names (relative to the package root)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level:
        base = importer.split(".") if importer else []
        base = base if is_package else base[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
        names = [prefix] if node.module else [f"{prefix}.{a.name}".lstrip(".") for a in node.names]
        names = [f"dasd_lib.{n}" if n else "dasd_lib" for n in names]
    else:
        names = [node.module or ""]
        if node.module == "dasd_lib":
            names = [f"dasd_lib.{a.name}" for a in node.names]
    out = []
    for name in names:
        if name.startswith("dasd_lib."):
            out.append(name[len("dasd_lib."):])
    return out


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(module -> dasd_lib modules it imports anywhere, {(module, imported) made inside a
    function}); `if __name__ == "__main__":` blocks are the command line, left out."""
    graph: dict[str, set[str]] = {}
    inner: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(n) for g in tree.body if _is_main_guard(g) for n in ast.walk(g)}
        top = {id(n) for n in tree.body}
        graph.setdefault(importer, set())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in guarded:
                continue
            for name in _target(node, importer, path.name == "__init__.py"):
                graph[importer].add(name)
                if id(node) not in top:
                    inner.add((importer, name))
    return graph, inner


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER:
            return LAYER[".".join(parts[:n])]
    return None


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer():
    graph, _ = import_graph()
    assert [m for m in graph if m and layer_of(m) is None] == []
    # the parser sees absolute, relative and package imports
    assert {"evaluate", "model", "storage"} <= graph["pipeline"] | graph["checkpoint"]
    assert "data.loaders" in graph["data.stats"] and "storage" in graph["backbones.tiny"]


def test_imports_go_down_the_layers():
    graph, _ = import_graph()
    upward = {(a, b) for a, targets in graph.items() for b in targets
              if a and b and _top(a) != _top(b) and layer_of(b) > layer_of(a)}
    assert upward - KNOWN_UPWARD == set(), "an import goes up the layers (docs/architecture.md)"
    assert KNOWN_UPWARD - upward == set(), "a known debt is paid: remove it from KNOWN_UPWARD"


def test_no_import_cycles_between_modules():
    graph, _ = import_graph()
    edges = {a: {b for b in t if b in graph and b != a and not b.startswith(f"{a}.")
                 and not a.startswith(f"{b}.")} for a, t in graph.items() if a}
    cycles = []

    def visit(node, stack, seen):
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], seen)

    for start in sorted(edges):
        visit(start, [start], {start})
    assert cycles == []


def test_dasd_lib_modules_are_imported_at_module_top():
    _, inner = import_graph()
    assert inner - KNOWN_INNER == set(), "import dasd_lib modules at module top"
    assert KNOWN_INNER - inner == set(), "a known debt is paid: remove it from KNOWN_INNER"
