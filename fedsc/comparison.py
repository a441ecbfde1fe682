"""Compare and report on a sweep directory (the I/O around the pure fedsc.stats/report)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsc.errors import FedscInputError
from fedsc.report import write_report
from fedsc.stats import compare
from fedsc.sweep.store import RunStore


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """The tidy results of a sweep directory (``results.parquet``)."""
    path = Path(sweep_dir) / "results.parquet"
    if not path.is_file():
        raise FedscInputError(
            f"{path} not found; run `fedsc sweep STUDY.yaml --out {sweep_dir}` first."
        )
    return pd.read_parquet(path)


def _coerce(results: pd.DataFrame, selector: Mapping[str, Any]) -> dict[str, Any]:
    """CLI selector values are strings; match the column's dtype (seed=42, private=true)."""
    out = {}
    for key, value in selector.items():
        if key not in results.columns or not isinstance(value, str):
            out[key] = value
            continue
        dtype = results[key].dtype
        if pd.api.types.is_bool_dtype(dtype):
            out[key] = value.lower() in ("1", "true", "yes")
        elif pd.api.types.is_integer_dtype(dtype):
            out[key] = int(value)
        elif pd.api.types.is_float_dtype(dtype):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def compare_sweep(
    sweep_dir: str | Path,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    family: Sequence[str] | None = None,
    alpha: float = 0.05,
    out: str | Path | None = None,
) -> pd.DataFrame:
    """Compare side ``a`` with side ``b`` of a sweep; write ``comparison.csv``."""
    results = load_results(sweep_dir)
    table = compare(results, _coerce(results, a), _coerce(results, b), family=family, alpha=alpha)
    table.to_csv(Path(out) if out else Path(sweep_dir) / "comparison.csv", index=False)
    return table


def sweep_embeddings(sweep_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One stored embedding per (dataset, method, variant): the first seed's."""
    out = {}
    for record in RunStore(sweep_dir).records():
        emb = record.get("embedding")
        if record["status"] != "ok" or not emb:
            continue
        cfg = record["config"]
        name = f"{cfg['method']} / {cfg['variant']}"
        name = name if cfg["dataset"] == "pancreas" else f"{cfg['dataset']}: {name}"
        out[name] = (np.asarray(emb["values"]), np.asarray(emb["batch"]), np.asarray(emb["labels"]))
    return dict(sorted(out.items()))


def report_sweep(sweep_dir: str | Path) -> Path:
    """``report.md`` + ``figures/`` from a sweep's results, comparison and embeddings."""
    results = load_results(sweep_dir)
    cmp_path = Path(sweep_dir) / "comparison.csv"
    comparisons = pd.read_csv(cmp_path) if cmp_path.is_file() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_report(
            results,
            comparisons,
            sweep_dir,
            umaps=sweep_embeddings(sweep_dir) or None,
            title=f"fedsc report: {', '.join(sorted(results['study'].unique()))}",
        )
