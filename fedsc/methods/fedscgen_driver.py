"""FedscGen's coordinator, written once for the simulation and the deployment.

:func:`drive` runs one FedscGen run over a :class:`FedscGenSites`: the clients' side of
the method, wherever it runs. Two implementations exist:
:class:`fedsc.methods.fedscgen.InProcessSites` (simulation: every client's data in this
process, :class:`~fedsc.methods.fedscgen.FedScGenMethod` and
:class:`~fedsc.methods.fedscgen.CorrectionSite` objects) and
:class:`fedsc.deploy.fedscgen.RemoteSites` (a Flower deployment: the sites compute and the
coordinator holds references to their values, which the deployed aggregators resolve
through the transport). Everything else is here, once: the training cells (the FedAvg
weights, public) and the refusal of too few, the DP settings resolved for the whole
federation (σ calibrated to a target over every client), the VAE's initial state, the
rounds (:func:`fedsc.federation.run_federation`), the correction vocabulary, steps b-d
(:func:`dominant_means`), the final step at every client, the clients' record and the DP
summary. A plaintext deployment therefore gives the simulation's values bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedsc.errors import FedscInputError
from fedsc.federation import FederationResult, LocalResult, State, Strategy, run_federation
from fedsc.methods.vae import INIT, SPLIT, VAE, derive_generator, split_train_validation

if TYPE_CHECKING:
    import torch

    import smpc
    from fedsc.methods.configs import FedScGenConfig
    from fedsc.privacy.accounting import DPConfig

__all__ = [
    "REVEALED",
    "Correction",
    "FedscGenRun",
    "FedscGenSites",
    "check_labels",
    "correct_sites",
    "dominant_means",
    "dp_summary",
    "drive",
    "global_model",
    "initial_model",
    "resolve_dp",
    "training_cells",
]

#: What the coordinator learns from the correction, for reports.
REVEALED = [
    "the label vocabulary (public, agreed in advance or given as label_vocabulary)",
    "per cell type: the number of clients holding >= 1 cell of it",
    "per shared cell type: the index of the dominant client (most cells)",
    "per shared cell type: the dominant client's mean latent M_t and its cell count",
]


class FedscGenSites(Protocol):
    """The clients of a FedscGen run, wherever their steps run."""

    @property
    def names(self) -> Sequence[str]:
        """Every client's name in client-index order: training clients, then held-out ones."""
        ...

    @property
    def n_training(self) -> int:
        """How many clients train (the first ``n_training`` of :attr:`names`)."""
        ...

    @property
    def n_obs(self) -> Mapping[str, int]:
        """Cells per client (public: the split, or each site's ``hello``)."""
        ...

    @property
    def n_genes(self) -> int:
        """Genes every client measures (the same list at every client)."""
        ...

    @property
    def kind(self) -> str:
        """What a client is, for messages (``"batches"``, ``"sites"``)."""
        ...

    def labels(self) -> list[str]:
        """The sorted union of the clients' cell types (the vocabulary when none is agreed)."""
        ...

    def n_donors(self) -> dict[str, int]:
        """Training donors per training client (donor-level DP's FedAvg weights)."""
        ...

    def start_training(
        self, dp: DPConfig | None, n_train: Mapping[str, int], initial: State
    ) -> None:
        """Prepare the clients' local training (DP settings resolved, public weights)."""
        ...

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """Client ``client``'s update of round ``round_index`` (or a reference to it)."""
        ...

    def correction_steps(self, state: State, vocabulary: Sequence[str]) -> Sequence[Any]:
        """Each client's correction steps b-d with the trained ``state``, in client order.

        Objects with ``presence()``, ``shared_counts(shared)`` and
        ``contribution(shared, winners, position)`` returning what the aggregator accepts.
        """
        ...

    def apply(self, shared: np.ndarray, means: np.ndarray) -> dict[str, Any]:
        """Step e at every client that is still there: shift, decode; by client name."""
        ...

    def epsilon(self) -> dict[str, float]:
        """Each training client's ε of DP-SGD after the rounds (its own accountant)."""
        ...


@dataclass
class Correction:
    """What the correction revealed (steps b-d) and its public summary."""

    vocabulary: list[str]
    n_clients: np.ndarray
    shared: np.ndarray
    winners: np.ndarray
    means: np.ndarray
    names: Sequence[str]

    @property
    def shared_types(self) -> list[str]:
        """Names of the types at least two clients hold."""
        return [self.vocabulary[t] for t in self.shared]

    @property
    def dominant(self) -> dict[str, str]:
        """Shared type -> the name of its dominant client."""
        return {t: self.names[int(w)] for t, w in zip(self.shared_types, self.winners, strict=True)}

    def summary(self) -> dict[str, Any]:
        """The public record (``info["correction"]``, a deployment's ``correction``)."""
        return {
            "vocabulary": list(self.vocabulary),
            "n_clients_per_type": {
                t: int(n) for t, n in zip(self.vocabulary, self.n_clients, strict=True)
            },
            "shared_types": self.shared_types,
            "standalone_types": [self.vocabulary[t] for t in np.flatnonzero(self.n_clients == 1)],
            "dominant": self.dominant,
            "revealed": list(REVEALED),
        }


@dataclass
class FedscGenRun:
    """Outcome of :func:`drive`."""

    federation: FederationResult
    n_train: dict[str, int]
    correction: Correction
    outputs: dict[str, Any]
    dp: DPConfig | None
    clients: list[dict[str, Any]] = field(default_factory=list)
    dp_record: dict[str, Any] = field(default_factory=dict)


def drive(
    sites: FedscGenSites,
    aggregator: smpc.Aggregator,
    config: FedScGenConfig,
    seed: int,
    *,
    vocabulary: Sequence[str] | None = None,
    strategy: Strategy | str | None = None,
    snapshot_every_round: bool = False,
    show_progress: bool | None = None,
    description: str = "FedscGen rounds",
    on_round_end: Callable[[int, State], None] | None = None,
    after_training: Callable[[FederationResult], None] | None = None,
) -> FedscGenRun:
    """Train FedscGen over ``sites`` and correct every client; the coordinator's side.

    Parameters
    ----------
    sites
        The clients (:class:`FedscGenSites`): in process or deployed.
    aggregator
        The only channel between clients (a simulated backend or a deployed transport).
    config, seed
        The method config and the run seed.
    vocabulary
        The agreed cell-type names; ``None`` takes the union of the clients' types.
    strategy, snapshot_every_round, show_progress, description, on_round_end
        Passed to :func:`fedsc.federation.run_federation`.
    after_training
        Called with the federation's result before the correction starts.
    """
    names = list(sites.names)
    order, train = names, names[: sites.n_training]
    n_train = training_cells(sites.n_obs, order, train, config, seed, kind=sites.kind)
    donors = sites.n_donors() if _level(config) == "donor" else {}
    dp = resolve_dp(config, [n_train[n] for n in train], [donors[n] for n in donors])
    model = initial_model(sites.n_genes, config, seed)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sites.start_training(dp, n_train, initial)
    fed = run_federation(
        _Rounds(sites, initial),
        list(range(len(train))),
        aggregator,
        rounds=config.rounds,
        seed=seed,
        snapshot_every_round=snapshot_every_round,
        show_progress=show_progress,
        description=description,
        strategy=strategy,
        on_round_end=on_round_end,
    )
    if after_training is not None:
        after_training(fed)
    correction, outputs = correct_sites(sites, aggregator, fed.state, vocabulary, config.latent)
    clients = [
        {
            "name": n,
            "index": i,
            "held_out": i >= sites.n_training,
            "n_cells": int(sites.n_obs[n]),
            "n_train": n_train.get(n, 0),
        }
        for i, n in enumerate(names)
    ]
    record = dp_summary(dp, config, n_train, sites.epsilon(), donors, aggregator)
    return FedscGenRun(fed, n_train, correction, outputs, dp, clients, record)


def correct_sites(
    sites: FedscGenSites,
    aggregator: smpc.Aggregator,
    state: State,
    vocabulary: Sequence[str] | None,
    n_latent: int,
) -> tuple[Correction, dict[str, Any]]:
    """Correction steps a-e over ``sites`` with the trained ``state``.

    Returns what the correction revealed and each client's step-e output (by name).
    """
    vocab = _vocabulary(vocabulary, sites)
    steps = sites.correction_steps(state, vocab)
    n_clients, shared, winners, means = dominant_means(steps, aggregator, n_latent)
    correction = Correction(vocab, n_clients, shared, winners, means, list(sites.names))
    return correction, sites.apply(shared, means)


@dataclass
class _Rounds:
    """The engine's :class:`~fedsc.federation.FederatedMethod` over the sites."""

    sites: FedscGenSites
    initial: State

    def initial_state(self) -> State:
        return {k: v.clone() for k, v in self.initial.items()}

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        return self.sites.local_update(client, global_state, round_index, generator)


def _level(config: Any) -> str | None:
    dp = getattr(config, "dp", None)
    return None if dp is None else str(dp.get("level", "client"))


def _vocabulary(given: Sequence[str] | None, sites: FedscGenSites) -> list[str]:
    if not given:
        return sites.labels()
    vocab = [str(v) for v in given]
    if len(set(vocab)) != len(vocab):
        raise FedscInputError("label vocabulary has duplicate names; list each type once.")
    return vocab


def check_labels(labels: Sequence[str] | np.ndarray, vocabulary: Sequence[str], who: str) -> None:
    """Refuse a client's cell types outside the agreed vocabulary (``who`` names it)."""
    unknown = sorted(set(np.asarray(labels, dtype=str).tolist()) - set(vocabulary))
    if unknown:
        raise FedscInputError(
            f"{who} has cell types {unknown} outside the label vocabulary; add them to "
            "label_vocabulary= or relabel them."
        )


def training_cells(
    n_obs: Mapping[str, int],
    order: Sequence[str],
    train: Sequence[str],
    config: Any,
    seed: int,
    *,
    kind: str = "sites",
) -> dict[str, int]:
    """Training cells per training client, as the clients split them; refuse too few.

    ``order``: every client in client-index order (training clients, then held-out
    ones). A client with fewer training cells than one minibatch is refused.
    ``fedsc deploy local`` calls this before it starts Flower.
    """
    n_train = {
        n: len(
            split_train_validation(
                int(n_obs[n]), config.validation_fraction, derive_generator(seed, SPLIT, i)
            )[0]
        )
        for i, n in enumerate(order)
        if n in train
    }
    small = {n: k for n, k in n_train.items() if k < config.batch_size}
    if small:
        raise FedscInputError(
            f"{kind} {sorted(small)} have fewer training cells ({small}) than one minibatch "
            f"(batch_size={config.batch_size}); lower batch_size or hold them out."
        )
    return n_train


def resolve_dp(
    config: Any, n_train: Sequence[int], n_donors: Sequence[int] = ()
) -> DPConfig | None:
    """The run's DP settings for the whole federation (``None`` without DP).

    Cell level: validated for every client's training cells, σ calibrated so that every
    client's ε stays within ``target_epsilon``; donor level: the same with each client's
    training donors; client level: as given (its noise is the aggregator's mechanism).
    """
    if config.dp is None:
        return None
    from fedsc.methods.configs import dp_mapping
    from fedsc.privacy.accounting import DPConfig

    dp = DPConfig.from_dict(dp_mapping(config.dp))
    assert dp is not None
    if dp.level not in ("cell", "donor"):
        return dp
    # Opacus and dp_accounting take ~1.7 s to import: only with DP-SGD
    from fedsc.methods import dp_sgd

    if dp.level == "cell":
        return dp_sgd.resolve_for_clients(
            dp, list(n_train), config.batch_size, config.local_epochs, config.rounds
        )
    return dp_sgd.resolve_for_donors(dp, list(n_donors), config.local_epochs, config.rounds)


def initial_model(n_genes: int, config: Any, seed: int) -> VAE:
    """The global VAE before round 0: weights from ``(seed, INIT)``; the DP variant with DP."""
    model = VAE(n_genes, config, derive_generator(seed, INIT))
    if getattr(config, "dp", None) is not None:
        from fedsc.methods import dp_sgd

        model = dp_sgd.to_dp_variant(model)
    return model


def global_model(state: State, n_genes: int, config: Any) -> VAE:
    """A VAE (evaluation mode) holding ``state`` (the DP variant when ``config.dp``)."""
    model = initial_model(n_genes, config, 0)
    model.load_state_dict(state)
    return model.eval()


def dominant_means(
    sites: Sequence[Any], aggregator: smpc.Aggregator, n_latent: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps b-d over ``sites`` (in client order): what every client needs to correct.

    ``sites`` are :class:`~fedsc.methods.fedscgen.CorrectionSite` objects, or stand-ins
    whose step methods return what the aggregator accepts (a deployment's references to
    values kept at the sites); only the aggregator's outputs are read here.

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


def dp_summary(
    dp: DPConfig | None,
    config: Any,
    n_train: Mapping[str, int],
    epsilon: Mapping[str, float],
    n_donors: Mapping[str, int],
    aggregator: Any = None,
) -> dict[str, Any]:
    """The DP settings a run used (empty without DP); ε of DP-SGD (max over clients).

    ``noise_multiplier`` is the σ that ran: cell level, the resolved one (calibrated to
    ``target_epsilon`` if asked); client level, the ``gaussian`` mechanism's on
    ``aggregator`` (absent, and ``noise`` says so, if it has none), never a default.
    Cell and donor level also record ``relation``; ``epsilon`` is the largest of the ε
    the training clients report (each from its own accountant).
    """
    if dp is None:
        return {}
    out: dict[str, Any] = {k: v for k, v in dp.to_dict().items() if v is not None}
    out["normalisation"] = "GroupNorm (DP variant)"
    if dp.level == "client":
        mechanisms = _gaussian_mechanisms(aggregator)
        if mechanisms:
            out["noise_multiplier"] = mechanisms[0].noise_multiplier
            out["clip"] = mechanisms[0].clip
        else:  # (h5ad cannot store None)
            out.pop("noise_multiplier", None)
            out["noise"] = "none: the aggregator has no gaussian mechanism"
    if dp.level not in ("cell", "donor"):
        return out
    from fedsc.methods import dp_sgd

    if dp.level == "donor":
        out["relation"] = dp_sgd.DONOR_RELATION
        if epsilon:
            out["epsilon"] = max(epsilon.values())
            out["steps"] = config.rounds * config.local_epochs * dp_sgd.donor_steps_per_epoch(dp)
            out["sampling_rate"] = dp.donor_sampling_rate
            out["n_donors"] = dict(n_donors)
        return out
    out["relation"] = dp_sgd.RELATION
    if epsilon:
        n = list(n_train.values())
        out["epsilon"] = max(epsilon.values())
        out["steps"] = (
            config.rounds
            * config.local_epochs
            * max(dp_sgd.steps_per_epoch(v, config.batch_size) for v in n)
        )
        out["sampling_rate"] = max(dp_sgd.sampling_rate(v, config.batch_size) for v in n)
    return out
