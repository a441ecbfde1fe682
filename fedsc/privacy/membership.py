"""Membership inference against FedscGen (issue 9, point 2c).

Members of client ``c`` are its training cells, non-members its held-out 10 % validation
cells: FedscGen's own 90/10 split, reproduced exactly from the run seed
(``split_train_validation(n, fraction, derive_generator(seed, SPLIT, c))``, as
:class:`fedsc.methods.fedscgen.FedScGenMethod` draws it). Both come from the same client,
batch and cell-type mix, so any difference in the attacked model's behaviour on them is
memorisation.

Observers and what they attack (:func:`capture_fedscgen_views` records both):

``"coordinator"``
    The plaintext coordinator. It sees every client's whole state right after its local
    training in the last round (a recording :class:`smpc.mechanisms.Mechanism` captures
    each client's contribution as the aggregator receives it) and the state it broadcast
    before that round. Under secure aggregation it sees neither contribution.
``"client"``
    Every client (and the coordinator) sees the final global model.

Attacks (one small function each; every one returns tidy rows, see :data:`COLUMNS`):

- :func:`loss_threshold_attack` (Yeom et al., CSF 2018): score = - per-cell loss.
- :func:`reference_attack`: score = loss under a reference model - loss under the
  attacked model (difficulty calibration, Watson et al., ICLR 2022). For the coordinator the
  reference is the broadcast state the client started from, which it holds anyway: the
  score is how much the client's own update improved the cell.
- :func:`lira_offline_attack` (offline LiRA, Carlini et al., IEEE S&P 2022): shadow models
  trained the way the target was, on auxiliary data that excludes the target client
  (:func:`train_shadow_models`), give per-cell "OUT" loss distributions (Gaussian on the
  log loss, with the pooled variance when there are few shadows); score = how far below
  its OUT distribution the attacked model's loss of the cell lies.

Metrics: ROC AUC (chance 0.5) and the true-positive rate at a low false-positive rate
(chance = that rate), from :func:`sklearn.metrics.roc_curve`. A rate ``f`` is reported only
when there are at least ``1 / f`` non-members; otherwise the value is NaN and ``note``
says so (10 validation cells per 100-cell pancreas client resolve no FPR below 10 %;
pooling the five clients resolves 2 %). :func:`summarize_over_seeds` turns the rows of
several seeds into a mean with a t interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

import smpc
from fedsc.data.clients import Client, split_clients
from fedsc.data.validate import get_representation, obs_column
from fedsc.errors import FedscInputError
from fedsc.federation import State
from fedsc.federation.seeding import derive_rng
from fedsc.methods.fedscgen import FedScGenConfig, FedScGenResult, model_from_state, run_fedscgen
from fedsc.methods.vae import (
    EPOCH,
    INIT,
    SPLIT,
    VAE,
    VAEConfig,
    as_tensor,
    derive_generator,
    make_optimizer,
    split_train_validation,
    torch_threads,
    train_epoch,
)
from fedsc.privacy.views import client_model
from smpc.flatten import flatten
from smpc.mechanisms import ClientContext, Mechanism, ResultContext, make_mechanism

if TYPE_CHECKING:
    from fedsc.privacy.accounting import DPConfig

__all__ = [
    "COLUMNS",
    "FedScGenViews",
    "ShadowDP",
    "ViewRecorder",
    "capture_fedscgen_views",
    "cell_losses",
    "fedscgen_membership",
    "fedscgen_membership_scores",
    "lira_offline_attack",
    "loss_threshold_attack",
    "membership_metrics",
    "membership_over_seeds",
    "reference_attack",
    "scores_to_metrics",
    "summarize_over_seeds",
    "train_shadow_models",
    "train_shadow_rounds",
]

#: Columns of every attack's rows (``note`` explains a NaN value).
COLUMNS = [
    "attack",
    "observer",
    "target_client",
    "metric",
    "value",
    "chance",
    "n_members",
    "n_nonmembers",
    "seed",
    "note",
]

#: Purpose tag of the shadow models' generators (distinct from FedscGen's tags).
SHADOW = 0x5AD0


# ------------------------------------------------------------------------ the views
class ViewRecorder(Mechanism):
    """Identity mechanism that records what the aggregator is given and reveals.

    Wrap an aggregator with it (``smpc.make_aggregator(name, mechanisms=[recorder])``):
    it keeps each client's flat contribution (what a plaintext coordinator receives) and
    each revealed result (what every observer learns), keyed by ledger scope. The
    per-client copies the wrapper makes are this same object, so one recorder sees all.

    Parameters
    ----------
    keep
        ``keep(round, tag)`` decides which operations' contributions and results are kept
        (results of the correction, ledger tags ``correction/...``, always are). ``None``
        keeps everything.
    """

    name: ClassVar[str] = "view_recorder"
    ops: ClassVar[frozenset[str]] = frozenset({"weighted_mean", "sum"})

    def __init__(self, keep: Callable[[int | None, str | None], bool] | None = None) -> None:
        self.keep = keep
        #: ``(round, tag, op)`` -> {client: (flat contribution, weight)}.
        self.contributions: dict[tuple[Any, ...], dict[int, tuple[np.ndarray, float | None]]] = {}
        #: ``(round, tag, op)`` -> list of revealed flat results, in call order.
        self.results: dict[tuple[Any, ...], list[np.ndarray]] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> ViewRecorder:
        return self

    def transform_contribution(self, contribution: np.ndarray, ctx: ClientContext) -> np.ndarray:
        """Record the client's contribution (a copy) and pass it on unchanged."""
        if self.keep is None or self.keep(ctx.round, ctx.tag):
            key = (ctx.round, ctx.tag, ctx.op)
            self.contributions.setdefault(key, {})[ctx.client] = (contribution.copy(), ctx.weight)
        return contribution

    def transform_result(self, result: np.ndarray, ctx: ResultContext) -> np.ndarray:
        """Record the revealed result (see ``keep``) and pass it on unchanged."""
        correction = ctx.round is None and str(ctx.tag).startswith("correction")
        if correction or self.keep is None or self.keep(ctx.round, ctx.tag):
            self.results.setdefault((ctx.round, ctx.tag, ctx.op), []).append(np.array(result))
        return result


@dataclass
class FedScGenViews:
    """One FedscGen run and what each observer saw (:func:`capture_fedscgen_views`).

    Attributes
    ----------
    result
        The run.
    config, seed
        Its settings (public hyper-parameters) and seed.
    clients
        The training clients, in federation order (``index`` = position).
    data
        Each client's log-normalised expression (cells x genes).
    labels
        Each client's cell-type labels.
    splits
        Each client's (training, validation) positions, as FedscGen drew them.
    local_states
        Each client's state after its local training in the last round, as the
        aggregator received it (unflattened from the recorded contribution).
    broadcast_state
        The global state broadcast at the start of the last round.
    initial_state
        The global state before round 0 (broadcast to every client).
    revealed
        The correction's revealed values: ``vocabulary``, ``n_clients_per_type``,
        ``shared_types``, ``dominant`` (type -> client index), ``mean_latent``
        (type -> M_t as revealed) and ``dominant_count`` (type -> revealed count).
    backend
        The aggregation backend.
    mechanisms
        The mechanisms the run applied (ledger descriptions; a ``gaussian`` one is
        client-level DP).
    """

    result: FedScGenResult
    config: FedScGenConfig
    seed: int
    clients: list[Client]
    data: dict[int, torch.Tensor]
    labels: dict[int, np.ndarray]
    splits: dict[int, tuple[np.ndarray, np.ndarray]]
    local_states: dict[int, State]
    broadcast_state: State
    initial_state: State
    revealed: dict[str, Any]
    backend: str
    recorder: ViewRecorder = field(repr=False, default_factory=ViewRecorder)
    mechanisms: tuple[dict[str, Any], ...] = ()

    @property
    def n_genes(self) -> int:
        """Number of genes of the model."""
        return self.result.model.n_genes

    def model(self, state: State) -> VAE:
        """A VAE (evaluation mode, the GroupNorm DP variant under DP) holding ``state``."""
        if self.config.dp is not None:
            from fedsc.methods.dp_sgd import dp_model_from_state

            return dp_model_from_state(state, self.n_genes, self.config)
        return model_from_state(state, self.n_genes, self.config)

    @property
    def shadow_dp(self) -> ShadowDP | None:
        """The run's DP pipeline (:class:`ShadowDP`), ``None`` without DP."""
        n_trains = [len(self.splits[c.index][0]) for c in self.clients]
        return ShadowDP.of_run(self.config, self.mechanisms, n_trains)

    def local_model(self, client: int) -> VAE:
        """Client ``client``'s model after its last-round local training."""
        return self.model(self.local_states[client])

    @property
    def global_model(self) -> VAE:
        """The final global model."""
        return self.result.model


@dataclass
class ClientData:
    """A FedscGen run's clients as it trained them: cells, labels and train/validation splits.

    ``data`` and ``labels`` cover every client (held-out ones too), by client index;
    ``splits`` (numpy index arrays) the training clients only.
    """

    train: list[Client]
    held: list[Client]
    x_all: torch.Tensor
    data: dict[int, torch.Tensor]
    labels: dict[int, np.ndarray]
    splits: dict[int, tuple[np.ndarray, np.ndarray]]


def client_data(
    adata: ad.AnnData,
    *,
    batch_key: str,
    label_key: str,
    validation_fraction: float,
    seed: int,
    holdout: Sequence[str] = (),
    layer: str | None = None,
    client_order: Sequence[str] | None = None,
) -> ClientData:
    """A FedscGen run's clients and splits, rebuilt as ``run_fedscgen`` builds them.

    The attacks' ground truth (:func:`fedsc.methods.fedscgen.run_fedscgen`: same client
    numbering, same seeded splits).
    """
    train, held = split_clients(adata, batch_key, holdout=holdout, order=client_order)
    x_all = as_tensor(get_representation(adata, layer=layer))
    clients = sorted(train + held, key=lambda c: c.index)
    data = {c.index: x_all[torch.from_numpy(np.asarray(c.obs_indices))] for c in clients}
    labels = {
        c.index: obs_column(c.adata, label_key, "label_key").astype(str).to_numpy() for c in clients
    }
    splits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in train:
        tr, val = split_train_validation(
            data[c.index].shape[0], validation_fraction, derive_generator(seed, SPLIT, c.index)
        )
        splits[c.index] = (tr.numpy(), val.numpy())
    return ClientData(train, held, x_all, data, labels, splits)


def capture_fedscgen_views(
    adata: ad.AnnData,
    *,
    batch_key: str,
    label_key: str,
    config: FedScGenConfig,
    seed: int = 0,
    backend: str = "plaintext",
    layer: str | None = None,
    client_order: Sequence[str] | None = None,
    backend_options: dict[str, Any] | None = None,
    mechanisms: Sequence[Any] | None = None,
    mechanism_seed: int | None = None,
) -> FedScGenViews:
    """Run FedscGen on every batch of ``adata`` and record what each observer sees.

    No FedscGen code is changed: a :class:`ViewRecorder` wrapped around the backend keeps
    the last round's contributions (the clients' local states) and every revealed
    result; the splits are redrawn from the seed exactly as FedscGen draws them.
    Every batch trains (no hold-out), all cells are used (inclusion ``"all"``).

    Parameters
    ----------
    adata
        Cells x genes, log-normalised in ``X`` (or ``layers[layer]``); not modified.
    batch_key, label_key
        ``obs`` columns of the batch (one client each) and the cell type.
    config, seed
        The FedscGen run.
    backend
        ``"plaintext"`` or ``"crypten"``; the recorder sees contributions before they are
        shared either way (the attack on local states models a plaintext coordinator).
    layer, client_order
        As in :func:`fedsc.methods.fedscgen.run_fedscgen`.
    backend_options
        Options of :func:`smpc.make_aggregator`.
    mechanisms, mechanism_seed
        Mechanisms applied before the recorder (e.g. the ``gaussian`` mechanism of
        client-level DP, with ``config.dp={"level": "client", ...}`` for the GroupNorm
        variant), as for :func:`smpc.make_aggregator`. The local states are then what the
        coordinator computes from the shared contributions
        (:func:`fedsc.privacy.views.client_model`: the client's noised model).

    Returns
    -------
    :class:`FedScGenViews`.
    """
    last = config.rounds - 1
    recorder = ViewRecorder(keep=lambda r, tag: r == last)
    a = adata.copy()
    with smpc.make_aggregator(
        backend,
        mechanisms=[*(mechanisms or []), recorder],
        mechanism_seed=mechanism_seed,
        **(backend_options or {}),
    ) as agg:
        result = run_fedscgen(
            a,
            batch_key=batch_key,
            label_key=label_key,
            aggregator=agg,
            config=config,
            seed=seed,
            layer=layer,
            client_order=client_order,
            snapshot_every_round=True,
            show_progress=False,
        )
        described = tuple(m.describe() for m in getattr(agg, "mechanisms", ()) if m is not recorder)
    clients = client_data(
        a,
        batch_key=batch_key,
        label_key=label_key,
        validation_fraction=config.validation_fraction,
        seed=seed,
        layer=layer,
        client_order=client_order,
    )
    train, x_all, data = clients.train, clients.x_all, clients.data
    labels, splits = clients.labels, clients.splits
    init_model = VAE(x_all.shape[1], config, derive_generator(seed, INIT))
    if config.dp is not None:
        from fedsc.methods.dp_sgd import to_dp_variant

        init_model = to_dp_variant(init_model)
    initial = {k: v.detach().clone() for k, v in init_model.state_dict().items()}
    spec = flatten(initial)[1]
    key = (last, "fedavg", "weighted_mean")
    if key not in recorder.contributions:
        raise FedscInputError(
            f"no FedAvg contributions were recorded in round {last}; views need the default "
            "FedAvg strategy (ledger tag 'fedavg')."
        )
    snaps = result.federation_result.snapshots
    broadcast = initial if last == 0 else snaps[last - 1]
    reference = flatten(broadcast)[0]
    local_states = {}
    for pos, c in enumerate(train):
        row, weight = recorder.contributions[key][pos]
        model_row = client_model(
            row,
            mechanisms=described,
            op="weighted_mean",
            tag="fedavg",
            weight=weight,
            reference=reference,
        )
        local_states[c.index] = spec.unflatten(model_row)
    revealed = _revealed_values(result, recorder, train, config.latent)
    return FedScGenViews(
        result=result,
        config=config,
        seed=int(seed),
        clients=list(train),
        data=data,
        labels=labels,
        splits=splits,
        local_states=local_states,
        broadcast_state={k: v.clone() for k, v in broadcast.items()},
        initial_state=initial,
        revealed=revealed,
        backend=backend,
        recorder=recorder,
        mechanisms=described,
    )


def _revealed_values(
    result: FedScGenResult, recorder: ViewRecorder, clients: Sequence[Client], latent: int
) -> dict[str, Any]:
    summary = result.info["correction"]
    shared = list(summary["shared_types"])
    index = {c.name: c.index for c in clients}
    dominant = {t: index[name] for t, name in summary["dominant"].items()}
    mean_latent: dict[str, np.ndarray] = {}
    count: dict[str, float] = {}
    found = recorder.results.get((None, "correction/mean_latent", "sum"), [])
    if shared and found:
        # flatten() orders the keys: "count" (one per shared type), then "latent_sum".
        flat = found[-1]
        n = len(shared)
        counts = flat[:n]
        sums = flat[n : n + n * latent].reshape(n, latent)
        for s, t in enumerate(shared):
            count[t] = float(counts[s])
            mean_latent[t] = sums[s] / counts[s]
    return {
        "vocabulary": list(summary["vocabulary"]),
        "n_clients_per_type": dict(summary["n_clients_per_type"]),
        "shared_types": shared,
        "dominant": dominant,
        "mean_latent": mean_latent,
        "dominant_count": count,
    }


# ------------------------------------------------------------------------ adaptive shadows
@dataclass(frozen=True)
class ShadowDP:
    """The target run's DP pipeline, for shadows trained the way the target was.

    LiRA's shadows must be trained like the target (Carlini et al., IEEE S&P 2022); against
    a DP target that includes its clipping and noise, i.e. an adaptive attacker (Nasr et
    al., IEEE S&P 2021, instantiate DP adversaries this way). Shadows trained without DP
    compare the target's noised model with un-noised OUT models.

    Attributes
    ----------
    dp_sgd
        Cell-level DP: the run's DP-SGD settings (σ resolved for the federation, clip,
        seeded: the shadows' noise is the attacker's own), or ``None``.
    clip
        Client-level DP (the ``gaussian`` mechanism): the L2 bound C on each round's
        update, or ``None``.
    noise_multiplier, weighting, max_weight, min_honest
        The ``gaussian`` mechanism's settings (ledger description).
    n_clients
        K, the clients of each aggregation.
    """

    dp_sgd: DPConfig | None = None
    clip: float | None = None
    noise_multiplier: float = 0.0
    weighting: str = "uniform"
    max_weight: float | None = None
    min_honest: int | None = None
    n_clients: int = 1

    @classmethod
    def of_run(
        cls,
        config: FedScGenConfig,
        mechanisms: Sequence[Mapping[str, Any]],
        n_trains: Sequence[int],
    ) -> ShadowDP | None:
        """The DP pipeline of a FedscGen run, ``None`` if it ran without DP.

        Parameters
        ----------
        config
            The config the run trained with (``dp``: cell-level DP-SGD settings).
        mechanisms
            The run's mechanism descriptions (ledger; a ``gaussian`` one that applies to
            the state aggregation is client-level DP: its clipping, weighting and noise).
        n_trains
            Every training client's training cells (σ of DP-SGD is resolved over them).
        """
        dp_sgd = None
        if config.dp is not None and config.dp.get("level", "client") == "cell":
            from fedsc.methods.dp_sgd import resolve_for_clients
            from fedsc.privacy.accounting import DPConfig

            conf = DPConfig.from_dict(dict(config.dp))
            assert conf is not None
            conf = resolve_for_clients(
                conf, list(n_trains), config.batch_size, config.local_epochs, config.rounds
            )
            dp_sgd = replace(conf, simulated=True)
        # the gaussian mechanisms that act on the state aggregation (rebuilt from the
        # ledger description, so this follows the mechanism's own rules)
        gauss = [
            m
            for m in mechanisms
            if m.get("name") == "gaussian" and make_mechanism(dict(m)).applies_to("weighted_mean")
        ]
        if dp_sgd is None and not gauss:
            return None
        if not gauss:
            return cls(dp_sgd=dp_sgd, n_clients=len(n_trains))
        g = gauss[0]
        return cls(
            dp_sgd=dp_sgd,
            clip=float(g["clip"]),
            noise_multiplier=float(g["noise_multiplier"]),
            weighting=str(g.get("weighting", "uniform")),
            max_weight=None if g.get("max_weight") is None else float(g["max_weight"]),
            min_honest=None if g.get("min_honest") is None else int(g["min_honest"]),
            n_clients=len(n_trains),
        )

    def _client_std(self, weight: float) -> float:
        k = self.n_clients
        t = k if self.min_honest is None else min(self.min_honest, k)
        std = self.noise_multiplier * float(self.clip or 0.0) / math.sqrt(t)
        if self.weighting == "weighted":
            assert self.max_weight is not None
            std *= self.max_weight / weight
        return std

    def client_noise_std(self, weight: float) -> float:
        """Noise std per value on one client's model as the coordinator computes it.

        ``σ C / √t`` (t = min(min_honest, K)); weighted: times ``max_weight / w_c``
        (:mod:`smpc.mechanisms.gaussian`).
        """
        return self._client_std(weight)

    def mean_noise_std(self, weights: Sequence[float]) -> float:
        """Noise std per value on the released mean of the K clients' models.

        Uniform: ``sqrt(Σ_c s_c²) / K``; weighted: ``sqrt(Σ_c (w_c s_c)²) / W``, with
        ``s_c`` the client's own noise std.
        """
        w = np.asarray(weights, dtype=np.float64)
        s = np.array([self._client_std(float(x)) for x in w])
        if self.weighting == "weighted":
            return float(np.sqrt(np.sum((w * s) ** 2)) / w.sum())
        return float(np.sqrt(np.sum(s**2)) / len(w))


def _shadow_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for ``(seed, *keys)`` (DP-SGD's trainer takes one seed)."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, np.uint64)
    return int(state[0] & ((1 << 63) - 1))


def train_shadow_rounds(
    model: VAE,
    aux: torch.Tensor,
    rows: torch.Tensor,
    *,
    rounds: int,
    local_epochs: int,
    key: Sequence[int],
    dp: ShadowDP,
    noise_std: float,
) -> VAE:
    """Train one adaptive shadow in place: ``rounds`` rounds of the target's DP pipeline.

    Each round starts a fresh Adam (as FedscGen's clients do) and trains ``local_epochs``
    epochs on ``aux[rows]``: with DP-SGD (:func:`fedsc.methods.dp_sgd.local_train`, the
    run's σ and clip) under cell-level DP, else FedscGen's trainer with the epoch
    generators ``derive_generator(*key, EPOCH, e)`` (those of the non-adaptive shadows).
    Under client-level DP the round's update is then clipped to L2 norm ``dp.clip`` (the
    whole flat state, as the ``gaussian`` mechanism clips it) and ``N(0, noise_std²)``
    is added to every value (the noise the attacked model carries per round).

    Parameters
    ----------
    model
        A VAE holding the start state (DP variant under DP); trained in place.
    aux, rows
        The auxiliary cells and the rows the shadow trains on.
    rounds, local_epochs
        Federation rounds and local epochs per round the shadow imitates.
    key
        Generator key of this shadow (``(seed, SHADOW, ...)``).
    dp
        The run's DP pipeline.
    noise_std
        Client-level noise std per value and round (:meth:`ShadowDP.client_noise_std` for
        a client's model, :meth:`ShadowDP.mean_noise_std` for the global one).
    """
    seed, *rest = (int(k) for k in key)
    for r in range(rounds):
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = make_optimizer(model)
        if dp.dp_sgd is not None:
            from fedsc.methods.dp_sgd import local_train

            local_train(
                model,
                opt,
                aux,
                rows,
                seed=_shadow_seed(seed, *rest),
                client=0,
                round_index=r,
                local_epochs=local_epochs,
                dp=dp.dp_sgd,
            )
        else:
            for j in range(local_epochs):
                g = derive_generator(seed, *rest, EPOCH, r * local_epochs + j)
                train_epoch(model, opt, aux, g, rows)
        if dp.clip is None:
            continue
        flat_start, spec = flatten(start)
        flat_start = np.asarray(flat_start, dtype=np.float64)
        state = {k: v.detach() for k, v in model.state_dict().items()}
        update = np.asarray(flatten(state)[0], dtype=np.float64) - flat_start
        norm = float(np.linalg.norm(update))
        if norm > dp.clip:
            update = update * (dp.clip / norm)
        noise = derive_rng(seed, *rest, EPOCH, r).standard_normal(update.shape)
        new = spec.unflatten(flat_start + update + noise_std * noise)
        model.load_state_dict({k: torch.as_tensor(v, dtype=state[k].dtype) for k, v in new.items()})
    return model


# ------------------------------------------------------------------------ scores
@torch.no_grad()
def cell_losses(model: VAE, x: torch.Tensor, *, kl: bool = False) -> np.ndarray:
    """Per-cell loss in evaluation mode (z = μ): mean squared error over genes.

    With ``kl=True`` adds ``kl_weight`` x the cell's KL divergence (the VAE loss per cell).
    """
    model.eval()
    recon, mu, logvar = model(x)
    loss = ((recon - x) ** 2).mean(dim=1).to(torch.float64)
    if kl:
        kld = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        loss = loss + model.config.kl_weight * kld.to(torch.float64)
    return loss.numpy()


def membership_metrics(
    scores: np.ndarray,
    is_member: np.ndarray,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
    **columns: Any,
) -> list[dict[str, Any]]:
    """AUC and TPR at each false-positive rate of ``scores`` (higher = member).

    ``columns`` (attack, observer, target_client, seed) are copied into every row. A TPR at
    rate ``f`` needs ``>= 1 / f`` non-members; with fewer its value is NaN and ``note``
    says so.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_member, dtype=bool)
    n_in, n_out = int(y.sum()), int((~y).sum())
    base = {**columns, "n_members": n_in, "n_nonmembers": n_out}
    if n_in == 0 or n_out == 0:
        raise FedscInputError("membership metrics need at least one member and one non-member.")
    rows = [{**base, "metric": "auc", "value": float(roc_auc_score(y, scores)), "chance": 0.5}]
    fpr, tpr, _ = roc_curve(y, scores)
    for f in fprs:
        row = {**base, "metric": f"tpr@{f:g}fpr", "chance": float(f)}
        if n_out * f < 1.0 - 1e-9:
            row["value"] = float("nan")
            row["note"] = f"{n_out} non-members cannot resolve FPR {f:g} (need {math.ceil(1 / f)})"
        else:
            row["value"] = float(np.max(tpr[fpr <= f + 1e-12]))
        rows.append(row)
    for row in rows:
        row.setdefault("note", "")
    return rows


def _membership(n: int, train_idx: np.ndarray) -> np.ndarray:
    y = np.zeros(n, dtype=bool)
    y[np.asarray(train_idx)] = True
    return y


def loss_threshold_attack(
    model: VAE,
    x: torch.Tensor,
    train_idx: np.ndarray,
    *,
    observer: str,
    target_client: Any,
    seed: int,
    kl: bool = False,
    fprs: Sequence[float] = (0.01, 0.001),
) -> pd.DataFrame:
    """Loss-threshold attack (Yeom et al. 2018): score = - per-cell loss under ``model``.

    Parameters
    ----------
    model
        The attacked model (a client's local state or the global model).
    x
        The target client's cells (members and non-members).
    train_idx
        Rows of ``x`` that were trained on (members); the others are non-members.
    observer, target_client, seed
        Copied into the rows.
    kl
        Include the KL term (the VAE loss) rather than the reconstruction error only.
    fprs
        False-positive rates for the TPR rows.
    """
    scores = -cell_losses(model, x, kl=kl)
    return _frame(
        membership_metrics(
            scores,
            _membership(x.shape[0], train_idx),
            fprs=fprs,
            attack="loss_threshold",
            observer=observer,
            target_client=target_client,
            seed=seed,
        )
    )


def reference_attack(
    model: VAE,
    reference: VAE,
    x: torch.Tensor,
    train_idx: np.ndarray,
    *,
    observer: str,
    target_client: Any,
    seed: int,
    kl: bool = False,
    fprs: Sequence[float] = (0.01, 0.001),
) -> pd.DataFrame:
    """Calibrated loss attack: score = loss under ``reference`` - loss under ``model``.

    For the coordinator, ``reference`` is the state it broadcast before the client's
    update, so the score is the update's per-cell improvement (no shadow training).
    """
    scores = cell_losses(reference, x, kl=kl) - cell_losses(model, x, kl=kl)
    return _frame(
        membership_metrics(
            scores,
            _membership(x.shape[0], train_idx),
            fprs=fprs,
            attack="reference",
            observer=observer,
            target_client=target_client,
            seed=seed,
        )
    )


def train_shadow_models(
    start_state: State,
    aux: torch.Tensor,
    config: VAEConfig,
    *,
    n_shadows: int,
    n_cells: int,
    epochs: int,
    seed: int,
    dp: ShadowDP | None = None,
    rounds: int = 1,
    noise_std: float = 0.0,
) -> list[VAE]:
    """Shadow models: ``epochs`` epochs from ``start_state`` on random ``n_cells`` of ``aux``.

    Each shadow draws its own cells (without replacement) and its own minibatches, dropout
    and noise from ``derive_generator(seed, SHADOW, k)``; a fresh Adam, as FedscGen's
    clients use. The attacker knows the public hyper-parameters (``config``) and the
    starting state (the broadcast state, or the initial one for whole-training shadows).

    With ``dp`` (the adaptive attacker) the shadows imitate the target's DP pipeline
    instead: ``rounds`` rounds of ``epochs / rounds`` epochs each
    (:func:`train_shadow_rounds`, client-level noise ``noise_std`` per round). A config
    with ``dp`` set builds the GroupNorm DP variant of the VAE either way.
    """
    if aux.shape[0] < config.batch_size:
        raise FedscInputError(
            f"auxiliary data has {aux.shape[0]} cells, fewer than one minibatch "
            f"({config.batch_size}); give the attacker more cells."
        )
    if dp is not None and (rounds < 1 or epochs % rounds):
        raise FedscInputError(
            f"adaptive shadows train {epochs} epochs in {rounds} rounds: give epochs as "
            "rounds x local_epochs."
        )
    n_cells = min(int(n_cells), int(aux.shape[0]))
    models = []
    n_genes = int(aux.shape[1])
    for k in range(n_shadows):
        g = derive_generator(seed, SHADOW, k)
        rows = torch.randperm(aux.shape[0], generator=g)[:n_cells].sort().values
        model = VAE(n_genes, config, derive_generator(seed, SHADOW, k, 1))
        if getattr(config, "dp", None) is not None:
            from fedsc.methods.dp_sgd import to_dp_variant

            model = to_dp_variant(model)
        model.load_state_dict(start_state)
        if dp is not None:
            train_shadow_rounds(
                model,
                aux,
                rows,
                rounds=rounds,
                local_epochs=epochs // rounds,
                key=(seed, SHADOW, k),
                dp=dp,
                noise_std=noise_std,
            )
            models.append(model.eval())
            continue
        opt = make_optimizer(model)
        for e in range(epochs):
            train_epoch(model, opt, aux, derive_generator(seed, SHADOW, k, EPOCH, e), rows)
        models.append(model.eval())
    return models


def lira_offline_attack(
    model: VAE,
    shadows: Sequence[VAE],
    x: torch.Tensor,
    train_idx: np.ndarray,
    *,
    observer: str,
    target_client: Any,
    seed: int,
    kl: bool = False,
    global_variance: bool | None = None,
    fprs: Sequence[float] = (0.01, 0.001),
) -> pd.DataFrame:
    """Offline LiRA: per-cell Gaussian OUT distribution of the log loss from shadows.

    Every shadow is an OUT model for the target cells (trained without the target client).
    For cell i with log losses ``l_k(i)`` under the shadows, ``μ_i`` is their mean and
    ``σ`` their standard deviation (pooled over cells when ``global_variance``, the default
    with fewer than 16 shadows, as Carlini et al. advise for few shadows); the score is
    ``(μ_i - log loss(i)) / σ``, monotone in the one-sided likelihood ratio of the offline
    attack.
    """
    scores = _lira_scores(model, shadows, x, kl, global_variance)
    return _frame(
        membership_metrics(
            scores,
            _membership(x.shape[0], train_idx),
            fprs=fprs,
            attack="lira_offline",
            observer=observer,
            target_client=target_client,
            seed=seed,
        )
    )


def _frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in df:
            df[col] = "" if col == "note" else np.nan
    return df[COLUMNS]


# ------------------------------------------------------------------------ on FedscGen
def fedscgen_membership_scores(
    views: FedScGenViews,
    *,
    observers: Sequence[str] = ("coordinator", "client"),
    attacks: Sequence[str] = ("loss_threshold", "reference", "lira_offline"),
    n_shadows: int = 4,
    kl: bool = False,
    adaptive: bool | None = None,
) -> pd.DataFrame:
    """Per-cell attack scores against every client of a captured run (higher = member).

    - ``"coordinator"`` attacks client c's last-round local state; the reference model is
      the broadcast state; shadows are ``local_epochs`` epochs from the broadcast state on
      ``N_c`` cells of the other clients' data (the attacker's auxiliary data: a stand-in
      for a public reference of the same tissue).
    - ``"client"`` attacks the final global model; the reference is the initial state
      (every client receives it); shadows train ``rounds x local_epochs`` epochs from the
      initial state on ``N_c`` cells of the other clients' data.

    ``adaptive`` (default: when the run used DP): the LiRA shadows are trained with the
    run's DP pipeline (:class:`ShadowDP`: DP-SGD with its σ and clip, or each round's
    update clipped and noised like the attacked model's); the attack is then named
    ``"lira_offline_adaptive"``. ``False``: shadows without DP (``"lira_offline"``).

    Returns
    -------
    One row per (attack, observer, cell): ``attack``, ``observer``, ``target_client``,
    ``cell`` (position in the client), ``score``, ``member``, ``seed``.
    """
    cfg = views.config
    dp = views.shadow_dp if adaptive is not False else None
    weights = [float(len(views.splits[c.index][0])) for c in views.clients]
    frames = []
    for observer in observers:
        if observer not in ("coordinator", "client"):
            raise FedscInputError(f"unknown observer {observer!r}; use 'coordinator' or 'client'.")
        for c in views.clients:
            ci = c.index
            x = views.data[ci]
            member = _membership(x.shape[0], views.splits[ci][0])
            if observer == "coordinator":
                attacked = views.local_model(ci)
                ref_state, epochs = views.broadcast_state, cfg.local_epochs
            else:
                attacked = views.global_model
                ref_state, epochs = views.initial_state, cfg.rounds * cfg.local_epochs
            with torch_threads(cfg.num_threads):
                for attack in attacks:
                    name = attack
                    if attack == "loss_threshold":
                        score = -cell_losses(attacked, x, kl=kl)
                    elif attack == "reference":
                        ref = views.model(ref_state)
                        score = cell_losses(ref, x, kl=kl) - cell_losses(attacked, x, kl=kl)
                    elif attack == "lira_offline":
                        aux = torch.cat([views.data[o] for o in views.data if o != ci])
                        if dp is None:
                            noise_std = 0.0
                        elif observer == "coordinator":
                            noise_std = dp.client_noise_std(float(member.sum()))
                        else:
                            noise_std = dp.mean_noise_std(weights)
                        shadows = train_shadow_models(
                            ref_state,
                            aux,
                            cfg,
                            n_shadows=n_shadows,
                            n_cells=int(member.sum()),
                            epochs=epochs,
                            seed=views.seed * 1000 + ci,
                            dp=dp,
                            rounds=1 if observer == "coordinator" else cfg.rounds,
                            noise_std=noise_std,
                        )
                        score = _lira_scores(attacked, shadows, x, kl, None)
                        if dp is not None:
                            name = "lira_offline_adaptive"
                    else:
                        raise FedscInputError(
                            f"unknown attack {attack!r}; choose from loss_threshold, "
                            "reference, lira_offline."
                        )
                    frames.append(
                        pd.DataFrame(
                            {
                                "attack": name,
                                "observer": observer,
                                "target_client": c.name,
                                "cell": np.arange(x.shape[0]),
                                "score": score,
                                "member": member,
                                "seed": views.seed,
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True)


def scores_to_metrics(
    scores: pd.DataFrame,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
    per_client: bool = True,
    pooled: bool = True,
) -> pd.DataFrame:
    """Metric rows from per-cell scores: per (attack, observer, client, seed) and pooled.

    Pooled rows (``target_client == "all"``) put every client's cells, each scored under
    its own client's attacked model, into one ROC per (attack, observer, seed); scores of
    several seeds pool likewise when their ``seed`` column is set to one value first.
    """
    rows = []
    keys = ["attack", "observer", "seed"]
    for (attack, observer, seed), g in scores.groupby(keys, sort=False):
        common = {"attack": attack, "observer": observer, "seed": seed}
        if per_client:
            for client, gc in g.groupby("target_client", sort=False):
                rows += membership_metrics(
                    gc["score"].to_numpy(),
                    gc["member"].to_numpy(),
                    fprs=fprs,
                    target_client=client,
                    **common,
                )
        if pooled:
            rows += membership_metrics(
                g["score"].to_numpy(),
                g["member"].to_numpy(),
                fprs=fprs,
                target_client="all",
                **common,
            )
    return _frame(rows)


def fedscgen_membership(
    views: FedScGenViews,
    *,
    observers: Sequence[str] = ("coordinator", "client"),
    attacks: Sequence[str] = ("loss_threshold", "reference", "lira_offline"),
    n_shadows: int = 4,
    kl: bool = False,
    fprs: Sequence[float] = (0.01, 0.001),
    adaptive: bool | None = None,
) -> pd.DataFrame:
    """Every attack against every client of a captured run; per-client and pooled rows.

    :func:`fedscgen_membership_scores` then :func:`scores_to_metrics`: rows per client and
    pooled over clients (``target_client == "all"``).
    """
    scores = fedscgen_membership_scores(
        views, observers=observers, attacks=attacks, n_shadows=n_shadows, kl=kl, adaptive=adaptive
    )
    return scores_to_metrics(scores, fprs=fprs)


def _lira_scores(
    model: VAE, shadows: Sequence[VAE], x: torch.Tensor, kl: bool, global_variance: bool | None
) -> np.ndarray:
    if len(shadows) < 2:
        raise FedscInputError("offline LiRA needs at least 2 shadow models.")
    target = np.log(cell_losses(model, x, kl=kl))
    out = np.log(np.stack([cell_losses(s, x, kl=kl) for s in shadows]))
    mu = out.mean(axis=0)
    if global_variance is None:
        global_variance = len(shadows) < 16
    if global_variance:
        sigma = np.full_like(mu, np.sqrt(np.mean(out.var(axis=0, ddof=1))))
    else:
        sigma = out.std(axis=0, ddof=1)
    return (mu - target) / np.maximum(sigma, 1e-12)


def membership_over_seeds(
    adata: ad.AnnData,
    seeds: Sequence[int],
    *,
    batch_key: str,
    label_key: str,
    config: FedScGenConfig,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`fedscgen_membership` on a fresh FedscGen run per seed (rows of all seeds)."""
    frames = []
    for seed in seeds:
        views = capture_fedscgen_views(
            adata, batch_key=batch_key, label_key=label_key, config=config, seed=seed
        )
        frames.append(fedscgen_membership(views, **kwargs))
    return pd.concat(frames, ignore_index=True)


def summarize_over_seeds(
    rows: pd.DataFrame,
    *,
    by: Sequence[str] = ("attack", "observer", "target_client", "metric"),
    level: float = 0.95,
) -> pd.DataFrame:
    """Mean over seeds with a Student-t interval, per group of ``by``.

    Rows of one seed within a group (e.g. several clients when ``by`` leaves out
    ``target_client``) are averaged first, so the interval is over seeds only.

    Columns: ``by``, ``mean``, ``low``, ``high`` (NaN with one seed), ``n_seeds``,
    ``chance``, and the cell counts summed over seeds (``n_members``, ``n_nonmembers``
    where present, else ``n``). NaN values (unresolvable FPRs) are left out of the mean.
    """
    out = []
    for keys, g in rows.groupby(list(by), sort=False, dropna=False):
        # several rows of one seed in a group (e.g. clients): average them first
        values = g.groupby("seed")["value"].mean() if "seed" in g else g["value"]
        v = values.astype(float).dropna().to_numpy()
        rec = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        k = len(v)
        mean = float(v.mean()) if k else float("nan")
        if k >= 2:
            half = float(stats.t.ppf(0.5 + level / 2, k - 1) * v.std(ddof=1) / np.sqrt(k))
        else:
            half = float("nan")
        rec.update(
            mean=mean,
            low=mean - half,
            high=mean + half,
            n_seeds=k,
            chance=float(g["chance"].astype(float).mean()),
        )
        for col in ("n_members", "n_nonmembers", "n"):
            if col in g:
                rec[col] = int(g[col].fillna(0).sum())
        out.append(rec)
    return pd.DataFrame(out)
