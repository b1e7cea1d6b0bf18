"""The house rules of docs/architecture.md, checked on the source: who may import whom.

Every import of the package is counted, imports inside functions included; those under
``if TYPE_CHECKING:`` are not (they never run). A name that a room's ``__init__`` exports lazily
counts as an import of the module that defines it, so that a circle closed through a room's
front door is still a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hybridexec

PACKAGE = "hybridexec"
ROOT = Path(hybridexec.__file__).parent

# Bottom to top: a unit (a top-level module or a room) imports only units of lower layers.
LAYERS: list[set[str]] = [
    {"_version", "_lazy", "_exceptions", "_lifecycle", "_faults", "_fncache", "_waits"},
    {"_serialize"},
    {"_task"},
    {"_futures"},
    {"_callbacks"},
    {"_shm"},
    {"_process"},
    {"_deadlines", "_profiles"},
    {"_threads"},
    {"_routing"},
    {"_actors"},
    {"_backends"},
    {"_asyncio"},
    {"_mapitems"},
    {"_mapping", "_decisions", "_deferred", "_groups"},
    {"_router"},
    {"_views"},
    {"_execmap"},
    {"_executor"},
    {"_default"},
    {"_afront"},
    {"_demo"},
    {"__init__", "__main__"},
    {"joblib"},  # a public submodule: uses the public API only
]
ROOMS = {"_shm", "_process", "_routing", "_actors", "_backends"}
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    path = modules.get(name)
    return path is not None and path.name == "__init__.py"


def _unit(name: str) -> str:
    parts = name.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


class _Imports(ast.NodeVisitor):
    """Collect (line, target module, imported names) outside ``if TYPE_CHECKING:`` blocks."""

    def __init__(self, module: str, package: bool) -> None:
        self.module = module
        self.package = package
        self.found: list[tuple[int, str, list[str]]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name in ("TYPE_CHECKING", "_TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                self.found.append((node.lineno, alias.name, []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.package:
                base.pop()
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] == PACKAGE:
            self.found.append((node.lineno, target, [a.name for a in node.names]))


def _lazy_table(path: Path) -> dict[str, str]:
    """A room's exported names -> the module defining each.

    Names imported from the room's modules (lazily, under TYPE_CHECKING, or eagerly) map to
    those modules; names listed in ``__all__`` and defined in the ``__init__`` map to it.
    """
    table: dict[str, str] = {}
    package = _module_name(path)
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                table[alias.asname or alias.name] = f"{package}.{node.module}"
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            for name in ast.literal_eval(node.value):
                table.setdefault(name, package)
    return table


def _edges() -> tuple[dict[str, set[str]], list[str]]:
    """The import graph (module -> modules) and every rule broken on the way."""
    modules = _modules()
    tables = {
        name: _lazy_table(path)
        for name, path in modules.items()
        if path.name == "__init__.py" and name != PACKAGE
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    broken: list[str] = []
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text()))
        for line, target, names in visitor.found:
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            targets = []
            for imported in names or [""]:
                sub = f"{target}.{imported}"
                if imported and sub in modules:
                    targets.append(sub)  # from . import _x: the module _x
                elif target in tables and imported in tables[target]:
                    targets.append(tables[target][imported])  # a room's export
                elif target in modules:
                    targets.append(target)
                else:
                    broken.append(f"{where}: {target}.{imported} is not a module of ours")
            for real in targets:
                if real != name:
                    graph[name].add(real)
            for real in targets:
                _check(name, target if target != PACKAGE else real, names, where, tables, broken)
    return graph, broken


def _check(
    name: str,
    target: str,
    names: list[str],
    where: str,
    tables: dict[str, dict[str, str]],
    broken: list[str],
) -> None:
    """Record the rules that importing ``names`` from ``target`` in ``name`` breaks."""
    src_unit, dst_unit = _unit(name), _unit(target)
    if src_unit == dst_unit or name == PACKAGE:
        return
    if dst_unit in ROOMS and target != f"{PACKAGE}.{dst_unit}":
        broken.append(f"{where}: reaches into room {dst_unit} ({target}); use its __init__")
    elif dst_unit in ROOMS:
        exported = set(tables[target])
        for imported in names:
            if imported not in exported:
                broken.append(f"{where}: {dst_unit} does not export {imported}")
    if dst_unit not in LAYER or src_unit not in LAYER:
        broken.append(f"{where}: {src_unit} or {dst_unit} has no layer in this test")
    elif LAYER[dst_unit] >= LAYER[src_unit]:
        broken.append(f"{where}: {src_unit} imports {dst_unit}, which is not below it")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_import_follows_the_layers_and_room_fronts() -> None:
    _, broken = _edges()
    assert not broken, "\n".join(broken)


def test_no_import_closes_a_circle() -> None:
    graph, _ = _edges()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_every_unit_has_a_layer() -> None:
    units = {_unit(name) for name in _modules()}
    assert units <= set(LAYER), sorted(units - set(LAYER))


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def test_the_checker_sees_a_circle_and_an_upward_import() -> None:
    # The rules above must be able to fail: a made-up graph with a circle is caught.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("statement", "most"),
    # The worker's 19th module is _threadlimits (BLAS/OpenMP limits set as it starts), its 18th
    # _faults (a few lines, no imports): its fault points fire in the child.
    [("import hybridexec", 8), ("import hybridexec._process._worker", 19)],
)
def test_import_loads_few_of_our_modules(statement: str, most: int) -> None:
    loaded = _loaded_after(statement)
    assert len(loaded) <= most, loaded


def _loaded_after(statement: str) -> list[str]:
    """Our modules loaded in a fresh interpreter once ``statement`` ran."""
    code = (
        f"import sys; {statement}; "
        "print(sorted(m for m in sys.modules if m == 'hybridexec' or m.startswith('hybridexec.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded: list[str] = eval(out)  # a list literal printed above
    return loaded


# What a plain executor never uses loads on first use: actors when one is made, a backend with
# backend=, map's machinery (and its OOM retries) with the first map, SharedList when made.
# 51 of our modules today (the classifier's measuring machinery and Explanation load with the
# first call measured or explained: tests/test_cold_imports.py; _process/_direct is the 51st;
# _process/_group and _process/_replies, several calls per frame, came with issue 17;
# _process/_guardian was split from _supervise; _routing/_calls from _routing/_verdicts;
# _process/_server, hybridexec's own fork server, came with round 16 and went in round 17).
_PLAIN_MOST = 58
_ON_FIRST_USE = ("_actors.", "_backends.", "_mapping", "_mapitems", "_oom", "_shm._list")


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_plain_executor_loads_only_what_it_uses(kind: str) -> None:
    loaded = _loaded_after(
        "import hybridexec; ex = hybridexec.Executor(); "
        f"assert ex.options(kind={kind!r}).submit(pow, 2, 3).result(timeout=30) == 8; "
        "ex.shutdown()"
    )
    assert len(loaded) <= _PLAIN_MOST, loaded
    assert not [m for m in loaded if any(f"hybridexec.{u}" in m for u in _ON_FIRST_USE)], loaded
