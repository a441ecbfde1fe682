"""Sweeps: expand a study into runs, execute them, store each finished run atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedsc.progress import progress
from fedsc.sweep.executor import execute_record, run_dask, run_local
from fedsc.sweep.store import RunStore
from fedsc.sweep.study import Study

__all__ = ["RunStore", "Study", "SweepResult", "execute_record", "run_sweep"]


@dataclass
class SweepResult:
    """What a sweep did and the tidy table of every successful run so far."""

    table: pd.DataFrame
    executed: int
    skipped: int
    failed: int
    seconds: float
    out: Path


def run_sweep(
    study: Study | str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    retry_failed: bool = False,
    show_progress: bool | None = None,
) -> SweepResult:
    """Run every run of ``study`` not yet in ``out``; write results.parquet/.csv.

    Parameters
    ----------
    study
        A :class:`Study` or a path to its YAML file.
    out
        Output directory; finished runs found there are skipped (resume).
    workers
        Local worker processes (1: in this process).
    scheduler
        ``tcp://HOST:PORT`` of a Dask scheduler; overrides ``workers``.
    retry_failed
        Run again the runs recorded as failed.
    """
    start = time.perf_counter()
    if not isinstance(study, Study):
        study = Study.from_yaml(study)
    store = RunStore(out)
    store.clean_temporary()
    if retry_failed:
        store.discard_failed()
    runs = study.expand()
    done = store.finished()
    first_seed = min(study.seeds)
    jobs = [(r.to_dict(), r.seed == first_seed) for r in runs if r.run_id not in done]
    records = run_dask(jobs, scheduler) if scheduler else run_local(jobs, workers)
    failed = 0
    for record in progress(
        records, desc=f"sweep {study.name}", enable=show_progress, total=len(jobs)
    ):
        store.write(record)
        failed += record["status"] != "ok"
    table = store.write_tables()
    return SweepResult(
        table=table,
        executed=len(jobs),
        skipped=len(runs) - len(jobs),
        failed=failed,
        seconds=time.perf_counter() - start,
        out=Path(out),
    )
