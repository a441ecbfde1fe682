"""Kept for compatibility: the run configuration lives in :mod:`fedsc.run.config`.

``from fedsc.run_config import RunConfig`` keeps working; new code imports from
:mod:`fedsc.run.config`.
"""

from __future__ import annotations

from fedsc.run.config import (
    NO_PANELS,
    SEED_MAX,
    RunConfig,
    check_backend_options,
    check_holdout_batches,
    check_seed,
)

__all__ = [
    "NO_PANELS",
    "SEED_MAX",
    "RunConfig",
    "check_backend_options",
    "check_holdout_batches",
    "check_seed",
]
