"""Attack (a'): the clients' cell counts, hence their exact rows, when only ``W`` is revealed.

Under crypten each client shares ``[w_b x_b, w_b]``, so the coordinator learns the total
``W`` but not ``w_b``; the aggregate still reveals each client's update up to the scale
``w_b / W``. Because the local training is public and Adam's steps have a known size,
only the true ``w_b`` makes the rescaled updates consistent with *some* moments of the
client's cells (:func:`fedsc.privacy.scbatchprox_moments.estimate_weights`). With ``w_b``
estimated, attack (a) applies unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedsc.privacy.attacks import COLUMNS
from fedsc.privacy.scbatchprox_moments import estimate_weights
from fedsc.privacy.scbatchprox_rows import TAG, recover_rows, split_tables
from fedsc.privacy.views import ObserverView, RunRecord

if TYPE_CHECKING:
    from fedsc.privacy.attacks import Truth

ATTACK = "scbatchprox_weights"


def scbatchprox_weight_inference(
    view: ObserverView,
    truth: RunRecord | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    tag: str = TAG,
) -> pd.DataFrame:
    """Estimate each client's weight from a ``W``-only view, then its rows.

    Parameters
    ----------
    view
        A view holding the aggregates, broadcast states and ``W`` but not the per-client
        weights (the crypten coordinator). Other views give no rows.
    truth
        The run's :class:`~fedsc.privacy.views.RunRecord` (true weights and rows).
    config
        The public scBatchProx config (default: ``view.public["config"]``).
    tag
        Ledger tag of the state aggregation.

    Returns
    -------
    Columns as :data:`fedsc.privacy.attacks.COLUMNS`. Metrics:
    ``estimated_weight`` (round -1; chance: ``W / K``), and with truth
    ``weight_relative_error`` (round -1; chance: that of ``W / K``) and, per round,
    ``row_relative_error`` and ``update_relative_error`` with the estimated weights
    (chance: with equal shares ``W / K``).
    """
    ops = view.select(tag=tag, op="weighted_mean")
    rows: list[dict[str, object]] = []
    if not ops or ops[0].weights is not None or ops[0].total_weight is None:
        return pd.DataFrame(rows, columns=COLUMNS)
    est = estimate_weights(view, config, tag=tag)
    k = len(est)
    equal = ops[0].total_weight / k

    def add(client: int, rnd: int, metric: str, value: float, chance: float) -> None:
        rows.append(
            {
                "attack": ATTACK,
                "observer": view.observer,
                "backend": view.backend,
                "target_client": client,
                "round": rnd,
                "metric": metric,
                "value": float(value),
                "chance": float(chance),
            }
        )

    true_w = None
    if truth is not None:
        true_w = truth.operations[ops[0].index].weights
    for b in range(k):
        add(b, -1, "estimated_weight", est[b], equal)
        if true_w is not None:
            add(
                b,
                -1,
                "weight_relative_error",
                abs(est[b] - true_w[b]) / true_w[b],
                abs(equal - true_w[b]) / true_w[b],
            )
    if truth is None:
        return pd.DataFrame(rows, columns=COLUMNS)
    with_est = recover_rows(view, tag=tag, weights=est)
    with_equal = recover_rows(view, tag=tag)
    for r_est, r_eq in zip(with_est, with_equal, strict=True):
        contrib = truth.local_contributions(r_est.op_index)
        for b in range(k):
            g, be = split_tables(contrib[b], k)
            true = np.concatenate([g[b], be[b]])
            prev = np.concatenate([r_est.gamma_prev[b], r_est.beta_prev[b]])
            hat = np.concatenate([r_est.gamma[b], r_est.beta[b]])
            guess = np.concatenate([r_eq.gamma[b], r_eq.beta[b]])
            add(
                b,
                r_est.round,
                "row_relative_error",
                float(np.linalg.norm(hat - true) / np.linalg.norm(true)),
                float(np.linalg.norm(guess - true) / np.linalg.norm(true)),
            )
            add(
                b,
                r_est.round,
                "update_relative_error",
                float(np.linalg.norm(hat - true) / np.linalg.norm(true - prev)),
                float(np.linalg.norm(guess - true) / np.linalg.norm(true - prev)),
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def attack(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    """The registered attack: :func:`scbatchprox_weight_inference` scored against the record."""
    return scbatchprox_weight_inference(view, None if truth is None else truth.record)
