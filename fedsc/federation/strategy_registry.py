"""Strategies by name: one line per strategy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsc.federation.fedavgm import FedAvgM
from fedsc.federation.median import CoordinateMedian
from fedsc.federation.strategy import FedAvg, Strategy
from fedsc.registry import Registry

STRATEGIES: Registry[Callable[..., Strategy]] = Registry("strategy")
STRATEGIES.register("fedavg", FedAvg)
STRATEGIES.register("fedavgm", FedAvgM)
STRATEGIES.register("median", CoordinateMedian)


def make_strategy(spec: Strategy | str | None = None, **options: Any) -> Strategy:
    """A strategy from an instance (returned as is), a name with options, or ``None`` (FedAvg)."""
    if isinstance(spec, Strategy):
        if options:
            raise TypeError(f"options {sorted(options)} given with a ready strategy {spec!r}.")
        return spec
    name = "fedavg" if spec is None else spec
    return STRATEGIES.get(name)(**options)  # an unknown name: FedscInputError (a ValueError)
