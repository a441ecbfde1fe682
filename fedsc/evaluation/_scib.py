"""scib-metrics, imported when a metric first needs it.

Importing scib-metrics loads UMAP, pynndescent (numba-compiled) and JAX: ~10 s per
process with warm compilation caches, much more without. Processes that import the
runner but never evaluate (sweep workers' failing runs, ``fedsc run`` refusing bad input,
deployment sites) should not pay it. ``importlib.util.LazyLoader`` cannot be used: the
compilation caches must be configured (:func:`fedsc.evaluation.caches.enable_if_requested`)
just before numba and JAX load, which a lazy module gives no hook for.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from fedsc.evaluation.caches import enable_if_requested


class _OnFirstUse:
    """A module proxy: ``proxy.attr`` imports the module (once), then reads ``attr``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def load(self) -> ModuleType:
        """The module, imported now if it was not yet."""
        if self._module is None:
            enable_if_requested()  # caches requested by fedsc.settings.apply()
            self._module = importlib.import_module(self._name)
            # the submodules the panels use (imported explicitly: a package need not)
            for sub in ("nearest_neighbors", "utils"):
                importlib.import_module(f"{self._name}.{sub}")
        return self._module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.load(), attr)


#: ``scib_metrics``, imported on first attribute access.
scib_metrics: Any = _OnFirstUse("scib_metrics")


def neighbors_results(indices: Any, distances: Any) -> Any:
    """``scib_metrics.nearest_neighbors.NeighborsResults(indices, distances)``."""
    return scib_metrics.nearest_neighbors.NeighborsResults(indices=indices, distances=distances)
