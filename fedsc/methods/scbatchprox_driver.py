"""scBatchProx's coordinator, written once for the simulation and the deployment.

:func:`drive` trains the adapter rows over a :class:`ScBatchProxSites`: the clients' side
of the method, wherever it runs. Two implementations exist:
:class:`fedsc.methods.scbatchprox.InProcessSites` (simulation: every client's cells in this
process, one vectorised :class:`~fedsc.methods.scbatchprox.ScBatchProxFederation`) and
:class:`fedsc.deploy.scbatchprox.RemoteSites` (a Flower deployment: the sites train and
the coordinator holds :class:`~fedsc.deploy.remote.RemoteValue` references to their
updates, which the deployed aggregators resolve through the transport). Everything else
is here, once: the training cells (the FedAvg weights, public), the identity tables
before round 0, the refusal of a strategy beside ``secure_rows``, the owner-revealed
strategy and its owners (client ``b`` owns row ``b``), the rounds
(:func:`fedsc.federation.run_federation`), the final tables and the final step at every
client. A plaintext deployment therefore gives the simulation's values bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedsc.errors import FedscInputError
from fedsc.federation import (
    FederatedMethod,
    FederationResult,
    OwnerRevealFedAvg,
    State,
    Strategy,
    run_federation,
)
from fedsc.federation.seeding import derive_rng

if TYPE_CHECKING:
    import smpc
    from fedsc.methods.configs import ScBatchProxConfig

__all__ = [
    "ScBatchProxRun",
    "ScBatchProxSites",
    "check_strategy",
    "drive",
    "owners",
    "training_cells",
    "training_split",
]


class ScBatchProxSites(Protocol):
    """The training clients of an scBatchProx run, wherever their steps run."""

    @property
    def names(self) -> Sequence[str]:
        """Every client's name in client-index order (client ``i`` trains row ``i``)."""
        ...

    @property
    def n_obs(self) -> Mapping[str, int]:
        """Cells per client (public: the split, or each site's ``hello``)."""
        ...

    @property
    def dims(self) -> int:
        """Width of the agreed embedding (the same at every client)."""
        ...

    def start_training(
        self, initial: tuple[np.ndarray, np.ndarray], n_train: Mapping[str, int]
    ) -> FederatedMethod:
        """The engine's method over the clients, from the tables ``initial`` (gamma, beta).

        ``n_train``: each client's training cells (the public FedAvg weights).
        """
        ...

    def receive(self, client: int, owned: dict[str | None, np.ndarray]) -> None:
        """``secure_rows``: hand client ``client`` its row of the averaged update."""
        ...

    def apply(self, tables: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The final step at every client: take its row and refine its cells with it.

        ``tables``: the coordinator's final tables; empty with ``secure_rows`` (each
        client holds its own row). Returns what the clients report, by name.
        """
        ...


@dataclass
class ScBatchProxRun:
    """Outcome of :func:`drive`."""

    federation: FederationResult
    n_train: dict[str, int]
    #: The coordinator's final tables (``gamma``, ``beta``); empty with ``secure_rows``.
    tables: dict[str, np.ndarray]
    outputs: dict[str, Any]
    clients: list[dict[str, Any]] = field(default_factory=list)


def training_split(n: int, fraction: float, seed: int, client: int) -> np.ndarray:
    """The fixed training subset of one client (positions 0..n-1), reused every round."""
    rng = derive_rng(seed, 0x5B9, client)
    n_train = min(n, max(1, round(fraction * n)))
    return np.sort(rng.permutation(n)[:n_train])


def training_cells(
    n_obs: Mapping[str, int], order: Sequence[str], fraction: float, seed: int
) -> dict[str, int]:
    """Training cells per client (``order``: client-index order), as the clients split them."""
    return {n: len(training_split(int(n_obs[n]), fraction, seed, i)) for i, n in enumerate(order)}


def owners(n_clients: int) -> list[dict[str | None, list[int]]]:
    """``secure_rows``: client ``b`` owns row ``b`` of both tables."""
    return [{"gamma": [b], "beta": [b]} for b in range(n_clients)]


def check_strategy(config: ScBatchProxConfig, strategy: Strategy | str | None) -> None:
    """Refuse a strategy beside ``secure_rows`` (which fixes owner-revealed FedAvg)."""
    if config.secure_rows and strategy is not None:
        raise FedscInputError(
            f"secure_rows=True aggregates with owner-revealed FedAvg; strategy={strategy!r} "
            "cannot be combined with it (drop strategy, or use secure_rows=False)."
        )


def drive(
    sites: ScBatchProxSites,
    aggregator: smpc.Aggregator,
    config: ScBatchProxConfig,
    seed: int,
    *,
    strategy: Strategy | str | None = None,
    show_progress: bool | None = None,
    description: str = "scBatchProx rounds",
    on_round_end: Callable[[int, State], None] | None = None,
) -> ScBatchProxRun:
    """Train every client's adapter row over ``sites`` and apply it; the coordinator's side.

    Parameters
    ----------
    sites
        The clients (:class:`ScBatchProxSites`): in process or deployed.
    aggregator
        The only channel between clients (a simulated backend or a deployed transport).
    config, seed
        The method config and the run seed (fixes the training splits).
    strategy
        How each round is aggregated (``None``: FedAvg); with ``config.secure_rows`` it
        is owner-revealed FedAvg and ``strategy`` must be ``None``.
    show_progress, description, on_round_end
        Passed to :func:`fedsc.federation.run_federation`.
    """
    check_strategy(config, strategy)
    names = list(sites.names)
    n_train = training_cells(sites.n_obs, names, config.train_fraction, seed)
    # identity tables (gamma = 1, beta = 0), one row per client, as FiLMAdapter.identity
    initial = (np.ones((len(names), sites.dims)), np.zeros((len(names), sites.dims)))
    method = sites.start_training(initial, n_train)
    if config.secure_rows:  # the coordinator holds no row: each client keeps its own
        strategy = OwnerRevealFedAvg(owners(len(names)), sites.receive)
    fed = run_federation(
        method,
        list(range(len(names))),
        aggregator,
        rounds=config.rounds,
        seed=seed,
        show_progress=show_progress,
        description=description,
        strategy=strategy,
        on_round_end=on_round_end,
    )
    # secure_rows: the coordinator's state is the total weight; it holds no table
    tables = (
        {} if config.secure_rows else {k: v.detach().cpu().numpy() for k, v in fed.state.items()}
    )
    outputs = sites.apply(tables)
    clients = [
        {"name": n, "index": i, "n_cells": int(sites.n_obs[n]), "n_train": n_train[n]}
        for i, n in enumerate(names)
    ]
    return ScBatchProxRun(fed, n_train, tables, outputs, clients)
