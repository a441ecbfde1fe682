"""Metric jitter under a 1e-6 perturbation: evaluate(sensitivity=True), compare, report."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pandas as pd
import pytest
from _helpers.embeddings import blobs, blobs_adata
from _helpers.metrics import metric_values

from fedsc.evaluation import PANELS, evaluate, fedscgen_panel, register_panel
from fedsc.evaluation.sensitivity import PERTURBATION_EPS, perturb
from fedsc.report import write_report
from fedsc.results import TIDY_COLUMNS, sensitivity_metric, split_sensitivity
from fedsc.stats import COMPARE_COLUMNS, compare

# the package exports the functions, which shadow the module attributes
fp = importlib.import_module("fedsc.evaluation.fedscgen_panel")
sp = importlib.import_module("fedsc.evaluation.scib_panel")

SUFFIX = sensitivity_metric("")


def _tied_grid(shape: tuple[int, ...] = (5, 5, 4)):
    """Cells on an integer lattice: inner cells have 12 neighbours tied at distance √2.

    Which of them enter the 15-NN graph (6 at distance 1, then 9 of the 12) is a tie; any
    perturbation breaks it its own way, so the graph, the Leiden clusters and ARI move.
    """
    axes = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    g = np.stack(axes, -1).reshape(-1, len(shape)).astype(np.float32)
    labels = np.where(g[:, 0] < shape[0] // 2, "left", "right")
    labels[(g[:, 0] >= shape[0] // 2) & (g[:, 1] < shape[1] // 3)] = "corner"
    batch = np.array(["b0", "b1"])[(g.sum(axis=1) % 2).astype(int)]
    return g, batch, labels


def test_perturbation_is_tiny_and_reproducible():
    X, _, _ = blobs(n_per=30)
    a, b = perturb(X, seed=3), perturb(X, seed=3)
    np.testing.assert_array_equal(a, b)  # same seed, same noise
    assert not np.array_equal(a, perturb(X, seed=4))
    assert a.dtype == np.float32 and not np.array_equal(a, X)
    assert np.abs(a - X).max() < 10 * PERTURBATION_EPS * X.std()


def test_ari_jumps_on_tied_distances_and_the_delta_reports_it():
    X, batch, labels = _tied_grid()
    jumps = []
    for seed in range(2):
        v = metric_values(fedscgen_panel(X, batch, labels, seed=seed, sensitivity=True))
        # the panel on the perturbed cells, by hand: the delta is exactly that jump
        p = metric_values(fedscgen_panel(perturb(X, seed), batch, labels, seed=seed))
        for m in ("ari", "nmi", "ilf1"):
            assert v[m + SUFFIX] == pytest.approx(abs(p[m] - v[m]), abs=1e-12)
        jumps.append(v["ari" + SUFFIX])
    # a 1e-6 relative perturbation moves ARI by hundredths on a tied graph (0.03, 0.14 here)
    assert max(jumps) > 0.01


@pytest.fixture(scope="module")
def separated():
    """evaluate() on well-separated blobs with all three built-in panels, twice."""
    X, batch, labels = blobs(n_per=30)
    a = blobs_adata(X, batch, labels)
    a.obsm["X_emb"] = X[:, :3].copy()
    kw = {"rep": "X_emb", "panels": ("fedscgen", "scib", "downstream"), "X_pre_rep": "X"}
    with_sens = evaluate(a, **kw, seed=5, sensitivity=True)
    again = evaluate(a, **kw, seed=5, sensitivity=True)
    without = evaluate(a, **kw, seed=5)
    return with_sens, again, without


def test_sensitivity_rows_only_for_discontinuous_metrics(separated):
    rows, _, without = separated
    metrics, sens = split_sensitivity(rows)
    # the metric rows are those of a plain evaluate (LISI: see the reproducibility test)
    pd.testing.assert_frame_equal(
        metrics.reset_index(drop=True), without, check_exact=False, rtol=0, atol=1e-6
    )
    measured = {p: set(sens.loc[sens["panel"] == p, "metric"]) for p in PANELS.names()}
    assert measured["fedscgen"] == set(fp.DISCONTINUOUS)
    assert measured["scib"] == set(sp.DISCONTINUOUS) | set(sp.AGGREGATES)
    assert measured["downstream"] == {"lobo_accuracy"}
    continuous = {"asw_c", "asw_b", "silhouette_label", "isolated_labels", "silhouette_batch"}
    assert not continuous & set(sens["metric"]) and "pcr_comparison" not in set(sens["metric"])
    assert (sens["embedding"] == "X_emb").all() and (sens["value"] >= 0).all()


def test_well_separated_clusters_do_not_jump(separated):
    v = metric_values(separated[0])
    for m in ("ari", "nmi", "ilf1", "kmeans_ari", "kmeans_nmi", "graph_connectivity"):
        assert v[m + SUFFIX] == 0.0


def test_sensitivity_is_reproducible(separated):
    rows, again, _ = separated
    # scib-metrics' LISI (JAX, float32) differs by ~1e-7 between a process's first call and
    # later ones (also without sensitivity); everything else is the same bit for bit
    pd.testing.assert_frame_equal(rows, again, check_exact=False, rtol=0, atol=1e-6)
    lisi = {"ilisi", "clisi", "clisi_knn", "ilisi_knn", *sp.AGGREGATES}
    exact = ~rows["metric"].str.removesuffix(SUFFIX).isin(lisi)
    pd.testing.assert_frame_equal(rows[exact], again[exact], check_exact=True)


def test_panel_without_the_keyword_gets_no_rows():
    def plain(X, batch, labels, *, X_pre=None, seed=0):
        return pd.DataFrame({"panel": "plain_toy", "metric": ["n"], "value": [float(len(X))]})

    register_panel("plain_toy", plain)
    try:
        X, batch, labels = blobs(n_per=30)
        df = evaluate(blobs_adata(X, batch, labels), rep="X", panels="plain_toy", sensitivity=True)
    finally:
        PANELS.unregister("plain_toy")
    assert list(df["metric"]) == ["n"]


# --- compare and report ------------------------------------------------------------------
def _tidy(jitter: dict[str, float]) -> pd.DataFrame:
    """Two variants x 5 seeds: ari differs by 0.01 (jitter 0.05), nmi by 0.2 (jitter 0.01)."""
    rng = np.random.default_rng(1)
    rows = []
    for variant, shift in (("a", 0.0), ("b", 1.0)):
        for seed in range(5):
            for metric, delta in (("ari", 0.01), ("nmi", 0.2)):
                base = dict(
                    run_id=f"{variant}{seed}",
                    study="s",
                    dataset="pancreas",
                    method="fedscgen",
                    variant=variant,
                    backend="plaintext",
                    seed=seed,
                    embedding="X_fedscgen",
                    panel="fedscgen",
                )
                value = 0.6 + shift * delta + rng.normal(0, 0.002)
                rows.append({**base, "metric": metric, "value": value})
                if metric in jitter:
                    j = jitter[metric] * (seed + 1) / 5  # the largest on the last seed
                    rows.append({**base, "metric": sensitivity_metric(metric), "value": j})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def _compare(table: pd.DataFrame) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare(table, {"variant": "b"}, {"variant": "a"})


def test_compare_flags_delta_within_jitter_and_keeps_statistics():
    table = _tidy({"ari": 0.05, "nmi": 0.01})
    comp = _compare(table).set_index("metric")
    plain = _compare(split_sensitivity(table)[0]).set_index("metric")
    assert list(comp.index) == ["ari", "nmi"]  # no group for the sensitivity rows
    pd.testing.assert_frame_equal(comp[COMPARE_COLUMNS], plain[COMPARE_COLUMNS])  # BH unchanged
    assert comp.loc["ari", "jitter"] == pytest.approx(0.05)
    assert comp.loc["nmi", "jitter"] == pytest.approx(0.01)
    assert comp.loc["ari", "within_jitter"] and not comp.loc["nmi", "within_jitter"]
    assert "jitter" not in plain.columns  # tables without sensitivity rows keep their schema


def test_report_marks_delta_and_spread_within_jitter(tmp_path):
    table = _tidy({"ari": 0.05, "nmi": 0.01})
    path = write_report(table, _compare(table), tmp_path)
    text = path.read_text(encoding="utf-8")
    assert "perturbation_delta" not in text  # not reported as metrics
    summary = text.split("## Metrics per variant")[1].split("## Comparisons")[0]
    comparison = text.split("## Comparisons")[1].split("## Per-seed")[0]
    ari_row = next(line for line in comparison.splitlines() if "| ari |" in line)
    nmi_row = next(line for line in comparison.splitlines() if "| nmi |" in line)
    assert "≈" in ari_row and "≈" not in nmi_row
    assert "not larger than the metric's jitter" in comparison
    # sd over seeds (~0.002) <= jitter: both metrics' spreads are marked in the summary
    assert summary.count("≈") >= 4 and "sd over seeds is not larger" in summary
    # no sensitivity rows: no marks
    plain = split_sensitivity(table)[0]
    text = write_report(plain, _compare(plain), tmp_path / "plain").read_text(encoding="utf-8")
    assert "≈" not in text


def test_run_config_switch_adds_the_rows_and_keeps_run_ids():
    from fedsc.errors import FedscInputError
    from fedsc.run.config import RunConfig

    base = RunConfig(method="scbatchprox")
    assert base.run_id == RunConfig(method="scbatchprox", sensitivity=False).run_id
    assert RunConfig(method="scbatchprox", sensitivity=True).run_id != base.run_id
    with pytest.raises(FedscInputError, match="sensitivity must be true or false"):
        RunConfig(method="scbatchprox", sensitivity="yes")
