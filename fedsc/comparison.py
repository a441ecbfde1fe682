"""Compare and report on a sweep directory (the I/O around the pure fedsc.stats/report)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsc.errors import FedscInputError
from fedsc.report import comparison_table, write_report
from fedsc.run.load import DEFAULT as DEFAULT_DATASET
from fedsc.stats import compare
from fedsc.sweep.store import RunStore, warn_corrupt

logger = logging.getLogger(__name__)


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """The tidy results of a sweep directory (``results.parquet``)."""
    root = Path(sweep_dir)
    path = root / "results.parquet"
    if not root.is_dir():
        raise FedscInputError(f"sweep folder {root} not found; pass the --out of a `fedsc sweep`.")
    if not path.is_file():
        raise FedscInputError(
            f"{path} not found; run `fedsc sweep STUDY.yaml --out {sweep_dir}` first."
        )
    try:
        results = pd.read_parquet(path)
    except Exception as exc:  # truncated or not parquet
        raise FedscInputError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); rerun `fedsc sweep "
            f"STUDY.yaml --out {sweep_dir}` to rebuild it from the run files."
        ) from None
    _check_consistent(root, results)
    return results


def _check_consistent(root: Path, results: pd.DataFrame) -> None:
    """Warn when run files are corrupt or disagree with ``results.parquet``."""
    store = RunStore(root, create=False)
    good, bad = store.scan()
    if bad:
        warn_corrupt(bad, root)
    ok = {r["run_id"] for r in good if r["status"] == "ok" and r.get("rows")}
    in_table = set(results["run_id"].astype(str)) if "run_id" in results else set()
    missing, extra = sorted(ok - in_table), sorted(in_table - ok)
    if store.runs.is_dir() and (missing or extra):
        logger.warning(
            "%s does not match the run files in %s (%d run(s) missing from the table, %d "
            "without a readable run file: %s); rerun `fedsc sweep STUDY --out %s` to rebuild.",
            root / "results.parquet",
            store.runs,
            len(missing),
            len(extra),
            ", ".join((missing + extra)[:5]),
            root,
        )
    if results.empty:
        raise FedscInputError(
            f"{root / 'results.parquet'} holds no results (no successful run, or runs "
            "without metric panels); nothing to compare or report."
        )


def _coerce(results: pd.DataFrame, selector: Mapping[str, Any]) -> dict[str, Any]:
    """CLI selector values are strings; match the column's dtype (seed=42, private=true)."""
    out = {}
    for key, value in selector.items():
        if key not in results.columns or not isinstance(value, str):
            out[key] = value
            continue
        dtype = results[key].dtype
        try:
            if pd.api.types.is_bool_dtype(dtype):
                out[key] = value.lower() in ("1", "true", "yes")
            elif pd.api.types.is_integer_dtype(dtype):
                out[key] = int(value)
            elif pd.api.types.is_float_dtype(dtype):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise FedscInputError(
                f"selector {key}={value!r}: column {key} holds {dtype} values."
            ) from None
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
    a, b = _coerce(results, a), _coerce(results, b)
    for side, selector in (("--a", a), ("--b", b)):
        unknown = sorted(set(selector) - set(results.columns))
        if unknown:
            raise FedscInputError(
                f"{side} selects by unknown column(s) {unknown}; columns: "
                f"{sorted(results.columns)}."
            )
        mask = np.ones(len(results), dtype=bool)
        for key, value in selector.items():
            mask &= (results[key] == value).to_numpy()
        if not mask.any():
            values = {k: sorted(map(str, results[k].unique()))[:10] for k in selector}
            raise FedscInputError(
                f"{side} {dict(selector)} selects no results; values present: {values}."
            )
    if not 0 < alpha < 1:
        raise FedscInputError(f"--alpha must be between 0 and 1, got {alpha}.")
    table = compare(results, a, b, family=family, alpha=alpha)
    table.to_csv(Path(out) if out else Path(sweep_dir) / "comparison.csv", index=False)
    return table


def sweep_embeddings(sweep_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One stored embedding per (dataset, method, variant): the first seed's."""
    out = {}
    good, _ = RunStore(sweep_dir, create=False).scan()  # corrupt files: warned by load_results
    for record in good:
        emb = record.get("embedding")
        if record["status"] != "ok" or not emb:
            continue
        cfg = record["config"]
        name = f"{cfg['method']} / {cfg['variant']}"
        name = name if cfg["dataset"] == DEFAULT_DATASET else f"{cfg['dataset']}: {name}"
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


def demo_comparison(
    sweep_dir: str | Path, run_ids: Sequence[str] | None = None
) -> tuple[pd.DataFrame, Path]:
    """The demo's analysis of a finished privacy-utility sweep: crypten vs plaintext, report.

    Compares the crypten runs (side A) with the plaintext runs (side B) without DP: by
    variant name when the study names variants ``crypten`` and ``plaintext`` (it then has
    DP variants too), else by backend; Mann-Whitney U over seeds, BH over the table. Writes
    ``comparison.csv`` and the report (:func:`report_sweep`) into ``sweep_dir``.

    ``run_ids``: compare only these runs (the study's; a folder reused across versions of
    the study also holds the older ones, whose seeds would pair twice).

    Returns
    -------
    tuple
        The comparison table and the report's path.
    """
    results = comparison_table(load_results(sweep_dir))
    if run_ids is not None:
        results = results[results["run_id"].isin(list(run_ids))]
    variants = set(results["variant"])
    a, b = (
        ({"variant": "crypten"}, {"variant": "plaintext"})
        if {"crypten", "plaintext"} <= variants
        else ({"backend": "crypten"}, {"backend": "plaintext"})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report notes unreachable significance
        table = compare(results, a, b)
    table.to_csv(Path(sweep_dir) / "comparison.csv", index=False)
    return table, report_sweep(sweep_dir)
