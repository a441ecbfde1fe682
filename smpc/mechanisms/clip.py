"""L2 clipping of each client's update (the first step of DP-FedAvg, McMahan et al. 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
from typing_extensions import override

from smpc.mechanisms.base import ClientContext, Mechanism


class ClipL2(Mechanism):
    """Scale each client's update ``x - reference`` to L2 norm at most ``max_norm``.

    Client side only. Without a reference the contribution itself is clipped. The
    clipped contribution is ``reference + (x - reference) * min(1, max_norm / ||x - reference||)``.

    Parameters
    ----------
    max_norm
        The clipping bound C (> 0), over the whole flat contribution.
    """

    ops = frozenset({"weighted_mean", "sum", "gather"})
    name = "clip"

    def __init__(self, max_norm: float) -> None:
        if not (np.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"clip: max_norm must be positive and finite, got {max_norm!r}.")
        self.max_norm = float(max_norm)

    @override
    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        base = 0.0 if ctx.reference is None else ctx.reference
        update = row - base
        norm = float(np.linalg.norm(update))
        if norm <= self.max_norm:
            return row
        return base + update * (self.max_norm / norm)

    @override
    def params(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm}
