"""Kept for compatibility: the run pipeline lives in :mod:`fedsc.run`.

``from fedsc.runner import execute_run`` keeps working; new code imports each name from
its stage (:mod:`fedsc.run.execute`, :mod:`fedsc.run.load`, :mod:`fedsc.run.prepare`,
:mod:`fedsc.run.evaluate`, :mod:`fedsc.run.record`, :mod:`fedsc.run.outcome`). The names
here are bindings of those modules' objects: to replace one (``monkeypatch.setattr``),
patch the module that uses it, e.g. ``fedsc.run.execute.load_dataset``.
"""

from __future__ import annotations

from fedsc.run.config import RunConfig
from fedsc.run.evaluate import PACKAGES, evaluate_run, package_versions, run_health
from fedsc.run.execute import EXECUTORS, Executor, execute_run, simulate
from fedsc.run.load import dataset_label, load_dataset
from fedsc.run.outcome import MethodOutcome, Prepared, RunResult
from fedsc.run.prepare import (
    INPUT_PREPARATION,
    looks_like_counts,
    prepare_expression,
    run_inputs,
)
from fedsc.run.record import RUN_FILES, check_output_dir, format_metrics, write_run

__all__ = [
    "EXECUTORS",
    "INPUT_PREPARATION",
    "PACKAGES",
    "RUN_FILES",
    "Executor",
    "MethodOutcome",
    "Prepared",
    "RunConfig",
    "RunResult",
    "check_output_dir",
    "dataset_label",
    "evaluate_run",
    "execute_run",
    "format_metrics",
    "load_dataset",
    "looks_like_counts",
    "package_versions",
    "prepare_expression",
    "run_health",
    "run_inputs",
    "simulate",
    "write_run",
]
