"""Statistics over tidy result tables: Mann–Whitney U per group, Cliff's δ, Benjamini–Hochberg.

Pure functions, no I/O (docs/algorithms.md#statistics). Seeds are the replicate unit: each (group, seed)
contributes exactly one value per side of a comparison.

Conventions
-----------
- Δ = mean(A) − mean(B); Cliff's δ and U are also oriented A versus B.
- The two-sided Mann–Whitney p is *exact* when the pooled sample has no ties and
  *asymptotic* (normal approximation with tie and continuity correction) when it has ties.
  The ``test`` column of :func:`compare` says which was used.
- Sensitivity rows (``<metric>_perturbation_delta``, ``fedsc.results``) are not metrics:
  :func:`compare` leaves them out of the tests and the BH family and, when the results
  hold them, adds :data:`SENSITIVITY_COLUMNS`: ``jitter`` (the largest perturbation delta
  of the group's metric over both sides' seeds) and ``within_jitter`` (``|Δ| <= jitter``
  with ``jitter > 0``: a difference a 1e-6 perturbation of the embedding alone produces).
- Two samples whose pooled values are all equal (e.g. a metric saturated at 1.0 on every
  seed) get U = n_a·n_b/2 and p = 1.0: no evidence of a difference. They stay in the BH
  family. NaN p-values (a side with no finite value) are left out of the BH family and keep
  q = NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _sps

from fedsc.errors import FedscInputError
from fedsc.results import split_sensitivity

__all__ = [
    "COMPARE_COLUMNS",
    "SENSITIVITY_COLUMNS",
    "SignificanceUnreachableWarning",
    "bh_adjust",
    "cliffs_delta",
    "compare",
    "mann_whitney",
    "mann_whitney_method",
    "min_attainable_p",
    "min_seeds_for_alpha",
]

#: Columns that :func:`compare` adds after the group columns, in order.
COMPARE_COLUMNS: list[str] = [
    "a",
    "b",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "sd_a",
    "sd_b",
    "delta_mean",
    "delta_median",
    "cliffs_delta",
    "U",
    "p",
    "test",
    "q",
    "significant",
    "min_attainable_p",
    "unreachable",
]

#: Columns :func:`compare` appends when the results hold sensitivity rows.
SENSITIVITY_COLUMNS: list[str] = ["jitter", "within_jitter"]


class SignificanceUnreachableWarning(UserWarning):
    """The number of seeds per side makes p < alpha impossible, whatever the data."""


def _as_1d(x: Iterable[float], name: str) -> np.ndarray:
    arr = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float).ravel()
    if arr.size == 0:
        raise FedscInputError(f"sample {name!r} is empty; pass at least one value per side.")
    if not np.all(np.isfinite(arr)):
        raise FedscInputError(
            f"sample {name!r} contains NaN or infinite values {arr.tolist()}; "
            "drop them before testing."
        )
    return arr


def mann_whitney_method(a: Iterable[float], b: Iterable[float]) -> str:
    """Name the p-value method :func:`mann_whitney` uses for these samples.

    Returns
    -------
    ``"exact"`` when the pooled values have no ties, ``"asymptotic"`` when they do, and
    ``"constant"`` when every pooled value is equal (p is then set to 1).
    """
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    pooled = np.concatenate([x, y])
    n_unique = np.unique(pooled).size
    if n_unique == 1:
        return "constant"
    return "exact" if n_unique == pooled.size else "asymptotic"


def mann_whitney(a: Iterable[float], b: Iterable[float]) -> tuple[float, float]:
    """Two-sided Mann–Whitney U test of A versus B.

    Parameters
    ----------
    a, b
        Finite per-seed values of the two sides.

    Returns
    -------
    (U, p)
        U is the statistic of ``a`` (number of pairs with a > b, ties counting ½); p is
        two-sided: exact without ties, asymptotic (tie- and continuity-corrected) with
        ties, and 1.0 when all pooled values are equal. See :func:`mann_whitney_method`.
    """
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    method = mann_whitney_method(x, y)
    if method == "constant":
        return float(x.size * y.size / 2.0), 1.0
    res = _sps.mannwhitneyu(x, y, alternative="two-sided", method=method)
    return float(res.statistic), float(min(1.0, res.pvalue))


def min_attainable_p(n_a: int, n_b: int) -> float:
    """Smallest attainable two-sided exact Mann–Whitney p: 2 / C(n_a + n_b, n_a), at most 1.

    This is the bound without ties (ties only make it larger). n = 3 per side → 0.1,
    n = 5 → 0.0079, n = 10 → 1.1e-5 (docs/algorithms.md#statistics).
    """
    if int(n_a) != n_a or int(n_b) != n_b or n_a < 0 or n_b < 0:
        raise FedscInputError(
            f"sample sizes must be non-negative integers, got n_a={n_a!r}, n_b={n_b!r}."
        )
    return min(1.0, 2.0 / math.comb(int(n_a) + int(n_b), int(n_a)))


def min_seeds_for_alpha(alpha: float = 0.05) -> int:
    """Smallest equal n per side for which an exact two-sided p < ``alpha`` is attainable."""
    if not 0.0 < alpha <= 1.0:
        raise FedscInputError(f"alpha must lie in (0, 1], got {alpha!r}.")
    n = 1
    while min_attainable_p(n, n) >= alpha:
        n += 1
    return n


def cliffs_delta(a: Iterable[float], b: Iterable[float]) -> float:
    """Cliff's δ = (#{a_i > b_j} − #{a_i < b_j}) / (n_a·n_b), in [−1, 1]; positive when A > B."""
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    diff = x[:, None] - y[None, :]
    return float((np.sum(diff > 0) - np.sum(diff < 0)) / diff.size)


def bh_adjust(pvalues: Iterable[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q), in the input order.

    NaN entries are not part of the family (they do not count towards m) and stay NaN.
    Uses :func:`scipy.stats.false_discovery_control` (method ``"bh"``).
    """
    p = np.asarray(list(pvalues) if not isinstance(pvalues, np.ndarray) else pvalues, dtype=float)
    p = p.ravel()
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise FedscInputError(
            f"p-values must lie in [0, 1] (NaN allowed), got {p[ok][(p[ok] < 0) | (p[ok] > 1)]}."
        )
    if ok.any():
        q[ok] = _sps.false_discovery_control(p[ok], method="bh")
    return q


# --------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------


def _selector_mask(results: pd.DataFrame, sel: Mapping[str, Any], name: str) -> pd.Series:
    if not isinstance(sel, Mapping) or not sel:
        raise FedscInputError(
            f"selector {name} must be a non-empty dict of column -> value, got {sel!r}; "
            "e.g. {'variant': 'crypten'}."
        )
    mask = pd.Series(True, index=results.index)
    for col, val in sel.items():
        if col not in results.columns:
            raise FedscInputError(
                f"selector {name} names column {col!r}, which the results table lacks; "
                f"columns are {list(results.columns)}."
            )
        if isinstance(val, list | tuple | set | frozenset):
            mask &= results[col].isin(list(val))
        else:
            mask &= results[col] == val
    return mask


def _describe(sel: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sel.items())


def _check_duplicates(side: pd.DataFrame, keys: list[str], name: str) -> None:
    dup = side.duplicated(subset=[*keys, "seed"], keep=False)
    if dup.any():
        bad = side.loc[dup, [*keys, "seed"]].drop_duplicates().head(5)
        listing = "; ".join(
            ", ".join(f"{k}={row[k]}" for k in [*keys, "seed"]) for _, row in bad.iterrows()
        )
        raise FedscInputError(
            f"side {name} has more than one value per (group, seed) for {int(dup.sum())} rows, "
            f"e.g. {listing}. Add the column that distinguishes them to `by` "
            "(e.g. 'embedding' or 'panel') or narrow the selector."
        )


def _with_jitter(
    out: pd.DataFrame,
    sensitivity: pd.DataFrame,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    keys: list[str],
) -> pd.DataFrame:
    """``out`` plus :data:`SENSITIVITY_COLUMNS` from the sensitivity rows of both sides."""
    selected = _selector_mask(sensitivity, a, "a") | _selector_mask(sensitivity, b, "b")
    jitter = sensitivity[selected].groupby(keys, dropna=False, sort=False)["value"].max()
    out = out.copy()
    if len(keys) == 1:
        out["jitter"] = out[keys[0]].map(jitter).astype(float)
    else:
        idx = pd.MultiIndex.from_frame(out[keys])
        out["jitter"] = jitter.reindex(idx).to_numpy(dtype=float)
    out["within_jitter"] = (
        (out["jitter"] > 0) & (out["delta_mean"].abs() <= out["jitter"])
    ).astype(bool)
    return out


def compare(
    results: pd.DataFrame,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    by: Sequence[str] = ("dataset", "method", "metric"),
    family: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Compare side A with side B per group: Mann–Whitney U over seeds, then BH.

    Parameters
    ----------
    results
        Tidy results (``fedsc.results.TIDY_COLUMNS``; needs ``seed``, ``value`` and the
        ``by`` and selector columns).
    a, b
        Selectors ``{column: value}`` (a value may be a list: any of them), e.g.
        ``{"variant": "crypten"}`` versus ``{"variant": "plaintext"}``.
    by
        Group columns. Columns used by either selector are dropped from it, so that A and B
        rows pair up; ``observer`` is added when the selected rows name observers (attack
        and DP-audit rows, one per observer).
    family
        BH family: ``None`` adjusts over the whole table; column names (a subset of the
        effective ``by``) adjust separately per value of those columns.
    alpha
        Significance level for ``significant`` (q < alpha) and the reachability check.

    Returns
    -------
    One row per group present on both sides: the group columns, then ``COMPARE_COLUMNS``,
    then, if ``results`` holds sensitivity rows and ``metric`` is a group column,
    ``SENSITIVITY_COLUMNS`` (sensitivity rows are never compared themselves). Warns
    :class:`SignificanceUnreachableWarning` when the seeds per side make q < alpha
    impossible in some group, and ``UserWarning`` for groups on one side only and for
    non-finite values dropped.
    """
    if not isinstance(results, pd.DataFrame):
        raise FedscInputError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
    if not 0.0 < alpha < 1.0:
        raise FedscInputError(f"alpha must lie in (0, 1), got {alpha!r}.")
    if isinstance(by, str):
        by = (by,)
    missing = [c for c in [*by, "seed", "value"] if c not in results.columns]
    if missing:
        raise FedscInputError(
            f"results lacks columns {missing}; a tidy table has {list(results.columns)} "
            "— pass `by` with existing columns."
        )
    per_observer = "observer" in results.columns and bool(results["observer"].notna().any())
    if per_observer:  # a group key: no observer is "" while grouping (NaN never pairs)
        results = results.assign(observer=results["observer"].astype(object).fillna(""))
    results, sensitivity = split_sensitivity(results)  # jitter, not metrics (module doc)
    mask_a = _selector_mask(results, a, "a")
    mask_b = _selector_mask(results, b, "b")
    overlap = mask_a & mask_b
    if overlap.any():
        raise FedscInputError(
            f"selectors a={dict(a)} and b={dict(b)} both match {int(overlap.sum())} rows; "
            "make them disjoint."
        )
    if not mask_a.any() or not mask_b.any():
        empty = "a" if not mask_a.any() else "b"
        sel = a if empty == "a" else b
        raise FedscInputError(f"selector {empty}={dict(sel)} matches no rows of the results table.")
    keys = [c for c in by if c not in a and c not in b]
    if per_observer and "observer" not in keys + list(a) + list(b):
        # attack and audit rows come one per observer (coordinator, output, ...): they are
        # compared per observer, never mixed (utility rows: no observer, one group)
        keys.append("observer")
    if family is None:
        family_cols: list[str] = []
    else:
        family_cols = [family] if isinstance(family, str) else list(family)
        bad = [c for c in family_cols if c not in keys]
        if bad:
            raise FedscInputError(
                f"family columns {bad} are not group columns; choose from {keys}."
            )

    side_a = results.loc[mask_a, [*keys, "seed", "value"]]
    side_b = results.loc[mask_b, [*keys, "seed", "value"]]
    _check_duplicates(side_a, keys, f"a ({_describe(a)})")
    _check_duplicates(side_b, keys, f"b ({_describe(b)})")

    def groups(side: pd.DataFrame) -> dict[tuple, np.ndarray]:
        if not keys:
            return {(): side["value"].to_numpy(dtype=float)}
        out = {}
        for key, df in side.groupby(keys, dropna=False, sort=True):
            out[key if isinstance(key, tuple) else (key,)] = df["value"].to_numpy(dtype=float)
        return out

    ga, gb = groups(side_a), groups(side_b)
    only = sorted(set(ga) ^ set(gb), key=str)
    if only:
        warnings.warn(
            f"{len(only)} group(s) of {keys} appear on one side only and are skipped, e.g. "
            f"{only[:3]}; check that both selectors cover the same datasets/metrics.",
            UserWarning,
            stacklevel=2,
        )
    rows: list[dict[Hashable, Any]] = []
    dropped: list[tuple] = []
    for key in sorted(set(ga) & set(gb), key=lambda k: tuple(str(v) for v in k)):
        xa, xb = ga[key], gb[key]
        if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
            dropped.append(key)
            xa, xb = xa[np.isfinite(xa)], xb[np.isfinite(xb)]
        row: dict[Hashable, Any] = dict(zip(keys, key, strict=True))
        row.update(a=_describe(a), b=_describe(b), n_a=xa.size, n_b=xb.size)
        if xa.size and xb.size:
            U, p = mann_whitney(xa, xb)
            row.update(
                mean_a=xa.mean(),
                mean_b=xb.mean(),
                sd_a=xa.std(ddof=1) if xa.size > 1 else np.nan,
                sd_b=xb.std(ddof=1) if xb.size > 1 else np.nan,
                delta_mean=xa.mean() - xb.mean(),
                delta_median=float(np.median(xa) - np.median(xb)),
                cliffs_delta=cliffs_delta(xa, xb),
                U=U,
                p=p,
                test=mann_whitney_method(xa, xb),
            )
        else:
            row.update(
                {
                    c: np.nan
                    for c in (
                        "mean_a mean_b sd_a sd_b delta_mean delta_median cliffs_delta U p".split()
                    )
                },
                test="none",
            )
        row["min_attainable_p"] = min_attainable_p(xa.size, xb.size)
        rows.append(row)
    if dropped:
        warnings.warn(
            f"non-finite values dropped in {len(dropped)} group(s) of {keys}, e.g. "
            f"{dropped[:3]}; n_a/n_b count the finite values only.",
            UserWarning,
            stacklevel=2,
        )
    out = pd.DataFrame(rows, columns=[*keys, *[c for c in COMPARE_COLUMNS if c != "q"]])
    if out.empty:
        out["q"] = pd.Series(dtype=float)
    elif family_cols:
        out["q"] = np.nan
        for _, idx in out.groupby(family_cols, dropna=False, sort=False).groups.items():
            out.loc[idx, "q"] = bh_adjust(out.loc[idx, "p"].to_numpy(dtype=float))
    else:
        out["q"] = bh_adjust(out["p"].to_numpy(dtype=float))
    out["significant"] = (out["q"] < alpha).astype(bool)
    out["unreachable"] = (out["min_attainable_p"] >= alpha).astype(bool)
    out = out[[*keys, *COMPARE_COLUMNS]]
    if len(sensitivity) and "metric" in keys:
        out = _with_jitter(out, sensitivity, a, b, keys)
    if "observer" in keys and per_observer:
        out["observer"] = out["observer"].replace({"": None})
    n_unreach = int(out["unreachable"].sum())
    if n_unreach:
        pairs = out.loc[out["unreachable"], ["n_a", "n_b"]].to_numpy(dtype=int)
        sizes = sorted({(int(a), int(b)) for a, b in pairs})
        best = float(out.loc[out["unreachable"], "min_attainable_p"].min())
        warnings.warn(
            f"significance at alpha={alpha} is unreachable in {n_unreach} of {len(out)} "
            f"comparison(s) with (n_a, n_b) seeds in {sizes}: the smallest attainable "
            f"two-sided exact p there is at least {best:.3g}. Run at least "
            f"{min_seeds_for_alpha(alpha)} seeds per side.",
            SignificanceUnreachableWarning,
            stacklevel=2,
        )
    return out
