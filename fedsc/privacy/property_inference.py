"""Property inference against FedscGen: a client's cell-type composition (issue 9, 2d).

Property inference against federated updates: Melis et al. (IEEE S&P 2019), Ganju et al.
(CCS 2018). Two observers:

``"coordinator"`` (plaintext aggregation), :func:`update_composition_attack`
    It receives client c's whole local state, batch-norm running statistics included. The
    first encoder layer's running mean is an exponential moving average (momentum 0.1) of
    the minibatch means of ``W x + b``; the coordinator knows the state it broadcast (the
    starting running mean) and the number of minibatches ``B = local_epochs x (N_c //
    batch_size)`` (N_c is the public FedAvg weight), so it removes the starting value and
    recovers ``m_c ≈ W x̄_c + b``, a projection of the client's mean expression. With
    auxiliary labelled cells (other clients' data here; a public atlas in practice) it
    projects every type's mean profile the same way and solves a non-negative least
    squares for the mixture weights: the client's composition. The auxiliary profiles
    come from other batches, so batch effects bias the estimate: on the pancreas
    (clients = sequencing technologies, similar compositions) it does no better than the
    prior; on simulated clients with different compositions it does
    (``benchmarks/privacy_attacks.py``).
``"coordinator+crypten"`` (secure aggregation), :func:`revealed_composition_attack`
    It sees only aggregates and FedscGen's revealed values: the number of holders of each
    type, the dominant client of each shared type and that client's count. Client c's
    majority type is guessed as its revealed type with the largest count, or, when c
    dominates nothing, the type with the largest revealed count overall; presence is
    certain for types c dominates or that every client holds, else guessed from the
    fraction of holders.

Chance: the majority-class baseline (the best constant guess of the majority type, or of
presence, over the clients; its accuracy uses the truth), and for proportions the error of
the attacker's prior (the auxiliary data's pooled composition).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import nnls

from fedsc.privacy.membership import FedScGenViews

__all__ = [
    "PROPERTY_COLUMNS",
    "AuxiliaryProfiles",
    "composition",
    "estimate_composition_from_update",
    "estimate_counts_from_revealed",
    "revealed_composition_attack",
    "update_composition_attack",
]

#: Columns of the property-inference rows.
PROPERTY_COLUMNS = [
    "attack",
    "observer",
    "target_client",
    "metric",
    "value",
    "chance",
    "n",
    "seed",
]

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
    truth: np.ndarray, pred: np.ndarray, prior: np.ndarray, **base: Any
) -> list[dict[str, Any]]:
    """Over clients: majority-type accuracy, and proportion MAE and Pearson r vs ``prior``."""
    k = truth.shape[0]
    true_major = truth.argmax(axis=1)
    counts = np.bincount(true_major, minlength=truth.shape[1])
    rows = [
        {
            **base,
            "target_client": "all",
            "metric": "majority_accuracy",
            "value": float((pred.argmax(axis=1) == true_major).mean()),
            "chance": float(counts.max() / k),
            "n": k,
        }
    ]
    rows += [
        {
            **base,
            "target_client": "all",
            "metric": "proportion_mae",
            "value": float(np.abs(pred - truth).mean()),
            "chance": float(np.abs(prior - truth).mean()),
            "n": k,
        },
        {
            **base,
            "target_client": "all",
            "metric": "proportion_pearson",
            "value": float(np.corrcoef(pred.ravel(), truth.ravel())[0, 1]),
            "chance": float(np.corrcoef(prior.ravel(), truth.ravel())[0, 1]),
            "n": k,
        },
    ]
    return rows


def update_composition_attack(views: FedScGenViews) -> pd.DataFrame:
    """Plaintext coordinator: each client's composition from its last local update.

    The auxiliary data for client c are the other clients' cells with their labels (a
    stand-in for a public labelled atlas); the prior is their pooled composition.

    Returns
    -------
    Per client: ``proportion_mae`` (chance: the prior's error) and ``majority_correct``
    (chance 1 / #types); over clients: ``majority_accuracy`` (chance: majority-class
    baseline), ``proportion_mae`` and ``proportion_pearson`` (chance 0).
    """
    cfg = views.config
    vocab = list(views.revealed["vocabulary"])
    truths, preds, priors, rows = [], [], [], []
    base = {"attack": "update_bn_mean_nnls", "observer": "coordinator", "seed": views.seed}
    aux = AuxiliaryProfiles(views.data, views.labels, vocab)
    for c in views.clients:
        ci = c.index
        present, means, prior = aux.excluding(ci)
        n_batches = cfg.local_epochs * (len(views.splits[ci][0]) // cfg.batch_size)
        est = estimate_composition_from_update(
            views.local_states[ci], views.broadcast_state, n_batches, means
        )
        pred = np.zeros(len(vocab))
        pred[[vocab.index(t) for t in present]] = est
        truth = composition(views.labels[ci], vocab)
        truths.append(truth)
        preds.append(pred)
        priors.append(prior)
        n = int(views.data[ci].shape[0])
        rows.append(
            {
                **base,
                "target_client": c.name,
                "metric": "proportion_mae",
                "value": float(np.abs(pred - truth).mean()),
                "chance": float(np.abs(prior - truth).mean()),
                "n": n,
            }
        )
        rows.append(
            {
                **base,
                "target_client": c.name,
                "metric": "majority_correct",
                "value": float(pred.argmax() == truth.argmax()),
                "chance": 1.0 / len(vocab),
                "n": n,
            }
        )
    rows += _summary(np.stack(truths), np.stack(preds), np.stack(priors), **base)
    return pd.DataFrame(rows)[PROPERTY_COLUMNS]


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


def revealed_composition_attack(views: FedScGenViews) -> pd.DataFrame:
    """Secure aggregation: each client's composition from FedscGen's revealed values.

    Uses only ``views.revealed`` (holders per type, dominant client and its count per
    shared type), the public number of clients and the public FedAvg weights
    (:func:`estimate_counts_from_revealed`); works the same for a crypten run.

    Returns
    -------
    Per client ``majority_correct`` (chance 1 / #types) and ``proportion_mae``; over
    clients ``majority_accuracy`` (chance: majority-class baseline), ``proportion_mae``
    and ``proportion_pearson`` (chance: the attacker's client-blind prior, the revealed
    dominant counts normalised), ``presence_accuracy`` (chance: best constant guess).
    """
    rev = views.revealed
    cfg = views.config
    vocab = list(rev["vocabulary"])
    k = len(views.clients)
    holders = np.array([rev["n_clients_per_type"][t] for t in vocab], dtype=np.float64)
    blind = np.array([rev["dominant_count"].get(t, 0.0) for t in vocab])
    prior = blind / blind.sum() if blind.sum() > 0 else np.full(len(vocab), 1.0 / len(vocab))
    base = {"attack": "revealed_dominant", "observer": "coordinator+crypten", "seed": views.seed}
    truths, preds, pres_true, pres_pred, rows = [], [], [], [], []
    for c in views.clients:
        n_cells = len(views.splits[c.index][0]) / (1.0 - cfg.validation_fraction)
        est = estimate_counts_from_revealed(rev, c.index, n_cells)
        pred = est / est.sum() if est.sum() > 0 else prior
        truth = composition(views.labels[c.index], vocab)
        mine = [vocab.index(t) for t, d in rev["dominant"].items() if d == c.index]
        presence = holders / max(k, 1) >= 0.5
        presence[mine] = True
        truths.append(truth)
        preds.append(pred)
        pres_true.append(truth > 0)
        pres_pred.append(presence)
        n = int(views.data[c.index].shape[0])
        rows += [
            {
                **base,
                "target_client": c.name,
                "metric": "majority_correct",
                "value": float(pred.argmax() == truth.argmax()),
                "chance": 1.0 / len(vocab),
                "n": n,
            },
            {
                **base,
                "target_client": c.name,
                "metric": "proportion_mae",
                "value": float(np.abs(pred - truth).mean()),
                "chance": float(np.abs(prior - truth).mean()),
                "n": n,
            },
        ]
    truth_m = np.stack(truths)
    rows += _summary(truth_m, np.stack(preds), np.tile(prior, (k, 1)), **base)
    pt, pp = np.stack(pres_true), np.stack(pres_pred)
    rows.append(
        {
            **base,
            "target_client": "all",
            "metric": "presence_accuracy",
            "value": float((pt == pp).mean()),
            "chance": float(max(pt.mean(), 1.0 - pt.mean())),
            "n": int(pt.size),
        }
    )
    return pd.DataFrame(rows)[PROPERTY_COLUMNS]
