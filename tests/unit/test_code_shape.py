"""The shape of the code: no import circles, no module over 500 lines.

Imports are read from the source (``ast``), not by importing: every ``import`` and
``from … import`` of our packages counts, at module level or inside a function, except
those under ``if TYPE_CHECKING:`` (type-only, never executed). A circle means two modules
cannot be understood, tested or changed apart, so any strongly connected group of more
than one module fails, with the circle printed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "kernel_ext", "widgets")
MAX_LINES = 500


def _is_generated(path: Path) -> bool:
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py"))


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _is_generated(path):
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> list[str]:
    """Every module name imported by ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.append(prefix)
            names.extend(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            # `from a.b import c`: the edge goes to a.b.c when c is a module, else to a.b.
            if imported in modules and imported != name:
                edges.add(imported)
        # `from a.b import c` with c a module also listed a.b itself: keep the package
        # edge only when something other than submodules was imported from it.
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _package_edges_only(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # `from runtime.node import state` lists both runtime.node and runtime.node.state; the
    # package's __init__ runs either way, but that edge is Python's, not the author's: drop
    # an edge to a package when the same statement named one of its submodules.
    cleaned: dict[str, set[str]] = {}
    for name, edges in graph.items():
        keep = set()
        for target in edges:
            if any(other.startswith(target + ".") for other in edges):
                continue
            keep.add(target)
        cleaned[name] = keep
    return cleaned


def test_the_import_graph_has_no_circle() -> None:
    graph = _package_edges_only(_graph())
    assert "runtime.api._client" in graph, "the walk found none of our modules"
    circles = _cycles(graph)
    assert not circles, "import circles (each line: modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in circles)


def test_runtime_api_imports_nothing_from_the_worker() -> None:
    graph = _package_edges_only(_graph())
    bad = sorted(f"{m} imports {t}" for m, edges in graph.items() if m.startswith("runtime.api")
                 for t in edges if t.startswith("runtime.worker"))
    assert not bad, "the driver's API must not depend on the worker:\n" + "\n".join(bad)


def test_the_circle_finder_finds_circles() -> None:
    # The finder itself, on a graph with one circle of three and a tail.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_500_lines(package: str) -> None:
    long = {str(p.relative_to(ROOT)): n for name, p in _modules().items()
            if name.split(".")[0] == package
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by reason to change): {long}"
