"""What runs on the worker for ``%%remote``: exec a cell's source in a namespace.

This module is imported by worker processes (``run_cell`` and ``NotebookSession`` are pickled by
reference), so it imports nothing from IPython and nothing from the rest of
``kernel_ext``: only the standard library.

A cell runs like a notebook cell: its statements are executed in order, and when the last
statement is an expression its value is the cell's value. The source is registered in
``linecache`` under the cell's filename (``<cell-N>``) first, so a traceback shows the
cell's own lines.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import linecache
from collections.abc import Iterable
from typing import Any


def register_source(filename: str, source: str) -> None:
    """Make ``linecache`` (hence tracebacks) find ``source`` under ``filename``."""
    # mtime None: linecache.checkcache keeps the entry (there is no file to compare with).
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def split_last_expression(tree: ast.Module) -> tuple[ast.Module, ast.Expression | None]:
    """The cell without its final expression, and that expression (None if there is none)."""
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        body = ast.Module(body=tree.body[:-1], type_ignores=tree.type_ignores)
        return body, ast.Expression(body=last.value)
    return tree, None


def compile_cell(source: str, filename: str) -> tuple[Any, Any | None]:
    """Code objects for the cell's statements and for its last expression (or None)."""
    body, last = split_last_expression(ast.parse(source, filename, "exec"))
    code = compile(body, filename, "exec", dont_inherit=True)
    expr = compile(last, filename, "eval", dont_inherit=True) if last is not None else None
    return code, expr


def new_namespace() -> dict[str, Any]:
    """A fresh module-like namespace, as a notebook's ``__main__`` is."""
    return {"__name__": "__main__", "__builtins__": builtins}


def fill_namespace(ns: dict[str, Any], values: dict[str, Any], imports: dict[str, str]) -> None:
    """Import the shipped modules under their local names, then set the shipped values."""
    for name, module in imports.items():
        ns[name] = importlib.import_module(module)
    ns.update(values)


def execute(source: str, filename: str, ns: dict[str, Any]) -> Any:
    """Run the cell in ``ns``; return its last expression's value (None when there is none)."""
    register_source(filename, source)
    code, expr = compile_cell(source, filename)
    exec(code, ns)
    return eval(expr, ns) if expr is not None else None


def take(ns: dict[str, Any], names: Iterable[str], filename: str) -> dict[str, Any]:
    """The values of ``names`` in ``ns`` (for ``--pull`` and ``%pull``)."""
    out: dict[str, Any] = {}
    for name in names:
        if name not in ns:
            raise NameError(f"{name!r} is not defined in {filename}'s namespace, so it cannot "
                            "be pulled back. Assign it in the cell, or drop it from --pull.")
        out[name] = ns[name]
    return out


def run_cell(source: str, filename: str, values: dict[str, Any], imports: dict[str, str],
             pull: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """The remote side of ``%%remote``: run the cell in a fresh namespace.

    Returns the value of the cell's last expression and the values of the ``pull`` names.
    """
    ns = new_namespace()
    fill_namespace(ns, values, imports)
    value = execute(source, filename, ns)
    return value, take(ns, pull, filename)


class NotebookSession:
    """A persistent namespace on the cluster (``%%remote --session NAME``), run as a named actor.

    Each cell runs in the same namespace, so later cells see what earlier ones defined.
    """

    def __init__(self) -> None:
        self.ns = new_namespace()

    def run(self, source: str, filename: str, values: dict[str, Any], imports: dict[str, str],
            pull: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
        """Run a cell in the session's namespace (see ``run_cell``)."""
        fill_namespace(self.ns, values, imports)
        value = execute(source, filename, self.ns)
        return value, take(self.ns, pull, filename)

    def push(self, values: dict[str, Any], imports: dict[str, str]) -> list[str]:
        """Set names in the namespace (``%push``); returns the names set."""
        fill_namespace(self.ns, values, imports)
        return sorted([*values, *imports])

    def pull(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The values of ``names`` (``%pull``)."""
        return take(self.ns, names, "the session")

    def names(self) -> list[str]:
        """The names the session's cells defined (without dunder names)."""
        return sorted(n for n in self.ns if not n.startswith("__"))
