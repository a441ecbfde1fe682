"""The Table-1 summary (fedsc.report_table1) on tidy rows whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedsc.report import write_report
from fedsc.report_table1 import (
    fit_seconds_of_sweep,
    mu_ablation_table,
    table1_lines,
    table1_table,
)
from fedsc.stats import bh_adjust, mann_whitney

SEEDS = range(5)


def _rows(upstream: str, kind: str, gain: float, dataset: str = "d") -> list[dict]:
    """One run per seed: base values 0.5 + seed/100, refined = base + gain (+ seed noise)."""
    out = []
    for seed in SEEDS:
        run = f"{dataset}-{upstream}-{kind}-{seed}"
        for metric, shift in (("batch_correction", 0.0), ("bio_conservation", 0.1)):
            base = 0.5 + shift + seed / 100
            for method, value in ((upstream, base), ("scbatchprox", base + gain + seed / 1000)):
                out.append(
                    {
                        "run_id": run,
                        "dataset": dataset,
                        "method": method,
                        "variant": f"{upstream} {kind}",
                        "seed": seed,
                        "panel": "scib",
                        "metric": metric,
                        "value": value,
                    }
                )
        b = {r["method"]: r["value"] for r in out[-4:] if r["metric"] == "batch_correction"}
        c = {r["method"]: r["value"] for r in out[-4:] if r["metric"] == "bio_conservation"}
        for method in (upstream, "scbatchprox"):
            out.append(
                {
                    **out[-1],
                    "method": method,
                    "metric": "total",
                    "value": 0.6 * c[method] + 0.4 * b[method],
                }
            )
    return out


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    rows = (
        _rows("pca", "plaintext", 0.05)
        + _rows("scvi", "plaintext", -0.01)
        + _rows("pca", "mu=0", 0.05)
        + _rows("scvi", "mu=0", -0.03)
    )
    return pd.DataFrame(rows)


def test_table1_means_deltas_tests_and_added_seconds(results):
    seconds = {f"d-pca-plaintext-{s}": 2.0 + s for s in SEEDS}
    t = table1_table(results, seconds)
    row = t[(t["upstream"] == "pca") & (t["kind"] == "plaintext") & (t["metric"] == "total")]
    r = row.iloc[0]
    base = np.array([0.6 * (0.6 + s / 100) + 0.4 * (0.5 + s / 100) for s in SEEDS])
    refined = np.array(
        [0.6 * (0.6 + s / 100 + 0.05 + s / 1000) + 0.4 * (0.5 + s / 100 + 0.05 + s / 1000)
         for s in SEEDS]
    )  # fmt: skip
    assert r["base"] == pytest.approx(base.mean()) and r["refined"] == pytest.approx(refined.mean())
    assert r["delta"] == pytest.approx((refined - base).mean()) and r["improved_seeds"] == 5
    assert r["p"] == pytest.approx(mann_whitney(refined, base)[1])
    assert r["added_s"] == pytest.approx(4.0)  # mean of 2..6
    assert np.allclose(t["q"], bh_adjust(t["p"]))  # BH over the whole table
    scvi = t[(t["upstream"] == "scvi") & (t["kind"] == "plaintext")]
    assert (scvi["delta"] < 0).all() and (scvi["improved_seeds"] == 0).all()
    assert np.isnan(scvi["added_s"]).all()  # no fit_seconds for those runs


def test_mu_ablation_compares_per_seed_deltas(results):
    mu = mu_ablation_table(results)
    pca = mu[(mu["upstream"] == "pca") & (mu["metric"] == "batch_correction")].iloc[0]
    scvi = mu[(mu["upstream"] == "scvi") & (mu["metric"] == "batch_correction")].iloc[0]
    assert pca["delta_default"] == pytest.approx(pca["delta_ablated"]) and pca["p"] == 1.0
    assert scvi["delta_default"] == pytest.approx(-0.01 + 0.002)
    assert scvi["delta_ablated"] == pytest.approx(-0.03 + 0.002)
    assert scvi["p"] < 0.01  # five seeds on each side, fully separated
    fewer = results[~((results["variant"] == "scvi mu=0") & (results["seed"] >= 3))]
    mu3 = mu_ablation_table(fewer)  # mu = 0 on seeds 0-2 only: the default on the same seeds
    r = mu3[(mu3["upstream"] == "scvi") & (mu3["metric"] == "batch_correction")].iloc[0]
    assert r["seeds"] == 3 and r["delta_default"] == pytest.approx(-0.01 + 0.001)


def test_report_prints_the_table1_section(results, tmp_path):
    lines = table1_lines(results)
    text = "\n".join(lines)
    assert "### d, plaintext" in text and "### d, mu=0" in text
    assert "batch correction improves (mean Δ > 0) in 1 of 2" in text and "paper: 90%" in text
    assert "μ = 0 ablation" in text
    assert table1_lines(results[results["method"].isin(["pca", "scbatchprox"])]) == []
    runs = tmp_path / "runs"
    runs.mkdir()
    record = {"run_id": "d-pca-plaintext-0", "status": "ok", "info": {"fit_seconds": 3.5}}
    (runs / "a.json").write_text(json.dumps(record))
    assert fit_seconds_of_sweep(tmp_path) == {"d-pca-plaintext-0": 3.5}
    report = write_report(results, None, tmp_path).read_text()
    assert "## scBatchProx Table 1" in report and "| pca | 5 |" in report
