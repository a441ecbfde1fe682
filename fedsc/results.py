"""Tidy result rows: one row per (run, metric). Every table and figure is built from them.

Utility rows (``panel`` = a metric panel) and attack rows (``panel`` = ``"attack"``) share
one schema. An attack row is one (attack, observer, metric) of one run, summarised over
target clients and rounds (median): ``method`` is the attacked method, ``metric`` is
``attack:<attack>:<metric>`` (e.g. ``attack:scbatchprox_rows:update_relative_error``),
``observer`` the observer whose view was attacked (``coordinator``, ``party``,
``colluding_parties``, ``client``, ``output_reader``), ``value`` the attack's median over
clients and rounds and ``chance`` the same metric for the best guess without the attack
(:mod:`fedsc.privacy.attacks`). Utility rows have ``observer`` and ``chance`` empty.

Privacy labels (``fedsc.privacy.in_run``): ``privacy`` is a per-observer description
derived from the attacks run and the ledger (e.g. ``"coordinator: recovers client
updates (update_recovery, rel. err 0)"``; ``"centralized: all cells are pooled in one
place"``; ``"n/a (uncorrected input)"``); ``private`` is derived from it: ``True`` when no
observer other than a client itself recovers client data in the attacks run, ``False``
when one does, NA when no attack ran or the row is not a federated computation.
``dp_epsilon``/``dp_delta``: the run's (ε, δ) differential-privacy guarantee, NaN when DP
is off (ε = ∞).

Sensitivity rows (``fedsc.evaluation.evaluate(..., sensitivity=True)``): ``metric`` is
``<metric>_perturbation_delta`` (:func:`sensitivity_metric`), ``panel`` that of the
metric, ``value`` the metric's ``|metric(X + 1e-6 std(X) N(0, 1)) - metric(X)|`` on the
run's embedding (its jitter; only for metrics that can jump: clustering or hard k-NN
assignments). They are not metrics of their own: :func:`fedsc.stats.compare` and the report
keep them out of their statistics and use them to flag differences within the jitter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Columns of a tidy results table, in order.
TIDY_COLUMNS: list[str] = [
    "run_id",  # hash of the run's full config
    "study",
    "dataset",
    "method",  # e.g. "scbatchprox", "fedscgen", "scgen", "pca" (uncorrected upstream)
    "variant",  # human label of the variant within the study, e.g. "crypten", "mu=0"
    "backend",  # "plaintext" | "crypten" | "none" (centralized)
    "private",  # True/False/NA, derived from the attacks (see the module docstring)
    "privacy",  # per-observer privacy label, derived from attacks and ledger
    "dp_epsilon",  # ε of the run's DP guarantee; NaN when DP is off (ε = ∞)
    "dp_delta",  # δ of the run's DP guarantee; NaN when DP is off
    "seed",
    "embedding",  # which representation was evaluated, e.g. "X_pca", "X_scbatchprox"
    "panel",  # "scib" | "fedscgen" | "downstream"
    "metric",
    "value",
    "wall_time_s",
    "ledger_bytes",  # total bytes received by parties + coordinator
    "observer",  # attack rows: the observer whose view was attacked; else empty
    "chance",  # attack rows: the metric for the best guess without the attack; else NaN
]

#: ``panel`` of attack rows.
ATTACK_PANEL = "attack"


def varying_columns(
    table: pd.DataFrame, cols: Sequence[str], always: Sequence[str] = ()
) -> list[str]:
    """The columns of ``cols`` present in ``table`` that take more than one value.

    Columns in ``always`` are kept whenever present (e.g. ``method`` in every table). Used
    to label table rows and figure axes only by what differs between runs.
    """
    return [c for c in cols if c in table.columns and (c in always or table[c].nunique() > 1)]


#: Suffix of a sensitivity row's ``metric`` (see the module docstring).
SENSITIVITY_SUFFIX = "_perturbation_delta"


def sensitivity_metric(metric: str) -> str:
    """Name of the sensitivity row of ``metric``: ``<metric>_perturbation_delta``."""
    return f"{metric}{SENSITIVITY_SUFFIX}"


def sensitivity_mask(table: pd.DataFrame) -> np.ndarray:
    """Boolean array: which rows of ``table`` are sensitivity rows (all False without ``metric``)."""
    if "metric" not in table.columns:
        return np.zeros(len(table), dtype=bool)
    return table["metric"].astype(str).str.endswith(SENSITIVITY_SUFFIX).to_numpy(dtype=bool)


def split_sensitivity(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(metric rows, sensitivity rows)``; the latter with ``metric`` = the metric they measure.

    Returns
    -------
    The rows that are not sensitivity rows (unchanged), and the sensitivity rows with the
    suffix stripped from ``metric`` so that they pair with their metric's rows.
    """
    mask = sensitivity_mask(table)
    if not mask.any():
        return table, table.iloc[0:0]
    sens = table.loc[mask].copy()
    sens["metric"] = sens["metric"].astype(str).str.removesuffix(SENSITIVITY_SUFFIX)
    return table.loc[~mask], sens


def dp_family(variant: str) -> str:
    """A variant's DP family: its name without a trailing ``(eps=...)``/``(sigma=...)``.

    ``dp(eps=16)``, ``dp(eps=64)`` and the control ``dp(sigma=0)`` are one family ``dp``,
    drawn as one curve over ε that ends at ε = ∞ with its σ = 0 control.
    """
    return re.sub(r"\((eps|epsilon|sigma)=[^)]*\)$", "", str(variant)) or str(variant)
