"""Persistent compilation caches for the metric panels (numba and JAX).

The implementation lives in :mod:`fedsc.settings._caches`; the caches are opt-in through
:func:`fedsc.settings.apply` (the CLI, the runner and sweep workers call it), so importing
:mod:`fedsc.evaluation` leaves numba, JAX and the warning filters as they were.
:func:`enable_compilation_caches` turns them on explicitly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedsc.settings import _caches
from fedsc.settings._caches import _enable_numba_caching, cache_root, enable_if_requested  # noqa: F401

__all__ = ["cache_root", "enable_compilation_caches", "enable_if_requested"]

_ENABLED: Path | None = None  # kept for callers that reset it; state: fedsc.settings._caches

# Transitional: these modules call enable_compilation_caches() at import; that call now
# only honours fedsc.settings.apply() (they should call enable_if_requested() instead).
_IMPORT_TIME_CALLERS = frozenset({"fedsc.evaluation.scib_panel", "fedsc.evaluation.fedscgen_panel"})


def enable_compilation_caches(root: str | os.PathLike[str] | None = None) -> Path | None:
    """Turn on the numba and JAX persistent compilation caches (idempotent).

    See :func:`fedsc.settings._caches.enable_compilation_caches`. Returns the cache root.
    """
    caller = sys._getframe(1).f_globals.get("__name__")
    if root is None and caller in _IMPORT_TIME_CALLERS:
        return enable_if_requested()
    return _caches.enable_compilation_caches(root)
