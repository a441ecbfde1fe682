"""Execute one run: load -> prepare -> method (federated) -> evaluate -> tidy rows."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc import datasets
from fedsc.data.inclusion import apply_inclusion
from fedsc.data.validate import validate_adata
from fedsc.errors import FedscInputError
from fedsc.evaluation import downstream_accuracy, fedscgen_panel, representation, scib_panel
from fedsc.methods import get_method
from fedsc.preprocessing import fit_embedding, preprocess
from fedsc.results import TIDY_COLUMNS
from fedsc.run_config import RunConfig
from fedsc.tl import aggregator_for, config_from_kwargs

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


def prepare_embedding(adata: ad.AnnData, cfg: RunConfig) -> tuple[ad.AnnData, str]:
    """The embedding scBatchProx refines: ``use_rep`` if given, else the upstream model's."""
    if cfg.use_rep is not None:  # fedsc.tl.scbatchprox validates use_rep
        return adata, cfg.use_rep
    expr = prepare_expression(adata, cfg)
    fit_embedding(expr, method=cfg.upstream, n_comps=cfg.n_comps, seed=cfg.seed)
    return expr, f"X_{cfg.upstream}"


def run_scenario(adata: ad.AnnData, cfg: RunConfig, agg: Any) -> ad.AnnData:
    """Dataset evolution: the last stage's cells with upstream and refined embeddings."""
    from fedsc.methods.scbatchprox import ScBatchProxConfig
    from fedsc.methods.scbatchprox_scenarios import continual_training, cumulative_retraining

    run = cumulative_retraining if cfg.scenario == "cumulative" else continual_training
    last = run(
        adata,
        cfg.stages,
        agg,
        batch_key=cfg.batch_key,
        upstream=cfg.upstream,
        n_comps=cfg.n_comps,
        n_top_genes=cfg.n_top_genes,
        config=config_from_kwargs(ScBatchProxConfig, None, cfg.params),
        seed=cfg.seed,
    )[-1]
    work = adata[last.obs_names].copy()
    work.obsm[f"X_{cfg.upstream}"] = last.upstream
    work.obsm["X_scbatchprox"] = last.refined
    return work


def evaluate_rep(
    adata: ad.AnnData, rep: str, cfg: RunConfig, pre: np.ndarray | None = None
) -> pd.DataFrame:
    """Every configured panel on one representation, as (panel, metric, value, embedding)."""
    x = representation(adata, rep)
    batch = adata.obs[cfg.batch_key].astype(str).to_numpy()
    labels = adata.obs[cfg.label_key].astype(str).to_numpy()
    frames = []
    for panel in cfg.panels or []:
        if panel == "scib":
            frames.append(scib_panel(x, batch, labels, X_pre=pre, seed=cfg.seed))
        elif panel == "fedscgen":
            frames.append(fedscgen_panel(x, batch, labels, seed=cfg.seed))
        elif panel == "downstream":
            frames.append(downstream_accuracy(x, batch, labels, seed=cfg.seed))
        else:
            raise FedscInputError(
                f"unknown metric panel {panel!r}; choose from 'scib', 'fedscgen', 'downstream'."
            )
    out = pd.concat(frames, ignore_index=True)
    out["embedding"] = rep
    return out


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
    return frame[TIDY_COLUMNS]


def execute_run(
    cfg: RunConfig, *, adata: ad.AnnData | None = None, show_progress: bool | None = None
) -> RunResult:
    """Run one configuration end to end and return its tidy rows.

    Rows cover the uncorrected input (``method`` = the upstream name, e.g. ``"pca"``, or
    ``"uncorrected"``) and the corrected output, so base-vs-method comparisons come from
    the same run.
    """
    start = time.perf_counter()
    adata = load_dataset(cfg.dataset) if adata is None else adata
    validate_adata(adata, batch_key=cfg.batch_key, label_key=cfg.label_key)
    info: dict[str, Any] = {}
    with aggregator_for(cfg.backend, cfg.backend_options) as agg:
        spec = get_method(cfg.method)
        if cfg.scenario is not None:
            work = run_scenario(adata, cfg, agg)
            before, base_name = f"X_{cfg.upstream}", cfg.upstream
        elif spec.input == "embedding":
            work, before = prepare_embedding(adata, cfg)
            spec.run(
                work,
                batch_key=cfg.batch_key,
                use_rep=before,
                backend=agg,
                seed=cfg.seed,
                show_progress=show_progress,
                **cfg.params,
            )
            base_name = cfg.upstream if cfg.use_rep is None else before.removeprefix("X_").lower()
        else:
            work = prepare_expression(adata, cfg)
            kwargs: dict[str, Any] = dict(cfg.params)
            if spec.federated:
                kwargs.update(backend=agg, holdout=cfg.holdout)
            spec.run(
                work,
                batch_key=cfg.batch_key,
                label_key=cfg.label_key,
                seed=cfg.seed,
                inclusion=cfg.inclusion,
                show_progress=show_progress,
                **kwargs,
            )
            if cfg.inclusion != "all":  # evaluate the cells and labels the scenario kept
                work = apply_inclusion(
                    work, batch_key=cfg.batch_key, label_key=cfg.label_key, scenario=cfg.inclusion
                )
            before, base_name = "X", "uncorrected"
        after = f"X_{cfg.method}" if spec.input == "embedding" else f"layers/{cfg.method}"
        ledger = agg.ledger.to_dict()
        private = bool(agg.private)
        privacy_note = agg.privacy_note
    method_seconds = time.perf_counter() - start
    pre = representation(work, before)
    before_rows = evaluate_rep(work, before, cfg, pre=pre)
    after_rows = evaluate_rep(work, after, cfg, pre=pre)
    wall = time.perf_counter() - start
    ledger_bytes = int(
        sum(ledger["totals"]["bytes_to_party"]) + ledger["totals"]["coordinator_bytes"]
    )
    extra = {"wall_time_s": wall, "ledger_bytes": ledger_bytes}
    rows = pd.concat(
        [
            _method_rows(
                cfg, before_rows, base_name, {"backend": "none", "private": True, **extra}
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
