"""Import-graph check for ``make lint``: no import cycle among the project's modules.

Every module of the given packages (default ``fedsc`` and ``smpc``) is parsed with
:mod:`ast`; each ``import`` / ``from ... import`` statement is an edge, wherever it stands:
at module level or inside a function (a lazy import hides a cycle from Python, not from the
design). Cycles are found with networkx (strongly connected components).

Why a script and not import-linter/grimp: import-linter's ``acyclic_siblings`` contract
compares packages, not modules, and grimp does not say whether an import sits inside a
function, which this check reports; parsing is the few lines below, the graph algorithms
are networkx's.

Rules of the graph (grimp's, plus one):

- ``import a.b.c`` is an edge to ``a.b.c`` (not to ``a`` and ``a.b``, whose ``__init__``
  only runs first); ``from a.b import c`` is an edge to ``a.b.c`` when that is a module,
  else to ``a.b``.
- ``from pkg import name`` where ``pkg/__init__.py`` re-exports ``name`` from module ``m``
  (with an import, also one under ``TYPE_CHECKING``, as the lazy ``__getattr__`` packages
  here do) is also an edge to ``m``: that is the module the name loads.
- ``importlib.import_module("literal")`` is an import.
- Imports under ``if TYPE_CHECKING:`` never run: they are counted and printed but are not
  edges (they cannot form a cycle at run time).
- A registry's ``"package.module:attribute"`` string (a plugin entry resolved on first use
  by :func:`fedsc.registry.resolve`) is counted and printed, not an edge: the registry
  names its plugin, as an entry point does, and the plugin may use the registry.

An import known to close a cycle may be allowed in :data:`KNOWN_EDGES`, with its reason:
it is left out of the graph, so every other cycle still fails.

Also checked: ``smpc`` imports nothing from ``fedsc`` (it knows nothing about cells).

Usage: ``python .ci/check_imports.py [--root DIR]... [--forbid SRC=DST]...``; exit status 1
on a cycle or a forbidden import, with every cycle printed edge by edge (file:line).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import re
import sys
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

#: A registry's lazy reference to its plugin, ``"package.module:attribute"``.
LAZY_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOTS = ("fedsc", "smpc")
DEFAULT_FORBID = ("smpc=fedsc",)

#: Imports known and allowed to close a cycle, each with the reason; they are left out of
#: the graph before cycles are searched, so any other cycle still fails. None today.
KNOWN_EDGES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    """One import statement's edge."""

    source: str
    target: str
    path: Path
    line: int
    in_function: bool
    type_checking: bool


def discover(root: Path) -> dict[str, Path]:
    """Map every module's dotted name under package directory ``root`` to its file."""
    if not (root / "__init__.py").is_file():
        raise SystemExit(f"error: {root} is not a package (no __init__.py); pass --root DIR")
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Collect (module, names, line, in_function, type_checking) of every import."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.function_depth = 0
        self.type_checking_depth = 0
        self.found: list[tuple[str, tuple[str, ...], int, bool, bool]] = []
        self.lazy_refs: list[str] = []

    def _add(self, target: str, names: tuple[str, ...], line: int) -> None:
        self.found.append(
            (target, names, line, self.function_depth > 0, self.type_checking_depth > 0)
        )

    def _function(self, node: ast.AST) -> None:
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking_depth += 1
            for child in node.body:
                self.visit(child)
            self.type_checking_depth -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, (), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        self._add(target, tuple(alias.name for alias in node.names), node.lineno)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and LAZY_REF.match(node.value):
            self.lazy_refs.append(node.value.partition(":")[0])

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if (
            name == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self._add(node.args[0].value, (), node.lineno)
        self.generic_visit(node)


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``target`` names, or None for an outside one."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def collect(modules: dict[str, Path]) -> tuple[list[Import], int, Counter[str], int]:
    """Every internal import edge and the in-function import statements, in all and per module.

    The in-function counts include imports of outside packages (torch, scanpy...). The
    last number is the registries' lazy ``"module:attribute"`` references to the project's
    modules: plugin entries resolved on first use (:func:`fedsc.registry.resolve`), named
    by the registry rather than imported, so they are counted but are not edges.
    """
    raw: dict[str, list[tuple[str, tuple[str, ...], int, bool, bool]]] = {}
    lazy_refs = 0
    for module, path in modules.items():
        collector = _Collector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        raw[module] = collector.found
        lazy_refs += sum(_resolve(ref, modules) is not None for ref in collector.lazy_refs)
    # name -> defining module, for each package's re-exports (``from .x import name``)
    reexports: dict[str, dict[str, str]] = {}
    for module, found in raw.items():
        if modules[module].name != "__init__.py":
            continue
        table = reexports.setdefault(module, {})
        for target, names, _, _, _ in found:
            defining = _resolve(target, modules)
            for name in names:
                if defining is not None and defining != module:
                    table.setdefault(name, defining)
    edges: list[Import] = []
    in_function = 0
    per_module: Counter[str] = Counter()
    for module, found in raw.items():
        path = modules[module]
        for target, names, line, func, tc in found:
            if func:
                in_function += 1
                per_module[module] += 1
            targets: set[str] = set()
            for name in names or ("",):
                full = _resolve(f"{target}.{name}" if name else target, modules)
                if full is None:
                    continue
                targets.add(full)
                if full == target and name in reexports.get(target, {}):
                    targets.add(reexports[target][name])
            for dst in sorted(targets - {module}):
                edges.append(Import(module, dst, path, line, func, tc))
    return edges, in_function, per_module, lazy_refs


def find_cycles(
    edges: list[Import], allowed: Collection[tuple[str, str]] = ()
) -> list[tuple[list[str], list[Import]]]:
    """Each strongly connected component: its modules and one shortest cycle's edges.

    Imports ``(source, target)`` in ``allowed`` are left out.
    """
    graph = nx.DiGraph()
    for edge in edges:
        if edge.type_checking or (edge.source, edge.target) in allowed:
            continue
        if not graph.has_edge(edge.source, edge.target):
            graph.add_edge(edge.source, edge.target, imports=[])
        graph.edges[edge.source, edge.target]["imports"].append(edge)
    cycles = []
    for component in sorted(nx.strongly_connected_components(graph), key=min):
        if len(component) < 2:
            continue
        start = min(component)
        sub = graph.subgraph(component)
        # shortest path back to ``start`` from one of its successors inside the component
        best: list[str] | None = None
        for succ in sorted(sub.successors(start)):
            path = nx.shortest_path(sub, succ, start)
            if best is None or len(path) < len(best):
                best = path
        assert best is not None
        nodes = [start, *best]
        cycle = [sub.edges[a, b]["imports"][0] for a, b in itertools.pairwise(nodes)]
        cycles.append((sorted(component), cycle))
    return cycles


def _where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    """Check the packages; print the counts; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", action="append", type=Path, help="package directory (repeatable)")
    parser.add_argument(
        "--forbid",
        action="append",
        metavar="SRC=DST",
        help="package SRC must not import package DST (default: smpc=fedsc)",
    )
    parser.add_argument("--top", type=int, default=5, help="modules listed by lazy imports")
    args = parser.parse_args(argv)
    roots_default = not args.root
    roots = args.root or [REPO / name for name in DEFAULT_ROOTS]
    modules: dict[str, Path] = {}
    for root in roots:
        modules.update(discover(root.resolve()))
    edges, in_function, per_module, lazy_refs = collect(modules)
    failed = False
    for rule in args.forbid or list(DEFAULT_FORBID):
        src, sep, dst = rule.partition("=")
        if not sep:
            parser.error(f"--forbid {rule!r}: write SRC=DST, e.g. smpc=fedsc")
        for edge in edges:
            if edge.source.split(".")[0] == src and edge.target.split(".")[0] == dst:
                failed = True
                print(
                    f"error: {_where(edge.path)}:{edge.line}: {edge.source} imports "
                    f"{edge.target} ({src} must not import {dst})"
                )
    known = KNOWN_EDGES if roots_default else {}
    allowed = sorted({(e.source, e.target) for e in edges} & set(known))
    cycles = find_cycles(edges, allowed)
    for src, dst in allowed:
        print(f"allowed known import {src} -> {dst}: {known[src, dst]}")
    for component, cycle in cycles:
        failed = True
        print(f"error: import cycle among {', '.join(component)}; one of them:")
        for edge in cycle:
            where = "in a function" if edge.in_function else "module level"
            print(f"  {edge.source} -> {edge.target}  ({_where(edge.path)}:{edge.line}, {where})")
    type_checking = sum(edge.type_checking for edge in edges)
    internal_lazy = sum(edge.in_function and not edge.type_checking for edge in edges)
    top = ", ".join(f"{name} {count}" for name, count in per_module.most_common(args.top))
    print(
        f"import graph: {len(modules)} modules, {len(edges)} internal imports "
        f"({internal_lazy} of them in functions, {type_checking} under TYPE_CHECKING); "
        f"{in_function} in-function import statements in all (most: {top}); "
        f"{lazy_refs} lazy registry references; "
        f"{len(cycles)} cycle(s) ({len(allowed)} known import(s) allowed)"
    )
    if cycles:
        print(
            "Break a cycle by moving what both sides need into a module that imports "
            "neither, or by passing it in (a registry entry, an argument), not by moving "
            "the import into a function: this check counts those too."
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
