"""Persistent compilation caches for the metric panels (numba and JAX).

The implementation lives in :mod:`fedsc.settings._caches`; the caches are opt-in through
:func:`fedsc.settings.apply` (the CLI, the runner and sweep workers call it), so importing
:mod:`fedsc.evaluation` leaves numba, JAX and the warning filters as they were.
:func:`enable_compilation_caches` turns them on explicitly.
"""

from __future__ import annotations

from fedsc.settings._caches import cache_root, enable_compilation_caches, enable_if_requested

__all__ = ["cache_root", "enable_compilation_caches", "enable_if_requested"]
