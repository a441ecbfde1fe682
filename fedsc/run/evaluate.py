"""The evaluate stage: a method's outcome -> tidy rows (before and after) and ``run.json``.

:func:`evaluate_run` checks the method's declared outputs, runs the run's metric panels on
the uncorrected input and the corrected output (:func:`fedsc.evaluation.evaluate`, the one
panel dispatcher), states the run's health and hands the rows to the privacy layer
(``privacy.annotate``) when the run has one. Simulated and deployed runs end here alike.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Protocol

import anndata as ad
import numpy as np
import pandas as pd

from fedsc import settings
from fedsc.data.access import representation, stored_representation
from fedsc.evaluation import evaluate
from fedsc.evaluation.panels import missing_reasons
from fedsc.methods.health import movement_note, relative_movement
from fedsc.results import TIDY_COLUMNS
from fedsc.run.load import dataset_label
from fedsc.run.outcome import MethodOutcome, RunResult

if TYPE_CHECKING:
    from fedsc.methods.spec import MethodSpec
    from fedsc.run.config import RunConfig

__all__ = ["PACKAGES", "RunPrivacy", "evaluate_run", "package_versions", "run_health"]

logger = logging.getLogger(__name__)

PACKAGES = ("fedsc", "torch", "crypten", "numpy", "scipy", "scanpy", "anndata", "scib-metrics")


class RunPrivacy(Protocol):
    """What the evaluate stage asks of a run's privacy side (:mod:`fedsc.privacy.in_run`)."""

    def annotate(
        self, rows: pd.DataFrame, info: dict[str, Any], adata: ad.AnnData | None = None
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The rows with their privacy columns and attack rows, and the record's blocks."""
        ...


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a run record lists."""
    from fedsc.settings._numerics import library_versions

    return library_versions(PACKAGES)


def _check_outputs(adata: ad.AnnData, spec: MethodSpec) -> None:
    def present(rep: str) -> bool:
        if rep.startswith("layers/"):
            return rep.removeprefix("layers/") in adata.layers
        return rep in adata.obsm

    missing = [rep for rep in spec.outputs if not present(rep)]
    if missing:
        raise RuntimeError(
            f"method {spec.name!r} did not write its declared output(s) {missing}; its run "
            "function must write every entry of MethodSpec.outputs into the AnnData."
        )
    for rep in spec.outputs:
        values = representation(adata, rep, "output")
        bad = int((~np.isfinite(values)).any(axis=1).sum()) if values.ndim == 2 else 0
        if bad:
            raise RuntimeError(
                f"method {spec.name!r} wrote non-finite values (NaN/Inf) for {bad} of "
                f"{values.shape[0]} cells into its output {rep!r}: the method failed (e.g. its "
                "training diverged; try a smaller learning rate lr=), this is not a problem of "
                "the input. Nothing was evaluated."
            )


def run_health(
    adata: ad.AnnData,
    before: str,
    after: str | None,
    rows: dict[str, pd.DataFrame],
    method: str,
) -> dict[str, Any]:
    """What the run summary (``run.json`` info) says about the run's health.

    Returns ``movement`` (``||Z' - Z||_F / ||Z||_F`` between the uncorrected ``before`` and
    the corrected ``after`` representation, ``None`` when their shapes differ),
    ``missing_metrics`` (one record per metric that could not be computed: method,
    embedding, panel, metric, reason) and ``warnings`` (also logged): a method that left
    its input practically unchanged, metrics that are missing.

    Parameters
    ----------
    adata
        The evaluated cells.
    before, after
        The uncorrected and the corrected representation (``evaluate``'s ``rep``).
    rows
        ``method`` label -> the rows :func:`fedsc.evaluation.evaluate` returned for it.
    method
        The method's name.
    """
    movement = (
        None
        if after is None
        else relative_movement(  # sparse X stays sparse: read in row blocks
            stored_representation(adata, before, "before"),
            stored_representation(adata, after, "after"),
        )
    )
    warnings_: list[str] = []
    note = movement_note(method, movement)
    if note:
        warnings_.append(note)
    missing = [
        {"method": label, "embedding": str(frame["embedding"].iloc[0]) if len(frame) else "",
         "panel": panel, "metric": metric, "reason": reason}
        for label, frame in rows.items()
        for (panel, metric), reason in missing_reasons(frame).items()
    ]  # fmt: skip
    if missing:
        names = ", ".join(f"{m['method']}/{m['metric']}" for m in missing)
        text = f"{len(missing)} metric(s) could not be computed and are reported missing: {names}"
        logger.warning(text)
        warnings_.append(text)
    return {"movement": movement, "missing_metrics": missing, "warnings": warnings_}


def _evaluate(adata: ad.AnnData, rep: str, cfg: RunConfig, pre: str) -> pd.DataFrame:
    """The run's metric panels on one representation (``pre``: the uncorrected input)."""
    if not cfg.panels:  # panels [] / --panels "": no evaluation, no metric rows
        return pd.DataFrame(columns=TIDY_COLUMNS)
    return evaluate(
        adata,
        rep=rep,
        batch_key=cfg.batch_key,
        labels_key=cfg.labels_key,
        panels=cfg.panels,
        X_pre_rep=pre,
        seed=cfg.seed,
        sensitivity=cfg.sensitivity,
    )


def _method_rows(cfg: RunConfig, frame: pd.DataFrame, method: str, extra: dict) -> pd.DataFrame:
    frame = frame.copy()
    frame["method"] = method
    for key, value in {
        "run_id": cfg.run_id,
        "study": cfg.study,
        "dataset": dataset_label(cfg.dataset),
        "variant": cfg.variant,
        "seed": cfg.seed,
        **extra,
    }.items():
        frame[key] = value
    return frame.reindex(columns=TIDY_COLUMNS)


def evaluate_run(
    cfg: RunConfig,
    spec: MethodSpec,
    outcome: MethodOutcome,
    privacy: RunPrivacy | None = None,
) -> RunResult:
    """Evaluate a method's outcome: tidy rows (before and after) and the run's record."""
    start = time.perf_counter()
    prepared = outcome.prepared
    work, before, after = prepared.adata, prepared.before, spec.evaluated
    _check_outputs(work, spec)
    before_rows = _evaluate(work, before, cfg, pre=before)
    after_rows = _evaluate(work, after, cfg, pre=before)
    wall = outcome.method_seconds + time.perf_counter() - start
    ledger = outcome.ledger
    ledger_bytes = int(
        sum(ledger["totals"]["bytes_to_party"]) + ledger["totals"]["coordinator_bytes"]
    )
    extra = {"wall_time_s": wall, "ledger_bytes": ledger_bytes}
    backend = cfg.backend if cfg.deploy is None else f"deploy:{cfg.deploy}"
    rows = pd.concat(
        [
            _method_rows(
                cfg, before_rows, prepared.base, {"backend": "none", "private": True, **extra}
            ),
            _method_rows(
                cfg,
                after_rows,
                cfg.method,
                {
                    "backend": backend if spec.federated else "none",
                    "private": outcome.private,
                    **extra,
                },
            ),
        ],
        ignore_index=True,
    )
    info: dict[str, Any] = {"threads": settings.resolved_threads()}
    info.update(
        {
            "run_id": cfg.run_id,
            "config": cfg.to_dict(),
            "versions": package_versions(),
            "wall_time_s": wall,
            "method_seconds": outcome.method_seconds,
            "privacy": outcome.privacy_note,
            "private": outcome.private,
            "ledger": ledger,
            "evaluated": {"before": before, "after": after},
            "cpu_count": os.cpu_count(),
            # CPU, kernels chosen, threads, variables: why two runs' bits differ
            "numerics": settings.numerical_environment(),
            **outcome.prepared.info,
            **outcome.info,
        }
    )
    info.update(
        run_health(
            work, before, after, {prepared.base: before_rows, cfg.method: after_rows}, cfg.method
        )
    )
    if privacy is not None:
        rows, info = privacy.annotate(rows, info, work)  # DP/privacy columns, attack rows
    return RunResult(cfg, work, rows, info)
