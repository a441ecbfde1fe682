"""Execute one run: load -> prepare -> method (federated) -> evaluate -> tidy rows."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc import datasets, settings
from fedsc.data.inclusion import apply_inclusion
from fedsc.data.validate import validate_adata
from fedsc.evaluation import evaluate
from fedsc.methods import MethodSpec, RunInputs, get_method
from fedsc.preprocessing import fit_embedding, preprocess
from fedsc.privacy import in_run
from fedsc.results import TIDY_COLUMNS
from fedsc.run_config import RunConfig

PACKAGES = ("fedsc", "torch", "crypten", "numpy", "scipy", "scanpy", "anndata", "scib-metrics")


@dataclass
class RunResult:
    """Outcome of one run."""

    config: RunConfig
    adata: ad.AnnData
    rows: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def load_dataset(name: str) -> ad.AnnData:
    """Bundled name, ``shared:<file>`` or a path to an ``.h5ad`` file."""
    bundled = {"pancreas": datasets.pancreas, "cellbench_3cl": datasets.cellbench_3cl}
    if name in bundled:
        return bundled[name]()
    if name.startswith("shared:"):
        return datasets.read(datasets.shared_path(name.removeprefix("shared:")))
    return datasets.read(name)


def dataset_label(name: str) -> str:
    """Short dataset name for tables: file stem for paths."""
    return (
        Path(name.removeprefix("shared:")).stem
        if name not in ("pancreas", "cellbench_3cl")
        else name
    )


def looks_like_counts(x: Any) -> bool:
    """Raw counts are non-negative and reach values no log-normalised matrix has."""
    values = x.data if sp.issparse(x) else np.asarray(x)
    return bool(values.size) and float(values.min()) >= 0 and float(values.max()) > 30


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def prepare_expression(adata: ad.AnnData, cfg: RunConfig) -> ad.AnnData:
    """Log-normalised HVG expression: from counts if X holds counts, else as given."""
    if looks_like_counts(adata.X):
        return preprocess(adata, n_top_genes=cfg.n_top_genes)
    return adata.copy()


@dataclass(frozen=True)
class Prepared:
    """A method's input: the cells and what the "before" rows evaluate.

    ``before`` (``obsm`` key or ``"X"``) is the uncorrected representation, named ``base``
    in the ``method`` column (e.g. ``"pca"``, ``"uncorrected"``); ``use_rep`` is the
    embedding an embedding method reads (``None`` for the other input kinds).
    """

    adata: ad.AnnData
    before: str
    base: str
    use_rep: str | None = None


def _prepare_embedding(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    """``use_rep`` if given (the method validates it), else the upstream embedding."""
    if cfg.use_rep is not None:
        base = cfg.use_rep.removeprefix("X_").lower()
        return Prepared(adata, cfg.use_rep, base, use_rep=cfg.use_rep)
    expr = prepare_expression(adata, cfg)
    fit_embedding(expr, method=cfg.upstream, n_comps=cfg.n_comps, seed=cfg.seed)
    key = f"X_{cfg.upstream}"
    return Prepared(expr, key, cfg.upstream, use_rep=key)


def _prepare_expression(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    return Prepared(prepare_expression(adata, cfg), "X", "uncorrected")


def _prepare_counts(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    return Prepared(adata.copy(), "X", "uncorrected")


#: How the runner prepares each input kind (``MethodSpec.input``).
INPUT_PREPARATION: dict[str, Callable[[ad.AnnData, RunConfig], Prepared]] = {
    "embedding": _prepare_embedding,
    "expression": _prepare_expression,
    "counts": _prepare_counts,
}


def _inputs(cfg: RunConfig, agg: Any, use_rep: str | None, show_progress: bool | None) -> RunInputs:
    """The common arguments a method's run function receives, from the run config."""
    return RunInputs(
        batch_key=cfg.batch_key,
        label_key=cfg.label_key,
        aggregator=agg,
        seed=cfg.seed,
        use_rep=use_rep,
        holdout=tuple(cfg.holdout),
        inclusion=cfg.inclusion,
        stages=None if cfg.stages is None else tuple(tuple(s) for s in cfg.stages),
        upstream=cfg.upstream,
        n_comps=cfg.n_comps,
        n_top_genes=cfg.n_top_genes,
        show_progress=show_progress,
    )


def _run_method(
    adata: ad.AnnData, cfg: RunConfig, spec: MethodSpec, agg: Any, show_progress: bool | None
) -> Prepared:
    """Prepare the input, run the method (or its scenario); return what to evaluate."""
    config = spec.make_config(cfg.params)
    agg = agg if spec.federated else None
    if cfg.scenario is not None:
        inputs = _inputs(cfg, agg, None, show_progress)
        work = spec.scenario(cfg.scenario)(adata, inputs, config)
        return Prepared(work, f"X_{cfg.upstream}", cfg.upstream)
    prepared = INPUT_PREPARATION[spec.input](adata, cfg)
    spec.fit(prepared.adata, _inputs(cfg, agg, prepared.use_rep, show_progress), config)
    if cfg.inclusion != "all":  # evaluate the cells and labels the scenario kept
        work = apply_inclusion(
            prepared.adata, batch_key=cfg.batch_key, label_key=cfg.label_key, scenario=cfg.inclusion
        )
        return Prepared(work, prepared.before, prepared.base, prepared.use_rep)
    return prepared


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


def _evaluate(adata: ad.AnnData, rep: str, cfg: RunConfig, pre: str) -> pd.DataFrame:
    """The run's metric panels on one representation (``pre``: the uncorrected input)."""
    return evaluate(
        adata,
        rep=rep,
        batch_key=cfg.batch_key,
        label_key=cfg.label_key,
        panels=cfg.panels,
        X_pre_rep=pre,
        seed=cfg.seed,
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


def execute_run(
    cfg: RunConfig, *, adata: ad.AnnData | None = None, show_progress: bool | None = None
) -> RunResult:
    """Run one configuration end to end and return its tidy rows.

    Rows cover the uncorrected input (``method`` = the upstream name, e.g. ``"pca"``, or
    ``"uncorrected"``) and the corrected output, so base-vs-method comparisons come from
    the same run.
    """
    settings.apply()  # threads, passive waiting, compile caches (idempotent)
    start = time.perf_counter()
    adata = load_dataset(cfg.dataset) if adata is None else adata
    validate_adata(adata, batch_key=cfg.batch_key, label_key=cfg.label_key)
    info: dict[str, Any] = {"threads": settings.resolved_threads()}
    spec = get_method(cfg.method)
    privacy = in_run.start(cfg, adata, spec)  # attacks + DP (checked now that n is known)
    with privacy.aggregator() as agg:
        prepared = _run_method(adata, privacy.method_cfg, spec, agg, show_progress)
        ledger = agg.ledger.to_dict()
        private = bool(agg.private)
        privacy_note = agg.privacy_note
    work, before, after = prepared.adata, prepared.before, spec.evaluate
    _check_outputs(work, spec)
    method_seconds = time.perf_counter() - start
    before_rows = _evaluate(work, before, cfg, pre=before)
    after_rows = _evaluate(work, after, cfg, pre=before)
    wall = time.perf_counter() - start
    ledger_bytes = int(
        sum(ledger["totals"]["bytes_to_party"]) + ledger["totals"]["coordinator_bytes"]
    )
    extra = {"wall_time_s": wall, "ledger_bytes": ledger_bytes}
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
                    "backend": cfg.backend if spec.federated else "none",
                    "private": private,
                    **extra,
                },
            ),
        ],
        ignore_index=True,
    )
    info.update(
        {
            "run_id": cfg.run_id,
            "config": cfg.to_dict(),
            "versions": package_versions(),
            "wall_time_s": wall,
            "method_seconds": method_seconds,
            "privacy": privacy_note,
            "private": private,
            "ledger": ledger,
            "evaluated": {"before": before, "after": after},
            "cpu_count": os.cpu_count(),
        }
    )
    rows, info = privacy.annotate(rows, info, work)  # DP/privacy columns, attack rows
    return RunResult(cfg, work, rows, info)


def write_run(result: RunResult, out_dir: str | Path) -> Path:
    """Write ``corrected.h5ad``, ``metrics.csv`` and ``run.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.adata.write_h5ad(out / "corrected.h5ad")
    result.rows.to_csv(out / "metrics.csv", index=False)
    (out / "run.json").write_text(json.dumps(result.info, indent=2, default=_json_default))
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
