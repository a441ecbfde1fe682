"""The import-graph check of ``make lint`` (.ci/check_imports.py) on toy packages."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers.paths import ROOT


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / ".ci/check_imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _package(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    root = tmp_path / name
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _run(check, capsys, *roots: Path, forbid: str = "smpc=fedsc") -> tuple[int, str]:
    argv = [arg for root in roots for arg in ("--root", str(root))]
    status = check.main([*argv, "--forbid", forbid])
    return status, capsys.readouterr().out


def test_module_level_cycle_fails(check, capsys, tmp_path):
    pkg = _package(tmp_path, "toy", {"a.py": "from toy import b\n", "b.py": "import toy.a\n"})
    status, out = _run(check, capsys, pkg)
    assert status == 1
    assert "import cycle among toy.a, toy.b" in out
    assert "toy.a -> toy.b" in out and "toy.b -> toy.a" in out


def test_in_function_import_counts(check, capsys, tmp_path):
    pkg = _package(
        tmp_path,
        "toy",
        {
            "a.py": "from .sub.c import f\n",
            "sub/__init__.py": "",
            "sub/c.py": """
                def f():
                    from ..a import f as g  # the lazy import hides the cycle from Python
                    import json
                    return g, json
            """,
        },
    )
    status, out = _run(check, capsys, pkg)
    assert status == 1
    assert "toy.sub.c -> toy.a  (" in out and "in a function" in out
    assert "2 in-function import statements" in out


def test_type_checking_imports_are_not_edges(check, capsys, tmp_path):
    pkg = _package(
        tmp_path,
        "toy",
        {
            "a.py": "from toy.b import B\n",
            "b.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from toy.a import A
                else:
                    import toy.c
                class B: ...
            """,
            "c.py": "",
        },
    )
    status, out = _run(check, capsys, pkg)
    assert status == 0, out
    assert "0 cycle(s)" in out and "1 under TYPE_CHECKING" in out


def test_lazy_reexport_resolves_to_defining_module(check, capsys, tmp_path):
    # ``from toy import thing`` loads toy.b through toy/__init__'s lazy __getattr__; the
    # re-export under TYPE_CHECKING says which module that is
    pkg = _package(
        tmp_path,
        "toy",
        {
            "__init__.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from toy.b import thing
                def __getattr__(name):
                    import importlib
                    return getattr(importlib.import_module(f"toy.{'b'}"), name)
            """,
            "a.py": "from toy import thing\n",
            "b.py": "def thing():\n    import toy.a\n",
        },
    )
    status, out = _run(check, capsys, pkg)
    assert status == 1
    assert "import cycle among toy.a, toy.b;" in out and "toy.a -> toy.b" in out


def test_forbidden_package_import_fails(check, capsys, tmp_path):
    low = _package(tmp_path, "low", {"x.py": "def f():\n    from high.y import g\n"})
    high = _package(tmp_path, "high", {"y.py": "def g(): ...\n"})
    status, out = _run(check, capsys, low, high, forbid="low=high")
    assert status == 1
    assert "low.x imports high.y (low must not import high)" in out
    status, out = _run(check, capsys, low, high, forbid="high=low")
    assert status == 0, out


def test_project_has_no_import_cycle(check, capsys):
    status = check.main([])  # what `make lint` runs: fedsc and smpc, smpc=fedsc forbidden
    out = capsys.readouterr().out
    assert status == 0, out
    assert "0 cycle(s)" in out
