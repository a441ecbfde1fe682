"""What a client sends back after its local update."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LocalResult:
    """One client's local update.

    Attributes
    ----------
    state
        The client's new state; aggregated by the strategy through the aggregator.
    weight
        Its aggregation weight (e.g. training cells); a public input of the aggregation.
    metrics
        Scalar metrics (e.g. losses). The engine reveals only their weighted mean over
        clients, computed through the aggregator (ledger tag ``"metrics"``).
    """

    state: State
    weight: float
    metrics: dict[str, float] = field(default_factory=dict)
