"""The layering of dasd_lib (docs/architecture.md): each module imports only modules of its
own layer or the ones below, the import graph has no cycle, and dasd_lib modules are
imported at module top, not inside functions. Read from the source with ast, so the test
sees function-level imports too. Also: no process-wide memo or other module-level container
a function changes (a run's tables and backbones live on its context.Run), and no library
file over 500 lines."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "dasd_lib"
# bottom to top; a package name covers its submodules
LAYERS = [
    ["config", "config_checks", "storage", "metrics", "losses", "data", "parallel"],
    ["backbones"],
    ["model"],
    ["features", "checkpoint", "official"],
    ["devices", "train", "train_vlp"],
    ["context"],
    ["evaluate", "report", "report_html"],
    ["pipeline", "vlp_stage"],
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


# ----------------------------------------------------------------------------- no process-wide state

# decorators that memoise in the process (functools.lru_cache, functools.cache); a memo
# belongs to an object (context.Run holds the tables and backbones) or to one call
CACHE_DECORATORS = {"lru_cache", "cache"}
MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque"}
MUTATING_METHODS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem",
                    "clear", "remove", "add", "discard", "appendleft", "popleft"}
# (module, name) of module-level containers a function may change, each with its reason:
# none left. A new one needs a reason here.
KNOWN_MODULE_STATE: set[tuple[str, str]] = set()


def _decorator_name(node: ast.expr) -> str:
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _is_mutable_value(node: ast.expr | None) -> bool:
    if isinstance(node, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    return isinstance(node, ast.Call) and _decorator_name(node) in MUTABLE_CALLS


def module_state() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """({(module, function) memoised by a cache decorator}, {(module, name) of a module-level
    dict, list or set that a function body changes: item assignment or deletion, a mutating
    method, or a `global` rebinding})."""
    cached, mutated = set(), set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        containers = set()
        for node in tree.body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            if _is_mutable_value(getattr(node, "value", None)):
                containers |= {t.id for t in targets if isinstance(t, ast.Name)}
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn in functions:
            if any(_decorator_name(d) in CACHE_DECORATORS for d in fn.decorator_list):
                cached.add((module, fn.name))
            for node in ast.walk(fn):
                if isinstance(node, ast.Global):
                    mutated |= {(module, n) for n in node.names}
                elif isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
                    if isinstance(node.value, ast.Name) and node.value.id in containers:
                        mutated.add((module, node.value.id))
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in MUTATING_METHODS and isinstance(node.func.value, ast.Name)
                      and node.func.value.id in containers):
                    mutated.add((module, node.func.value.id))
    return cached, mutated


def test_no_module_level_caches():
    cached, mutated = module_state()
    assert cached == set(), "a process-wide memo (lru_cache / cache): keep it on an object"
    assert mutated - KNOWN_MODULE_STATE == set(), "module-level state changed by a function"
    assert KNOWN_MODULE_STATE - mutated == set(), "a known debt is paid: remove it from KNOWN_MODULE_STATE"


def test_the_checks_see_module_state(tmp_path, monkeypatch):
    """The scanner itself: it flags the shapes a cache takes, and not local containers."""
    package = tmp_path / "dasd_lib"
    package.mkdir()
    (package / "a.py").write_text(
        "import functools\nfrom functools import lru_cache\n"
        "_SEEN = {}\n_LIST: list = []\n_FIXED = {'x': 1}\n_BUILT = dict()\n_BUILT['y'] = 2\n"
        "@lru_cache(maxsize=8)\ndef f(x): return x\n"
        "@functools.cache\ndef g(x): return x\n"
        "def h(k):\n    _SEEN[k] = 1\n    _LIST.append(k)\n    local = {}\n    local[k] = 1\n"
        "    return _FIXED[k]\n"
        "def i():\n    global _COUNT\n    _COUNT = 1\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    cached, mutated = module_state()
    assert cached == {("a", "f"), ("a", "g")}
    assert mutated == {("a", "_SEEN"), ("a", "_LIST"), ("a", "_COUNT")}


# ----------------------------------------------------------------------------- short files

MAX_LINES = 500
# files over MAX_LINES, each with its reason: none left. A new one needs a reason here.
KNOWN_LONG: set[str] = set()


def test_no_library_file_over_500_lines():
    long = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if len(p.read_text(encoding="utf-8").splitlines()) > MAX_LINES}
    assert long - KNOWN_LONG == set(), f"a dasd_lib file over {MAX_LINES} lines: split it"
    assert KNOWN_LONG - long == set(), "a known debt is paid: remove it from KNOWN_LONG"
