"""Known-broken combinations of installed dependency versions.

Each entry of :data:`KNOWN_BROKEN` names version ranges of two or more packages that fail
together, the symptom and the fix. :func:`broken_combinations` checks the installed (or
given) versions; :func:`warn_if_broken` turns a match into a ``RuntimeWarning`` (called
when ``fedsc.evaluation`` is imported); ``tests/robustness/test_deps_*.py`` asserts the
installed combination is not one of them and that pyproject's bounds exclude them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = ["KNOWN_BROKEN", "BrokenCombination", "broken_combinations", "warn_if_broken"]


@dataclass(frozen=True)
class BrokenCombination:
    """Packages whose versions, all within their ranges, are known to fail together."""

    ranges: Mapping[str, str]
    symptom: str
    fix: str

    def matches(self, versions: Mapping[str, str]) -> bool:
        """Whether every package is installed at a version within its range."""
        for pkg, spec in self.ranges.items():
            v = versions.get(pkg)
            if v is None or Version(v) not in SpecifierSet(spec):
                return False
        return True

    def describe(self, versions: Mapping[str, str]) -> str:
        """One sentence naming the installed versions, the symptom and the fix."""
        found = ", ".join(f"{p} {versions.get(p)}" for p in self.ranges)
        return f"installed {found} are known to fail together: {self.symptom}; {self.fix}"


KNOWN_BROKEN: tuple[BrokenCombination, ...] = (
    BrokenCombination(
        # Reported as "scanpy 1.11.5 with scipy 1.17.1"; the cause is pynndescent 0.7.0,
        # whose PyNNDescentTransformer returns a scipy csr_array (0.6.0: csr_matrix), on
        # which scanpy 1.11.x's _ind_dist_shortcut calls getnnz (sparse arrays have none).
        # scanpy uses that transformer above 8192 cells (euclidean), hence 300 cells pass.
        # Reproduced on 14k cells with scipy 1.17.1 and with 1.16.3: scipy is not the cause.
        ranges={"scanpy": "<1.12", "pynndescent": ">=0.7"},
        symptom=(
            "sc.pp.neighbors fails above 8192 cells (14k tested; 300 and 5000 pass) with "
            "AttributeError: 'csr_array' object has no attribute 'getnnz' (pynndescent "
            ">=0.7 returns sparse arrays, scanpy 1.11 calls csr_matrix.getnnz on them)"
        ),
        fix="install pynndescent<0.7 (pip install 'pynndescent>=0.5.13,<0.7'; 0.6.0 tested)",
    ),
)


def installed_versions(packages: tuple[str, ...] | None = None) -> dict[str, str]:
    """Installed versions of the packages named in :data:`KNOWN_BROKEN` (or ``packages``)."""
    names = packages or tuple(sorted({p for c in KNOWN_BROKEN for p in c.ranges}))
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def broken_combinations(versions: Mapping[str, str] | None = None) -> list[str]:
    """Descriptions of the known-broken combinations among ``versions`` (default: installed)."""
    versions = installed_versions() if versions is None else versions
    return [c.describe(versions) for c in KNOWN_BROKEN if c.matches(versions)]


def warn_if_broken() -> list[str]:
    """Warn (``RuntimeWarning``) once per known-broken installed combination; return them."""
    found = broken_combinations()
    for text in found:
        warnings.warn(f"fedsc: {text}", RuntimeWarning, stacklevel=2)
    return found
