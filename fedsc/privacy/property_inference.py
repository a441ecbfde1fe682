"""Property inference against FedscGen: each client's cell-type composition (issue 9, 2d).

Property inference against federated updates: Melis et al. (IEEE S&P 2019), Ganju et al.
(CCS 2018). The registered attack ``fedscgen_property`` (:func:`fedscgen_property`) reads
two things of an observer's view:

``update_*`` (the plaintext coordinator, batch-norm models), :func:`estimate_composition_from_update`
    It receives client c's whole local state, batch-norm running statistics included. The
    first encoder layer's running mean is an exponential moving average (momentum 0.1) of
    the minibatch means of ``W x + b``; the coordinator knows the state it broadcast (the
    starting running mean) and the number of minibatches ``B = local_epochs x (N_c //
    batch_size)`` (N_c is the public FedAvg weight), so it removes the starting value and
    recovers ``m_c ≈ W x̄_c + b``, a projection of the client's mean expression. With
    auxiliary labelled cells (other clients' data here, :class:`AuxiliaryProfiles`; a
    public atlas in practice) it projects every type's mean profile the same way and solves
    a non-negative least squares for the mixture weights: the client's composition. The
    auxiliary profiles come from other batches, so batch effects bias the estimate: on the
    pancreas (clients = sequencing technologies, similar compositions) it does no better
    than the prior; on simulated clients with different compositions it does. DP variants
    use GroupNorm and give no ``update_*`` rows.
``revealed_*`` (any view holding the correction's results: coordinator, client), :func:`estimate_counts_from_revealed`
    FedscGen's revealed values: the number of holders of each type, the dominant client
    of each shared type and that client's count, under any backend. Client c's counts are
    exact for the types it dominates; the rest of its (public) size is spread over the
    other held types, bounded by the dominant counts; presence is certain for types c
    dominates, else guessed from the fraction of holders.

Metrics over the targeted clients (``target_client`` -1; a client view targets the
others): ``majority_accuracy`` (chance: the majority-class baseline, the best constant
guess of the majority type), ``proportion_mae`` and ``proportion_pearson`` (chance: the
attacker's prior: the auxiliary data's pooled composition for ``update_*``, the revealed
dominant counts normalised for ``revealed_*``), ``revealed_presence_accuracy`` (chance:
the best constant guess).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import nnls

from fedsc.privacy.attacks import COLUMNS, Truth, attack_row
from fedsc.privacy.fedscgen_runs import clear_row, fedscgen_of, revealed_from_view, state_ops
from fedsc.privacy.views import ObserverView

__all__ = [
    "AuxiliaryProfiles",
    "composition",
    "estimate_composition_from_update",
    "estimate_counts_from_revealed",
    "fedscgen_property",
]

ATTACK = "fedscgen_property"
_MOMENTUM = 0.1  # torch.nn.BatchNorm1d's default


def composition(labels: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
    """Fraction of ``labels`` of each type in ``vocabulary`` (of all labels)."""
    labels = np.asarray(labels).astype(str)
    counts = np.array([(labels == t).sum() for t in vocabulary], dtype=np.float64)
    return counts / max(len(labels), 1)


def estimate_composition_from_update(
    local_state: dict[str, torch.Tensor],
    broadcast_state: dict[str, torch.Tensor],
    n_batches: int,
    type_means: np.ndarray,
) -> np.ndarray:
    """Composition of a client from its local state (first-layer batch-norm mean).

    Parameters
    ----------
    local_state
        The client's state after local training (what a plaintext coordinator receives).
    broadcast_state
        The state the client started from.
    n_batches
        Minibatches the client trained on (``local_epochs x (N_c // batch_size)``).
    type_means
        Auxiliary mean expression per type (types x genes).

    Returns
    -------
    Estimated fractions per type (non-negative, summing to 1).
    """
    key = "encoder.0.norm.running_mean"
    if key not in local_state:
        raise KeyError(
            f"the state has no {key!r}: this estimator needs batch norm (batch_norm=True)."
        )
    decay = (1.0 - _MOMENTUM) ** n_batches
    rm = local_state[key].to(torch.float64).numpy()
    rm0 = broadcast_state[key].to(torch.float64).numpy()
    m = (rm - decay * rm0) / (1.0 - decay)
    w = local_state["encoder.0.linear.weight"].to(torch.float64).numpy()
    b = local_state["encoder.0.linear.bias"].to(torch.float64).numpy()
    profiles = type_means @ w.T + b  # types x hidden
    # non-negative weights, softly constrained to sum to 1 by an extra weighted row
    scale = float(np.linalg.norm(profiles)) or 1.0
    a = np.vstack([profiles.T, np.full((1, profiles.shape[0]), scale)])
    y = np.concatenate([m, [scale]])
    p, _ = nnls(a, y)
    total = p.sum()
    return p / total if total > 0 else np.full_like(p, 1.0 / len(p))


def _summary(
    truth: np.ndarray, pred: np.ndarray, prior: np.ndarray
) -> list[tuple[str, float, float]]:
    """Over clients: (metric, value, chance) of the majority type, proportion MAE and r."""
    k = truth.shape[0]
    true_major = truth.argmax(axis=1)
    counts = np.bincount(true_major, minlength=truth.shape[1])
    return [
        (
            "majority_accuracy",
            float((pred.argmax(axis=1) == true_major).mean()),
            float(counts.max() / k),
        ),
        ("proportion_mae", float(np.abs(pred - truth).mean()), float(np.abs(prior - truth).mean())),
        (
            "proportion_pearson",
            float(np.corrcoef(pred.ravel(), truth.ravel())[0, 1]),
            float(np.corrcoef(prior.ravel(), truth.ravel())[0, 1]),
        ),
    ]


class AuxiliaryProfiles:
    """The attacker's auxiliary data for each target: every other client's labelled cells.

    Per client and type, the expression sum and the cell count are kept (``K x T x G``
    float64), so the auxiliary mean profiles and prior of a target come from
    leave-one-out sums instead of concatenating all other clients' cells per target
    (``K^2 x N x G`` over an attack).

    Parameters
    ----------
    data
        Client index -> cells x genes expression.
    labels
        Client index -> the cells' type labels.
    vocab
        All cell types, in order.
    """

    def __init__(
        self, data: Mapping[int, Any], labels: Mapping[int, np.ndarray], vocab: Sequence[str]
    ) -> None:
        self.vocab = list(vocab)
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, np.ndarray] = {}
        for c, x in data.items():
            x = torch.as_tensor(x).to(torch.float64).numpy()
            y = np.asarray(labels[c]).astype(str)
            self._sums[c] = np.stack([x[y == t].sum(axis=0) for t in self.vocab])
            self._counts[c] = np.array([(y == t).sum() for t in self.vocab], dtype=np.float64)

    def excluding(self, target: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Types present in the other clients, their mean profiles, and the prior.

        Returns ``(present, means, prior)``: ``means`` is ``len(present) x G``; ``prior``
        the other clients' pooled composition over :attr:`vocab`.
        """
        others = [c for c in self._sums if c != target]
        sums = np.sum([self._sums[c] for c in others], axis=0)
        counts = np.sum([self._counts[c] for c in others], axis=0)
        keep = counts > 0
        present = [t for t, k in zip(self.vocab, keep, strict=True) if k]
        return present, sums[keep] / counts[keep, None], counts / counts.sum()


def estimate_counts_from_revealed(
    revealed: dict[str, Any], client: int, n_cells: float
) -> np.ndarray:
    """Estimated cell counts per type of ``client`` from FedscGen's revealed values.

    Types the client dominates: the revealed count (exact). A type it does not dominate
    has at most the dominant client's count (ties go to the lowest index, so at most that
    count); the remaining ``n_cells`` minus the exact counts are spread over the types held
    by someone in proportion to these upper bounds, capped by them. Types no client holds
    get 0. ``n_cells`` is public up to rounding: the client's FedAvg weight ``N_c`` (its
    training cells) divided by ``1 - validation_fraction``.
    """
    vocab = list(revealed["vocabulary"])
    count = revealed["dominant_count"]
    est = np.zeros(len(vocab))
    bound = np.zeros(len(vocab))
    for j, t in enumerate(vocab):
        if revealed["n_clients_per_type"].get(t, 0) == 0:
            continue
        if revealed["dominant"].get(t) == client:
            est[j] = count[t]
        else:
            # standalone types reveal no count: bound them by the client's size
            bound[j] = count.get(t, n_cells)
    rest = max(float(n_cells) - est.sum(), 0.0)
    if bound.sum() > 0:
        est += np.minimum(bound, rest * bound / bound.sum())
    return est


def fedscgen_property(view: ObserverView, truth: Truth | None) -> pd.DataFrame:
    """Each client's cell-type composition from its update and from the revealed values.

    See the module docstring; metrics are over the targeted clients (``target_client``
    -1). A client view targets the other clients.
    """
    fed = fedscgen_of(truth)
    if fed is None or view.observer not in ("coordinator", "client"):
        return pd.DataFrame(columns=COLUMNS)
    vocab = fed.vocabulary
    me = None if view.client is None else sorted(fed.names)[view.client]
    rows: list[dict[str, Any]] = []
    ops = state_ops(view)
    if ops and view.observer == "coordinator":
        last = max(ops, key=lambda o: o.index)
        spec = fed.spec()
        ref = spec.unflatten(np.asarray(last.reference))
        key = "encoder.0.norm.running_mean"
        truths, preds, priors = [], [], []
        aux = AuxiliaryProfiles(
            {o: fed.data[o] for o in fed.training}, {o: fed.labels[o] for o in fed.training}, vocab
        )
        for pos, c in enumerate(fed.training):
            own = clear_row(last, pos)
            if own is None or key not in ref:
                continue
            present, means, prior = aux.excluding(c)
            n_batches = fed.config.local_epochs * (len(fed.splits[c][0]) // fed.config.batch_size)
            est = estimate_composition_from_update(spec.unflatten(own), ref, n_batches, means)
            pred = np.zeros(len(vocab))
            pred[[vocab.index(t) for t in present]] = est
            truths.append(composition(fed.labels[c], vocab))
            preds.append(pred)
            priors.append(prior)
        if truths:
            rows += _prefixed(view, "update", _summary(*map(np.stack, (truths, preds, priors))))
    rev = revealed_from_view(view, fed)
    targets = [c for c in fed.training if c != me]
    if rev is not None and targets:
        holders = np.array([rev["n_clients_per_type"][t] for t in vocab], dtype=np.float64)
        blind = np.array([rev["dominant_count"].get(t, 0.0) for t in vocab])
        prior = blind / blind.sum() if blind.sum() > 0 else np.full(len(vocab), 1 / len(vocab))
        k = len(fed.names)
        truths, preds, pres_true, pres_pred = [], [], [], []
        for c in targets:
            n_cells = len(fed.splits[c][0]) / (1.0 - fed.config.validation_fraction)
            est = estimate_counts_from_revealed(rev, c, n_cells)
            truth_c = composition(fed.labels[c], vocab)
            presence = holders / max(k, 1) >= 0.5
            presence[[vocab.index(t) for t, d in rev["dominant"].items() if d == c]] = True
            truths.append(truth_c)
            preds.append(est / est.sum() if est.sum() > 0 else prior)
            pres_true.append(truth_c > 0)
            pres_pred.append(presence)
        t_m = np.stack(truths)
        rows += _prefixed(
            view, "revealed", _summary(t_m, np.stack(preds), np.tile(prior, (len(t_m), 1)))
        )
        pt, pp = np.stack(pres_true), np.stack(pres_pred)
        rows.append(
            attack_row(
                view,
                ATTACK,
                -1,
                "revealed_presence_accuracy",
                float((pt == pp).mean()),
                float(max(pt.mean(), 1.0 - pt.mean())),
            )
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _prefixed(
    view: ObserverView, prefix: str, summary: list[tuple[str, float, float]]
) -> list[dict[str, Any]]:
    return [attack_row(view, ATTACK, -1, f"{prefix}_{m}", v, c) for m, v, c in summary]
