"""Write a Markdown report with figures from tidy results and comparison tables.

``write_report`` assembles; the figures come from :mod:`fedsc.plots`, the statistics from
:mod:`fedsc.stats`. Layout of ``out_dir``::

    report.md
    figures/delta_heatmap[_<a>_vs_<b>].png / .pdf
    figures/seed_distributions.png
    figures/privacy_utility_frontier.png / .pdf (only with attack rows)
    figures/umap.png                      (only when embeddings are given)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsc.errors import FedscInputError
from fedsc.plots import (
    delta_heatmap,
    privacy_utility_frontier,
    seed_distributions,
    stars,
    umap_coordinates,
    umap_grid,
)
from fedsc.report_table1 import fit_seconds_of_sweep, table1_lines
from fedsc.results import dp_family, split_sensitivity, varying_columns
from fedsc.stats import COMPARE_COLUMNS, SENSITIVITY_COLUMNS, min_seeds_for_alpha

__all__ = ["attack_rows", "comparison_table", "privacy_comparisons", "write_report"]

_REQUIRED = ["dataset", "method", "variant", "seed", "metric", "value"]

#: Marks a spread or Δ not larger than the metric's jitter (``fedsc.results``).
JITTER_MARK = "≈"
_JITTER_NOTE = (
    "the metric's jitter: the largest change a 1e-6 relative perturbation of the embedding "
    "caused on any of these seeds (`evaluate(..., sensitivity=True)`)"
)


# ------------------------------------------------------------------ formatting helpers


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        xf = float(x)
        return f"{xf:.{digits}g}" if (xf != 0 and abs(xf) < 1e-3) else f"{xf:.{digits}f}"
    return str(x)


def _fmt_p(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.2g}" if x < 0.01 else f"{x:.3f}"


def _fmt_bytes(n: float) -> str:
    if n is None or not np.isfinite(n):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _md_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of already formatted cells."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:60] or "comparison"


# ------------------------------------------------------------------ sections


def _summary_table(results: pd.DataFrame) -> str:
    results, sensitivity = split_sensitivity(results)
    keys = varying_columns(
        results, ["study", "dataset", "method", "variant", "embedding"], ["dataset", "variant"]
    )
    stats = (
        results.groupby([*keys, "metric"], sort=False, dropna=False)
        .agg(mean=("value", "mean"), sd=("value", "std"), n=("seed", "nunique"))
        .reset_index()
    )
    jitter = sensitivity.groupby([*keys, "metric"], sort=False, dropna=False)["value"].max()
    stats = stats.merge(jitter.rename("jitter").reset_index(), on=[*keys, "metric"], how="left")
    flagged = (stats["jitter"] > 0) & (stats["sd"] <= stats["jitter"])
    stats["cell"] = [
        (f"{_fmt(m)} ± {_fmt(s)}" if np.isfinite(s) else _fmt(m)) + (f" {JITTER_MARK}" if f else "")
        for m, s, f in zip(stats["mean"], stats["sd"], flagged, strict=True)
    ]
    wide = stats.pivot_table(
        index=keys, columns="metric", values="cell", aggfunc="first", sort=False
    )
    seeds = stats.groupby(keys, sort=False, dropna=False)["n"].max().rename("seeds")
    wide = wide.join(seeds).reset_index()
    metrics = list(dict.fromkeys(results["metric"]))
    wide = wide[[*keys, "seeds", *[m for m in metrics if m in wide.columns]]].fillna("–")
    table = _md_table(wide.sort_values(keys))
    if flagged.any():
        table += (
            f"\n\n{JITTER_MARK}: the sd over seeds is not larger than {_JITTER_NOTE}; the "
            "spread may come from the metric's discontinuity, not from the seeds."
        )
    return table


def _findings_section(results: pd.DataFrame) -> list[str]:
    """The lead privacy table (:func:`fedsc.privacy.findings.privacy_findings`)."""
    from fedsc.privacy.findings import privacy_findings

    tab = privacy_findings(results)
    if not len(tab):
        return []
    keys = [k for k in ("method", "variant", "backend") if tab[k].nunique() > 1] or ["method"]
    shown = tab[[*keys, "observer", "verdict", "strongest attack"]].astype(str).copy()
    shown["success [95% CI over seeds]"] = [
        f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi_)}]" if n > 1 and v == v else _fmt(v)
        for v, (lo, hi_), n in zip(tab["success"], tab["interval"], tab["seeds"], strict=True)
    ]
    shown["chance"] = tab["chance"].map(_fmt)
    shown["ε claimed"] = [_fmt_eps(e) for e in tab["eps_claimed"]]
    shown["ε audited ≥ (audit's claim)"] = [
        "–" if math.isnan(a) else f"{_fmt_eps(a)} ({_fmt_eps(c)})"
        for a, c in zip(tab["eps_audited"], tab["eps_audit_claim"], strict=True)
    ]
    shown["Δ utility vs uncorrected"] = tab["delta_uncorrected"].map(_fmt)
    shown["Δ utility vs σ=0 control"] = tab["delta_control"].map(_fmt)
    shown["seeds"] = tab["seeds"].astype(int)
    metrics = ", ".join(sorted({str(m) for m in tab["utility_metric"].dropna()}))
    return [
        "## Privacy: what each protection buys against each observer, at what cost",
        "",
        _md_table(shown),
        "",
        "Per observer, the strongest of every attack run (membership, property, revealed "
        "values, update and share recovery; gain over chance relative to the metric's "
        "tolerance); `verdict` over all of them: `leaks` = some attack beats chance "
        "(95 % bootstrap interval over seeds above chance and gain above the tolerance), "
        "`private` = every attack at chance, `inconclusive` = neither shown. ε claimed "
        "against that observer (∞: no guarantee; –: no DP); ε audited: the empirical "
        "lower bound of the run's canary audit (1000 canaries through the run's own "
        "mechanism at its σ; one run certifies at most ~5.3), beside the ε the accountant "
        "claims for the audit's own releases (δ ≤ 1e-5; audited > claim = a broken "
        "mechanism). Utility: "
        f"{metrics or 'the headline metric'}, method minus the uncorrected input of the "
        "same runs, and minus the DP pipeline run with σ = 0 (same layers, clipping and "
        "weighting: the cost of the noise alone). Per-metric detail: the appendix.",
    ]


def _fmt_eps(e: float) -> str:
    if not isinstance(e, float | int) or math.isnan(e):
        return "–"
    return "∞" if math.isinf(e) else _fmt(e)


def _privacy_section(results: pd.DataFrame) -> list[str]:
    """Per-observer privacy labels (from the attacks and the ledger, never the backend)."""
    if "privacy" not in results.columns:
        return ["_No privacy labels in the results (older tidy schema); privacy not reported._"]
    keys = varying_columns(results, ["method", "variant"], ["method", "variant"])
    tab = (
        results.groupby([*keys, "backend"], dropna=False, sort=True)
        .agg(
            privacy=("privacy", _first_label),
            private=("private", _private_summary),
        )
        .reset_index()
    )
    out = [_md_table(tab.astype(str))]
    out.append(
        "\nLabels come from every attack run on each observer's recorded view "
        "(`fedsc.privacy.verdict`: an observer leaks when an attack beats chance, is private "
        "only when every attack is at chance) and, without attacks, from the ledger; "
        "`private` = every observer private (n/a: inconclusive, not a federated computation "
        "or no attack run)."
    )
    return out


def _first_label(s: pd.Series) -> str:
    """The runs' label without its per-seed numbers; ``varies by seed`` if the verdicts do."""
    import re

    labels = list(dict.fromkeys(re.sub(r"\s*\([^()]*\)", "", str(x)) for x in s.dropna()))
    if not labels:
        return "–"
    return labels[0] if len(labels) == 1 else "varies by seed: " + " | ".join(labels)


def _private_summary(s: pd.Series) -> str:
    vals = s.dropna()
    if not len(vals):
        return "n/a"
    vals = vals.astype(bool)
    return "yes" if vals.all() else ("no" if not vals.any() else "mixed")


def attack_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The attack rows of tidy results (``panel == "attack"``); empty if none."""
    if "panel" not in results.columns or "observer" not in results.columns:
        return results.iloc[0:0]
    return results[results["panel"] == "attack"]


def _leakage_table(results: pd.DataFrame) -> list[str]:
    """Per method, variant, observer and attack metric: mean ± sd over seeds vs chance."""
    att = attack_rows(results)
    keys = varying_columns(att, ["method", "variant"], ["method", "variant"])
    tab = (
        att.groupby([*keys, "observer", "metric"], sort=True, dropna=False)
        .agg(
            mean=("value", "mean"),
            sd=("value", "std"),
            chance=("chance", "mean"),
            eps=("dp_epsilon", "mean"),
            n=("seed", "nunique"),
        )
        .reset_index()
    )
    shown = tab[[*keys, "observer"]].astype(str).copy()
    shown["attack metric"] = tab["metric"].str.removeprefix("attack:")
    shown["ε"] = [_fmt(e) if np.isfinite(e) else "∞" for e in tab["eps"]]
    shown["value (mean ± sd)"] = [
        f"{_fmt(m)} ± {_fmt(sd)}" if np.isfinite(sd) else _fmt(m)
        for m, sd in zip(tab["mean"], tab["sd"], strict=True)
    ]
    shown["chance"] = tab["chance"].map(_fmt)
    shown["seeds"] = tab["n"].astype(int)
    return [
        _md_table(shown),
        "\nPer run each value is the median over target clients and rounds; "
        "`update_relative_error` 0 = the observer recovers the client's update exactly, "
        "1 = chance; `update_cosine` 1 = exact direction, 0 = chance; "
        "`share_*`: what pooled party shares say about a client's input.",
    ]


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """Tidy results for :func:`fedsc.stats.compare`: attack metrics named per observer.

    Attack rows get ``metric`` = ``attack:<attack>:<metric>@<observer>`` so that one
    (method, metric) group holds one value per seed.
    """
    out = results.copy()
    if "observer" in out.columns and "panel" in out.columns:
        att = out["panel"] == "attack"
        out.loc[att, "metric"] = out.loc[att, "metric"] + "@" + out.loc[att, "observer"].astype(str)
    return out


def _dp_baseline(info: pd.DataFrame, variant: str, backend: str) -> str | None:
    """The variant a DP variant is compared with (``None``: none fits).

    Its own pipeline's σ = 0 control (the cost of the noise) when the study has one, else
    the variant without DP on the same backend named after it (``crypten+dp(eps=4)`` ->
    ``crypten``); never an arbitrary variant such as an untrained reference.
    """
    same = info[info["backend"] == backend]
    family = dp_family(variant)
    controls = [
        str(v) for v, r in same.iterrows() if np.isinf(r["eps"]) and dp_family(str(v)) == family
    ]
    if controls:
        return controls[0]
    nodp = [str(v) for v, r in same.iterrows() if np.isnan(r["eps"])]
    stem = family.split("+", 1)[0]
    named = [v for v in nodp if v in (stem, backend)]
    return named[0] if named else None


def privacy_comparisons(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Each DP variant against its baseline (:func:`_dp_baseline`; utility + attacks).

    Mann–Whitney U over seeds per (dataset, method, metric), Benjamini–Hochberg over the
    whole table (:func:`fedsc.stats.compare`). Empty when the results hold no DP variant.
    """
    import warnings

    from fedsc.stats import compare

    if "dp_epsilon" not in results.columns:
        return pd.DataFrame()
    runs = results[results["panel"] != "attack"] if "panel" in results else results
    runs = runs.dropna(subset=["backend"])
    per_variant = runs[runs["method"].isin(attack_rows(results)["method"].unique())]
    if not len(per_variant):
        per_variant = runs
    info = per_variant.groupby("variant", sort=False).agg(
        backend=("backend", "first"), eps=("dp_epsilon", "max")
    )
    frames = []
    table = comparison_table(results)
    for variant, row in info.iterrows():
        if not np.isfinite(row["eps"]):
            continue
        base = _dp_baseline(info, str(variant), str(row["backend"]))
        if base is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames.append(compare(table, {"variant": variant}, {"variant": base}, alpha=alpha))
    if not frames:
        return pd.DataFrame()
    from fedsc.stats import bh_adjust

    comp = pd.concat(frames, ignore_index=True)
    comp["q"] = bh_adjust(comp["p"].to_numpy(dtype=float))
    comp["significant"] = comp["q"] < alpha
    return comp


def _privacy_utility_sections(results: pd.DataFrame, fig_dir: Path, alpha: float) -> list[str]:
    """Frontier figure, per-observer leakage table and DP comparisons (attack rows present)."""
    if not len(attack_rows(results)):
        return []
    lines = ["", "## Privacy–utility frontier", ""]
    fig = privacy_utility_frontier(results)
    fig.savefig(fig_dir / "privacy_utility_frontier.png", dpi=130)
    fig.savefig(fig_dir / "privacy_utility_frontier.pdf")
    lines.append("![Privacy–utility frontier](figures/privacy_utility_frontier.png)")
    lines.append(
        "\nPer method: the headline utility metric (top) and the coordinator's attack "
        "success (bottom: cosine between the recovered and the true client update, best "
        "attack; 0 = chance) against ε; one curve per DP pipeline, ending at ε = ∞ with its "
        "σ = 0 control; runs without DP dotted, the uncorrected input dashed. With FedscGen "
        "attack rows, a third row: the advantage over chance of membership inference "
        "(AUC - 0.5, on a client's local update and on the global model), property "
        "inference (chance MAE - MAE of the composition) and the revealed-values "
        "correlation (r - chance r); 0 = chance (`fedsc.plots.ADVANTAGE_METRICS`)."
    )
    lines += ["", "## Per-observer leakage", ""]
    lines += _leakage_table(results)
    comp = privacy_comparisons(results, alpha)
    lines += ["", "## DP versus no DP (utility and attack success)", ""]
    if not len(comp):
        lines.append("_No DP variant with a non-DP counterpart on the same backend._")
        return lines
    shown = comp[["method", "metric", "a", "b"]].astype(str).copy()
    shown["n A/B"] = [f"{x}/{y}" for x, y in zip(comp["n_a"], comp["n_b"], strict=True)]
    shown["mean A"] = comp["mean_a"].map(_fmt)
    shown["mean B"] = comp["mean_b"].map(_fmt)
    shown["Δ mean"] = comp["delta_mean"].map(_fmt)
    shown["p"] = comp["p"].map(_fmt_p)
    shown["q (BH)"] = comp["q"].map(_fmt_p)
    shown["sig."] = [stars(q) for q in comp["q"]]
    lines.append(_md_table(shown))
    lines.append(
        f"\n{int(comp['significant'].sum())} of {len(comp)} comparisons significant at "
        f"q < {alpha} (two-sided Mann–Whitney U over seeds; Benjamini–Hochberg over this "
        "table). Attack metrics are named `attack:<attack>:<metric>@<observer>`."
    )
    if "unreachable" in comp.columns and comp["unreachable"].any():
        lines.append(
            f"\nSignificance is unreachable in {int(comp['unreachable'].sum())} of {len(comp)} "
            f"comparisons (too few seeds per side for q < {alpha}; at least "
            f"{min_seeds_for_alpha(alpha)} per side are needed): not evidence of equivalence."
        )
    return lines


def _label_row(row: pd.Series, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys)


def _cost_section(results: pd.DataFrame) -> list[str]:
    have = [c for c in ("wall_time_s", "ledger_bytes") if c in results.columns]
    if not have:
        return ["_No wall-time or ledger columns in the results._"]
    run_key = (
        ["run_id"] if "run_id" in results.columns else ["dataset", "method", "variant", "seed"]
    )
    keys = varying_columns(
        results, ["dataset", "method", "variant", "backend"], ["method", "variant"]
    )
    runs = results.drop_duplicates(subset=run_key)
    agg: dict[str, tuple[str, str]] = {"runs": (run_key[0], "nunique")}
    if "wall_time_s" in have:
        agg |= {"wall_mean": ("wall_time_s", "mean"), "wall_sd": ("wall_time_s", "std")}
    if "ledger_bytes" in have:
        agg |= {"bytes_mean": ("ledger_bytes", "mean"), "bytes_total": ("ledger_bytes", "sum")}
    tab = runs.groupby(keys, dropna=False, sort=True).agg(**agg).reset_index()
    shown = tab[keys].astype(str).copy()
    shown["runs"] = tab["runs"].astype(int)
    if "wall_time_s" in have:
        shown["wall time per run (s)"] = [
            f"{_fmt(m)} ± {_fmt(s)}" if np.isfinite(s) else _fmt(m)
            for m, s in zip(tab["wall_mean"], tab["wall_sd"], strict=True)
        ]
    if "ledger_bytes" in have:
        shown["ledger per run"] = [_fmt_bytes(v) for v in tab["bytes_mean"]]
        shown["ledger total"] = [_fmt_bytes(v) for v in tab["bytes_total"]]
    return [
        _md_table(shown),
        "\nLedger bytes: total received by parties and coordinator per run.",
    ]


def _comparison_section(
    comparisons: pd.DataFrame, fig_dir: Path, alpha: float, metric_order: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Markdown lines and the heatmap file names for each (a, b) comparison."""
    missing = [c for c in COMPARE_COLUMNS if c not in comparisons.columns]
    if missing:
        raise FedscInputError(
            f"comparisons lacks columns {missing}; pass the output of fedsc.stats.compare "
            "(or pd.concat of several)."
        )
    group_cols = [c for c in comparisons.columns if c not in COMPARE_COLUMNS + SENSITIVITY_COLUMNS]
    lines: list[str] = []
    figures: list[str] = []
    pairs = list(dict.fromkeys(zip(comparisons["a"], comparisons["b"], strict=True)))
    for a, b in pairs:
        comp = comparisons[(comparisons["a"] == a) & (comparisons["b"] == b)]
        lines.append(f"\n### A: {a} vs B: {b}\n")
        shown = comp[group_cols].astype(str).copy()
        shown["n A/B"] = [f"{x}/{y}" for x, y in zip(comp["n_a"], comp["n_b"], strict=True)]
        shown["mean A"] = comp["mean_a"].map(_fmt)
        shown["mean B"] = comp["mean_b"].map(_fmt)
        shown["Δ mean"] = comp["delta_mean"].map(lambda v: _fmt(v) if not v > 0 else f"+{_fmt(v)}")
        within = _within_jitter(comp)
        if "jitter" in comp.columns:
            shown["Δ mean"] += [f" {JITTER_MARK}" if w else "" for w in within]
            shown["jitter"] = comp["jitter"].map(_fmt)
        shown["Cliff's δ"] = comp["cliffs_delta"].map(lambda v: _fmt(v, 2))
        shown["p"] = comp["p"].map(_fmt_p)
        shown["q (BH)"] = comp["q"].map(_fmt_p)
        shown["sig."] = [
            stars(q) + ("†" if u else "")
            for q, u in zip(comp["q"], comp["unreachable"], strict=True)
        ]
        lines.append(_md_table(shown))
        n_sig = int(comp["significant"].sum())
        lines.append(
            f"\n{n_sig} of {len(comp)} comparisons significant at q < {alpha} "
            "(two-sided Mann–Whitney U over seeds; Benjamini–Hochberg; "
            "Δ = mean(A) − mean(B); * q < 0.05, ** q < 0.01, *** q < 0.001)."
        )
        if within.any():
            lines.append(
                f"\n{JITTER_MARK}: |Δ mean| is not larger than {_JITTER_NOTE}, shown as "
                f"`jitter` ({int(within.sum())} of {len(comp)}); such a Δ may come from the "
                "metric's discontinuity, not from the variants."
            )
        unreach = comp[comp["unreachable"]]
        if len(unreach):
            sizes = sorted(
                {(int(x), int(y)) for x, y in zip(unreach["n_a"], unreach["n_b"], strict=True)}
            )
            lines.append(
                f"\n**Significance unreachable** (†) in {len(unreach)} of {len(comp)} "
                f"comparisons: with (n_A, n_B) seeds in {sizes} the smallest attainable "
                f"two-sided exact p is {_fmt_p(float(unreach['min_attainable_p'].min()))} "
                f"≥ α = {alpha}. A non-significant result there is not evidence of "
                f"equivalence. A single test needs at least {min_seeds_for_alpha(alpha)} "
                "seeds per side to reach α at all; with BH over many tests, more."
            )
        if "metric" in comp.columns and len(comp):
            base = "delta_heatmap" if len(pairs) == 1 else f"delta_heatmap_{_slug(f'{a}_vs_{b}')}"
            blocks = _metric_blocks(comp)
            for i, block in enumerate(blocks):
                stem = base if len(blocks) == 1 else f"{base}_{i + 1}"
                title = f"A: {a}  vs  B: {b}"
                if len(blocks) > 1:
                    title += f"  ({', '.join(map(str, block['method'].unique()))})"
                fig = delta_heatmap(block, col_order=metric_order, title=title)
                fig.savefig(fig_dir / f"{stem}.png", dpi=150)
                fig.savefig(fig_dir / f"{stem}.pdf")
                figures.append(f"{stem}.png")
                lines.append(f"\n![Δ heatmap: {a} vs {b}](figures/{stem}.png)")
    return lines, figures


def _within_jitter(comp: pd.DataFrame) -> np.ndarray:
    """``comp["within_jitter"]`` as booleans (False where absent or not measured)."""
    if "within_jitter" not in comp.columns:
        return np.zeros(len(comp), dtype=bool)
    return comp["within_jitter"].astype("boolean").fillna(False).to_numpy(dtype=bool)


def _metric_blocks(comp: pd.DataFrame) -> list[pd.DataFrame]:
    """Split a comparison into one heatmap per metric panel when methods share no metric.

    scBatchProx (scIB panel) and FedscGen (FedscGen panel) in one heatmap would be a grid
    of mostly empty cells; methods with identical metric sets stay together.
    """
    if "method" not in comp.columns:
        return [comp]
    metric_sets = comp.groupby("method", sort=False)["metric"].agg(frozenset)
    groups: dict[frozenset, list[str]] = {}
    for method, metrics in metric_sets.items():
        groups.setdefault(metrics, []).append(str(method))
    if len(groups) == 1:
        return [comp]
    return [comp[comp["method"].isin(methods)] for methods in groups.values()]


def _umap_panels(
    umaps: Mapping[str, Any],
    *,
    umap_rep: str | None,
    batch_key: str,
    labels_key: str,
    seed: int,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    panels = {}
    for name, obj in umaps.items():
        if hasattr(obj, "obsm") and hasattr(obj, "obs"):  # AnnData
            for key in (batch_key, labels_key):
                if key not in obj.obs.columns:
                    raise FedscInputError(
                        f"umaps[{name!r}].obs lacks {key!r}; columns are "
                        f"{list(obj.obs.columns)} — pass batch_key/labels_key."
                    )
            rep = umap_rep or ("X_umap" if "X_umap" in obj.obsm else None)
            if rep is None or rep not in obj.obsm:
                raise FedscInputError(
                    f"umaps[{name!r}] has no obsm[{rep or 'X_umap'!r}] (obsm keys: "
                    f"{list(obj.obsm.keys())}); pass umap_rep= naming the embedding to plot."
                )
            emb = np.asarray(obj.obsm[rep])
            batch, labels = obj.obs[batch_key].to_numpy(), obj.obs[labels_key].to_numpy()
            coords = emb if rep == "X_umap" else umap_coordinates(emb, seed=seed)
        else:
            try:
                emb, batch, labels = obj
            except (TypeError, ValueError) as err:
                raise FedscInputError(
                    f"umaps[{name!r}] must be an AnnData or an (embedding, batch, labels) "
                    f"tuple, got {type(obj).__name__}."
                ) from err
            coords = umap_coordinates(np.asarray(emb), seed=seed)
        panels[str(name)] = (coords[:, :2], np.asarray(batch), np.asarray(labels))
    return panels


# ------------------------------------------------------------------ entry point


def write_report(
    results: pd.DataFrame,
    comparisons: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    umaps: Mapping[str, Any] | None = None,
    umap_rep: str | None = None,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    alpha: float = 0.05,
    seed: int = 0,
    title: str = "fedsc report",
    fit_seconds: Mapping[str, float] | None = None,
) -> Path:
    """Write ``report.md`` and ``figures/`` into ``out_dir``; return the path of report.md.

    Parameters
    ----------
    results
        Tidy results (``fedsc.results.TIDY_COLUMNS``).
    comparisons
        Output of :func:`fedsc.stats.compare` (several concatenated are drawn one heatmap
        per A/B pair), or ``None`` for no comparison section.
    out_dir
        Folder to write into (created if needed; existing files of the same names are
        overwritten).
    umaps
        Optional ``{variant name: AnnData | (embedding, batch, labels)}``, typically one seed
        per variant. AnnData uses ``obsm["X_umap"]`` if present, else ``obsm[umap_rep]``.
        Embeddings with more than two columns are reduced with UMAP (umap-learn,
        ``random_state=seed``); two columns are plotted as they are.
    umap_rep, batch_key, labels_key
        AnnData keys for the UMAP panels.
    alpha
        Significance level quoted in the text.
    seed
        UMAP random state.
    title
        First heading of the report.
    fit_seconds
        ``run_id -> run.json fit_seconds`` for the Table-1 summary's added seconds
        (:mod:`fedsc.report_table1`); ``None``: read from ``out_dir/runs`` when it is a
        sweep folder.
    """
    if not isinstance(results, pd.DataFrame):
        raise FedscInputError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
    missing = [c for c in _REQUIRED if c not in results.columns]
    if missing:
        raise FedscInputError(
            f"results lacks columns {missing}; pass a tidy table (fedsc.results.TIDY_COLUMNS)."
        )
    if results.empty:
        raise FedscInputError("results has no rows; nothing to report.")
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)

    lines = [f"# {title}", ""]
    n_runs = results["run_id"].nunique() if "run_id" in results.columns else None
    lines.append(
        f"{len(results)} result rows"
        + (f" from {n_runs} runs" if n_runs is not None else "")
        + f"; datasets: {', '.join(map(str, dict.fromkeys(results['dataset'])))}; "
        f"methods: {', '.join(map(str, dict.fromkeys(results['method'])))}; "
        f"variants: {', '.join(map(str, dict.fromkeys(results['variant'])))}; "
        f"seeds: {results['seed'].nunique()}."
    )

    findings = _findings_section(results)
    if findings:
        lines += ["", *findings]
    else:
        lines += ["", "## Privacy", ""]
        lines += _privacy_section(results)
    frontier = _privacy_utility_sections(results, fig_dir, alpha)
    lines += frontier[: frontier.index("## Per-observer leakage") - 1] if frontier else []

    utility = results[results["panel"] != "attack"] if "panel" in results.columns else results
    lines += ["", "## Metrics per variant (mean ± sd over seeds)", ""]
    lines.append(_summary_table(utility))

    # scBatchProx over several upstreams: the paper's Table 1 (and its mu = 0 ablation)
    seconds = fit_seconds if fit_seconds is not None else fit_seconds_of_sweep(out)
    table1 = table1_lines(utility, seconds, alpha=alpha)
    if table1:
        lines += ["", *table1]

    lines += ["", "## Comparisons"]
    if comparisons is None or len(comparisons) == 0:
        lines += ["", "_No comparison requested._"]
    else:
        metric_order = [str(m) for m in dict.fromkeys(results["metric"])]
        comp_lines, _ = _comparison_section(comparisons, fig_dir, alpha, metric_order)
        lines += comp_lines

    lines += ["", "## Per-seed distributions", ""]
    fig = seed_distributions(split_sensitivity(utility)[0])
    fig.savefig(fig_dir / "seed_distributions.png", dpi=130)
    lines.append("![Per-seed values](figures/seed_distributions.png)")

    if umaps:
        panels = _umap_panels(
            umaps, umap_rep=umap_rep, batch_key=batch_key, labels_key=labels_key, seed=seed
        )
        fig = umap_grid(panels)
        fig.savefig(fig_dir / "umap.png", dpi=130)
        lines += ["", "## UMAPs", "", f"UMAP random_state = {seed}.", ""]
        lines.append("![UMAPs](figures/umap.png)")

    lines += ["", "## Cost (wall time and ledger)", ""]
    lines += _cost_section(results)

    if findings:
        lines += ["", "## Appendix: privacy detail", "", "### Labels per run", ""]
        lines += _privacy_section(results)
        detail = frontier[frontier.index("## Per-observer leakage") - 1 :]
        lines += [x.replace("## ", "### ", 1) if x.startswith("## ") else x for x in detail]

    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
