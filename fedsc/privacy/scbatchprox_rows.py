"""Attack (a): recover every scBatchProx client's trained adapter row from the aggregate.

Client ``b`` sends the whole ``gamma``/``beta`` tables with only its own row ``b``
changed, so row ``b`` of the FedAvg aggregate is

    agg_b = (w_b theta_b' + (W - w_b) theta_b^t) / W
    =>  theta_b' = theta_b^t + (W / w_b) (agg_b - theta_b^t)

with ``theta^t`` the previous global table (the broadcast state, known to the
coordinator and to every client), ``W = sum_c w_c`` (revealed by every backend) and
``w_b`` the client's cell count. Secret sharing the sum does not hide ``theta_b'``.

The aggregate is the released one (after the ``gaussian`` mechanism's rescale: under its
uniform weighting the unweighted mean, so ``W / w_b`` is ``K``; :mod:`fedsc.privacy.views`).
Which ``W / w_b`` the attacker uses:

- the view holds the weights (plaintext coordinator; or cell counts public metadata,
  ``observer_view(..., public_weights=True)``): exact recovery;
- only ``W`` (crypten coordinator): the update ``agg_b - theta_b^t`` is still revealed
  exactly *up to one positive scale* ``w_b / W`` per client (the same in every round), so
  its direction is exact; the attack guesses ``w_b = W / K`` (equal shares). That guess is
  exact when clients are equally large (the bundled pancreas data: 90 training cells each),
  otherwise the rows are off by the factor ``(W / K) / w_b`` on the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedsc.privacy.attacks import COLUMNS
from fedsc.privacy.views import ObservedOp, ObserverView, RunRecord

if TYPE_CHECKING:
    from fedsc.privacy.attacks import Truth

ATTACK = "scbatchprox_rows"
#: Ledger tag of the scBatchProx state aggregation (FedAvg).
TAG = "fedavg"


def split_tables(flat: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(gamma, beta)`` of shape ``(n_rows, d)`` from a flat scBatchProx state.

    :mod:`smpc.flatten` concatenates the state's tensors in sorted key order, so the flat
    vector is ``beta`` then ``gamma``.

    Parameters
    ----------
    flat
        A flat state (contribution, aggregate or reference) of ``2 * n_rows * d`` values.
    n_rows
        Rows of the tables (clients of the federation).
    """
    flat = np.asarray(flat, dtype=np.float64)
    if flat.size % (2 * n_rows):
        raise ValueError(f"{flat.size} values do not form two tables of {n_rows} rows.")
    half = flat.size // 2
    beta = flat[:half].reshape(n_rows, -1)
    gamma = flat[half:].reshape(n_rows, -1)
    return gamma, beta


@dataclass(frozen=True)
class RecoveredRound:
    """Rows recovered in one round (all clients).

    Attributes
    ----------
    round
        Federation round.
    op_index
        Index of the aggregation operation in the run.
    gamma, beta
        ``(K, d)`` recovered rows: row ``b`` is client ``b``'s trained row.
    gamma_prev, beta_prev
        ``(K, d)`` the previous global tables (the round's broadcast state).
    scale
        ``W / w_b`` used per client (``K`` under uniform DP).
    weights_known
        Whether the weights of the mean came from the view (else given or ``W / K``).
    """

    round: int
    op_index: int
    gamma: np.ndarray
    beta: np.ndarray
    gamma_prev: np.ndarray
    beta_prev: np.ndarray
    scale: np.ndarray
    weights_known: bool


def _global_sequence(
    view: ObserverView, tag: str
) -> list[tuple[ObservedOp, np.ndarray, np.ndarray]]:
    """Per aggregation: (op, broadcast state before, aggregate after) as this view knows them.

    A client receives each round's aggregate as the next round's broadcast state (and the
    final one at the end), so the aggregate is taken from there when not held directly.
    """
    ops = view.select(tag=tag, op="weighted_mean")
    out = []
    for k, o in enumerate(ops):
        agg = o.aggregate
        if agg is None and k + 1 < len(ops):
            agg = ops[k + 1].reference
        if o.reference is None or agg is None:
            continue
        out.append((o, o.reference, agg))
    return out


def recover_rows(
    view: ObserverView, *, tag: str = TAG, weights: np.ndarray | None = None
) -> list[RecoveredRound]:
    """Solve each round's aggregate for every client's trained row.

    Parameters
    ----------
    view
        An observer view holding the broadcast states and the aggregates (coordinator,
        client).
    tag
        Ledger tag of the state aggregation.
    weights
        Client weights to use when the view lacks them (e.g. estimated with
        :func:`fedsc.privacy.scbatchprox_moments.estimate_weights`); ``None``: equal
        shares ``W / K``. Ignored when the view holds the weights of the released mean
        (``ObservedOp.mean_weights``: the public weights, or all 1 under the ``gaussian``
        mechanism's uniform weighting, whose released aggregate is the unweighted mean).

    Returns
    -------
    One :class:`RecoveredRound` per round the view can solve (empty if none).
    """
    out = []
    for o, ref, agg in _global_sequence(view, tag):
        k = o.n_clients
        weights_known = o.mean_weights is not None
        if weights_known:  # the weights of the released mean (all 1 under uniform DP)
            w = np.asarray(o.mean_weights, dtype=np.float64)
            scale = w.sum() / w
        elif weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            total = o.total_weight if o.total_weight is not None else w.sum()
            scale = total / w
        else:
            scale = np.full(k, float(k))  # equal shares: W / w_b = K
        g_prev, b_prev = split_tables(ref, k)
        g_agg, b_agg = split_tables(agg, k)
        s = scale[:, None]
        out.append(
            RecoveredRound(
                round=int(o.round) if o.round is not None else -1,
                op_index=o.index,
                gamma=g_prev + s * (g_agg - g_prev),
                beta=b_prev + s * (b_agg - b_prev),
                gamma_prev=g_prev,
                beta_prev=b_prev,
                scale=scale,
                weights_known=weights_known,
            )
        )
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / den if den > 0 else float(np.linalg.norm(a - b))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else float("nan")


def scbatchprox_row_recovery(
    view: ObserverView, truth: RunRecord | None = None, *, tag: str = TAG
) -> pd.DataFrame:
    """Attack (a): tidy rows on recovering each client's trained row every round.

    Parameters
    ----------
    view
        The attacker's view (coordinator or client).
    truth
        The run's :class:`~fedsc.privacy.views.RunRecord` (the clients' true local rows,
        before any mechanism when recorded; evaluation only). Without it only
        ``update_norm`` is reported.
    tag
        Ledger tag of the state aggregation.

    Returns
    -------
    Columns ``attack, observer, backend, target_client, round, metric, value, chance``.
    Metrics (with truth): ``row_relative_error`` ``||row_hat - row|| / ||row||`` (row =
    the client's trained ``(gamma_b', beta_b')``; chance: the best public-only guess, the
    previous global row), ``update_relative_error`` (the same over the update
    ``row - row^t``; chance 1) and ``update_cosine`` (chance 0); ``weights_known`` (1 if
    the client weights came from the view, 0 if ``W / K`` was assumed).
    """
    rows: list[dict[str, object]] = []

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

    for rec in recover_rows(view, tag=tag):
        if truth is not None:
            contrib = truth.local_contributions(rec.op_index)
            per_client = [split_tables(row, len(contrib)) for row in contrib]
        for b in range(rec.gamma.shape[0]):
            hat = np.concatenate([rec.gamma[b], rec.beta[b]])
            prev = np.concatenate([rec.gamma_prev[b], rec.beta_prev[b]])
            add(b, rec.round, "weights_known", float(rec.weights_known), 0.0)
            if truth is None:
                add(b, rec.round, "update_norm", float(np.linalg.norm(hat - prev)), 0.0)
                continue
            true_g, true_b = per_client[b][0][b], per_client[b][1][b]
            true = np.concatenate([true_g, true_b])
            add(b, rec.round, "row_relative_error", _rel(hat, true), _rel(prev, true))
            add(b, rec.round, "update_relative_error", _rel(hat - prev, true - prev), 1.0)
            add(b, rec.round, "update_cosine", _cos(hat - prev, true - prev), 0.0)
    return pd.DataFrame(rows, columns=COLUMNS)


def attack(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    """The registered attack: :func:`scbatchprox_row_recovery` scored against the record."""
    return scbatchprox_row_recovery(view, None if truth is None else truth.record)
