"""Which names a cell reads from outside: the names ``%%remote`` must ship with it.

A name is *free* in a cell when the cell reads it before assigning it, in evaluation
order (``x = x + 1`` reads ``x`` first; ``for x in xs`` reads ``xs`` and assigns ``x``).
Reads inside function, lambda and class bodies happen later, when they are called, so
they count only when the cell never assigns the name at top level. Comprehensions run at
once and read their enclosing scope directly. Conditional assignments count as
assignments: the analysis is simple by design, and right for the cells people write.

>>> sorted(free_names("y = x + 1\\nprint(y, z)"))
['print', 'x', 'z']
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

_FunctionNode = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_Comprehension = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _target_names(node: ast.AST) -> Iterable[str]:
    """Names bound by an assignment target (``a``, ``a, (b, *c)``; not ``a.b`` or ``a[0]``)."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Starred):
        yield from _target_names(node.value)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            yield from _target_names(elt)


def _locals_of(body: list[ast.stmt], params: Iterable[str]) -> set[str]:
    """Names local to a function or class body: its parameters and whatever it binds."""
    names = set(params)
    declared: set[str] = set()
    for stmt in body:
        for node in _walk_scope(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                names.add(node.name)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                declared.update(node.names)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                names.add(node.name)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                names.add(node.rest)
    return names - declared


def _walk_scope(node: ast.AST) -> Iterable[ast.AST]:
    """``ast.walk`` that does not enter nested function, lambda or class bodies."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (*_FunctionNode, ast.ClassDef)):
            yield child  # its name belongs to this scope; its body does not
            continue
        yield from _walk_scope(child)


def _params(args: ast.arguments) -> list[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return [a.arg for a in every]


class _Reads(ast.NodeVisitor):
    """Walks a cell in evaluation order and records the names it reads before binding them."""

    def __init__(self) -> None:
        #: Top-level names bound so far.
        self.bound: set[str] = set()
        #: Top-level reads of names not bound yet, in first-read order.
        self.free: dict[str, None] = {}
        #: Reads from function, lambda and class bodies (they run later).
        self.deferred: dict[str, None] = {}
        #: Enclosing scopes while inside a body: (local names, runs later).
        self.scopes: list[tuple[set[str], bool]] = []

    # ---- reads and binds ----

    def _read(self, name: str) -> None:
        for names, _ in reversed(self.scopes):
            if name in names:
                return
        if any(later for _, later in self.scopes):
            self.deferred.setdefault(name)
        elif name not in self.bound:
            self.free.setdefault(name)

    def _bind(self, name: str) -> None:
        if self.scopes:
            self.scopes[-1][0].add(name)
        else:
            self.bound.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.id)
        else:
            self._bind(node.id)

    # ---- statements whose parts run out of source order ----

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._read(node.target.id)  # x += 1 reads x first
        self.visit(node.value)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        # The walrus binds in the nearest enclosing scope that is not a comprehension.
        for names, later in reversed(self.scopes):
            if later:
                names.add(node.target.id)
                return
        self.bound.add(node.target.id)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self._bind((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._bind(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self._bind(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._bind(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.generic_visit(node)
        if node.rest:
            self._bind(node.rest)

    # ---- new scopes ----

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        # Evaluated where the function is defined: decorators, defaults, annotations.
        for expr in [*getattr(node, "decorator_list", []), *args.defaults,
                     *[d for d in args.kw_defaults if d is not None]]:
            self.visit(expr)
        if isinstance(node, ast.Lambda):
            body: list[ast.stmt] = [ast.Expr(node.body)]
        else:
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    self.visit(a.annotation)
            if node.returns is not None:
                self.visit(node.returns)
            self._bind(node.name)
            body = node.body
        self.scopes.append((_locals_of(body, _params(args)), True))
        for stmt in body:
            self.visit(stmt)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]:
            self.visit(expr)
        self._bind(node.name)
        self.scopes.append((_locals_of(node.body, ()), True))
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp
                       | ast.DictComp) -> None:
        gens = node.generators
        self.visit(gens[0].iter)  # the first iterable is evaluated in the enclosing scope
        targets = {n for g in gens for n in _target_names(g.target)}
        self.scopes.append((targets, False))
        for i, g in enumerate(gens):
            if i:
                self.visit(g.iter)
            for cond in g.ifs:
                self.visit(cond)
        if isinstance(node, ast.DictComp):
            self.visit(node.key)
            self.visit(node.value)
        else:
            self.visit(node.elt)
        self.scopes.pop()

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension


def free_names(source: str | ast.Module) -> list[str]:
    """The names ``source`` reads before it binds them, first-read order (builtins included).

    Raises ``SyntaxError`` when ``source`` does not parse.
    """
    tree = ast.parse(source) if isinstance(source, str) else source
    reads = _Reads()
    for stmt in tree.body:
        reads.visit(stmt)
    later = [n for n in reads.deferred if n not in reads.bound and n not in reads.free]
    return [*reads.free, *later]
