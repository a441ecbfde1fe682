"""Issue 10 (metrics): a metric that cannot be computed is missing with a reason.

No NaN inside an aggregate: an aggregate with a missing component is itself missing (with
a reason naming the components). The run lists missing metrics in ``info`` and warns; the
printed table keeps missing rows, shown as ``missing``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from _helpers.adata import pancreas_subset
from _helpers.digests import adata_digest

from fedsc.evaluation import evaluate
from fedsc.evaluation._missing import MISSING_ATTR, compute
from fedsc.evaluation.panels import missing_reasons
from fedsc.evaluation.scib_panel import _aggregate
from fedsc.run.config import RunConfig
from fedsc.run.execute import execute_run
from fedsc.run.record import format_metrics


def test_case_huge_value_in_embedding_metrics_missing_with_reason():
    a = pancreas_subset(pcs=10)
    a.obsm["X_pca"][0, 0] = 1e30
    before = adata_digest(a)
    rows = evaluate(a, rep="X_pca", panels=("scib",), X_pre_rep="X_pca")
    assert adata_digest(a) == before
    assert rows["value"].isna().all()  # nothing meaningful: every metric missing
    reasons = missing_reasons(rows)
    assert set(reasons) == {("scib", m) for m in rows["metric"]}
    total = reasons[("scib", "total")]
    assert (
        f"magnitude 1e+30 (cell {a.obs_names[0]!r}, dim 0)" in total
        and "rescale/drop that cell" in total
    )
    assert {"bio_conservation", "batch_correction", "total"} <= set(rows["metric"])


def test_case_huge_value_through_runner_reported_not_success():
    a = pancreas_subset(pcs=10)
    a.obsm["X_pca"][0, 0] = 1e30
    cfg = RunConfig(method="scbatchprox", use_rep="X_pca", params={"rounds": 1})
    res = execute_run(cfg, adata=a, show_progress=False)
    missing = res.info["missing_metrics"]
    assert isinstance(res.info["movement"], float)  # recorded by execute_run (run_health)
    assert {(m["method"], m["metric"]) for m in missing} >= {
        ("pca", "total"),
        ("scbatchprox", "total"),
        ("scbatchprox", "batch_correction"),
    }
    assert all("magnitude" in m["reason"] for m in missing)
    assert any("could not be computed" in w for w in res.info["warnings"])
    table = format_metrics(res.rows, res.info)
    for metric in ("total", "bio_conservation", "batch_correction", "kbet_per_label"):
        line = next(ln for ln in table.splitlines() if ln.startswith(metric))
        assert "missing" in line  # the row is printed, not dropped
    assert "missing: scbatchprox scib/total: the evaluated embedding" in table


def test_case_aggregate_over_partly_missing_metrics_is_missing():
    values = {
        "kmeans_nmi": 0.8,
        "kmeans_ari": 0.7,
        "silhouette_label": 0.6,
        "isolated_labels": 0.5,
        "clisi_knn": 0.9,
        "silhouette_batch": 0.8,
        "ilisi_knn": 0.2,
        "kbet_per_label": 0.3,
        "graph_connectivity": 0.9,
        "pcr_comparison": float("nan"),
    }
    reasons: dict[str, str] = {}
    agg = _aggregate(values, reasons)
    assert agg["bio_conservation"] == pytest.approx(0.7)  # its parts are all present
    assert math.isnan(agg["batch_correction"]) and math.isnan(agg["total"])
    assert "['pcr_comparison'] are missing" in reasons["batch_correction"]
    assert "['batch_correction'] are missing" in reasons["total"]


def test_case_metric_that_raises_is_missing_with_reason():
    values: dict[str, float] = {}
    reasons: dict[str, str] = {}

    def broken():
        raise ValueError("k-means needs more distinct points")

    compute(values, reasons, "kmeans_nmi", broken)
    compute(values, reasons, "ok", lambda: 0.5)
    compute(values, reasons, "nan", lambda: float("nan"))
    assert math.isnan(values["kmeans_nmi"]) and values["ok"] == 0.5
    assert reasons["kmeans_nmi"] == (
        "could not be computed: ValueError: k-means needs more distinct points"
    )
    assert "returned nan" in reasons["nan"] and "ok" not in reasons


def test_format_metrics_keeps_all_nan_rows():
    rows = pd.DataFrame(
        {
            "method": ["pca", "pca", "m", "m"],
            "metric": ["a", "b", "a", "b"],
            "value": [0.5, np.nan, 0.6, np.nan],
        }
    )
    table = format_metrics(rows)
    assert "b" in [ln.split()[0] for ln in table.splitlines()[1:]]
    assert table.count("missing") == 2
    # a plain pivot_table (the old CLI table) drops the all-NaN row
    assert "b" not in rows.pivot_table(index="metric", columns="method", values="value").index


def test_missing_reasons_attr_survives_evaluate_concat():
    a = pancreas_subset(pcs=10)
    a.obsm["X_pca"][3, 2] = -1e20
    rows = evaluate(a, rep="X_pca", panels=("scib", "downstream"))
    assert set(rows.attrs[MISSING_ATTR]) == {
        ("scib", m) for m in rows.loc[rows["panel"] == "scib", "metric"]
    } | {("downstream", "lobo_accuracy")}
