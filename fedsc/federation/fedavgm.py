"""FedAvgM: FedAvg with server momentum (Hsu et al. 2019), as in Flower's ``FedAvgM``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from typing_extensions import override

from fedsc.federation.local_result import LocalResult, State
from fedsc.federation.strategy import FedAvg
from smpc import Aggregator


class FedAvgM(FedAvg):
    """Server momentum on top of the secure weighted mean; works with any backend.

    With the FedAvg mean ``m`` of round t, the pseudo-gradient is ``d = x_t - m``; the
    velocity ``v = d`` in round 0, else ``v = momentum * v + d``; and
    ``x_{t+1} = x_t - server_lr * v``. ``server_lr=1, momentum=0`` is FedAvg. Only
    floating-point entries get momentum; others (e.g. counters) take the mean.

    Parameters
    ----------
    server_lr
        Server learning rate (> 0).
    momentum
        Server momentum in [0, 1).
    """

    name = "fedavgm"
    tag = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        if not server_lr > 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"FedAvgM needs server_lr > 0 and 0 <= momentum < 1, got server_lr="
                f"{server_lr}, momentum={momentum}."
            )
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self._velocity: dict[str, torch.Tensor] | None = None

    @override
    def initialize(self, initial_state: State) -> None:
        self._velocity = None

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
        mean = super().aggregate(
            results,
            aggregator,
            round_index=round_index,
            global_state=global_state,
            weights=weights,
        )
        velocity = {} if self._velocity is None else self._velocity
        new: State = {}
        for k, m in mean.items():
            x = global_state[k]
            if not x.is_floating_point():
                new[k] = m
                continue
            d = x.to(torch.float64) - m.to(torch.float64)
            v = d if k not in velocity else self.momentum * velocity[k] + d
            velocity[k] = v
            new[k] = (x.to(torch.float64) - self.server_lr * v).to(x.dtype)
        self._velocity = velocity
        return new

    @override
    def describe(self) -> dict[str, object]:
        return {"name": self.name, "server_lr": self.server_lr, "momentum": self.momentum}
