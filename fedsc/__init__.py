"""fedsc: privacy-preserving federated batch correction of single-cell data.

Submodules load on first use (``fedsc.pp``, ``fedsc.tl``, ``fedsc.pl``, ``fedsc.datasets``...),
so ``import fedsc`` stays cheap. Importing changes no global state (numba, JAX, torch,
``warnings``, ``logging``): call ``fedsc.settings.apply()`` for fedsc's thread, compile-cache
and warning settings (the CLI and the runner do), ideally before importing torch.
The one exception is an opt-in: with ``FEDSC_REPRODUCIBLE=portable`` exported, importing
fedsc before numpy and torch sets the variables that pin their kernels
(:mod:`fedsc.settings._numerics`), since they read them only when they load.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("fedsc")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_SUBMODULES = {
    "comparison",
    "data",
    "datasets",
    "evaluation",
    "federation",
    "methods",
    "pl",
    "plots",
    "pp",
    "preprocessing",
    "progress",
    "report",
    "runner",
    "settings",
    "stats",
    "sweep",
    "tl",
}

__all__ = ["__version__", *sorted(_SUBMODULES)]


if os.environ.get("FEDSC_REPRODUCIBLE", "").strip().lower() == "portable" and not (
    {"numpy", "torch"} & set(sys.modules)
):
    from fedsc.settings._numerics import portable_environment

    os.environ.update(portable_environment())


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"fedsc.{name}")
    raise AttributeError(f"module 'fedsc' has no attribute {name!r}")
