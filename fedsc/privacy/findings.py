"""The privacy findings of a study in one table: what each protection buys, at what cost.

One row per method × variant × backend × observer, from tidy results
(:data:`fedsc.results.TIDY_COLUMNS`) of several seeds:

- the strongest attack against that observer (largest gain over chance relative to its
  tolerance, :mod:`fedsc.privacy.verdict`), its mean value over seeds with a 95 % bootstrap
  interval over the seeds, its chance level, and the verdict (``leaks`` / ``private`` /
  ``inconclusive`` over every attack metric of the observer);
- ε claimed against that observer (the attack rows' ``dp_epsilon``: per observer where the
  run accounted it so) and the audited lower bound where the run audited it (metric
  ``dp:audited_epsilon``); ∞ = no DP guarantee, ``–`` = no DP at all;
- the utility change of the method's headline metric (:func:`fedsc.plots.headline_utility`)
  against the uncorrected input of the same runs, and against the σ = 0 control of the
  variant's own DP pipeline (same method, backend and DP family
  :func:`fedsc.results.dp_family`, ``dp_epsilon`` = ∞: the cost of the noise alone) where
  the study has one. An observer with only an audit (no attack applies) reads
  ``not attacked``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from fedsc.privacy.verdict import MetricVerdict, metric_verdict
from fedsc.results import dp_family

__all__ = ["AUDITED_METRIC", "privacy_findings"]

#: Tidy metric of a run's audited lower bound on ε (an attack row per audited observer).
AUDITED_METRIC = "attack:dp_audit:audited_epsilon"
#: ... and the ε the accountant claims for the audit's own releases (its δ, canaries).
AUDIT_CLAIM_METRIC = "attack:dp_audit:audit_claimed_epsilon"

_KEYS = ["method", "variant", "backend"]


def _strength(v: MetricVerdict) -> float:
    return v.gain / v.tolerance


def _eps(values: pd.Series) -> float:
    """Mean ε over seeds (NaN: no DP; ∞ stays ∞)."""
    vals = values.astype(float).dropna()
    if not len(vals):
        return math.nan
    return math.inf if np.isinf(vals).any() else float(vals.mean())


def _method_rows(results: pd.DataFrame) -> pd.Series:
    """True for the method's own utility rows (not attack, DP or uncorrected-input rows)."""
    from fedsc.methods import REGISTRY

    panel = results["panel"].astype(str)
    return results["method"].isin(list(REGISTRY)) & ~panel.isin(["attack", "dp"])


def _utility(results: pd.DataFrame) -> pd.DataFrame:
    """Per run: the headline metric, the uncorrected input's value of it, their difference."""
    from fedsc.plots import headline_utility

    own = results[_method_rows(results)]
    frames = []
    for method, part in own.groupby("method", sort=False):
        metric = headline_utility(results, str(method))
        if metric is None:
            continue
        runs = part[part["metric"] == metric]
        base = results[
            results["run_id"].isin(runs["run_id"])
            & ~_method_rows(results)
            & (results["panel"] != "attack")
            & (results["metric"] == metric)
        ]
        b = base.groupby("run_id")["value"].first().rename("uncorrected")
        m = runs.groupby([*_KEYS, "run_id", "seed", "dp_epsilon"], dropna=False)["value"].first()
        frame = m.rename("utility").reset_index().merge(b.reset_index(), on="run_id", how="left")
        frames.append(frame.assign(utility_metric=metric))
    if not frames:
        return pd.DataFrame(columns=[*_KEYS, "run_id", "seed", "dp_epsilon", "utility"])
    return pd.concat(frames, ignore_index=True)


def privacy_findings(results: pd.DataFrame) -> pd.DataFrame:
    """The lead table (module docstring); empty without attack rows."""
    if "panel" not in results.columns or "observer" not in results.columns:
        return pd.DataFrame()
    att = results[results["panel"] == "attack"]
    if not len(att):
        return pd.DataFrame()
    util = _utility(results)
    audited = results[results["metric"] == AUDITED_METRIC]
    audit_claims = results[results["metric"] == AUDIT_CLAIM_METRIC]
    out: list[dict[str, Any]] = []
    for key, part in att.groupby([*_KEYS, "observer"], sort=True, dropna=False):
        method, variant, backend, observer = key
        verdicts = _verdicts(part, str(observer))
        audited_here = _select(audited, method, variant, backend, observer)
        if not verdicts and not len(audited_here):
            continue
        leaks = [v for v in verdicts if v.verdict == "beats chance"]
        open_ = [v for v in verdicts if v.verdict == "inconclusive"]
        pool = leaks or open_ or verdicts
        top = max(pool, key=_strength) if pool else None
        status = (
            "leaks"
            if leaks
            else ("inconclusive" if open_ else ("private" if verdicts else "not attacked"))
        )
        sel = (
            (util["method"] == method) & (util["variant"] == variant) & (util["backend"] == backend)
        )
        u = util[sel] if len(util) else util
        row: dict[str, Any] = {
            "method": method,
            "variant": variant,
            "backend": backend,
            "observer": observer,
            "verdict": status,
            "strongest attack": "–" if top is None else f"{top.attack}:{top.metric}",
            "success": math.nan if top is None else top.value,
            "interval": (math.nan, math.nan) if top is None else (top.value_low, top.value_high),
            "chance": math.nan if top is None else top.chance,
            "seeds": int(part["seed"].nunique()),
            "eps_claimed": _eps(part["dp_epsilon"]),
            "eps_audited": _eps(audited_here),
            "eps_audit_claim": _eps(_select(audit_claims, method, variant, backend, observer)),
            "utility_metric": u["utility_metric"].iloc[0] if len(u) else None,
            "utility": float(u["utility"].mean()) if len(u) else math.nan,
            "delta_uncorrected": float((u["utility"] - u["uncorrected"]).mean())
            if len(u)
            else math.nan,
        }
        # the control of this variant's own DP pipeline: same method, backend and DP
        # family (dp(eps=4) -> dp(sigma=0)); runs without DP have none
        family = dp_family(str(variant))
        control = util[
            (util["method"] == method)
            & (util["backend"] == backend)
            & np.isinf(util["dp_epsilon"].astype(float))
            & (util["variant"].map(lambda v: dp_family(str(v))) == family)
        ]
        is_dp = bool(np.isfinite(u["dp_epsilon"].astype(float)).any()) if len(u) else False
        row["delta_control"] = (
            row["utility"] - float(control["utility"].mean())
            if len(control) and is_dp
            else math.nan
        )
        out.append(row)
    return pd.DataFrame(out)


def _select(
    rows: pd.DataFrame, method: Any, variant: Any, backend: Any, observer: Any
) -> pd.Series:
    """The values of one method, variant, backend and observer."""
    sel = (
        (rows["method"] == method)
        & (rows["variant"] == variant)
        & (rows["backend"] == backend)
        & (rows["observer"] == observer)
    )
    return rows.loc[sel, "value"]


def _verdicts(part: pd.DataFrame, observer: str) -> list[MetricVerdict]:
    """Each attack metric of one observer judged over the seeds (one value per run)."""
    out = []
    for metric, g in part.groupby("metric", sort=True):
        name = str(metric).removeprefix("attack:")
        attack, _, short = name.rpartition(":")
        per_run = g.groupby("run_id")[["value", "chance"]].median()
        v = metric_verdict(
            attack, observer, short, per_run["value"].tolist(), per_run["chance"].tolist()
        )
        if v is not None:
            out.append(v)
    return out
