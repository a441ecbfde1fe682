"""Issue 10 (dependencies): known-broken version combinations are named, bounded and checked.

``fedsc._compat.KNOWN_BROKEN`` lists them; importing ``fedsc.evaluation`` warns when the
installed versions match one; pyproject's bounds must exclude each; and the installed
environment must not be one of them (this last test fails on an environment built before
the bound: ``pip install 'pynndescent>=0.5.13,<0.7'`` fixes it).
"""

from __future__ import annotations

import tomllib
import warnings

from _helpers.paths import ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from fedsc._compat import KNOWN_BROKEN, broken_combinations, installed_versions, warn_if_broken

PYPROJECT = ROOT / "pyproject.toml"


def _bounds() -> dict[str, SpecifierSet]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps]
    return {r.name.lower(): r.specifier for r in reqs}


def test_case_known_broken_pair_is_recognised():
    broken = broken_combinations({"scanpy": "1.11.5", "pynndescent": "0.7.0", "scipy": "1.17.1"})
    assert len(broken) == 1
    msg = broken[0]
    assert "scanpy 1.11.5, pynndescent 0.7.0" in msg
    assert "'csr_array' object has no attribute 'getnnz'" in msg
    assert "pip install 'pynndescent>=0.5.13,<0.7'" in msg
    # scipy is not the cause: 1.16.3 fails the same way with pynndescent 0.7
    assert broken_combinations({"scanpy": "1.11.5", "pynndescent": "0.7.0", "scipy": "1.16.3"})
    assert not broken_combinations({"scanpy": "1.11.5", "pynndescent": "0.6.0"})
    assert not broken_combinations({"scanpy": "1.12.0", "pynndescent": "0.7.0"})
    assert not broken_combinations({"scanpy": "1.11.5"})  # a package not installed


def test_case_pyproject_bounds_exclude_every_known_broken_combination():
    bounds = _bounds()
    for combo in KNOWN_BROKEN:
        excluded = []
        for pkg, broken_range in combo.ranges.items():
            allowed = bounds.get(pkg)
            if allowed is None:
                continue
            # probe versions inside the broken range: its bounds and a few above them
            probes = [
                v
                for spec in SpecifierSet(broken_range)
                for v in (spec.version, f"{spec.version}.1", f"{spec.version}.9")
            ]
            inside = [v for v in probes if v in SpecifierSet(broken_range)]
            if inside and not any(v in allowed for v in inside):
                excluded.append(pkg)
        assert excluded, f"pyproject allows the known-broken combination {combo.ranges}"
    assert "<0.7" in str(bounds["pynndescent"])


def test_case_warning_at_import_names_the_fix(monkeypatch):
    import fedsc._compat as compat

    monkeypatch.setattr(
        compat, "installed_versions", lambda: {"scanpy": "1.11.5", "pynndescent": "0.7.0"}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = warn_if_broken()
    assert found and issubclass(caught[0].category, RuntimeWarning)
    assert "pynndescent<0.7" in str(caught[0].message)


def test_case_installed_combination_is_not_known_broken():
    versions = installed_versions()
    assert broken_combinations(versions) == [], (
        f"the installed versions {versions} are a known-broken combination: "
        f"{broken_combinations(versions)}"
    )
