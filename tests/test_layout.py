"""The tests' layout (docs/design.md, docs/architecture.md "Tests"): tests mirror the
packages, and a helper is defined once, in tests/_helpers/, never copied into a test file."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from _helpers.paths import ROOT

TESTS = ROOT / "tests"
#: tests/<folder>/: the two packages mirrored, fedsc.deploy's tests (shared deployments),
#: the robustness suite (by concern) and the shared helpers.
TOP_FOLDERS = {"fedsc", "smpc", "deploy", "robustness", "_helpers"}
#: Top-level modules every test imports; importing them says nothing about its subject.
INCIDENTAL = {"errors"}


def _folders(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir() and p.name != "__pycache__"}


def _is_package(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.py"))


def test_tests_folders_are_the_documented_ones():
    unknown = _folders(TESTS) - TOP_FOLDERS
    assert not unknown, f"tests/{sorted(unknown)}: not in the documented layout (TOP_FOLDERS)"
    assert _is_package(ROOT / "fedsc" / "deploy")  # tests/deploy/ mirrors it


@pytest.mark.parametrize("package", ["fedsc", "smpc"])
def test_each_tests_folder_mirrors_a_subpackage(package):
    """tests/<package>/<name>/ holds the tests of <package>.<name>, which must exist."""
    stray = {name for name in _folders(TESTS / package) if not _is_package(ROOT / package / name)}
    assert not stray, (
        f"tests/{package}/{sorted(stray)}: no {package}/<name>/ package of that name; "
        "put the tests in the folder of the package they test"
    )


def _imported_modules(tree: ast.Module, package: str) -> set[str]:
    """First components below ``package`` of every import (``""`` for the package itself)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == package:
                names += [f"{package}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == package:
                found.add(parts[1] if len(parts) > 1 else "")
    return found


@pytest.mark.parametrize("package", ["fedsc", "smpc"])
def test_tests_beside_the_subpackage_folders_test_top_level_modules(package):
    """A test file directly in tests/<package>/ is named after one of the package's
    top-level modules or imports one (or the package itself); one that imports only
    subpackages belongs in their folder."""
    top_level = {p.stem for p in (ROOT / package).glob("*.py")} - INCIDENTAL
    misplaced = []
    for path in sorted((TESTS / package).glob("test_*.py")):
        used = _imported_modules(ast.parse(path.read_text()), package)
        if path.stem.removeprefix("test_") not in top_level and not used & (top_level | {""}):
            misplaced.append(path.name)
    assert not misplaced, (
        f"tests/{package}/{misplaced} import only subpackages of {package}: move each into "
        f"tests/{package}/<subpackage>/ (the one it tests)"
    )


def _body_key(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """A function without its name and docstring: decorators, arguments and statements."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    parts = [*node.decorator_list, node.args, *body]
    return "\n".join(ast.dump(part, annotate_fields=False) for part in parts)


def test_no_helper_is_defined_in_two_files():
    """The same module-level function (whatever its name) in two files is a copied helper:
    define it once in tests/_helpers/<topic>.py and import it."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not (
                node.name.startswith("test_")
            ):
                where[_body_key(node)].append(f"{path.relative_to(ROOT)}::{node.name}")
    copies = [sites for sites in where.values() if len({s.split("::")[0] for s in sites}) > 1]
    assert not copies, (
        f"helpers defined in more than one file (move each to tests/_helpers/): {copies}"
    )


def test_the_scheduling_lists_name_existing_paths():
    """tests/conftest.py marks and orders tests by path (_ONE_WORKER, _FIRST, _SLOW_MODULES):
    a path left behind by a move would silently stop marking its tests slow."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    lists = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in {"_ONE_WORKER", "_FIRST", "_SLOW_MODULES"}
    }
    assert len(lists) == 3, f"tests/conftest.py lists found: {sorted(lists)}"
    missing = [
        f"{name}: {path}"
        for name, value in lists.items()
        for path in ast.literal_eval(value)
        if not (ROOT / path).exists()
    ]
    assert not missing, f"tests/conftest.py names paths that do not exist: {missing}"
