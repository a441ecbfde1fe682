"""Tidy result rows: one row per (run, metric). Every table and figure is built from them."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

#: Columns of a tidy results table, in order.
TIDY_COLUMNS: list[str] = [
    "run_id",  # hash of the run's full config
    "study",
    "dataset",
    "method",  # e.g. "scbatchprox", "fedscgen", "scgen", "pca" (uncorrected upstream)
    "variant",  # human label of the variant within the study, e.g. "crypten", "mu=0"
    "backend",  # "plaintext" | "crypten" | "none" (centralized)
    "private",  # bool: whether aggregation hid client inputs (False for debug mode)
    "seed",
    "embedding",  # which representation was evaluated, e.g. "X_pca", "X_scbatchprox"
    "panel",  # "scib" | "fedscgen" | "downstream"
    "metric",
    "value",
    "wall_time_s",
    "ledger_bytes",  # total bytes received by parties + coordinator
]


def varying_columns(
    table: pd.DataFrame, cols: Sequence[str], always: Sequence[str] = ()
) -> list[str]:
    """The columns of ``cols`` present in ``table`` that take more than one value.

    Columns in ``always`` are kept whenever present (e.g. ``method`` in every table). Used
    to label table rows and figure axes only by what differs between runs.
    """
    return [c for c in cols if c in table.columns and (c in always or table[c].nunique() > 1)]
