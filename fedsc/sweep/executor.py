"""Execute runs: in this process, on a local process pool, or on a Dask cluster.

Workers compute and return a run's record; only the calling process writes the store
(works with remote Dask workers). That process holds the store's lock
(:meth:`fedsc.sweep.store.RunStore.lock`), so two sweeps never write one folder.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any


def execute_record(cfg_dict: dict[str, Any], keep_embedding: bool = False) -> dict[str, Any]:
    """Run one config; return its record (status ok with rows, or failed with the error)."""
    from fedsc.run.config import RunConfig
    from fedsc.run.execute import execute_run

    cfg = RunConfig.from_dict(cfg_dict)
    record: dict[str, Any] = {"run_id": cfg.run_id, "config": cfg.to_dict()}
    try:
        result = execute_run(cfg, show_progress=False)
    except Exception as exc:  # a failed run is recorded and does not stop the sweep
        record.update(
            status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
        )
        return record
    record = ok_record(result)
    if keep_embedding:
        key = f"X_{cfg.method}"
        record["embedding"] = {
            "key": key,
            "values": result.adata.obsm[key].tolist(),
            "batch": result.adata.obs[cfg.batch_key].astype(str).tolist(),
            "labels": result.adata.obs[cfg.labels_key].astype(str).tolist(),
        }
    return record


def ok_record(result: Any) -> dict[str, Any]:
    """The store record of a finished run (a :class:`fedsc.run.outcome.RunResult`)."""
    cfg = result.config
    # info keeps the full ledger: every value the coordinator received, per operation
    return {
        "run_id": cfg.run_id,
        "config": cfg.to_dict(),
        "status": "ok",
        "error": None,
        "rows": result.rows.to_dict("records"),
        "info": result.info,
    }


def _init_worker(threads: int, parent: dict[str, Any] | None = None) -> None:
    """Share the CPUs between workers; apply the parent's settings (fedsc.settings).

    CrypTen parties stay warm across the worker's runs (reaped when the worker exits). A
    worker exits as soon as the sweep that started it dies (no orphans after a SIGKILL).
    """
    from fedsc import settings
    from smpc.party_pool import keep_warm
    from smpc.process_guard import die_with

    die_with([os.getppid()])
    settings.init_worker(parent or {}, threads)
    keep_warm(True)


def run_local(
    jobs: Iterable[tuple[dict[str, Any], bool]], workers: int
) -> Iterator[dict[str, Any]]:
    """Yield records as runs finish; ``workers == 1`` runs in this process."""
    if workers <= 1:
        from smpc.party_pool import warm_parties

        with warm_parties():  # CrypTen parties start once for all runs
            for cfg, keep in jobs:
                yield execute_record(cfg, keep)
        return
    from fedsc import settings

    threads = max(1, settings.resolved_threads() // workers)  # CPUs available, shared
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads, settings.worker_snapshot()),
    ) as pool:
        futures = [pool.submit(execute_record, cfg, keep) for cfg, keep in jobs]
        for fut in as_completed(futures):
            yield fut.result()


def run_dask(
    jobs: Sequence[tuple[dict[str, Any], bool]], scheduler: str
) -> Iterator[dict[str, Any]]:
    """Yield records from a ``dask.distributed`` cluster at ``scheduler`` (tcp://HOST:PORT)."""
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError as exc:  # pragma: no cover - installed with the dev extras
        raise RuntimeError(
            "the Dask path needs dask.distributed: pip install 'fedsc[dask]'."
        ) from exc
    with Client(scheduler) as client:
        futures = [
            client.submit(execute_record, cfg, keep, pure=False, key=f"fedsc-{cfg['study']}-{i}")
            for i, (cfg, keep) in enumerate(jobs)
        ]
        for fut in dask_completed(futures):
            yield fut.result()
