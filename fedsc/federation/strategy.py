"""Strategies: how a round's client results become the next global state.

Flower's pattern: an algorithm is one :class:`Strategy` subclass overriding one hook,
:meth:`Strategy.aggregate`. Every cross-client value goes through the aggregator it is
given (so through the secure backend and any mechanisms, and into the ledger).
:class:`FedAvg` is the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from typing_extensions import override

from fedsc.federation.local_result import LocalResult, State
from smpc import Aggregator


class Strategy:
    """Base class. Subclasses override :meth:`aggregate` (and may override the others).

    The engine calls :meth:`initialize` once per federation, then every round
    :meth:`aggregate` inside ``aggregator.ledger.scope(round, strategy.tag)`` and
    :meth:`aggregate_metrics` inside ``scope(round, "metrics")``.
    """

    #: Registry name.
    name: ClassVar[str] = "strategy"
    #: Ledger tag of the state aggregation.
    tag: ClassVar[str] = "aggregate"

    def initialize(self, initial_state: State) -> None:
        """Reset per-federation server state (e.g. momentum) before round 0."""

    def aggregate(
        self,
        results: Sequence[LocalResult],
        aggregator: Aggregator,
        *,
        round_index: int,
        global_state: State,
        weights: Sequence[float],
    ) -> State:
        """The next global state from this round's results.

        Parameters
        ----------
        results
            One :class:`LocalResult` per client, in the engine's client order.
        aggregator
            The only channel between clients (secure backend, mechanisms, ledger).
        round_index
            The round (0-based).
        global_state
            The state broadcast at the start of the round (do not modify it).
        weights
            The clients' aggregation weights (their own, or the run's fixed weights).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement aggregate().")

    def aggregate_metrics(
        self,
        results: Sequence[LocalResult],
        aggregator: Aggregator,
        *,
        round_index: int,
        weights: Sequence[float],
    ) -> dict[str, float]:
        """Weighted mean of the clients' metrics, through the aggregator.

        Returns ``{}`` when no client reports metrics; every client must report the same
        names.
        """
        names = sorted(results[0].metrics) if results else []
        for i, res in enumerate(results):
            if sorted(res.metrics) != names:
                raise ValueError(
                    f"client result {i} reports metrics {sorted(res.metrics)} but the first "
                    f"reports {names}; every client must report the same metric names."
                )
        if not names:
            return {}
        mean = aggregator.weighted_mean([_metric_values(res, names) for res in results], weights)
        return {k: float(mean[k]) for k in names}

    def describe(self) -> dict[str, object]:
        """Name and parameters, for run records."""
        return {"name": self.name}


def _metric_values(result: LocalResult, names: Sequence[str]) -> Any:
    """A client's metrics ``names`` as an aggregator contribution.

    Metrics kept at a deployed site (:class:`fedsc.deploy.remote.RemoteMetrics`) give
    a reference the deployed aggregator resolves; local ones their float values.
    """
    select = getattr(result.metrics, "select", None)
    if select is not None:
        return select(names)
    return {k: float(result.metrics[k]) for k in names}


class FedAvg(Strategy):
    """Federated averaging: the weighted mean of client states (McMahan et al. 2017)."""

    name = "fedavg"
    tag = "fedavg"

    @override
    def aggregate(
        self,
        results: Sequence[LocalResult],
        aggregator: Aggregator,
        *,
        round_index: int,
        global_state: State,
        weights: Sequence[float],
    ) -> State:
        return aggregator.weighted_mean(
            [res.state for res in results], weights, reference=global_state
        )
