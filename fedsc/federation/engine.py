"""The federated engine: rounds of broadcast -> local update -> secure aggregation.

A method supplies its initial global state and a local update; the engine owns the
rounds, the client order, per-(round, client) seeding, the progress bar and the ledger
scopes; a :class:`~fedsc.federation.strategy.Strategy` (FedAvg by default) turns each
round's results into the next global state through the given :class:`smpc.Aggregator`.
Client metrics are revealed only as their weighted mean, also through the aggregator.
Logs one INFO line per round on the ``fedsc.federation.engine`` logger (silent unless
the application configures logging).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from fedsc.federation.local_result import LocalResult, State
from fedsc.federation.seeding import client_generators
from fedsc.federation.strategy import Strategy
from fedsc.federation.strategy_registry import make_strategy
from fedsc.progress import progress
from smpc import Aggregator

__all__ = [
    "BatchedFederatedMethod",
    "FederatedMethod",
    "FederationResult",
    "LocalResult",
    "State",
    "client_generators",
    "run_federation",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class FederatedMethod(Protocol):
    """What a method gives the engine."""

    def initial_state(self) -> State:
        """The global state before round 0."""
        ...

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """Train client ``client`` from ``global_state``; must not modify its inputs."""
        ...


@runtime_checkable
class BatchedFederatedMethod(FederatedMethod, Protocol):
    """A method that can run all clients' local updates of a round at once.

    Results must equal running :meth:`local_update` per client with the same generators.
    """

    def local_updates(
        self,
        clients: Sequence[int],
        global_state: State,
        round_index: int,
        generators: Sequence[torch.Generator],
    ) -> list[LocalResult]:
        """Train ``clients`` from ``global_state``; one result per client, in order."""
        ...


@dataclass
class FederationResult:
    """Outcome of :func:`run_federation`."""

    state: State
    history: list[dict[str, Any]]
    seconds: float
    snapshots: list[State] = field(default_factory=list)


def run_federation(
    method: FederatedMethod,
    clients: Sequence[int],
    aggregator: Aggregator,
    *,
    rounds: int,
    seed: int,
    weights: Sequence[float] | None = None,
    snapshot_every_round: bool = False,
    on_round_end: Callable[[int, State], None] | None = None,
    show_progress: bool | None = None,
    description: str = "federated rounds",
    strategy: Strategy | str | None = None,
) -> FederationResult:
    """Run ``rounds`` rounds of federated training.

    Parameters
    ----------
    method
        Supplies ``initial_state`` and ``local_update`` (and optionally ``local_updates``).
    clients
        Indices of the clients that train, in the fixed order they are visited.
    aggregator
        The only channel between clients: the strategy aggregates the states (ledger tag
        ``strategy.tag``) and the clients' metrics (weighted mean, tag ``"metrics"``)
        through it.
    rounds
        Number of communication rounds (>= 1).
    seed
        Run seed; each (round, client) gets its own generator derived from it.
    weights
        Fixed aggregation weights per client; by default the weight each local update
        returns.
    snapshot_every_round
        Keep a deep copy of the global state after every round (for rounds x epochs grids).
    on_round_end
        Called with (round_index, global_state) after each aggregation.
    show_progress
        Progress bar; ``None`` shows it only on a terminal.
    description
        Label of the progress bar.
    strategy
        How results become the next global state: a
        :class:`~fedsc.federation.strategy.Strategy` or a registry name (``"fedavgm"``);
        ``None``: :class:`~fedsc.federation.strategy.FedAvg`.

    Returns
    -------
    :class:`FederationResult`; ``history`` has one dict per round with ``round`` and the
    weighted mean of each client metric (no per-client values), so it is deterministic.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    clients = list(clients)
    if not clients:
        raise ValueError("no clients to train: the federation needs at least one client.")
    strategy = make_strategy(strategy)
    start = time.perf_counter()
    state = {k: v.detach().clone() for k, v in method.initial_state().items()}
    strategy.initialize(state)
    # A hint: a backend may prepare for rounds of this size while the clients train.
    aggregator.reserve(len(clients), sum(int(v.numel()) for v in state.values()))
    history: list[dict[str, Any]] = []
    snapshots: list[State] = []
    ledger = aggregator.ledger
    for r in progress(range(rounds), desc=description, enable=show_progress):
        round_start = time.perf_counter()
        gens = client_generators(seed, r, clients)
        if isinstance(method, BatchedFederatedMethod):
            results = method.local_updates(clients, state, r, gens)
        else:
            results = [
                method.local_update(c, state, r, g) for c, g in zip(clients, gens, strict=True)
            ]
        w = [res.weight for res in results] if weights is None else list(weights)
        with ledger.scope(r, strategy.tag):
            state = strategy.aggregate(
                results, aggregator, round_index=r, global_state=state, weights=w
            )
        with ledger.scope(r, "metrics"):
            metrics = strategy.aggregate_metrics(results, aggregator, round_index=r, weights=w)
        seconds = time.perf_counter() - round_start
        history.append({"round": r, **metrics})
        logger.info(
            "round %d: %.3f s%s",
            r,
            seconds,
            "".join(f", {k}={v:.6g}" for k, v in metrics.items()),
        )
        if snapshot_every_round:
            snapshots.append(copy.deepcopy(state))
        if on_round_end is not None:
            on_round_end(r, state)
    return FederationResult(state, history, time.perf_counter() - start, snapshots)
