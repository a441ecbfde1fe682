"""Update recovery: each client's model update as an observer can estimate it (any method)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedsc.privacy.attacks import COLUMNS, Truth
from fedsc.privacy.views import ObserverView

__all__ = ["update_recovery"]


def update_recovery(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    """Any method: each client's model update as the observer can estimate it.

    For every state aggregation (a ``weighted_mean``/``sum`` with a broadcast reference,
    not the metrics), the estimate of client c's update ``x_c - reference`` is its model
    as the view holds it in the clear (plaintext coordinator), i.e. what the observer
    computes from the shared contribution (:mod:`fedsc.privacy.views`: under the
    ``gaussian`` mechanism the client's clipped and noised model, the division by its
    public weight undone): metrics ``update_relative_error`` (chance 1: guessing no
    update) and ``update_cosine`` (chance 0), scored against the true local update. A view
    without clear contributions (a secure backend's coordinator, a client) gets the
    released aggregate's update (after the ``gaussian`` mechanism's rescale), the
    federation's mean update, scored the same way as
    ``mean_update_relative_error``/``mean_update_cosine``: how close the intended output
    already is to each client's update (not a client-specific recovery, so it does not
    count as one in the labels). A client's own update is skipped in a client view.
    """
    rows: list[dict[str, Any]] = []
    if truth is None or truth.record is None:
        return pd.DataFrame(rows, columns=COLUMNS)
    record = truth.record
    for o in view.operations:
        if o.op not in ("weighted_mean", "sum") or o.tag == "metrics" or o.reference is None:
            continue
        ref = np.asarray(o.reference, dtype=np.float64)
        true_all = record.local_contributions(o.index)
        for c in range(o.n_clients):
            if view.observer == "client" and c == view.client:
                continue
            own = None if o.contributions is None else o.contributions[c]
            if own is not None and np.isfinite(own).all():
                est, prefix = np.asarray(own, dtype=np.float64) - ref, "update"
            elif o.aggregate is not None and o.op == "weighted_mean":
                est, prefix = np.asarray(o.aggregate, dtype=np.float64) - ref, "mean_update"
            else:
                continue
            u = np.asarray(true_all[c], dtype=np.float64) - ref
            nu = float(np.linalg.norm(u))
            if nu == 0:
                continue
            err = float(np.linalg.norm(est - u)) / nu
            ne = float(np.linalg.norm(est))
            cos = float(est @ u) / (ne * nu) if ne > 0 else 0.0
            for metric, value, chance in (
                (f"{prefix}_relative_error", err, 1.0),
                (f"{prefix}_cosine", cos, 0.0),
            ):
                rows.append(
                    {
                        "attack": "update_recovery",
                        "observer": view.observer,
                        "backend": view.backend,
                        "target_client": c,
                        "round": o.round,
                        "metric": metric,
                        "value": value,
                        "chance": chance,
                    }
                )
    return pd.DataFrame(rows, columns=COLUMNS)
