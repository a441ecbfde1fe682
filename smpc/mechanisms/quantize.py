"""Quantisation of each client's update to a grid (what integer secure aggregation sums)."""

from __future__ import annotations

from typing import Any

import numpy as np
from typing_extensions import override

from smpc.mechanisms.base import ClientContext, Mechanism


class Quantize(Mechanism):
    """Round each client's update ``x - reference`` to a multiple of ``step``.

    Client side only; the shared value is ``reference + step * q`` with ``q`` an integer
    per value. Without a reference the contribution itself is rounded.

    Parameters
    ----------
    step
        Grid spacing (> 0).
    stochastic
        ``False``: round to the nearest grid point (ties to even, as ``numpy.rint``).
        ``True``: round up with probability equal to the fractional part (unbiased),
        drawn from the client's own generator.
    """

    ops = frozenset({"weighted_mean", "sum", "gather"})
    name = "quantize"

    def __init__(self, step: float, stochastic: bool = False) -> None:
        if not (np.isfinite(step) and step > 0):
            raise ValueError(f"quantize: step must be positive and finite, got {step!r}.")
        self.step = float(step)
        self.stochastic = bool(stochastic)

    @override
    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        base = 0.0 if ctx.reference is None else ctx.reference
        scaled = (row - base) / self.step
        if self.stochastic:
            low = np.floor(scaled)
            q = low + (ctx.generator.random(scaled.shape) < scaled - low)
        else:
            q = np.rint(scaled)
        return base + q * self.step

    @override
    def params(self) -> dict[str, Any]:
        return {"step": self.step, "stochastic": self.stochastic}
