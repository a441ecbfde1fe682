"""FedscGen attacks inside a run: membership, property inference, revealed values.

The in-run versions of :mod:`fedsc.privacy.membership`,
:mod:`fedsc.privacy.property_inference` and :mod:`fedsc.privacy.revealed_values`. Each is
an attack ``(view, truth) -> tidy rows`` (:data:`fedsc.privacy.attacks.COLUMNS`)
registered in :data:`fedsc.privacy.in_run.IN_RUN_ATTACKS`. The attacker's inputs come only
from the observer's recorded view (:mod:`fedsc.privacy.views`): the clients' states of the
last FedAvg round (tag ``fedavg``; the coordinator under plaintext computes each client's
model from its contribution, i.e. after DP-SGD or the ``gaussian`` mechanism's clipping
and noise, with the division by the public weight undone), the broadcast references,
the released global state (after the ``gaussian`` mechanism's ``W / K`` rescale) and the
correction's revealed aggregates. The runner's truth (:class:`FedscGenTruth`: every client's cells, labels and
FedscGen's 90/10 split, redrawn from the run seed) scores them, and gives the attacker
what it is assumed to hold anyway: auxiliary labelled cells of the same tissue (the
other clients' cells: a stand-in for a public atlas), and for a client its own cells.

``fedscgen_membership`` (members: a client's training cells; non-members: its
validation cells)
    ``coordinator`` (needs clear contributions: plaintext): each client's last local
    state, metrics ``update_<attack>_auc``; ``client`` (client 0, also every other
    client and the coordinator): the final global model, ``global_<attack>_auc``. Attacks
    ``loss`` (score -loss), ``reference`` (loss under the reference, i.e. the broadcast
    or initial state, minus loss under the attacked model) and ``lira`` (offline LiRA with
    :data:`N_SHADOWS` shadows trained from the same reference on auxiliary cells: the
    other clients' for the coordinator, the observer's own for a client). Under DP the
    attacker is adaptive by default: the shadows are trained with the run's DP pipeline
    (DP-SGD with its σ and clip; or each round's update clipped to C and noised like the
    attacked model, read off the ledger's ``gaussian`` description) and the metric is
    ``lira_adaptive`` (``<prefix>_lira_adaptive_auc``). Per target client, and
    ``..._pooled`` over clients (``target_client`` -1: one ROC, each cell under its
    client's attacked model). Chance 0.5.
``fedscgen_property``
    Over clients (``target_client`` -1): ``update_*`` (plaintext coordinator, batch-norm
    models only: the first encoder layer's running mean + NNLS on auxiliary type profiles;
    DP variants use GroupNorm and give no rows) and ``revealed_*`` (any view holding the
    correction's revealed values: holders per type, dominant client and its count), each
    ``majority_accuracy`` (chance: majority-class baseline), ``proportion_mae`` and
    ``proportion_pearson`` (chance: the attacker's prior); ``revealed_presence_accuracy``.
``fedscgen_revealed_values``
    Per shared type (``target_client`` = its dominant client): the revealed mean latent
    M_t decoded by the global model vs the client's true mean expression of t:
    ``pearson``, ``pearson_centered`` (chance: the other types' decoded profiles) and
    ``count_abs_error`` (chance NaN).

Cost caps (seconds per run on the bundled pancreas): at most :data:`MAX_CELLS` cells per
client are scored and at most :data:`MAX_AUX_CELLS` auxiliary cells train a shadow;
:data:`N_SHADOWS` shadows per target. Runs with an inclusion scenario other than
``"all"`` or a dataset-evolution scenario give no FedscGen attack rows (their cells do not
match the run's clients).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from fedsc.federation import State
from fedsc.methods.fedscgen import FedScGenConfig
from fedsc.methods.vae import (
    EPOCH,
    INIT,
    VAE,
    decode,
    derive_generator,
    make_optimizer,
    torch_threads,
    train_epoch,
)
from fedsc.privacy.attacks import COLUMNS
from fedsc.privacy.membership import (
    SHADOW,
    ShadowDP,
    cell_losses,
    client_data,
    train_shadow_rounds,
)
from fedsc.privacy.property_inference import (
    AuxiliaryProfiles,
    _summary,
    composition,
    estimate_composition_from_update,
    estimate_counts_from_revealed,
)
from fedsc.privacy.views import ObservedOp, ObserverView
from smpc.flatten import Spec, flatten

if TYPE_CHECKING:
    import anndata as ad

__all__ = [
    "MAX_AUX_CELLS",
    "MAX_CELLS",
    "N_SHADOWS",
    "FedscGenTruth",
    "fedscgen_membership",
    "fedscgen_property",
    "fedscgen_revealed_values",
    "fedscgen_truth",
    "revealed_from_view",
    "shadow_dp",
]

#: Shadow models per target of the LiRA attack.
N_SHADOWS = 4
#: Cells scored per client at most (a seeded subset of members and non-members alike).
MAX_CELLS = 1000
#: Auxiliary cells a shadow model trains on at most.
MAX_AUX_CELLS = 2000
#: Ledger tags of the model-state aggregations (FedAvg, FedAvgM).
STATE_TAGS = ("fedavg", "fedavgm")


@dataclass(frozen=True)
class FedscGenTruth:
    """What the runner holds about a FedscGen run (scoring, and the attacker's aux data).

    Attributes
    ----------
    config
        The config the method ran with (``dp`` set under DP: the GroupNorm variant).
    seed
        Run seed.
    n_genes
        Genes of the model.
    names
        Client index -> batch name, every client of the correction (held-out ones too).
    training
        Indices of the training clients.
    data, labels
        Each client's log-normalised expression (cells x genes) and cell-type labels.
    splits
        Each training client's (training, validation) positions, as FedscGen drew them.
    vocabulary
        The label vocabulary (public).
    """

    config: FedScGenConfig
    seed: int
    n_genes: int
    names: dict[int, str]
    training: tuple[int, ...]
    data: dict[int, torch.Tensor]
    labels: dict[int, np.ndarray]
    splits: dict[int, tuple[np.ndarray, np.ndarray]]
    vocabulary: list[str]

    def template(self) -> State:
        """The run's initial state (its structure restores flat states)."""
        model = VAE(self.n_genes, self.config, derive_generator(self.seed, INIT))
        if self.config.dp is not None:
            from fedsc.methods.dp_sgd import to_dp_variant

            model = to_dp_variant(model)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def spec(self) -> Spec:
        """How a flat state vector maps back to the VAE's tensors."""
        return flatten(self.template())[1]

    def model(self, flat: np.ndarray, spec: Spec | None = None) -> VAE:
        """A VAE (evaluation mode) holding the flat state ``flat``."""
        return self.model_from_state((spec or self.spec()).unflatten(np.asarray(flat)))

    def model_from_state(self, state: State) -> VAE:
        """A VAE (evaluation mode, DP variant under DP) holding ``state``."""
        model = VAE(self.n_genes, self.config, derive_generator(0, INIT))
        if self.config.dp is not None:
            from fedsc.methods.dp_sgd import to_dp_variant

            model = to_dp_variant(model)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        return model.eval()


def fedscgen_truth(
    adata: ad.AnnData,
    *,
    batch_key: str,
    label_key: str,
    config: FedScGenConfig,
    seed: int,
    holdout: Sequence[str] = (),
) -> FedscGenTruth:
    """The truth of a FedscGen run on ``adata`` (log-normalised ``X``, as it trained).

    Clients and splits are rebuilt exactly as :func:`fedsc.methods.fedscgen.run_fedscgen`
    builds them (default client order, inclusion ``"all"``).
    """
    cd = client_data(
        adata,
        batch_key=batch_key,
        label_key=label_key,
        validation_fraction=config.validation_fraction,
        seed=seed,
        holdout=holdout,
    )
    x_all, data, labels, splits = cd.x_all, cd.data, cd.labels, cd.splits
    clients, train = sorted(cd.train + cd.held, key=lambda c: c.index), cd.train
    vocab = sorted(set().union(*(set(v) for v in labels.values())))
    return FedscGenTruth(
        config=config,
        seed=int(seed),
        n_genes=int(x_all.shape[1]),
        names={c.index: c.name for c in clients},
        training=tuple(c.index for c in train),
        data=data,
        labels=labels,
        splits=splits,
        vocabulary=vocab,
    )


# ------------------------------------------------------------------ helpers
def _state_ops(view: ObserverView) -> list[ObservedOp]:
    return [
        o
        for o in view.operations
        if o.op == "weighted_mean" and o.tag in STATE_TAGS and o.reference is not None
    ]


def _clear(o: ObservedOp, c: int) -> np.ndarray | None:
    """Client ``c``'s contribution if the view holds it in the clear."""
    if o.contributions is None:
        return None
    row = np.asarray(o.contributions[c], dtype=np.float64)
    return row if np.isfinite(row).all() else None


def _row(view: ObserverView, attack: str, target: int, metric: str, value: float, chance: float):
    return {
        "attack": attack,
        "observer": view.observer,
        "backend": view.backend,
        "target_client": int(target),
        "round": None,
        "metric": metric,
        "value": float(value),
        "chance": float(chance),
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def _applies(truth: Any) -> FedscGenTruth | None:
    fed = getattr(truth, "fedscgen", None)
    return fed if isinstance(fed, FedscGenTruth) else None


def _capped(truth: FedscGenTruth, c: int) -> tuple[torch.Tensor, np.ndarray]:
    """Client ``c``'s scored cells (at most :data:`MAX_CELLS`) and their membership."""
    x = truth.data[c]
    member = np.zeros(x.shape[0], dtype=bool)
    member[truth.splits[c][0]] = True
    if x.shape[0] > MAX_CELLS:
        g = np.random.default_rng([truth.seed, SHADOW, c])
        keep = np.sort(g.choice(x.shape[0], MAX_CELLS, replace=False))
        return x[torch.from_numpy(keep)], member[keep]
    return x, member


def _shadows(
    truth: FedscGenTruth,
    start: State,
    aux: torch.Tensor,
    n_cells: int,
    epochs: int,
    key: int,
    *,
    dp: ShadowDP | None = None,
    rounds: int = 1,
    noise_std: float = 0.0,
) -> list[VAE]:
    """:data:`N_SHADOWS` models trained ``epochs`` epochs from ``start`` on aux cells.

    With ``dp`` (adaptive attacker): ``rounds`` rounds of ``epochs / rounds`` epochs of the
    run's DP pipeline (:func:`fedsc.privacy.membership.train_shadow_rounds`).
    """
    n_cells = min(int(n_cells), int(aux.shape[0]), MAX_AUX_CELLS)
    models = []
    for k in range(N_SHADOWS):
        g = derive_generator(truth.seed, SHADOW, key, k)
        rows = torch.randperm(aux.shape[0], generator=g)[:n_cells].sort().values
        model = truth.model_from_state(start)
        if dp is not None:
            train_shadow_rounds(
                model,
                aux,
                rows,
                rounds=rounds,
                local_epochs=epochs // rounds,
                key=(truth.seed, SHADOW, key, k),
                dp=dp,
                noise_std=noise_std,
            )
            models.append(model.eval())
            continue
        opt = make_optimizer(model)
        for e in range(epochs):
            train_epoch(
                model, opt, aux, derive_generator(truth.seed, SHADOW, key, k, EPOCH, e), rows
            )
        models.append(model.eval())
    return models


def shadow_dp(view: ObserverView, truth: FedscGenTruth) -> ShadowDP | None:
    """The run's DP pipeline as the attacker reads it (config and ledger), ``None``: no DP."""
    n_trains = [len(truth.splits[c][0]) for c in truth.training]
    return ShadowDP.of_run(truth.config, view.mechanisms, n_trains)


def _lira(model: VAE, shadows: Sequence[VAE], x: torch.Tensor) -> np.ndarray:
    """Offline LiRA score with the pooled variance (few shadows)."""
    target = np.log(cell_losses(model, x))
    out = np.log(np.stack([cell_losses(s, x) for s in shadows]))
    sigma = float(np.sqrt(np.mean(out.var(axis=0, ddof=1))))
    return (out.mean(axis=0) - target) / max(sigma, 1e-12)


def _auc(member: np.ndarray, score: np.ndarray) -> float:
    if member.all() or not member.any():
        return float("nan")
    return float(roc_auc_score(member, score))


# ------------------------------------------------------------------ membership
def fedscgen_membership(
    view: ObserverView, truth: Any, *, adaptive: bool | None = None
) -> pd.DataFrame:
    """Membership inference on a local update (coordinator) or the global model (client).

    See the module docstring for the metrics; views holding neither give no rows.
    ``adaptive`` (default: when the run used DP, :func:`shadow_dp`): the LiRA shadows are
    trained with the run's DP pipeline and the metric is ``<prefix>_lira_adaptive_auc``;
    ``False``: shadows without DP, ``<prefix>_lira_auc``.
    """
    fed = _applies(truth)
    ops = _state_ops(view)
    if fed is None or not ops or view.observer not in ("coordinator", "client"):
        return _frame([])
    last = max(ops, key=lambda o: o.index)
    spec = fed.spec()
    cfg = fed.config
    dp = shadow_dp(view, fed) if adaptive is not False else None
    lira = "lira" if dp is None else "lira_adaptive"
    n_trains = [float(len(fed.splits[c][0])) for c in fed.training]
    targets: dict[int, tuple[VAE, VAE, list[VAE]]] = {}
    with torch_threads(cfg.num_threads):
        if view.observer == "coordinator":
            prefix = "update"
            ref = spec.unflatten(np.asarray(last.reference))
            ref_model = fed.model_from_state(ref)
            for pos, c in enumerate(fed.training):
                own = _clear(last, pos)
                if own is None:
                    continue
                aux = torch.cat([fed.data[o] for o in fed.training if o != c])
                shadows = _shadows(
                    fed,
                    ref,
                    aux,
                    len(fed.splits[c][0]),
                    cfg.local_epochs,
                    key=1000 + c,
                    dp=dp,
                    noise_std=0.0 if dp is None else dp.client_noise_std(n_trains[pos]),
                )
                targets[c] = (fed.model(own, spec), ref_model, shadows)
        else:
            prefix = "global"
            if last.aggregate is None or view.client is None:
                return _frame([])
            first = min(ops, key=lambda o: o.index)
            init = spec.unflatten(np.asarray(first.reference))
            model = fed.model(last.aggregate, spec)
            me = fed.training[view.client] if view.client < len(fed.training) else None
            if me is None:
                return _frame([])
            aux = fed.data[me][torch.from_numpy(fed.splits[me][0])]
            shadows = _shadows(
                fed,
                init,
                aux,
                aux.shape[0],
                len(ops) * cfg.local_epochs,
                key=me,
                dp=dp,
                rounds=len(ops),
                noise_std=0.0 if dp is None else dp.mean_noise_std(n_trains),
            )
            init_model = fed.model_from_state(init)
            targets = {c: (model, init_model, shadows) for c in fed.training if c != me}
        rows: list[dict[str, Any]] = []
        pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for c, (model, ref_model, shadows) in targets.items():
            x, member = _capped(fed, c)
            loss = cell_losses(model, x)
            scores = {
                "loss": -loss,
                "reference": cell_losses(ref_model, x) - loss,
                lira: _lira(model, shadows, x),
            }
            for name, score in scores.items():
                metric = f"{prefix}_{name}_auc"
                rows.append(_row(view, "fedscgen_membership", c, metric, _auc(member, score), 0.5))
                pooled.setdefault(metric, []).append((member, score))
    for metric, parts in pooled.items():
        member = np.concatenate([m for m, _ in parts])
        score = np.concatenate([s for _, s in parts])
        rows.append(
            _row(view, "fedscgen_membership", -1, f"{metric}_pooled", _auc(member, score), 0.5)
        )
    return _frame(rows)


# ------------------------------------------------------------------ revealed values
def revealed_from_view(view: ObserverView, truth: FedscGenTruth) -> dict[str, Any] | None:
    """FedscGen's revealed correction values as ``view`` holds them (``None``: not held).

    The same mapping as :attr:`fedsc.privacy.membership.FedScGenViews.revealed`
    (``vocabulary``, ``n_clients_per_type``, ``shared_types``, ``dominant`` type -> client
    index, ``mean_latent`` type -> M_t, ``dominant_count``), read from the aggregates of
    the ``correction/*`` operations.
    """
    by_tag = {o.tag: o for o in view.operations if o.aggregate is not None}
    presence = by_tag.get("correction/presence")
    if presence is None:
        return None
    vocab = list(truth.vocabulary)
    n_clients = np.rint(np.asarray(presence.aggregate)).astype(int)
    shared = [vocab[j] for j in np.flatnonzero(n_clients >= 2)]
    order = sorted(truth.names)
    dominant: dict[str, int] = {}
    mean_latent: dict[str, np.ndarray] = {}
    count: dict[str, float] = {}
    won, means = by_tag.get("correction/dominant"), by_tag.get("correction/mean_latent")
    if shared and (won is None or means is None):
        return None
    if shared and won is not None and means is not None:
        winners = np.rint(np.asarray(won.aggregate)).astype(int)
        dominant = {t: order[int(w)] for t, w in zip(shared, winners, strict=True)}
        # flatten() orders the keys: "count" (one per shared type), then "latent_sum".
        flat = np.asarray(means.aggregate)
        n = len(shared)
        sums = flat[n:].reshape(n, -1)
        for s, t in enumerate(shared):
            count[t] = float(flat[s])
            mean_latent[t] = sums[s] / flat[s]
    return {
        "vocabulary": vocab,
        "n_clients_per_type": {t: int(k) for t, k in zip(vocab, n_clients, strict=True)},
        "shared_types": shared,
        "dominant": dominant,
        "mean_latent": mean_latent,
        "dominant_count": count,
    }


def _global_model(view: ObserverView, fed: FedscGenTruth) -> VAE | None:
    ops = [o for o in _state_ops(view) if o.aggregate is not None]
    if not ops:
        return None
    return fed.model(max(ops, key=lambda o: o.index).aggregate)  # type: ignore[arg-type]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def fedscgen_revealed_values(view: ObserverView, truth: Any) -> pd.DataFrame:
    """Decode each revealed M_t; correlate with the dominant client's true mean expression.

    Needs the correction's revealed aggregates and the global model in the view
    (coordinator, client). A client view skips the types it dominates itself.
    """
    fed = _applies(truth)
    if fed is None or view.observer not in ("coordinator", "client"):
        return _frame([])
    rev = revealed_from_view(view, fed)
    model = _global_model(view, fed)
    if rev is None or model is None or not rev["mean_latent"]:
        return _frame([])
    types = list(rev["mean_latent"])
    with torch_threads(fed.config.num_threads):
        z = torch.as_tensor(np.stack([rev["mean_latent"][t] for t in types]), dtype=torch.float32)
        decoded = decode(model, z).numpy().astype(np.float64)
    profiles = dict(zip(types, decoded, strict=True))
    center = decoded.mean(axis=0)
    me = None if view.client is None else sorted(fed.names)[view.client]
    rows = []
    for t in types:
        owner = rev["dominant"][t]
        if owner == me:
            continue
        cells = fed.labels[owner] == t
        true = fed.data[owner][torch.from_numpy(cells)].to(torch.float64).mean(0).numpy()
        others = [u for u in types if u != t]
        for metric, ref in (("pearson", 0.0), ("pearson_centered", center)):
            value = _pearson(profiles[t] - ref, true - ref)
            chance = (
                float(np.mean([_pearson(profiles[u] - ref, true - ref) for u in others]))
                if others
                else float("nan")
            )
            rows.append(_row(view, "fedscgen_revealed_values", owner, metric, value, chance))
        err = abs(rev["dominant_count"][t] - float(cells.sum()))
        rows.append(
            _row(view, "fedscgen_revealed_values", owner, "count_abs_error", err, float("nan"))
        )
    return _frame(rows)


# ------------------------------------------------------------------ property inference
def fedscgen_property(view: ObserverView, truth: Any) -> pd.DataFrame:
    """Each client's cell-type composition from its update and from the revealed values.

    See the module docstring; metrics are over the targeted clients (``target_client``
    -1). A client view targets the other clients.
    """
    fed = _applies(truth)
    if fed is None or view.observer not in ("coordinator", "client"):
        return _frame([])
    vocab = fed.vocabulary
    me = None if view.client is None else sorted(fed.names)[view.client]
    rows: list[dict[str, Any]] = []
    ops = _state_ops(view)
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
            own = _clear(last, pos)
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
            _row(
                view,
                "fedscgen_property",
                -1,
                "revealed_presence_accuracy",
                float((pt == pp).mean()),
                float(max(pt.mean(), 1.0 - pt.mean())),
            )
        )
    return _frame(rows)


def _prefixed(view: ObserverView, prefix: str, summary: list[dict[str, Any]]) -> list[dict]:
    return [
        _row(view, "fedscgen_property", -1, f"{prefix}_{r['metric']}", r["value"], r["chance"])
        for r in summary
    ]
