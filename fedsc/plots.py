"""Figures from tidy results and comparisons: Δ heatmap, seed distributions, UMAPs, frontier.

Every function returns a :class:`matplotlib.figure.Figure` attached to an Agg canvas; nothing
touches pyplot's global state, so the functions are safe in headless runs and in tests. Save
with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from fedsc.errors import FedscInputError
from fedsc.results import dp_family, varying_columns
from fedsc.stats import COMPARE_COLUMNS

__all__ = [
    "ADVANTAGE_METRICS",
    "UTILITY_PREFERENCE",
    "attack_advantage",
    "attack_success",
    "delta_heatmap",
    "headline_utility",
    "privacy_utility_frontier",
    "seed_distributions",
    "stars",
    "umap_coordinates",
    "umap_grid",
]

#: Star thresholds on BH-adjusted q, most stringent first.
STAR_LEVELS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


def stars(q: float) -> str:
    """Significance stars for an adjusted p: *** < 0.001, ** < 0.01, * < 0.05, else ''."""
    if q is None or not np.isfinite(q):
        return ""
    for level, mark in STAR_LEVELS:
        if q < level:
            return mark
    return ""


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _varying(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """The columns among ``cols`` that take more than one value (at least the first one)."""
    return varying_columns(df, cols) or [c for c in cols if c in df.columns][:1]


def _label(row: Sequence[Any]) -> str:
    return " / ".join(str(v) for v in row)


def delta_heatmap(
    comparisons: pd.DataFrame,
    *,
    rows: Sequence[str] | None = None,
    col: str = "metric",
    col_order: Sequence[str] | None = None,
    value: str = "delta_mean",
    q_col: str = "q",
    title: str | None = None,
) -> Figure:
    """Heatmap of Δ per (row group, metric), annotated with Δ and BH significance stars.

    Parameters
    ----------
    comparisons
        Output of :func:`fedsc.stats.compare` for one A-versus-B comparison.
    rows
        Row-label columns; default: the group columns other than ``col`` (e.g. dataset and
        method), keeping only those that vary.
    col, value, q_col
        Column for the heatmap columns, the coloured value and the adjusted p.
    col_order
        Order of the heatmap columns (e.g. the metric panel's order); values missing from
        it follow in table order.
    title
        Figure title; default ``"<a> vs <b>"`` from the table.

    Cells where significance was unreachable with the given seeds carry a dagger (†).
    """
    for c in (col, value, q_col):
        if c not in comparisons.columns:
            raise FedscInputError(
                f"comparisons lacks column {c!r}; pass the output of fedsc.stats.compare "
                f"(columns {list(comparisons.columns)})."
            )
    if comparisons.empty:
        raise FedscInputError("comparisons is empty; nothing to draw.")
    if rows is None:
        group_cols = [c for c in comparisons.columns if c not in COMPARE_COLUMNS and c != col]
        rows = _varying(comparisons, group_cols)
    rows = list(rows)
    if not rows:
        comparisons = comparisons.assign(_all="all")
        rows = ["_all"]
    dup = comparisons.duplicated(subset=[*rows, col], keep=False)
    if dup.any():
        raise FedscInputError(
            f"comparisons has several rows per ({', '.join([*rows, col])}), e.g. "
            f"{comparisons.loc[dup, [*rows, col]].head(2).to_dict('records')}; draw one "
            "comparison (one a/b pair) at a time or pass `rows` that tell them apart."
        )
    table = comparisons.assign(_row=comparisons[rows].astype(str).agg(" / ".join, axis=1))
    row_order = list(dict.fromkeys(table.sort_values(rows)["_row"]))
    present = list(dict.fromkeys(table[col].astype(str)))
    first = [str(c) for c in (col_order or []) if str(c) in present]
    col_order = first + [c for c in present if c not in first]
    table = table.assign(_col=table[col].astype(str))
    grid = table.pivot(index="_row", columns="_col", values=value).reindex(
        index=row_order, columns=col_order
    )
    qgrid = table.pivot(index="_row", columns="_col", values=q_col).reindex_like(grid)
    qvals = qgrid.to_numpy(dtype=float)
    unreachable = None
    if "unreachable" in table.columns:
        unreachable = (
            table.pivot(index="_row", columns="_col", values="unreachable")
            .reindex_like(grid)
            .fillna(False)
            .astype(bool)
        )
    z = grid.to_numpy(dtype=float)
    n_r, n_c = z.shape
    vmax = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    norm = Normalize(vmin=-vmax, vmax=vmax)
    cmap = colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")

    label_w = 0.09 * max(len(r) for r in row_order)
    fig = _new_figure(max(4.0, 1.8 + label_w + 0.95 * n_c), max(2.4, 1.5 + 0.55 * n_r))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(n_c), col_order, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_r), row_order)
    ax.set_xticks(np.arange(n_c + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_r + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fontsize = 9 if n_c <= 8 else 7
    for i in range(n_r):
        for j in range(n_c):
            v = z[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=fontsize, color="#555555")
                continue
            r, g, b = to_rgb(cmap(norm(v)))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            mark = stars(float(qvals[i, j]))
            if unreachable is not None and unreachable.iat[i, j]:
                mark += "†"
            num = f"{v:+.3f}" if (v == 0 or abs(v) >= 1e-3) else f"{v:+.1e}"
            text = num + (f"\n{mark}" if mark else "")
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
                fontweight="bold" if mark.strip("†") else "normal",
            )
    cbar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cbar.set_label("Δ mean (A − B)")
    if title is None and {"a", "b"} <= set(table.columns):
        title = f"A: {table['a'].iloc[0]}  vs  B: {table['b'].iloc[0]}"
    if title:
        ax.set_title(title, fontsize=10)
    note = "* q < 0.05, ** q < 0.01, *** q < 0.001 (Mann–Whitney U, BH)"
    if unreachable is not None and unreachable.to_numpy().any():
        note += "; † significance unreachable with these seeds"
    ax.set_xlabel(note, fontsize=7, color="#444444", labelpad=6)
    return fig


def seed_distributions(
    results: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    x: Sequence[str] = ("method", "variant"),
    facet: str = "dataset",
) -> Figure:
    """Plot per-seed values: a box and the individual seeds per x category.

    One panel per (``facet`` value, metric).

    Parameters
    ----------
    results
        Tidy results (``value``, ``metric``, ``facet`` and the ``x`` columns).
    metrics
        Metrics to show, in order; default all, in order of appearance.
    x
        Columns forming the x categories; only those that vary are used in the labels.
    facet
        Column whose values form the panel rows.
    """
    need = ["value", "metric", facet, *x]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise FedscInputError(f"results lacks columns {missing}; pass a tidy results table.")
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(results["metric"]))
    if not metrics:
        raise FedscInputError("no metrics to plot; results has no rows.")
    x_cols = _varying(results, x)
    cats = list(dict.fromkeys(results.sort_values(x_cols)[x_cols].astype(str).agg(" / ".join, 1)))
    facets = list(dict.fromkeys(results[facet]))
    colours = colormaps["tab10"]
    n_r, n_c = len(facets), len(metrics)
    fig = _new_figure(max(3.5, 0.6 + n_c * max(1.9, 0.55 * len(cats))), 0.9 + 2.2 * n_r)
    axes = fig.subplots(n_r, n_c, squeeze=False, sharex=True)
    rng = np.random.default_rng(0)  # jitter only; fixed so figures are reproducible
    labels = results[x_cols].astype(str).agg(" / ".join, axis=1)
    for i, fv in enumerate(facets):
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            sel = (results[facet] == fv) & (results["metric"] == m)
            data = [results.loc[sel & (labels == c), "value"].dropna().to_numpy() for c in cats]
            pos = [k for k, d in enumerate(data) if d.size]
            if pos:
                ax.boxplot(
                    [data[k] for k in pos],
                    positions=pos,
                    widths=0.55,
                    showfliers=False,
                    medianprops={"color": "black"},
                    boxprops={"color": "#777777"},
                    whiskerprops={"color": "#777777"},
                    capprops={"color": "#777777"},
                )
            for k, d in enumerate(data):
                ax.scatter(
                    k + rng.uniform(-0.15, 0.15, d.size),
                    d,
                    s=14,
                    color=colours(k % 10),
                    alpha=0.85,
                    zorder=3,
                    linewidths=0,
                )
            ax.set_xticks(range(len(cats)), cats, rotation=35, ha="right", rotation_mode="anchor")
            ax.set_xlim(-0.6, len(cats) - 0.4)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(str(m), fontsize=9)
            if j == 0:
                ax.set_ylabel(str(fv), fontsize=9)
    fig.suptitle("Per-seed values", fontsize=10)
    return fig


def umap_coordinates(
    embedding: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.5
) -> np.ndarray:
    """2-D UMAP of an embedding with umap-learn (fixed ``seed``).

    A 2-column input is returned as is (already coordinates).
    """
    emb = np.asarray(embedding, dtype=float)
    if emb.ndim != 2 or emb.shape[0] < 3:
        raise FedscInputError(
            f"embedding must be a cells × dims matrix with at least 3 cells, got shape {emb.shape}."
        )
    if not np.all(np.isfinite(emb)):
        raise FedscInputError("embedding contains NaN or infinite values; drop or fix them first.")
    if emb.shape[1] == 2:
        return emb
    import warnings

    import umap  # umap-learn; imported lazily (numba start-up is slow)

    reducer = umap.UMAP(
        n_neighbors=min(n_neighbors, emb.shape[0] - 1),
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        return np.asarray(reducer.fit_transform(emb))


def _category_colours(values: Iterable[str]) -> dict[str, Any]:
    cats = sorted(set(values), key=str)
    cmap = colormaps["tab10" if len(cats) <= 10 else "tab20"]
    n = cmap.N
    if len(cats) <= n:
        return {c: cmap(i) for i, c in enumerate(cats)}
    hsv = colormaps["hsv"]
    return {c: hsv(i / len(cats)) for i, c in enumerate(cats)}


def umap_grid(
    panels: Mapping[str, tuple[ArrayLike, ArrayLike, ArrayLike]],
    *,
    batch_title: str = "batch",
    label_title: str = "cell type",
    max_legend: int = 20,
) -> Figure:
    """UMAP scatter per variant (columns), coloured by batch (top row) and label (bottom row).

    Parameters
    ----------
    panels
        ``{name: (coords, batch, labels)}`` with 2-D coordinates (see
        :func:`umap_coordinates`) and one batch and label per cell.
    batch_title, label_title
        Legend titles.
    max_legend
        At most this many legend entries per row; the rest are summarised.
    """
    if not panels:
        raise FedscInputError("panels is empty; pass {name: (coords, batch, labels)}.")
    checked = {}
    for name, (coords, batch, labels) in panels.items():
        xy = np.asarray(coords, dtype=float)
        bt, lb = np.asarray(batch).astype(str), np.asarray(labels).astype(str)
        if xy.ndim != 2 or xy.shape[1] != 2 or not (len(bt) == len(lb) == xy.shape[0]):
            raise FedscInputError(
                f"panel {name!r}: coordinates must be cells × 2 with one batch and label per "
                f"cell; got {xy.shape}, {len(bt)} batches, {len(lb)} labels. Compute "
                "coordinates with umap_coordinates first."
            )
        checked[name] = (xy, bt, lb)
    colour_rows = [
        _category_colours(np.concatenate([v[k] for v in checked.values()])) for k in (1, 2)
    ]
    n_c = len(checked)
    fig = _new_figure(1.0 + 3.0 * n_c + 1.8, 6.2)
    axes = fig.subplots(2, n_c, squeeze=False)
    for j, (name, (xy, bt, lb)) in enumerate(checked.items()):
        size = float(np.clip(3000.0 / max(len(xy), 1), 1.0, 20.0))
        order = np.random.default_rng(0).permutation(len(xy))  # no class painted last on top
        for i, (cats, colours) in enumerate(zip((bt, lb), colour_rows, strict=True)):
            ax = axes[i, j]
            ax.scatter(
                xy[order, 0],
                xy[order, 1],
                c=[colours[c] for c in cats[order]],
                s=size,
                linewidths=0,
                rasterized=True,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(str(name), fontsize=10)
            if j == 0:
                ax.set_ylabel(batch_title if i == 0 else label_title, fontsize=9)
    for i, (colours, title) in enumerate(zip(colour_rows, (batch_title, label_title), strict=True)):
        items = list(colours.items())
        handles = [
            axes[i, -1].scatter([], [], color=col, s=20, label=str(cat))
            for cat, col in items[:max_legend]
        ]
        if len(items) > max_legend:
            handles.append(
                axes[i, -1].scatter([], [], color="white", label=f"+{len(items) - max_legend} more")
            )
        axes[i, -1].legend(
            handles=handles,
            title=title,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            fontsize=7,
            title_fontsize=8,
            frameon=False,
            ncols=1 if len(handles) <= 12 else 2,
        )
    return fig


# ------------------------------------------------------------------ privacy-utility frontier

#: Headline utility metric of a method, first present wins (else its first metric).
UTILITY_PREFERENCE: tuple[str, ...] = ("total", "ari", "nmi", "knn_acc")


def headline_utility(results: pd.DataFrame, method: str) -> str | None:
    """The utility metric drawn for ``method`` on the frontier (see :data:`UTILITY_PREFERENCE`)."""
    rows = results[(results["method"] == method) & (results["panel"] != "attack")]
    metrics = list(dict.fromkeys(rows["metric"]))
    for m in UTILITY_PREFERENCE:
        if m in metrics:
            return m
    return metrics[0] if metrics else None


def attack_success(results: pd.DataFrame, observer: str = "coordinator") -> pd.DataFrame:
    """Per run: ``observer``'s best update recovery, as cosine to the true update.

    The largest ``update_cosine`` over the attacks run (1: the update's direction exactly,
    0: chance) and the smallest ``update_relative_error`` (0: exact, 1: chance). Columns
    ``run_id, method, variant, backend, seed, dp_epsilon, cosine, rel_error``.
    """
    att = results[(results["panel"] == "attack") & (results["observer"] == observer)]
    keys = ["run_id", "method", "variant", "backend", "seed", "dp_epsilon"]
    cos = att[att["metric"].str.endswith(":update_cosine")]  # client-specific only
    err = att[att["metric"].str.endswith(":update_relative_error")]
    a = cos.groupby(keys, dropna=False)["value"].max().rename("cosine")
    b = err.groupby(keys, dropna=False)["value"].min().rename("rel_error")
    return pd.concat([a, b], axis=1).reset_index()


#: Attack metrics shown as advantage over chance in the frontier figure: tidy metric ->
#: (observer, label, +1 if higher is better for the attacker, -1 if lower is).
ADVANTAGE_METRICS: dict[str, tuple[str, str, int]] = {
    "attack:fedscgen_membership:update_lira_auc_pooled": (
        "coordinator",
        "membership AUC, local update (LiRA)",
        1,
    ),
    "attack:fedscgen_membership:global_lira_auc_pooled": (
        "client",
        "membership AUC, global model (LiRA)",
        1,
    ),
    # under DP the shadows go through the run's DP pipeline (adaptive attacker): the same
    # curve, continued to finite epsilon
    "attack:fedscgen_membership:update_lira_adaptive_auc_pooled": (
        "coordinator",
        "membership AUC, local update (LiRA)",
        1,
    ),
    "attack:fedscgen_membership:global_lira_adaptive_auc_pooled": (
        "client",
        "membership AUC, global model (LiRA)",
        1,
    ),
    "attack:fedscgen_property:update_proportion_mae": (
        "coordinator",
        "composition from update (MAE)",
        -1,
    ),
    "attack:fedscgen_property:revealed_proportion_mae": (
        "coordinator",
        "composition from revealed values (MAE)",
        -1,
    ),
    "attack:fedscgen_revealed_values:pearson_centered": (
        "coordinator",
        "revealed M_t vs true profile (r, centred)",
        1,
    ),
}


def attack_advantage(results: pd.DataFrame) -> pd.DataFrame:
    """Per run and headline attack metric (:data:`ADVANTAGE_METRICS`): advantage over chance.

    ``advantage`` = value - chance for metrics where higher helps the attacker, chance -
    value for errors; 0 = chance. Columns ``run_id, method, variant, backend, seed,
    dp_epsilon, metric, label, advantage``.
    """
    keys = ["run_id", "method", "variant", "backend", "seed", "dp_epsilon"]
    att = results[results["panel"] == "attack"] if "panel" in results else results.iloc[:0]
    frames = []
    for metric, (observer, label, sign) in ADVANTAGE_METRICS.items():
        part = att[(att["metric"] == metric) & (att["observer"] == observer)]
        if not len(part):
            continue
        adv = sign * (part["value"].astype(float) - part["chance"].astype(float))
        frames.append(part[keys].assign(metric=metric, label=label, advantage=adv.to_numpy()))
    if not frames:
        return pd.DataFrame(columns=[*keys, "metric", "label", "advantage"])
    return pd.concat(frames, ignore_index=True)


def _eps_positions(eps: pd.Series, finite: Sequence[float]) -> np.ndarray:
    """ε on a log axis; ε = ∞ (NaN: DP off) one decade right of the largest finite ε."""
    top = max(finite) * 10 if len(finite) else 10.0
    values = _round_eps(eps.to_numpy(dtype=float))
    return np.where(np.isfinite(values), values, top)


def _round_eps(values: np.ndarray) -> np.ndarray:
    """ε to two significant digits (calibration lands just under the target: 3.9996 -> 4)."""
    out = np.array(values, dtype=float)
    ok = np.isfinite(out) & (out > 0)
    mag = 10.0 ** (np.floor(np.log10(out[ok])) - 1)
    out[ok] = np.round(out[ok] / mag) * mag
    return out


def _family_styles(families: Sequence[str]) -> dict[str, str]:
    styles = ["-o", "--s", ":^", "-.D", "-v", "--P"]
    return {f: styles[i % len(styles)] for i, f in enumerate(families)}


def _advantage_panel(ax: Any, frame: pd.DataFrame, finite: Sequence[float]) -> None:
    """Mean advantage over chance vs ε: one colour per attack metric, one style per DP family.

    Runs without DP (ε NaN) are the family's reference at the right end only when the
    family has no DP variant; a DP family's ε = ∞ point is its σ = 0 control.
    """
    frame = frame.assign(family=frame["variant"].map(dp_family))
    dp_families = sorted(set(frame.loc[frame["dp_epsilon"].notna(), "family"]))
    styles = _family_styles(dp_families)
    for k, (label, part) in enumerate(frame.groupby("label", sort=False)):
        colour = colormaps["tab10"](k)
        labelled = False
        for family in dp_families:
            sub = part[(part["family"] == family) & part["dp_epsilon"].notna()]
            if not len(sub):
                continue
            x = _eps_positions(sub["dp_epsilon"], finite)
            points = pd.DataFrame({"x": x, "y": sub["advantage"].to_numpy(float)})
            means = points.groupby("x")["y"].mean()
            ax.plot(
                means.index,
                means.to_numpy(),
                styles[family],
                ms=4,
                color=colour,
                label=None if labelled else label,
            )
            labelled = True
        nodp = part[part["dp_epsilon"].isna()]
        for _variant, sub in nodp.groupby("variant", sort=True):
            ax.axhline(float(sub["advantage"].mean()), color=colour, lw=0.7, ls=":")
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_ylabel("attack advantage\nover chance")
    ax.grid(alpha=0.3)
    if len(frame):
        key = "; ".join(f"{styles[f]}: {f}" for f in dp_families) + "; dotted: no DP"
        ax.legend(fontsize=6, title=key, title_fontsize=6)


def privacy_utility_frontier(results: pd.DataFrame, observer: str = "coordinator") -> Figure:
    """Utility and attack success versus ε, one column per method (shared ε axis).

    Top: the method's headline utility (:func:`headline_utility`); middle: the
    ``observer``'s attack success (:func:`attack_success`, cosine of the recovered update
    to the true one; 0 = chance). One curve per DP family (:func:`fedsc.results.dp_family`: the
    variants ``dp(eps=...)`` of one pipeline, dots per seed, line through the means),
    ending at ε = ∞ with the family's σ = 0 control (the DP pipeline without noise).
    Runs without DP (the plaintext and secure backends, an untrained reference) are
    dotted horizontal lines, the uncorrected input a grey dashed one (utility). With
    FedscGen attack rows a third row shows the headline attacks' advantage over chance
    (:func:`attack_advantage`). ε on the x axis is the one in each row's ``dp_epsilon``:
    the strongest observer's for utility, the observer's own for attack rows.
    """
    needed = ["method", "panel", "metric", "value", "dp_epsilon", "backend", "seed", "variant"]
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise FedscInputError(f"results lacks columns {missing} for the frontier figure.")
    methods = [m for m in dict.fromkeys(results.loc[results["panel"] == "attack", "method"])] or [
        m for m in dict.fromkeys(results["method"])
    ]
    success = attack_success(results, observer)
    advantage = attack_advantage(results)
    n_rows = 3 if len(advantage) else 2
    fig = _new_figure(max(4.2 * len(methods), 6.5), 3.0 * n_rows)
    axes = fig.subplots(n_rows, max(len(methods), 1), sharex="col", squeeze=False)
    for j, method in enumerate(methods):
        metric = headline_utility(results, method)
        util = results[(results["method"] == method) & (results["metric"] == metric)]
        base = results[
            results["run_id"].isin(util["run_id"])
            & (results["method"] != method)
            & (results["metric"] == metric)
            & (results["panel"] != "attack")
        ]
        succ = success[success["method"] == method]
        eps_all = pd.concat([util["dp_epsilon"], succ["dp_epsilon"]]).to_numpy(dtype=float)
        finite = sorted({float(e) for e in _round_eps(eps_all) if np.isfinite(e)})
        families = sorted(
            set(util.loc[util["dp_epsilon"].notna(), "variant"].map(dp_family))
            | set(succ.loc[succ["dp_epsilon"].notna(), "variant"].map(dp_family))
        )
        colours = {f: colormaps["tab10"](i) for i, f in enumerate(families)}
        for ax, frame, col, ylabel in (
            (axes[0, j], util, "value", f"utility: {metric}"),
            (axes[1, j], succ, "cosine", f"attack success ({observer}):\nupdate cosine"),
        ):
            frame = frame.assign(family=frame["variant"].map(dp_family))
            dp_rows = frame[frame["dp_epsilon"].notna()]
            for family, part in dp_rows.groupby("family", sort=True):
                x = _eps_positions(part["dp_epsilon"], finite)
                y = part[col].to_numpy(dtype=float)
                ax.scatter(x, y, s=14, alpha=0.5, color=colours.get(family))
                means = pd.DataFrame({"x": x, "y": y}).groupby("x")["y"].mean()
                has_control = bool(np.isinf(part["dp_epsilon"].astype(float)).any())
                ax.plot(
                    means.index,
                    means.to_numpy(),
                    "-o",
                    ms=4,
                    color=colours.get(family),
                    label=f"{family} (ε=∞: σ=0)" if has_control else str(family),
                )
            nodp = frame[frame["dp_epsilon"].isna()]
            for k, (variant, part) in enumerate(nodp.groupby("variant", sort=True)):
                ax.axhline(
                    float(part[col].astype(float).mean()),
                    color=colormaps["Dark2"](k),
                    lw=1.0,
                    ls=":",
                    label=f"{variant} (no DP)",
                )
            ax.set_xscale("log")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        if len(base):
            axes[0, j].axhline(
                float(base["value"].astype(float).mean()),
                color="grey",
                lw=1.0,
                ls="--",
                label="uncorrected input",
            )
        axes[1, j].axhline(0.0, color="grey", lw=0.8, ls="--")
        axes[1, j].set_ylim(-0.1, 1.05)
        axes[0, j].set_title(method)
        if n_rows == 3:
            _advantage_panel(axes[2, j], advantage[advantage["method"] == method], finite)
        bottom = axes[n_rows - 1, j]
        ticks = [*finite, max(finite) * 10 if finite else 10.0]
        bottom.set_xticks(ticks)
        bottom.set_xticklabels([f"{t:g}" for t in finite] + ["∞ (σ=0)"], rotation=45)
        bottom.minorticks_off()
        bottom.set_xlabel("ε (client- or cell-level DP)")
        if axes[0, j].get_legend_handles_labels()[0]:  # no utility rows: no legend
            axes[0, j].legend(fontsize=6)
    fig.suptitle("Privacy–utility frontier (dots: seeds; line: mean; dashed: chance)")
    return fig
