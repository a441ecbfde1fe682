"""Does an attack beat chance? One rule for every attack row, and the observer's verdict.

Every attack row carries a ``value`` and the ``chance`` level an attacker without the
observer's view reaches (a guess from public information). :func:`leak_direction` says
which way is leakage for a metric (higher AUC, accuracy, correlation, cosine, TPR; lower
error), :func:`advantage` turns a row into the attacker's gain over chance (absolute for
bounded scores, relative to the chance error for errors), and :func:`metric_verdict`
judges the gain with an interval:

- ``"beats chance"``: the interval's lower end is above 0 *and* the gain exceeds the
  metric family's tolerance (:data:`TOLERANCE`: the smallest gain worth reporting);
- ``"at chance"``: the interval's upper end is below the tolerance;
- ``"inconclusive"``: neither (too few targets or seeds to tell).

The interval is a 95 % bootstrap interval of the mean gain over the values given: inside a
run, the per-target (client × round) values of one seed; across a sweep, the per-seed
values (:func:`fedsc.report` reads the seeds). A single value has a point interval.

:func:`observer_verdict` combines an observer's metrics: it *leaks* when any attack beats
chance, is *private against this observer* only when every attack is at chance, and is
*inconclusive* otherwise, so a run is never called private because its attacks were too
weak to tell. Metrics without a chance level (``chance`` NaN, or listed in
:data:`NO_CHANCE`: magnitudes, estimates, the intended output's similarity to a client's
update) are reported but never judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "AT_CHANCE",
    "BEATS",
    "INCONCLUSIVE",
    "NO_CHANCE",
    "TOLERANCE",
    "MetricVerdict",
    "ObserverVerdict",
    "advantage",
    "judge_rows",
    "leak_direction",
    "metric_verdict",
    "observer_verdict",
]

BEATS = "beats chance"
AT_CHANCE = "at chance"
INCONCLUSIVE = "inconclusive"

#: Metrics that are not attack successes (no meaningful chance level): magnitudes,
#: estimates, and the aggregate's own similarity to a client's update (the intended output).
NO_CHANCE: tuple[str, ...] = (
    "update_norm",
    "estimated_weight",
    "weights_known",
    "fit_rms",
    "mean_update_relative_error",
    "mean_update_cosine",
    "audited_epsilon",  # the DP audit's lower bound (canaries, not this run's data)
    "audit_claimed_epsilon",
)

#: Smallest gain over chance worth calling a leak, per metric family (first match wins).
TOLERANCE: tuple[tuple[str, float], ...] = (
    ("auc", 0.05),
    ("tpr@", 0.05),
    ("accuracy", 0.1),
    ("correct", 0.1),
    ("cosine", 0.1),
    ("correlation", 0.1),
    ("pearson", 0.1),
    ("error", 0.1),  # relative: 10 % below the chance error
    ("mae", 0.1),
)
_DEFAULT_TOLERANCE = 0.1
_LOWER_IS_LEAK = ("error", "mae", "rms")


def leak_direction(metric: str) -> int:
    """+1 if a higher value is more leakage, -1 if lower is, 0 if the metric is not judged."""
    name = metric.rsplit(":", 1)[-1]
    if name in NO_CHANCE:
        return 0
    return -1 if any(k in name for k in _LOWER_IS_LEAK) else 1


def _tolerance(metric: str) -> float:
    name = metric.rsplit(":", 1)[-1]
    return next((tol for key, tol in TOLERANCE if key in name), _DEFAULT_TOLERANCE)


def advantage(metric: str, value: float, chance: float) -> float:
    """The attacker's gain over chance (NaN where the metric has no chance level).

    Scores (AUC, accuracy, correlation): ``value − chance``. Errors: the relative
    reduction of the chance error, ``(chance − value) / chance`` (1: exact recovery), or
    ``−value`` when the chance error is 0.
    """
    d = leak_direction(metric)
    if d == 0 or not (math.isfinite(value) and math.isfinite(chance)):
        return math.nan
    if d > 0:
        return float(value - chance)
    if chance > 0:
        return float((chance - value) / chance)
    return float(-value)


def _interval(gains: np.ndarray, seed: int = 0, n_boot: int = 2000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean (a point for one value).

    The bootstrap's generator is fixed: it is a statistic of published values, not noise.
    """
    if len(gains) == 1:
        return float(gains[0]), float(gains[0])
    rng = np.random.default_rng(seed)
    means = rng.choice(gains, size=(n_boot, len(gains)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


@dataclass(frozen=True)
class MetricVerdict:
    """One attack metric judged against chance (see the module docstring)."""

    attack: str
    observer: str
    metric: str
    value: float
    chance: float
    gain: float
    low: float
    high: float
    tolerance: float
    n: int
    verdict: str
    value_low: float = math.nan
    value_high: float = math.nan

    def describe(self) -> str:
        """``attack:metric value (chance c)``, short enough for a label."""
        return f"{self.attack}:{self.metric} {self.value:.3g} (chance {self.chance:.3g})"


def metric_verdict(
    attack: str,
    observer: str,
    metric: str,
    values: Sequence[float],
    chances: Sequence[float],
) -> MetricVerdict | None:
    """Judge one metric from its values (per target or per seed); ``None`` if not judged."""
    tol = _tolerance(metric)
    gains = np.array(
        [advantage(metric, float(v), float(c)) for v, c in zip(values, chances, strict=True)]
    )
    gains = gains[np.isfinite(gains)]
    if not len(gains):
        return None
    low, high = _interval(gains)
    raw = np.asarray(values, dtype=float)
    value_low, value_high = (
        _interval(raw[np.isfinite(raw)])
        if np.isfinite(raw).any()
        else (
            math.nan,
            math.nan,
        )
    )
    gain = float(gains.mean())
    if low > 0 and gain > tol:
        verdict = BEATS
    elif high < tol:
        verdict = AT_CHANCE
    else:
        verdict = INCONCLUSIVE
    return MetricVerdict(
        attack,
        observer,
        metric,
        float(np.median(np.asarray(values, dtype=float))),
        float(np.nanmedian(np.asarray(chances, dtype=float))),
        gain,
        low,
        high,
        tol,
        len(gains),
        verdict,
        value_low,
        value_high,
    )


def judge_rows(
    rows: pd.DataFrame, by: Sequence[str] = ("attack", "observer", "metric")
) -> list[MetricVerdict]:
    """Judge every (attack, observer, metric) group of attack rows (``value``, ``chance``)."""
    out: list[MetricVerdict] = []
    if not len(rows):
        return out
    for key, g in rows.groupby(list(by), sort=True):
        attack, observer, metric = (str(k) for k in key)
        v = metric_verdict(
            attack,
            observer,
            metric,
            g["value"].astype(float).tolist(),
            g["chance"].astype(float).tolist(),
        )
        if v is not None:
            out.append(v)
    return out


@dataclass(frozen=True)
class ObserverVerdict:
    """What the attack suite shows about one observer."""

    observer: str
    status: str  # "leaks", "private", "inconclusive"
    strongest: MetricVerdict | None
    n_judged: int

    @property
    def private(self) -> bool | None:
        """True only when every attack is at chance; False when one beats it."""
        return {"leaks": False, "private": True}.get(self.status)

    def describe(self) -> str:
        """One clause for the run's label."""
        if self.status == "leaks":
            assert self.strongest is not None
            return f"{self.observer}: leaks ({self.strongest.describe()})"
        if self.status == "private":
            return f"{self.observer}: every attack at chance ({self.n_judged} metrics)"
        what = "" if self.strongest is None else f"; e.g. {self.strongest.describe()}"
        return f"{self.observer}: inconclusive ({self.n_judged} metrics{what})"


def observer_verdict(observer: str, verdicts: Iterable[MetricVerdict]) -> ObserverVerdict | None:
    """Combine one observer's metric verdicts (``None`` if no metric was judged)."""
    mine = [v for v in verdicts if v.observer == observer]
    if not mine:
        return None

    def strength(v: MetricVerdict) -> float:
        return v.gain / v.tolerance

    leaks = [v for v in mine if v.verdict == BEATS]
    if leaks:
        return ObserverVerdict(observer, "leaks", max(leaks, key=strength), len(mine))
    open_ = [v for v in mine if v.verdict == INCONCLUSIVE]
    if open_:
        return ObserverVerdict(observer, "inconclusive", max(open_, key=strength), len(mine))
    return ObserverVerdict(observer, "private", max(mine, key=strength), len(mine))
