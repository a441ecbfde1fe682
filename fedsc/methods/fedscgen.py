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
from typing import Any

import anndata as ad
import numpy as np
import torch

import smpc
from fedsc.data.clients import Client, split_clients
from fedsc.data.inclusion import DEFAULT_MIN_CELLS
from fedsc.data.validate import (
    get_representation,
    obs_column,
    validate_expression_input,
)
from fedsc.errors import FedscInputError
from fedsc.federation import FederationResult, LocalResult, State, Strategy, run_federation
from fedsc.methods import vae as vae_mod
from fedsc.methods.health import TrainingDivergedError, check_loss
from fedsc.methods.scgen import prepare_inclusion, write_outputs
from fedsc.methods.spec import RunInputs
from fedsc.methods.vae import (
    EPOCH,
    INIT,
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

__all__ = [
    "CorrectionResult",
    "CorrectionSite",
    "FedScGenConfig",
    "FedScGenMethod",
    "FedScGenResult",
    "correct",
    "dominant_means",
    "model_from_state",
    "run_fedscgen",
]


@dataclass
class FedScGenConfig(VAEConfig):
    """FedscGen: the VAE settings plus rounds and local epochs (8 x 2 recommended)."""

    rounds: int = 8
    local_epochs: int = 2
    #: Keep each client's Adam moments across rounds (local, never sent). The default,
    #: a fresh optimiser every round, is what FedscGen's trainer does.
    keep_optimizer_state: bool = False
    #: Differential privacy (a :class:`~fedsc.privacy.accounting.DPConfig` mapping) or
    #: ``None`` (off: bit-identical to FedscGen). Any DP setting trains the GroupNorm DP
    #: variant of the VAE (:func:`fedsc.methods.dp_sgd.to_dp_variant`); ``level="cell"``
    #: runs DP-SGD locally, ``level="client"`` leaves the noise to the ``gaussian``
    #: mechanism on the aggregator (BatchNorm buffers do not survive clipping and noise).
    dp: dict[str, Any] | None = None
    #: Donor-level DP (``dp={level: donor}``): the ``obs`` column naming each cell's donor.
    donor_key: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dp is not None:
            from fedsc.privacy.accounting import DPConfig

            dp = DPConfig.from_dict(_dp_mapping(self.dp))  # refuses sigma < 0, clip <= 0, ...
            if dp is not None and dp.level == "donor" and not self.donor_key:
                raise FedscInputError(
                    "donor-level DP needs donor_key, the obs column naming each cell's donor "
                    "(a run config's donor_key: donor)."
                )
        if self.rounds < 1 or self.local_epochs < 1:
            raise FedscInputError(
                f"rounds and local_epochs must be >= 1, got rounds={self.rounds}, "
                f"local_epochs={self.local_epochs}."
            )


def _dp_mapping(dp: dict[str, Any]) -> dict[str, Any]:
    """``dp`` with σ to calibrate (``None``) when only ``target_epsilon`` is given.

    Without it :class:`~fedsc.privacy.accounting.DPConfig`'s default σ = 1 would run (and
    be recorded) instead of the σ the target calls for.
    """
    if dp.get("target_epsilon") is not None and "noise_multiplier" not in dp:
        return {**dp, "noise_multiplier": None}
    return dp


def model_from_state(state: State, n_genes: int, config: VAEConfig) -> VAE:
    """A VAE (evaluation mode) holding ``state``, e.g. a per-round snapshot."""
    model = VAE(n_genes, config, derive_generator(0, INIT))
    model.load_state_dict(state)
    return model.eval()


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
    """

    def __init__(
        self,
        data: Mapping[int, torch.Tensor],
        config: FedScGenConfig,
        seed: int,
        names: Mapping[int, str] | None = None,
        donors: Mapping[int, torch.Tensor] | None = None,
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
        self.model = VAE(self.n_genes, config, derive_generator(seed, INIT))
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
        self._init_dp()

    def _init_dp(self) -> None:
        """DP wiring: the GroupNorm variant, and σ resolved for cell-level DP-SGD."""
        cfg = self.config
        #: Per client: (DP-SGD steps its cells went through so far, sampling rate q).
        self.dp_steps: dict[int, tuple[int, float]] = {}
        if cfg.dp is None:
            self.dp = None
            place(self.model)  # settings.device (DP-SGD trains on the CPU)
            return
        # Only with DP: Opacus and dp_accounting take ~1.7 s to import (torch.distributed,
        # sympy), a third of a plaintext run on the bundled pancreas.
        from fedsc.methods import dp_sgd
        from fedsc.privacy.accounting import DPConfig

        dp = DPConfig.from_dict(_dp_mapping(cfg.dp))
        assert dp is not None
        self.dp = dp
        self.model = dp_sgd.to_dp_variant(self.model)
        self._initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if dp.level == "cell":
            sizes = [self.n_train(c) for c in self.data]
            self.dp = dp_sgd.resolve_for_clients(
                dp, sizes, cfg.batch_size, cfg.local_epochs, cfg.rounds
            )
        if dp.level == "donor":
            missing = sorted(set(self.data) - set(self.donors))
            if missing:
                raise FedscInputError(
                    f"donor-level DP: clients {missing} have no donor ids (donors=)."
                )
            counts = [self.n_donors(c) for c in self.data]
            self.dp = dp_sgd.resolve_for_donors(dp, counts, cfg.local_epochs, cfg.rounds)

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


#: What the coordinator learns from :func:`correct`, for reports.
REVEALED = [
    "the label vocabulary (public, agreed in advance or given as label_vocabulary)",
    "per cell type: the number of clients holding >= 1 cell of it",
    "per shared cell type: the index of the dominant client (most cells)",
    "per shared cell type: the dominant client's mean latent M_t and its cell count",
]


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


def dominant_means(
    sites: Sequence[Any], aggregator: smpc.Aggregator, n_latent: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps b-d over ``sites`` (in client order): what every client needs to correct.

    ``sites`` are :class:`CorrectionSite` objects, or stand-ins whose step methods return
    what the aggregator accepts (a deployment's references to values kept at the sites);
    only the aggregator's outputs are read here.

    Returns
    -------
    (clients holding each type, shared type columns, dominant client per shared type,
    the dominant client's mean latent per shared type).
    """
    ledger = aggregator.ledger
    # b. number of clients per type (only that is revealed)
    with ledger.scope(None, "correction/presence"):
        n_clients = np.rint(np.asarray(aggregator.sum([s.presence() for s in sites])))
    shared = np.flatnonzero(n_clients >= 2)
    means = np.zeros((len(shared), n_latent))
    winners = np.zeros(0, dtype=np.int64)
    if len(shared):
        # c. dominant client per shared type (only the winner's index is revealed)
        with ledger.scope(None, "correction/dominant"):
            winners = np.asarray(
                aggregator.argmax([s.shared_counts(shared) for s in sites]), dtype=np.int64
            )
        # d. mean latent of the dominant client's cells, by a sum that is zero elsewhere
        with ledger.scope(None, "correction/mean_latent"):
            total = aggregator.sum(
                [s.contribution(shared, winners, pos) for pos, s in enumerate(sites)]
            )
        means = np.asarray(total["latent_sum"]) / np.asarray(total["count"])[:, None]
    return n_clients, shared, winners, means


def correct(
    model: VAE,
    clients: Sequence[Client],
    aggregator: smpc.Aggregator,
    label_key: str,
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
    label_key
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
    n_total = sum(c.n_obs for c in clients)
    order = np.concatenate([np.asarray(c.obs_indices) for c in clients])
    if not np.array_equal(np.sort(order), np.arange(n_total)):
        raise FedscInputError(
            "clients' obs_indices must partition 0..n-1 (one AnnData split by "
            "fedsc.data.split_clients); got overlapping or missing cells."
        )
    labels = [obs_column(c.adata, label_key, "label_key").astype(str).to_numpy() for c in clients]
    if vocabulary is None:
        vocab = sorted(set().union(*(set(lab) for lab in labels)))
    else:
        vocab = [str(v) for v in vocabulary]
        if len(set(vocab)) != len(vocab):
            raise FedscInputError("label vocabulary has duplicate names; list each type once.")
        for c, lab in zip(clients, labels, strict=True):
            unknown = sorted(set(lab) - set(vocab))
            if unknown:
                raise FedscInputError(
                    f"client {c.name!r} has cell types {unknown} outside the label "
                    "vocabulary; add them to label_vocabulary= or relabel them."
                )
    col = {t: i for i, t in enumerate(vocab)}
    sites = [
        CorrectionSite(model, as_tensor(get_representation(c.adata, layer=layer)), lab, col)
        for c, lab in zip(clients, labels, strict=True)
    ]
    n_clients, shared, winners, means = dominant_means(sites, aggregator, model.config.latent)

    # e. local: shift own cells of shared types, decode everything
    latent = np.empty((n_total, model.config.latent), dtype=np.float32)
    expression = np.empty((n_total, model.n_genes), dtype=np.float32)
    for c, site in zip(clients, sites, strict=True):
        latent[c.obs_indices], expression[c.obs_indices] = site.corrected(shared, means)

    shared_names = [vocab[t] for t in shared]
    return CorrectionResult(
        latent=latent,
        expression=expression,
        vocabulary=vocab,
        n_clients_per_type={t: int(n) for t, n in zip(vocab, n_clients, strict=True)},
        shared_types=shared_names,
        standalone_types=[vocab[t] for t in np.flatnonzero(n_clients == 1)],
        dominant={t: clients[w].name for t, w in zip(shared_names, winners, strict=True)},
        revealed=list(REVEALED),
    )


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
        label_key=inputs.label_key,
        layer=inputs.layer,
        method="FedscGen",
    )
    return run_fedscgen(
        adata,
        batch_key=inputs.batch_key,
        label_key=inputs.label_key,
        aggregator=inputs.aggregator,
        config=config,
        seed=inputs.seed,
        holdout=list(inputs.holdout),
        inclusion=inputs.inclusion,
        layer=inputs.layer,
        show_progress=inputs.show_progress,
        key_added=inputs.key_added or "fedscgen",
        **dict(inputs.extra),
    )


def run_fedscgen(
    adata: ad.AnnData,
    *,
    batch_key: str,
    label_key: str,
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
    batch_key, label_key
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
                label_key=label_key,
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
    used, rows = prepare_inclusion(adata, batch_key, label_key, inclusion, min_cells)
    train, held = split_clients(used, batch_key, holdout=holdout, order=client_order)
    # one client's rows densified at a time: a dense copy of all cells beside the clients'
    # copies cost n x genes x 4 bytes more at the peak (0.8 GB at 10^5 cells x 2,000 genes)
    data = {c.index: as_tensor(get_representation(c.adata, layer=layer)) for c in train}
    donors = _donor_ids(used, config, train)
    with torch_threads(config.num_threads):
        method = FedScGenMethod(
            data, config, seed, names={c.index: c.name for c in train}, donors=donors
        )
        fed = run_federation(
            method,
            [c.index for c in train],
            aggregator,
            rounds=config.rounds,
            seed=seed,
            snapshot_every_round=snapshot_every_round,
            show_progress=show_progress,
            description="FedscGen rounds",
            strategy=strategy,
        )
        model = method.model
        model.load_state_dict(fed.state)
        model.eval()
        model.history = list(fed.history)
        trained = time.perf_counter()
        method.data.clear()  # the training copies are not needed to correct: free them
        del data
        result = correct(
            model, train + held, aggregator, label_key, layer=layer, vocabulary=label_vocabulary
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
        "label_key": label_key,
        "layer": layer,
        "seed": seed,
        "holdout": list(holdout),
        "inclusion": inclusion,
        "min_cells": min_cells,
    }
    info = {
        "params": params,
        "clients": [
            {
                "name": c.name,
                "index": c.index,
                "held_out": c.held_out,
                "n_cells": c.n_obs,
                "n_train": method.n_train(c.index) if not c.held_out else 0,
            }
            for c in train + held
        ],
        "inclusion": dict(used.uns.get("inclusion", {"scenario": "all"})),
        "correction": result.summary(),
        "backend": aggregator.name,
        "private": aggregator.private,
        "privacy": aggregator.privacy_note,
        "seconds_training": trained - start,
        "seconds": time.perf_counter() - start,
    }
    adata.uns[key_added] = {
        "params": params,
        "inclusion": info["inclusion"],
        "privacy": aggregator.privacy_note,
        "dp": _dp_summary(method, aggregator),
        "shared_types": result.shared_types,
        "dominant": result.dominant,
    }
    info["dp"] = adata.uns[key_added]["dp"]
    return FedScGenResult(model, fed, info)


def _donor_ids(adata: ad.AnnData, config: FedScGenConfig, clients: Any) -> dict[int, torch.Tensor]:
    """Donor-level DP: each training client's donor id per cell (codes of ``donor_key``)."""
    if not config.dp or config.dp.get("level") != "donor":
        return {}
    key = str(config.donor_key)
    if key not in adata.obs:
        raise FedscInputError(
            f"donor_key {key!r} is not an obs column (columns: {list(adata.obs.columns)})."
        )
    codes = np.unique(adata.obs[key].astype(str).to_numpy(), return_inverse=True)[1]
    return {c.index: torch.from_numpy(codes[c.obs_indices].astype(np.int64)) for c in clients}


def _gaussian_mechanisms(aggregator: Any) -> list[Any]:
    """The ``gaussian`` mechanisms wrapped around ``aggregator`` (outermost first)."""
    from smpc.mechanisms.gaussian import GaussianDP

    found, seen = [], set()
    while aggregator is not None and id(aggregator) not in seen:
        seen.add(id(aggregator))
        mechanisms = aggregator.__dict__.get("mechanisms", ())
        found += [m for m in mechanisms if isinstance(m, GaussianDP)]
        aggregator = aggregator.__dict__.get("inner")
    return found


def _dp_summary(method: FedScGenMethod, aggregator: Any = None) -> dict[str, Any]:
    """The DP settings a run used (empty without DP); ε of cell-level DP-SGD (max over clients).

    ``noise_multiplier`` is the σ that ran: cell level, the resolved one (calibrated to
    ``target_epsilon`` if asked); client level, the ``gaussian`` mechanism's on
    ``aggregator`` (absent, and ``noise`` says so, if it has none), never a default.
    Cell level also records ``relation`` (:data:`fedsc.methods.dp_sgd.RELATION`).
    """
    if method.dp is None:
        return {}
    out: dict[str, Any] = {k: v for k, v in method.dp.to_dict().items() if v is not None}
    out["normalisation"] = "GroupNorm (DP variant)"
    if method.dp.level == "client":
        mechanisms = _gaussian_mechanisms(aggregator)
        if mechanisms:
            out["noise_multiplier"] = mechanisms[0].noise_multiplier
            out["clip"] = mechanisms[0].clip
        else:  # (h5ad cannot store None)
            out.pop("noise_multiplier", None)
            out["noise"] = "none: the aggregator has no gaussian mechanism"
    if method.dp.level not in ("cell", "donor"):
        return out
    from fedsc.methods import dp_sgd

    if method.dp.level == "donor":
        out["relation"] = dp_sgd.DONOR_RELATION
        epsilon = method.epsilon
        if epsilon:
            out["epsilon"] = max(epsilon.values())
            out["steps"] = (
                method.config.rounds
                * method.config.local_epochs
                * dp_sgd.donor_steps_per_epoch(method.dp)
            )
            out["sampling_rate"] = method.dp.donor_sampling_rate
            out["n_donors"] = {method.names[c]: method.n_donors(c) for c in method.splits}
        return out
    out["relation"] = dp_sgd.RELATION
    epsilon = method.epsilon
    if epsilon:
        n = {c: method.n_train(c) for c in method.splits}  # method.data is freed by now
        out["epsilon"] = max(epsilon.values())
        out["steps"] = (
            method.config.rounds
            * method.config.local_epochs
            * max(dp_sgd.steps_per_epoch(v, method.config.batch_size) for v in n.values())
        )
        out["sampling_rate"] = max(
            dp_sgd.sampling_rate(v, method.config.batch_size) for v in n.values()
        )
    return out
