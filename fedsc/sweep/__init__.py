"""Sweeps: expand a study into runs, execute them, store each finished run atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fedsc import settings
from fedsc.progress import progress
from fedsc.sweep.executor import execute_record, run_dask, run_local
from fedsc.sweep.store import RunStore
from fedsc.sweep.study import Study

__all__ = ["RunStore", "Study", "SweepResult", "execute_record", "run_sweep"]

logger = logging.getLogger(__name__)


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
    workers = _check_workers(workers)
    if not isinstance(study, Study):
        study = Study.from_yaml(study)
    study.check_size(_finished_mean(out), workers=max(workers, 1))  # before any config
    runs = study.expand(check_size=False)  # every run config is checked before the store
    store = RunStore(out)
    with store.lock(), _upstream_cache(out, scheduler):  # a second sweep here fails fast
        return _run_locked(
            study, runs, store, start, workers, scheduler, retry_failed, show_progress
        )


@contextmanager
def _upstream_cache(out: str | Path, scheduler: str | None) -> Iterator[None]:
    """``fedsc.settings.upstream_cache`` = ``<out>/upstream_cache`` for the sweep, unless set.

    The variants of a study that share an upstream (dataset, seed, upstream and its
    options) then fit it once (:mod:`fedsc.upstream.cache`). Local worker processes get
    the setting with the others; Dask workers may not see this machine's folder, so a
    sweep on a scheduler uses a cache only where the setting names a shared one.
    """
    if settings.upstream_cache is not None or scheduler is not None:
        yield
        return
    settings.upstream_cache = Path(out) / "upstream_cache"
    try:
        yield
    finally:
        settings.upstream_cache = None


def _check_workers(workers: Any) -> int:
    """``workers`` as a positive integer, capped at the CPUs available (with a warning).

    Each worker is a process importing torch and its own thread pool: more of them than
    CPUs only contend for them (and ``--workers 1000`` spawned a thousand interpreters).
    """
    from fedsc.errors import FedscInputError
    from fedsc.settings import available_cpus

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise FedscInputError(f"workers must be a positive integer, got {workers!r}.")
    cpus = available_cpus()
    if workers > cpus:
        logger.warning(
            "workers=%d is more than the %d CPU(s) available to this process; using %d.",
            workers,
            cpus,
            cpus,
        )
        return cpus
    return workers


def _finished_mean(out: str | Path) -> float | None:
    """Mean wall time of the runs already in the sweep folder ``out`` (None: none yet)."""
    if not (Path(out) / "runs").is_dir():
        return None
    times = [
        float(t)
        for r in RunStore(out, create=False).scan()[0]
        if isinstance(t := (r.get("info") or {}).get("wall_time_s"), int | float)
    ]
    return sum(times) / len(times) if times else None


def _run_locked(
    study: Study,
    runs: list[Any],
    store: RunStore,
    start: float,
    workers: int,
    scheduler: str | None,
    retry_failed: bool,
    show_progress: bool | None,
) -> SweepResult:
    out = store.root
    store.clean_temporary()
    store.quarantine()  # corrupt run files are moved aside and run again
    if retry_failed:
        store.discard_failed()
    done = store.finished()
    first_seed = min(study.seeds)
    jobs = [(r.to_dict(), r.seed == first_seed) for r in runs if r.run_id not in done]
    where = f"Dask at {scheduler}" if scheduler else f"{max(workers, 1)} local worker(s)"
    logger.info(
        "sweep %s: %d runs, %d already done, %d to run on %s -> %s",
        study.name,
        len(runs),
        len(runs) - len(jobs),
        len(jobs),
        where,
        out,
    )
    if scheduler:
        records = run_dask(jobs, scheduler)
    elif workers <= 1:
        records = run_local(_announced(jobs), workers)
    else:
        records = run_local(jobs, workers)
    failed = 0
    for record in progress(
        records, desc=f"sweep {study.name}", enable=show_progress, total=len(jobs)
    ):
        store.write(record)
        failed += record["status"] != "ok"
        _log_record(record)
    table = store.write_tables()
    seconds = time.perf_counter() - start
    logger.info(
        "sweep %s finished in %.1f s: %d run, %d failed, %d skipped",
        study.name,
        seconds,
        len(jobs),
        failed,
        len(runs) - len(jobs),
    )
    return SweepResult(
        table=table,
        executed=len(jobs),
        skipped=len(runs) - len(jobs),
        failed=failed,
        seconds=seconds,
        out=Path(out),
    )


def _describe(cfg: dict[str, Any]) -> str:
    parts = [str(cfg.get(k)) for k in ("method", "dataset", "backend") if cfg.get(k)]
    return f"{cfg.get('run_id', '?')} ({', '.join(parts)}, seed {cfg.get('seed')})"


def _announced(
    jobs: Sequence[tuple[dict[str, Any], bool]],
) -> Iterator[tuple[dict[str, Any], bool]]:
    """The jobs, logging each as it starts (in-process runs start one at a time)."""
    for job in jobs:
        logger.info("run %s started", _describe(job[0]))
        yield job


def _log_record(record: dict[str, Any]) -> None:
    cfg = {**record.get("config", {}), "run_id": record.get("run_id")}
    if record.get("status") == "ok":
        seconds = (record.get("info") or {}).get("wall_time_s")
        took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
        logger.info("run %s finished%s", _describe(cfg), took)
    else:
        logger.warning("run %s failed: %s", _describe(cfg), record.get("error"))
        logger.debug("run %s traceback:\n%s", record.get("run_id"), record.get("traceback"))
