"""FedscGen: federated training of the scGen VAE and secure federated batch correction.

Training (:class:`FedScGenMethod` on :func:`fedsc.federation.run_federation`): each
training client starts every round from the global state, trains ``local_epochs``
epochs on its own fixed 90 % split and sends its whole state (weights, batch-norm
running statistics and ``num_batches_tracked``); the aggregator returns the weighted
FedAvg ``Σ N_c θ_c / Σ N_c`` with N_c the client's number of training cells. (The
aggregator hides the states; the weights N_c are public inputs of ``weighted_mean``.)

Correction (:func:`correct`), for training and held-out clients alike; every cross-client
step goes through the aggregator, and each client's cells never leave it:

a. each client encodes its cells with the global model (posterior mean μ);
b. shared types: each client sends a 0/1 presence vector over the label vocabulary;
   ``aggregator.sum`` reveals the number of clients holding each type;
c. dominant client per shared type: ``aggregator.argmax`` over the clients' per-type cell
   counts reveals only the winner (ties: lowest client index);
d. ``aggregator.sum`` over contributions that are zero except at the dominant client, which
   sends the latent sum and the cell count of its cells of that type; the result equals
   the dominant client's own values, so the coordinator learns M_t (the dominant client's
   mean latent, which every client needs by design of the method) and the dominant
   client's count of t (sending the sum and count rather than the mean keeps the
   fixed-point error of secure backends at ~2^-16 / count);
e. each client shifts its own cells ``z' = z - mean_local(t) + M_t`` for shared types and
   decodes all its cells.

Seeding (see :mod:`fedsc.methods.vae`): the global initial weights come from
``(seed, INIT)``; client ``c`` splits with ``(seed, SPLIT, c)`` and trains its ``e``-th
epoch overall (``e = round · local_epochs + j``) with ``(seed, EPOCH, c, e)``. The
engine's per-(round, client) generator is not consumed. Hence a one-client federation
of R rounds x E epochs draws the same numbers as centralized training of R·E epochs
(:func:`fedsc.methods.scgen.train_vae`); with ``keep_optimizer_state=True`` the two runs
are identical, with the default fresh Adam per round they differ only by the optimiser
restarts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import torch

import smpc
from fedsc._deprecation import renamed_arguments
from fedsc.data.clients import Client, split_clients
from fedsc.data.inclusion import DEFAULT_MIN_CELLS
from fedsc.data.validate import (
    get_representation,
    obs_column,
    validate_expression_input,
)
from fedsc.errors import FedscInputError
from fedsc.federation import FederationResult, LocalResult, State, Strategy
from fedsc.methods import vae as vae_mod
from fedsc.methods.configs import FedScGenConfig
from fedsc.methods.fedscgen_driver import (
    Correction,
    check_labels,
    correct_sites,
    dominant_means,
    drive,
    global_model,
    initial_model,
    resolve_dp,
)
from fedsc.methods.health import TrainingDivergedError, check_loss
from fedsc.methods.scgen import prepare_inclusion, write_outputs
from fedsc.methods.spec import RunInputs
from fedsc.methods.vae import (
    EPOCH,
    SPLIT,
    VAE,
    VAEConfig,
    as_tensor,
    decode,
    derive_generator,
    encode_mean,
    make_optimizer,
    place,
    split_train_validation,
    torch_threads,
    train_epoch,
)

if TYPE_CHECKING:
    from fedsc.privacy.accounting import DPConfig

__all__ = [
    "CorrectionResult",
    "CorrectionSite",
    "FedScGenConfig",
    "FedScGenMethod",
    "FedScGenResult",
    "InProcessSites",
    "correct",
    "dominant_means",
    "donor_codes",
    "model_from_state",
    "run_fedscgen",
    "training_donors",
]


def model_from_state(state: State, n_genes: int, config: VAEConfig) -> VAE:
    """A VAE (evaluation mode) holding ``state``, e.g. a per-round snapshot.

    The DP variant when ``config`` is a :class:`FedScGenConfig` with ``dp`` set.
    """
    return global_model(state, n_genes, config)


class FedScGenMethod:
    """The local training of FedscGen, as a :class:`fedsc.federation.FederatedMethod`.

    Parameters
    ----------
    data
        Log-normalised expression per training client index (cells x genes, float32).
        Only these clients' cells are ever trained on.
    config
        VAE and federation settings.
    seed
        Run seed (initial weights, each client's split and epochs).
    names
        Client names for messages (default: the indices).
    donors
        Donor-level DP: an integer donor id per cell of each client.
    dp
        The DP settings resolved for the whole federation
        (:func:`~fedsc.methods.fedscgen_driver.resolve_dp`, as the driver passes them);
        default: resolved here over these clients.
    """

    def __init__(
        self,
        data: Mapping[int, torch.Tensor],
        config: FedScGenConfig,
        seed: int,
        names: Mapping[int, str] | None = None,
        donors: Mapping[int, torch.Tensor] | None = None,
        dp: DPConfig | None = None,
    ) -> None:
        if not data:
            raise FedscInputError("FedscGen needs at least one training client.")
        n_genes = {int(x.shape[1]) for x in data.values()}
        if len(n_genes) != 1:
            raise FedscInputError(f"clients have different gene counts {sorted(n_genes)}.")
        self.config = config
        self.seed = int(seed)
        self.n_genes = n_genes.pop()
        self.data = {int(c): x for c, x in data.items()}
        #: Client names for messages (default: the indices).
        self.names = {c: str((names or {}).get(c, c)) for c in self.data}
        self.model = initial_model(self.n_genes, config, seed)
        self._initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.splits = {
            c: split_train_validation(
                x.shape[0], config.validation_fraction, derive_generator(seed, SPLIT, c)
            )
            for c, x in self.data.items()
        }
        small = {c: len(tr) for c, (tr, _) in self.splits.items() if len(tr) < config.batch_size}
        if small:
            raise FedscInputError(
                f"clients {sorted(small)} have fewer training cells ({small}) than one "
                f"minibatch (batch_size={config.batch_size}); lower batch_size= or hold "
                "those batches out of training (holdout=...)."
            )
        self._optimizers: dict[int, torch.optim.Optimizer] = {}
        #: Donor-level DP: an integer donor id per cell of each client.
        self.donors = {int(c): d for c, d in (donors or {}).items()}
        #: Per client: (DP-SGD steps its cells went through so far, sampling rate q).
        self.dp_steps: dict[int, tuple[int, float]] = {}
        self.dp = dp if dp is not None else self._resolve_dp()
        if config.dp is None:
            place(self.model)  # settings.device (DP-SGD trains on the CPU)

    def _resolve_dp(self) -> DPConfig | None:
        """The DP settings over these clients (σ calibrated for every one of them)."""
        cfg = self.config
        if cfg.dp is not None and cfg.dp.get("level") == "donor":
            missing = sorted(set(self.data) - set(self.donors))
            if missing:
                raise FedscInputError(
                    f"donor-level DP: clients {missing} have no donor ids (donors=)."
                )
            return resolve_dp(cfg, [], [self.n_donors(c) for c in self.data])
        return resolve_dp(cfg, [self.n_train(c) for c in self.data])

    def n_donors(self, client: int) -> int:
        """D_c: the client's training donors (its FedAvg weight under donor-level DP)."""
        return len(torch.unique(self.donors[client][self.splits[client][0]]))

    @property
    def epsilon(self) -> dict[int, float]:
        """Cell-level ε of each client that ran DP-SGD, after the rounds so far."""
        if self.dp is None:
            return {}
        spent = {a: self.dp.epsilon(*a) for a in set(self.dp_steps.values())}  # one per size
        return {c: spent[a] for c, a in self.dp_steps.items()}

    def n_train(self, client: int) -> int:
        """N_c: the client's number of training cells (its FedAvg weight)."""
        return len(self.splits[client][0])

    def optimizer_state(self, client: int) -> dict[str, torch.Tensor]:
        """The client's kept Adam moments (``keep_optimizer_state``), flat by name.

        Keys ``"<param index>/<name>"`` (``step``, ``exp_avg``, ``exp_avg_sq``); empty
        before the client's first update. A deployed site keeps them between rounds.
        """
        if client not in self._optimizers:
            return {}
        state = self._optimizers[client].state_dict()["state"]
        return {f"{i}/{k}": v for i, moments in state.items() for k, v in moments.items()}

    def restore_optimizer_state(self, client: int, flat: Mapping[str, torch.Tensor]) -> None:
        """Continue the client's Adam from :meth:`optimizer_state` (an earlier round's)."""
        if not self.config.keep_optimizer_state:
            raise FedscInputError(
                "restore_optimizer_state needs keep_optimizer_state=True in the config."
            )
        optimizer = make_optimizer(self.model)
        saved = optimizer.state_dict()
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            i, name = key.split("/", 1)
            moments.setdefault(int(i), {})[name] = value
        optimizer.load_state_dict({"state": moments, "param_groups": saved["param_groups"]})
        self._optimizers[client] = optimizer

    def initial_state(self) -> State:
        """The global VAE state before round 0 (:class:`FederatedMethod`)."""
        return {k: v.clone() for k, v in self._initial.items()}

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """Train ``local_epochs`` epochs from ``global_state`` on the client's split.

        ``generator`` (the engine's) is not consumed; see the module docstring.
        """
        if client not in self.data:
            raise FedscInputError(
                f"client {client} has no training data here (training clients: "
                f"{sorted(self.data)})."
            )
        cfg = self.config
        self.model.load_state_dict(global_state)
        if cfg.keep_optimizer_state:
            if client not in self._optimizers:
                self._optimizers[client] = make_optimizer(self.model)
            optimizer = self._optimizers[client]
        else:
            optimizer = make_optimizer(self.model)
        x = self.data[client]
        train_idx, val_idx = self.splits[client]
        if self.dp is not None and self.dp.level in ("cell", "donor"):
            from fedsc.methods import dp_sgd

            donor = self.dp.level == "donor"
            up = dp_sgd.local_train(
                self.model,
                optimizer,
                x,
                train_idx,
                seed=self.seed,
                client=client,
                round_index=round_index,
                local_epochs=cfg.local_epochs,
                dp=self.dp,
                donors=self.donors[client] if donor else None,
            )
            assert up.sampling_rate is not None
            self.dp_steps[client] = (up.total_steps, up.sampling_rate)
            # donor level: the weight is the donor count D, public under its relation
            weight = self.n_donors(client) if donor else self.n_train(client)
            # no metrics under DP-SGD: the losses are un-noised functions of the cells
            return LocalResult(up.state, float(weight), {})
        losses = []
        for j in range(cfg.local_epochs):
            epoch = round_index * cfg.local_epochs + j
            g = derive_generator(self.seed, EPOCH, client, epoch)
            losses.append(train_epoch(self.model, optimizer, x, g, train_idx))
            check_loss(
                losses[-1],
                method="FedscGen",
                lr=cfg.lr,
                default_lr=FedScGenConfig.lr,
                where=f"round {round_index + 1}/{cfg.rounds} (local epoch {j + 1})",
                client=self.names[client],
            )
        val = vae_mod.validation_loss(self.model, x[val_idx])
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return LocalResult(
            state, float(self.n_train(client)), {"train_loss": losses[-1], "val_loss": val}
        )


@dataclass
class CorrectionResult:
    """Outcome of the federated correction.

    ``latent`` and ``expression`` have one row per cell in the order of the clients'
    ``obs_indices`` (the original order of the AnnData the clients were split from).
    """

    latent: np.ndarray
    expression: np.ndarray
    vocabulary: list[str]
    n_clients_per_type: dict[str, int]
    shared_types: list[str]
    standalone_types: list[str]
    dominant: dict[str, str]
    revealed: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-cell arrays (for ``info`` and reports)."""
        return {
            "vocabulary": list(self.vocabulary),
            "n_clients_per_type": dict(self.n_clients_per_type),
            "shared_types": list(self.shared_types),
            "standalone_types": list(self.standalone_types),
            "dominant": dict(self.dominant),
            "revealed": list(self.revealed),
        }


class CorrectionSite:
    """One client's side of the correction (steps a, b-d inputs, e); all work is local.

    Parameters
    ----------
    model
        The trained global VAE.
    x
        The client's log-normalised expression (cells x genes).
    labels
        The client's cell types.
    vocabulary
        Agreed cell-type name -> column.
    """

    def __init__(
        self, model: VAE, x: torch.Tensor, labels: np.ndarray, vocabulary: Mapping[str, int]
    ) -> None:
        self.model = model
        # a. encode (posterior mean) and count cells per type
        self.latent = encode_mean(model, x).to(torch.float64).numpy()
        self.code = np.fromiter((vocabulary[t] for t in labels), dtype=np.int64, count=len(labels))
        self.counts = np.bincount(self.code, minlength=len(vocabulary)).astype(np.float64)

    def presence(self) -> np.ndarray:
        """b. 0/1 per type: does this client hold the type."""
        return (self.counts > 0).astype(np.float64)

    def shared_counts(self, shared: np.ndarray) -> np.ndarray:
        """c. This client's cell count of each shared type (argmax input)."""
        return self.counts[np.asarray(shared, dtype=np.int64)]

    def contribution(
        self, shared: np.ndarray, winners: np.ndarray, position: int
    ) -> dict[str, np.ndarray]:
        """d. Latent sum and count of the types this client dominates; zeros elsewhere."""
        shared = np.asarray(shared, dtype=np.int64)
        lsum = np.zeros((len(shared), self.latent.shape[1]))
        cnt = np.zeros(len(shared))
        for j in np.flatnonzero(np.asarray(winners) == position):
            lsum[j] = self.latent[self.code == shared[j]].sum(axis=0)
            cnt[j] = self.counts[shared[j]]
        return {"latent_sum": lsum, "count": cnt}

    def corrected(self, shared: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """e. Shift own cells of shared types to ``means``; decode. Returns float32 arrays."""
        shifted = self.latent.copy()
        for s, t in enumerate(np.asarray(shared, dtype=np.int64).tolist()):
            rows = self.code == t
            if rows.any():
                shifted[rows] = self.latent[rows] - self.latent[rows].mean(axis=0) + means[s]
        z32 = shifted.astype(np.float32)
        return z32, decode(self.model, torch.from_numpy(z32)).numpy()


@renamed_arguments(label_key="labels_key")
def correct(
    model: VAE,
    clients: Sequence[Client],
    aggregator: smpc.Aggregator,
    labels_key: str,
    *,
    layer: str | None = None,
    vocabulary: Sequence[str] | None = None,
) -> CorrectionResult:
    """Federated batch correction with a trained global model (steps a-e of the module).

    Parameters
    ----------
    model
        The trained global VAE.
    clients
        All clients taking part, training and held-out alike; visited in index order
        (ties of the dominant client go to the lowest index).
    aggregator
        Secure-aggregation backend; the only channel between clients.
    labels_key
        ``obs`` column with each cell's type.
    layer
        Layer with log-normalised expression instead of ``X``.
    vocabulary
        The agreed list of cell-type names. ``None`` takes the sorted union of the clients'
        labels, i.e. assumes that union is public; a client label outside a given
        vocabulary is an error.

    Returns
    -------
    :class:`CorrectionResult`; ``revealed`` lists what the coordinator learns. Counts of
    non-dominant clients and every cell's latent stay at their clients.
    """
    clients = sorted(clients, key=lambda c: c.index)
    if not clients:
        raise FedscInputError("correct() needs at least one client.")
    sites = InProcessSites(clients, len(clients), None, 0, labels_key=labels_key, layer=layer)
    sites.model = model
    correction, outputs = correct_sites(
        sites, aggregator, model.state_dict(), vocabulary, model.config.latent
    )
    return correction_result(correction, outputs, clients, model.config.latent, model.n_genes)


def correction_result(
    correction: Correction,
    outputs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    clients: Sequence[Client],
    n_latent: int,
    n_genes: int,
) -> CorrectionResult:
    """The clients' step-e outputs in the original cell order, with the public summary."""
    n_total = sum(c.n_obs for c in clients)
    latent = np.empty((n_total, n_latent), dtype=np.float32)
    expression = np.empty((n_total, n_genes), dtype=np.float32)
    for c in clients:
        latent[c.obs_indices], expression[c.obs_indices] = outputs[c.name]
    return CorrectionResult(latent=latent, expression=expression, **correction.summary())


class InProcessSites:
    """The clients of a simulated run, in this process (a :class:`FedscGenSites`).

    Each client's data stay in its :class:`~fedsc.data.Client`; training runs through
    :class:`FedScGenMethod`, the correction through one :class:`CorrectionSite` per
    client, in client-index order.

    Parameters
    ----------
    clients
        Every client (training first, then held-out), numbered 0..K-1; their
        ``obs_indices`` must partition the AnnData they were split from.
    n_training
        How many of them train.
    config, seed
        The method config and run seed (training only).
    labels_key, layer
        ``obs`` column with each cell's type; layer to read instead of ``X``.
    donors
        Donor-level DP: an integer donor id per cell of each training client.
    """

    kind = "batches"

    @renamed_arguments(label_key="labels_key")
    def __init__(
        self,
        clients: Sequence[Client],
        n_training: int,
        config: FedScGenConfig | None,
        seed: int,
        *,
        labels_key: str,
        layer: str | None = None,
        donors: Mapping[int, torch.Tensor] | None = None,
    ) -> None:
        self.clients = sorted(clients, key=lambda c: c.index)
        n_total = sum(c.n_obs for c in self.clients)
        order = np.concatenate([np.asarray(c.obs_indices) for c in self.clients])
        if not np.array_equal(np.sort(order), np.arange(n_total)):
            raise FedscInputError(
                "clients' obs_indices must partition 0..n-1 (one AnnData split by "
                "fedsc.data.split_clients); got overlapping or missing cells."
            )
        self.names = [c.name for c in self.clients]
        self.n_training = int(n_training)
        self.n_obs = {c.name: int(c.n_obs) for c in self.clients}
        self.n_genes = int(self.clients[0].adata.n_vars)
        self.config = config
        self.seed = int(seed)
        self.layer = layer
        self.donors = dict(donors or {})
        self._labels = [
            obs_column(c.adata, labels_key, "labels_key").astype(str).to_numpy()
            for c in self.clients
        ]
        #: The training clients (after :meth:`start_training`).
        self.method: FedScGenMethod | None = None
        #: The global model the correction uses (the trained one after the rounds).
        self.model: VAE | None = None
        self._steps: list[CorrectionSite] = []

    def labels(self) -> list[str]:
        """The sorted union of the clients' cell types."""
        return sorted(set().union(*(set(lab) for lab in self._labels)))

    def n_donors(self) -> dict[str, int]:
        """Training donors per training client (the split is the one training uses)."""
        assert self.config is not None
        out = {}
        for c in self.clients[: self.n_training]:
            if c.index not in self.donors:
                raise FedscInputError(
                    f"donor-level DP: client {c.name!r} has no donor ids (donor_key)."
                )
            out[c.name] = training_donors(self.donors[c.index], self.config, self.seed, c.index)
        return out

    def start_training(
        self, dp: DPConfig | None, n_train: Mapping[str, int], initial: State
    ) -> None:
        """Build the training clients (``initial`` equals their own initial state)."""
        assert self.config is not None
        train = self.clients[: self.n_training]
        # one client's rows densified at a time: a dense copy of all cells beside the
        # clients' copies cost n x genes x 4 bytes more at the peak
        data = {c.index: as_tensor(get_representation(c.adata, layer=self.layer)) for c in train}
        self.method = FedScGenMethod(
            data,
            self.config,
            self.seed,
            names={c.index: c.name for c in train},
            donors=self.donors,
            dp=dp,
        )
        self.model = self.method.model

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """The client's local training (:meth:`FedScGenMethod.local_update`)."""
        assert self.method is not None
        return self.method.local_update(client, global_state, round_index, generator)

    def correction_steps(self, state: State, vocabulary: Sequence[str]) -> list[CorrectionSite]:
        """Each client encodes its cells with the trained model (step a)."""
        assert self.model is not None
        if self.method is not None:
            self.method.data.clear()  # the training copies are not needed to correct
        for c, lab in zip(self.clients, self._labels, strict=True):
            check_labels(lab, vocabulary, f"client {c.name!r}")
        self.model.load_state_dict(state)
        self.model.eval()
        col = {t: i for i, t in enumerate(vocabulary)}
        self._steps = [
            CorrectionSite(
                self.model, as_tensor(get_representation(c.adata, layer=self.layer)), lab, col
            )
            for c, lab in zip(self.clients, self._labels, strict=True)
        ]
        return self._steps

    def apply(
        self, shared: np.ndarray, means: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Step e at every client: (shifted latent, decoded expression) by client name."""
        return {
            c.name: site.corrected(shared, means)
            for c, site in zip(self.clients, self._steps, strict=True)
        }

    def epsilon(self) -> dict[str, float]:
        """ε of each training client's DP-SGD (its own accountant)."""
        if self.method is None:
            return {}
        return {self.method.names[c]: e for c, e in self.method.epsilon.items()}


@dataclass
class FedScGenResult:
    """Outcome of :func:`run_fedscgen`."""

    model: VAE
    federation_result: FederationResult
    info: dict[str, Any]

    def model_at(self, round_index: int) -> VAE:
        """The global model after round ``round_index`` (needs ``snapshot_every_round``)."""
        snaps = self.federation_result.snapshots
        if not snaps:
            raise FedscInputError(
                "no per-round snapshots were kept; rerun with snapshot_every_round=True."
            )
        return model_from_state(snaps[round_index], self.model.n_genes, self.model.config)


def run_spec(adata: ad.AnnData, inputs: RunInputs, config: Any) -> Any:
    """The registry's run function (``MethodSpec.run``): train federated and correct; writes ``obsm["X_fedscgen"]`` and ``layers["fedscgen"]``.

    ``inputs.extra`` passes keyword arguments of :func:`~fedsc.methods.fedscgen.run_fedscgen`
    that are not config fields (``snapshot_every_round``, ``label_vocabulary``...).
    """
    validate_expression_input(
        adata,
        batch_key=inputs.batch_key,
        labels_key=inputs.labels_key,
        layer=inputs.layer,
        method="FedscGen",
    )
    return run_fedscgen(
        adata,
        batch_key=inputs.batch_key,
        labels_key=inputs.labels_key,
        aggregator=inputs.federated_aggregator("FedscGen"),
        config=config,
        seed=inputs.seed,
        holdout=list(inputs.holdout),
        inclusion=inputs.inclusion,
        layer=inputs.layer,
        show_progress=inputs.show_progress,
        key_added=inputs.key_added or "fedscgen",
        **dict(inputs.extra),
    )


@renamed_arguments(label_key="labels_key")
def run_fedscgen(
    adata: ad.AnnData,
    *,
    batch_key: str,
    labels_key: str,
    aggregator: smpc.Aggregator | str,
    config: FedScGenConfig | None = None,
    seed: int = 0,
    holdout: Sequence[str] = (),
    inclusion: str = "all",
    min_cells: int = DEFAULT_MIN_CELLS,
    layer: str | None = None,
    label_vocabulary: Sequence[str] | None = None,
    client_order: Sequence[str] | None = None,
    snapshot_every_round: bool = False,
    show_progress: bool | None = None,
    key_added: str = "fedscgen",
    strategy: Strategy | str | None = None,
) -> FedScGenResult:
    """Train FedscGen over the batches of ``adata`` and correct every batch.

    Parameters
    ----------
    adata
        Cells x genes with log-normalised expression in ``X`` (or ``layers[layer]``).
    batch_key, labels_key
        ``obs`` columns: the batch (one client each) and the cell type.
    aggregator
        An :class:`smpc.Aggregator` (left open) or a backend name (created and closed).
    config
        :class:`FedScGenConfig` (8 rounds x 2 local epochs by default).
    seed
        Run seed.
    holdout
        Batches that do not train but are corrected with the trained model.
    inclusion, min_cells
        Cell-type inclusion scenario ``"all"``, ``"combined"`` or ``"dropped"``
        (:func:`fedsc.data.apply_inclusion`), applied before anything else.
    layer
        Layer to read instead of ``X``.
    label_vocabulary
        Agreed list of cell-type names (see :func:`correct`).
    client_order
        Order of the clients (default: sorted batch names); decides dominant-client ties.
    snapshot_every_round
        Keep the global state after every round (``FedScGenResult.model_at(r)``).
    show_progress
        Progress bar over rounds; ``None`` shows it only on a terminal.
    strategy
        How each training round is aggregated (:mod:`fedsc.federation`); ``None``: FedAvg.
    key_added
        Writes ``adata.obsm["X_" + key_added]`` (shifted latent) and
        ``adata.layers[key_added]`` (corrected expression), in the original cell order;
        cells removed by the ``"dropped"`` scenario get NaN rows.
    """
    config = FedScGenConfig() if config is None else config
    from fedsc.run_privacy import check_tl_dp

    # client-level DP is the aggregator's gaussian mechanism: without one the DP model
    # variant would train with no noise and no epsilon (every entry point, not only tl)
    check_tl_dp(config, None if isinstance(aggregator, str) else aggregator)
    if isinstance(aggregator, str):
        from fedsc.backend import aggregator_for

        with aggregator_for(aggregator) as agg:
            return run_fedscgen(
                adata,
                batch_key=batch_key,
                labels_key=labels_key,
                aggregator=agg,
                config=config,
                seed=seed,
                holdout=holdout,
                inclusion=inclusion,
                min_cells=min_cells,
                layer=layer,
                label_vocabulary=label_vocabulary,
                client_order=client_order,
                snapshot_every_round=snapshot_every_round,
                show_progress=show_progress,
                key_added=key_added,
                strategy=strategy,
            )
    if isinstance(holdout, str):  # one batch name, not its characters
        holdout = [holdout]
    for arg, names in (("holdout", holdout), ("client_order", client_order)):
        listed = [str(n) for n in names or ()]
        dup = sorted({n for n in listed if listed.count(n) > 1})
        if dup:
            raise FedscInputError(f"{arg} lists {dup} more than once; list each batch once.")
    start = time.perf_counter()
    used, rows = prepare_inclusion(adata, batch_key, labels_key, inclusion, min_cells)
    train, held = split_clients(used, batch_key, holdout=holdout, order=client_order)
    sites = InProcessSites(
        train + held,
        len(train),
        config,
        seed,
        labels_key=labels_key,
        layer=layer,
        donors=_donor_ids(used, config, train),
    )
    trained: list[float] = []
    with torch_threads(config.num_threads):
        run = drive(
            sites,
            aggregator,
            config,
            seed,
            vocabulary=label_vocabulary,
            strategy=strategy,
            snapshot_every_round=snapshot_every_round,
            show_progress=show_progress,
            after_training=lambda fed: trained.append(time.perf_counter()),
        )
    assert sites.model is not None
    model = sites.model
    model.history = list(run.federation.history)
    result = correction_result(
        run.correction, run.outputs, train + held, config.latent, sites.n_genes
    )
    if not (np.isfinite(result.latent).all() and np.isfinite(result.expression).all()):
        raise TrainingDivergedError(
            "FedscGen produced non-finite corrected values although every training loss was "
            f"finite; the learning rate lr={config.lr:g} is likely too large; try "
            f"lr={min(config.lr / 10, FedScGenConfig.lr):g}. No output was written."
        )
    write_outputs(adata, rows, key_added, result.latent, result.expression)
    params = {
        **config.to_dict(),
        "batch_key": batch_key,
        "labels_key": labels_key,
        "layer": layer,
        "seed": seed,
        "holdout": list(holdout),
        "inclusion": inclusion,
        "min_cells": min_cells,
    }
    info = {
        "params": params,
        "clients": run.clients,
        "inclusion": dict(used.uns.get("inclusion", {"scenario": "all"})),
        "correction": result.summary(),
        "backend": aggregator.name,
        "private": aggregator.private,
        "privacy": aggregator.privacy_note,
        "seconds_training": trained[0] - start,
        "seconds": time.perf_counter() - start,
    }
    adata.uns[key_added] = {
        "params": params,
        "inclusion": info["inclusion"],
        "privacy": aggregator.privacy_note,
        "dp": run.dp_record,
        "shared_types": result.shared_types,
        "dominant": result.dominant,
    }
    info["dp"] = adata.uns[key_added]["dp"]
    return FedScGenResult(model, run.federation, info)


def _donor_ids(adata: ad.AnnData, config: FedScGenConfig, clients: Any) -> dict[int, torch.Tensor]:
    """Donor-level DP: each training client's donor id per cell (codes of ``donor_key``)."""
    if not config.dp or config.dp.get("level") != "donor":
        return {}
    codes = donor_codes(adata, str(config.donor_key))
    return {c.index: codes[torch.from_numpy(np.asarray(c.obs_indices))] for c in clients}


def donor_codes(adata: ad.AnnData, donor_key: str) -> torch.Tensor:
    """An integer donor id per cell: the rank of its ``obs[donor_key]`` among the sorted names.

    Codes of a subset of cells differ from the whole AnnData's, but keep their order
    (the names sort the same way), which is all donor-level DP-SGD uses
    (:func:`fedsc.methods.dp_sgd.donor_groups` orders donors by id): a site coding its
    own cells trains as the simulation does with the whole AnnData's codes.
    """
    if donor_key not in adata.obs:
        raise FedscInputError(
            f"donor_key {donor_key!r} is not an obs column (columns: "
            f"{list(adata.obs.columns)}); set donor_key= to the column naming each cell's donor."
        )
    codes = np.unique(adata.obs[donor_key].astype(str).to_numpy(), return_inverse=True)[1]
    return torch.from_numpy(codes.astype(np.int64))


def training_donors(donors: torch.Tensor, config: FedScGenConfig, seed: int, client: int) -> int:
    """D_c: the donors among client ``client``'s training cells (the split training uses).

    Its FedAvg weight under donor-level DP (public under the donor relation).
    """
    train, _ = split_train_validation(
        len(donors), config.validation_fraction, derive_generator(seed, SPLIT, client)
    )
    return len(torch.unique(donors[train]))
