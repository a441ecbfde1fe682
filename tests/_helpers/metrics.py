"""Metric tables (``evaluate``'s tidy rows) read as ``{metric: value}``."""

from __future__ import annotations

import pandas as pd


def metric_values(df: pd.DataFrame) -> dict[str, float]:
    """``{metric: value}`` of a table with one row per metric (fails on a repeated one)."""
    return dict(zip(df["metric"], df["value"], strict=True))
