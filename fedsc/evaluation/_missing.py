"""Metrics that cannot be computed: NaN value plus a reason, never a silent NaN.

Panels return their tidy rows (``panel, metric, value``) and put the reasons of the rows
whose value is missing in ``frame.attrs[MISSING_ATTR]`` (metric -> reason), so the tidy
schema keeps its columns. :func:`fedsc.evaluation.evaluate` collects them per
(panel, metric) and adds a reason to every other non-finite value; the runner lists them
in ``run.json`` (``info["missing_metrics"]``) and the printed table shows "missing".

Aggregates (scIB ``bio_conservation``, ``batch_correction``, ``total``) are never
computed over partly missing metrics: an aggregate with a missing component is itself
missing, with a reason naming the missing components. (Averaging the available metrics
would silently change what the score means from one run to the next.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

MISSING_ATTR = "missing_reasons"

#: Largest coordinate magnitude the metrics accept: sums of squared coordinates over
#: typical data sizes (10^5 cells x 50 dims) overflow float32 (max 3.4e38) beyond ~1e15,
#: and a single such value dominates every distance, PCA and clustering long before.
SCALE_LIMIT = 1e15


def compute(values: dict[str, float], reasons: dict[str, str], name: str, fn: Callable) -> None:
    """``values[name] = fn()``; on an exception or a non-finite result, NaN and a reason."""
    try:
        value = float(fn())
    except Exception as exc:  # a metric that cannot be computed is reported, not fatal
        values[name] = float("nan")
        reasons[name] = f"could not be computed: {type(exc).__name__}: {exc}"
        return
    values[name] = value
    if not math.isfinite(value):
        reasons[name] = f"the computation returned {value} (numerically unstable input?)"


def aggregate(
    values: dict[str, float], reasons: dict[str, str], name: str, parts: list[str], fn: Callable
) -> None:
    """``values[name] = fn()`` when every part is present; otherwise missing with a reason."""
    missing = [p for p in parts if not math.isfinite(values.get(p, float("nan")))]
    if missing:
        values[name] = float("nan")
        reasons[name] = (
            f"aggregate not computed: its component(s) {missing} are missing "
            "(aggregates are never taken over partly missing metrics)"
        )
        return
    values[name] = float(fn())


def frame(panel: str, values: dict[str, float], order: list[str], reasons: dict[str, str]):
    """Tidy ``panel, metric, value`` rows with the reasons in ``attrs``."""
    out = pd.DataFrame({"panel": panel, "metric": order, "value": [values[m] for m in order]})
    out.attrs[MISSING_ATTR] = {m: reasons[m] for m in order if m in reasons}
    return out


def scale_problem(X: np.ndarray, cells=None) -> str | None:
    """A reason when ``X`` has coordinates too large for the metrics, else ``None``.

    ``cells`` (e.g. ``adata.obs_names``) names the offending cell in the reason.
    """
    if X.size == 0:
        return None
    absx = np.abs(X)
    flat = int(np.argmax(absx))
    top = float(absx.flat[flat])
    if not top > SCALE_LIMIT:
        return None
    row, col = np.unravel_index(flat, X.shape)
    cell = repr(str(cells[int(row)])) if cells is not None else str(int(row))
    return (
        f"the evaluated embedding has a value of magnitude {top:.3g} (cell {cell}, dim "
        f"{int(col)}), above {SCALE_LIMIT:g}: distances overflow float32 and one such value "
        "dominates every metric; check the method's output or rescale/drop that cell"
    )
