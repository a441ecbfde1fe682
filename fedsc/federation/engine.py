"""The federated engine: rounds of broadcast -> local update -> secure aggregation.

A method supplies its initial global state and a local update; the engine owns the
rounds, the client order, per-(round, client) seeding, aggregation through the given
:class:`smpc.Aggregator`, the progress bar and the ledger.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from fedsc.progress import progress
from smpc import Aggregator

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LocalResult:
    """What one client sends after its local update."""

    state: State
    weight: float
    metrics: dict[str, float] = field(default_factory=dict)


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
    ) -> list[LocalResult]: ...


@dataclass
class FederationResult:
    """Outcome of :func:`run_federation`."""

    state: State
    history: list[dict[str, Any]]
    seconds: float
    snapshots: list[State] = field(default_factory=list)


def client_generators(seed: int, round_index: int, clients: Sequence[int]) -> list[torch.Generator]:
    """One independent torch generator per (seed, round, client), derived by SeedSequence.

    Independent of client order and of how many other clients take part.
    """
    gens = []
    for c in clients:
        ss = np.random.SeedSequence([int(seed), int(round_index), int(c)])
        g = torch.Generator()
        g.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1)))
        gens.append(g)
    return gens


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
) -> FederationResult:
    """Run ``rounds`` rounds of federated training.

    Parameters
    ----------
    method
        Supplies ``initial_state`` and ``local_update`` (and optionally ``local_updates``).
    clients
        Indices of the clients that train, in the fixed order they are visited.
    aggregator
        Backend for the weighted mean of client states (FedAvg).
    rounds
        Number of communication rounds (>= 1).
    seed
        Run seed; each (round, client) gets its own generator derived from it.
    weights
        Fixed FedAvg weights per client; by default the weight each local update returns.
    snapshot_every_round
        Keep a deep copy of the global state after every round (for rounds x epochs grids).
    on_round_end
        Called with (round_index, global_state) after each aggregation.
    show_progress
        Progress bar; ``None`` shows it only on a terminal.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    clients = list(clients)
    if not clients:
        raise ValueError("no clients to train: the federation needs at least one client.")
    start = time.perf_counter()
    state = {k: v.detach().clone() for k, v in method.initial_state().items()}
    history: list[dict[str, Any]] = []
    snapshots: list[State] = []
    for r in progress(range(rounds), desc=description, enable=show_progress):
        gens = client_generators(seed, r, clients)
        if isinstance(method, BatchedFederatedMethod):
            results = method.local_updates(clients, state, r, gens)
        else:
            results = [
                method.local_update(c, state, r, g) for c, g in zip(clients, gens, strict=True)
            ]
        w = [res.weight for res in results] if weights is None else list(weights)
        with aggregator.ledger.scope(r, "fedavg"):
            state = aggregator.weighted_mean([res.state for res in results], w)
        history.append(
            {
                "round": r,
                **{
                    f"client{c}/{k}": v
                    for c, res in zip(clients, results, strict=True)
                    for k, v in res.metrics.items()
                },
            }
        )
        if snapshot_every_round:
            snapshots.append(copy.deepcopy(state))
        if on_round_end is not None:
            on_round_end(r, state)
    return FederationResult(state, history, time.perf_counter() - start, snapshots)
