"""fedsc.report / fedsc.plots: files written, figures non-trivial, tables carry the rows."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from fedsc.errors import FedscInputError
from fedsc.plots import (
    attack_success,
    delta_heatmap,
    privacy_utility_frontier,
    stars,
    umap_coordinates,
    umap_grid,
)
from fedsc.report import privacy_comparisons, write_report
from fedsc.results import TIDY_COLUMNS
from fedsc.stats import SignificanceUnreachableWarning, compare

SEEDS = [42, 123, 456, 789, 101112, 2024, 31415, 2718, 1618, 9999]
METRICS = ["NMI", "ARI", "EBM", "ASW_B"]


def tidy_table(n_seeds: int = 10, shift: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("pancreas", "pbmc"):
        for variant, backend, private in (
            ("crypten", "crypten", True),
            ("plaintext", "plaintext", False),
        ):
            for seed in SEEDS[:n_seeds]:
                for metric in METRICS:
                    planted = (
                        shift if (dataset, metric, variant) == ("pbmc", "EBM", "crypten") else 0
                    )
                    rows.append(
                        dict(
                            run_id=f"{dataset}-{variant}-{seed}",
                            study="s",
                            dataset=dataset,
                            method="scbatchprox",
                            variant=variant,
                            backend=backend,
                            private=private,
                            seed=seed,
                            embedding="X_scbatchprox",
                            panel="fedscgen",
                            metric=metric,
                            value=rng.normal(0.6, 0.03) + planted,
                            wall_time_s=2.0 if backend == "crypten" else 0.5,
                            ledger_bytes=3 * 2**20 if backend == "crypten" else 0,
                        )
                    )
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def test_stars():
    assert [stars(q) for q in (0.0005, 0.005, 0.03, 0.05, np.nan)] == ["***", "**", "*", "", ""]


def test_write_report_files_tables_and_heatmap(tmp_path):
    df = tidy_table()
    comp = compare(df, {"variant": "crypten"}, {"variant": "plaintext"})
    assert comp["significant"].sum() == 1
    path = write_report(df, comp, tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.md"
    figs = tmp_path / "rep" / "figures"
    for name in ("delta_heatmap.png", "delta_heatmap.pdf", "seed_distributions.png"):
        assert (figs / name).stat().st_size > 5000, name
    assert not (figs / "umap.png").exists()
    img = imread(figs / "delta_heatmap.png")
    assert img.shape[0] > 200 and img.shape[1] > 400
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100  # a colour map, text and a colour bar, not a blank canvas

    text = path.read_text()
    # the comparison table has one row per (dataset, method, metric), planted one starred
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| pbmc | scbatchprox |") and "| 10/10 |" in line
    ]
    assert len(rows) == len(METRICS)
    ebm = next(r for r in rows if "| EBM |" in r)
    assert "***" in ebm and "| 10/10 |" in ebm and "+0.3" in ebm
    assert "1 of 8 comparisons significant" in text
    assert "unreachable" not in text.lower()
    # privacy, summary and cost sections
    assert "| scbatchprox | plaintext | plaintext | – | no |" in text
    assert "| pbmc | crypten | 10 |" in text and " ± " in text
    assert "3.0 MiB" in text and "2.000 ± 0.000" in text
    assert "![Δ heatmap" in text


def test_report_notes_unreachable_significance(tmp_path):
    df = tidy_table(n_seeds=3, shift=1.0)
    with pytest.warns(SignificanceUnreachableWarning):
        comp = compare(df, {"variant": "crypten"}, {"variant": "plaintext"})
    text = write_report(df, comp, tmp_path).read_text()
    assert "**Significance unreachable** (†) in 8 of 8" in text
    assert "at least 4 seeds per side" in text
    assert "0 of 8 comparisons significant" in text


def test_report_without_comparisons_and_with_anndata_umaps(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(0)
    n = 60
    obs = pd.DataFrame(
        {"batch": rng.choice(["a", "b"], n), "cell_type": rng.choice(["T", "B", "NK"], n)},
        index=[f"c{i}" for i in range(n)],
    )
    adatas = {
        v: ad.AnnData(obs=obs.copy(), obsm={"X_umap": rng.normal(size=(n, 2))})
        for v in ("crypten", "plaintext")
    }
    path = write_report(tidy_table(n_seeds=4), None, tmp_path, umaps=adatas)
    text = path.read_text()
    assert "_No comparison requested._" in text and "figures/umap.png" in text
    assert (tmp_path / "figures" / "umap.png").stat().st_size > 5000
    assert not (tmp_path / "figures" / "delta_heatmap.png").exists()
    bad = {"x": ad.AnnData(obs=obs.copy(), obsm={"X_pca": rng.normal(size=(n, 5))})}
    with pytest.raises(FedscInputError, match="umap_rep"):
        write_report(tidy_table(n_seeds=4), None, tmp_path, umaps=bad)


class _FakeUMAP:
    """Stands in for umap.UMAP: real umap-learn needs ~10 s of numba compilation."""

    calls: ClassVar[list[dict]] = []

    def __init__(self, **kwargs):
        _FakeUMAP.calls.append(kwargs)

    def fit_transform(self, x):
        return np.asarray(x)[:, :2] * 2.0


def test_umap_coordinates_wiring(monkeypatch, tmp_path):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=_FakeUMAP))
    _FakeUMAP.calls.clear()
    emb = np.arange(30.0).reshape(6, 5)
    xy = umap_coordinates(emb, seed=7)
    np.testing.assert_array_equal(xy, emb[:, :2] * 2.0)
    assert _FakeUMAP.calls == [
        {"n_neighbors": 5, "min_dist": 0.5, "random_state": 7, "n_jobs": 1}
    ]  # n_neighbors clipped to n_cells - 1, seed passed through
    two = np.ones((4, 2))
    np.testing.assert_array_equal(umap_coordinates(two), two)
    assert len(_FakeUMAP.calls) == 1  # two columns are already coordinates
    with pytest.raises(FedscInputError, match="NaN"):
        umap_coordinates(np.full((4, 3), np.nan))
    # the report path computes UMAPs from (embedding, batch, labels) tuples
    _FakeUMAP.calls.clear()
    umaps = {"v": (np.random.default_rng(0).normal(size=(20, 4)), ["a"] * 20, ["t"] * 20)}
    write_report(tidy_table(n_seeds=4), None, tmp_path, umaps=umaps, seed=3)
    assert _FakeUMAP.calls[0]["random_state"] == 3


def test_plot_input_errors():
    df = tidy_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = compare(df, {"variant": "crypten"}, {"variant": "plaintext"})
    with pytest.raises(FedscInputError, match="several rows"):
        delta_heatmap(pd.concat([comp, comp]))
    with pytest.raises(FedscInputError, match="lacks column"):
        delta_heatmap(comp.drop(columns="q"))
    with pytest.raises(FedscInputError, match="cells × 2"):
        umap_grid({"x": (np.zeros((5, 3)), ["a"] * 5, ["t"] * 5)})
    with pytest.raises(FedscInputError, match="lacks columns"):
        write_report(df.drop(columns="metric"), None, ".")


def test_methods_with_disjoint_metric_panels_get_one_heatmap_each(tmp_path):
    a = tidy_table()
    b = a.assign(method="fedscgen", metric=a["metric"].str.lower(), run_id=a["run_id"] + "-f")
    results = pd.concat([a, b], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = compare(results, {"variant": "crypten"}, {"variant": "plaintext"})
        write_report(results, comp, tmp_path)
    figs = sorted(p.name for p in (tmp_path / "figures").glob("delta_heatmap*.png"))
    assert figs == ["delta_heatmap_1.png", "delta_heatmap_2.png"]
    text = (tmp_path / "report.md").read_text()
    assert "figures/delta_heatmap_1.png" in text and "figures/delta_heatmap_2.png" in text


def privacy_table(seeds=(0, 1, 2, 3, 4)) -> pd.DataFrame:
    """Tidy rows of a privacy-utility study: utility + coordinator attack rows per ε."""
    rng = np.random.default_rng(1)
    rows = []
    for method, metric in (("scbatchprox", "total"), ("fedscgen", "ari")):
        for variant, backend, eps in (
            ("plaintext", "plaintext", np.nan),
            ("crypten", "crypten", np.nan),
            ("crypten+dp(eps=1)", "crypten", 1.0),
            ("crypten+dp(eps=16)", "crypten", 16.0),
        ):
            cos = 1.0 if np.isnan(eps) else 0.05 * np.log2(eps + 1)
            for seed in seeds:
                base = dict(
                    run_id=f"{method}-{variant}-{seed}",
                    study="pu",
                    dataset="pancreas",
                    method=method,
                    variant=variant,
                    backend=backend,
                    seed=seed,
                    dp_epsilon=eps,
                    dp_delta=np.nan if np.isnan(eps) else 0.01,
                    wall_time_s=1.0,
                    ledger_bytes=0,
                )
                util = 0.7 - (0.3 / eps if eps == eps else 0) + rng.normal(0, 0.01)
                rows.append(base | dict(embedding="X", panel="scib", metric=metric, value=util))
                for m, v, chance in (
                    ("update_cosine", cos + rng.normal(0, 0.01), 0.0),
                    ("update_relative_error", 1 - cos + abs(rng.normal(0, 0.01)), 1.0),
                ):
                    rows.append(
                        base
                        | dict(
                            private=bool(cos < 0.5),
                            privacy="coordinator: ...",
                            panel="attack",
                            metric=f"attack:update_recovery:{m}",
                            observer="coordinator",
                            value=v,
                            chance=chance,
                        )
                    )
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def test_report_writes_frontier_leakage_table_and_dp_comparisons(tmp_path):
    df = privacy_table()
    succ = attack_success(df)
    assert len(succ) == 2 * 4 * 5 and succ["cosine"].notna().all()
    fig = privacy_utility_frontier(df)
    assert len(fig.axes) == 4  # utility + attack success, per method
    assert fig.axes[2].get_xticklabels()[-1].get_text() == "∞ (σ=0)"
    comp = privacy_comparisons(df)
    assert set(comp["a"]) == {"variant=crypten+dp(eps=1)", "variant=crypten+dp(eps=16)"}
    assert set(comp["b"]) == {"variant=crypten"}
    assert comp["metric"].str.endswith("@coordinator").any()
    text = write_report(df, None, tmp_path).read_text()
    png = tmp_path / "figures" / "privacy_utility_frontier.png"
    assert (
        png.stat().st_size > 5000
        and (tmp_path / "figures" / "privacy_utility_frontier.pdf").exists()
    )
    assert "## Privacy–utility frontier" in text and "## Per-observer leakage" in text
    assert "| plaintext | coordinator | update_recovery:update_cosine | ∞ | 1.0" in text
    assert "## DP versus no DP" in text
    # attack rows stay out of the utility summary
    summary = text[text.index("## Metrics per variant") :]
    assert "attack:" not in summary.split("## Comparisons")[0]


def test_findings_table_leads_the_report(tmp_path):
    """Issue 18, point 9: one table per method × variant × observer leads the report."""
    from fedsc.privacy.findings import privacy_findings

    df = privacy_table(seeds=(0, 1, 2))
    # the uncorrected input of every run, and a sigma = 0 control of the DP pipeline
    util = df[df["panel"] == "scib"]
    base = util.assign(method="pca", value=0.5)
    control = df[df["variant"] == "crypten+dp(eps=16)"].assign(
        variant="crypten+dp(sigma=0)",
        dp_epsilon=np.inf,
        run_id=lambda d: d["run_id"].str.replace("eps=16", "sigma=0"),
    )
    control.loc[control["panel"] == "scib", "value"] += 0.05
    df = pd.concat([df, base, control], ignore_index=True)
    tab = privacy_findings(df)
    row = tab[(tab["method"] == "fedscgen") & (tab["variant"] == "plaintext")].iloc[0]
    assert row["observer"] == "coordinator" and row["verdict"] == "leaks"
    assert row["eps_claimed"] != row["eps_claimed"]  # NaN: no DP
    assert row["delta_uncorrected"] == pytest.approx(0.2, abs=0.03)
    dp1 = tab[(tab["method"] == "fedscgen") & (tab["variant"] == "crypten+dp(eps=1)")].iloc[0]
    assert dp1["eps_claimed"] == pytest.approx(1.0) and dp1["verdict"] != "leaks"
    # the control costs 0.05 less than eps=16 by construction; eps=1 costs 0.3 more
    dp16 = tab[(tab["method"] == "fedscgen") & (tab["variant"] == "crypten+dp(eps=16)")].iloc[0]
    assert dp16["delta_control"] == pytest.approx(-0.05, abs=0.03)
    ctl = tab[tab["variant"] == "crypten+dp(sigma=0)"].iloc[0]
    assert math.isinf(ctl["eps_claimed"]) and math.isnan(ctl["delta_control"])
    text = write_report(df, None, tmp_path).read_text()
    lead = text.index("## Privacy: what each protection buys")
    assert lead < text.index("## Metrics per variant") < text.index("## Appendix: privacy detail")
    assert "| ∞ |" in text[lead : text.index("## Metrics per variant")]


def test_adaptive_lira_continues_the_non_adaptive_curve():
    """DP runs name LiRA `..._lira_adaptive_auc_pooled`: same frontier label as without DP."""
    from fedsc.plots import attack_advantage

    rows = []
    for eps, name in ((np.nan, "update_lira_auc_pooled"), (4.0, "update_lira_adaptive_auc_pooled")):
        rows.append(
            dict(
                run_id=f"r{eps}",
                method="fedscgen",
                variant=str(eps),
                backend="plaintext",
                seed=0,
                dp_epsilon=eps,
                panel="attack",
                observer="coordinator",
                metric=f"attack:fedscgen_membership:{name}",
                value=0.6,
                chance=0.5,
            )
        )
    adv = attack_advantage(pd.DataFrame(rows))
    assert len(adv) == 2 and adv["label"].nunique() == 1
    assert np.allclose(adv["advantage"], 0.1)
