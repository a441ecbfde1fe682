"""Owner-revealed FedAvg: each segment of the averaged update goes to its owner only.

For methods in which client ``b`` alone changes a known part of the state (scBatchProx:
row ``b`` of its adapter tables), so that the coordinator needs no global state at all.
Clients send updates that are zero outside the part they own; the aggregator's
:meth:`smpc.Aggregator.weighted_mean_to_owners` reveals part ``b`` of the weighted mean
of the updates to client ``b`` only (through the method's ``deliver`` callback, the
channel to the client) and the total weight to the coordinator. The state this strategy
returns to the engine (the coordinator) holds that total weight and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from typing_extensions import override

from fedsc.federation.local_result import LocalResult, State
from fedsc.federation.strategy import Strategy
from smpc import Aggregator

#: Key of the only value the coordinator's state holds.
SUM_WEIGHTS = "sum_weights"


class OwnerRevealFedAvg(Strategy):
    """Weighted mean of the clients' updates, revealed segment by segment to the owners.

    Parameters
    ----------
    owners
        Per client position in the engine's order: tensor key -> rows that client owns.
    deliver
        ``deliver(position, {key: rows})``: hands the client its segment of the mean
        (the method keeps it client-side).

    Client metrics are not aggregated (the coordinator learns nothing but the total
    weight); :meth:`aggregate_metrics` returns ``{}``.
    """

    name: ClassVar[str] = "owner_reveal_fedavg"
    tag: ClassVar[str] = "owner_reveal"

    def __init__(
        self,
        owners: Sequence[Mapping[str | None, Sequence[int]]],
        deliver: Callable[[int, dict[str | None, np.ndarray]], None],
    ) -> None:
        self.owners = [dict(o) for o in owners]
        self.deliver = deliver

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
        total = aggregator.weighted_mean_to_owners(
            [res.state for res in results], weights, self.owners, self.deliver
        )
        return {SUM_WEIGHTS: torch.tensor(float(total), dtype=torch.float64)}

    @override
    def aggregate_metrics(
        self,
        results: Sequence[LocalResult],
        aggregator: Aggregator,
        *,
        round_index: int,
        weights: Sequence[float],
    ) -> dict[str, float]:
        return {}

    @override
    def describe(self) -> dict[str, object]:
        return {"name": self.name, "reveals": "the total weight to the coordinator"}
