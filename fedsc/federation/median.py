"""Coordinate-wise median of client states (Yin et al. 2018): robust, not private."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from typing_extensions import override

from fedsc.federation.local_result import LocalResult, State
from fedsc.federation.strategy import Strategy
from smpc import Aggregator
from smpc.aggregator import RevealRefusedError


class CoordinateMedian(Strategy):
    """Per value, the median over clients of their states (unweighted).

    Needs every client's plaintext state (``aggregator.gather``), so it refuses a private
    aggregator; the ledger records that the coordinator received every state. With an
    even number of clients the median is the mean of the two middle values; integer
    entries are rounded back to their dtype.
    """

    name = "median"
    tag = "median"

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
        if aggregator.private:
            raise RevealRefusedError(
                "the coordinate-wise median needs every client's plaintext state, but the "
                f"{aggregator.name!r} aggregator is private (it reveals only aggregates). "
                "Use strategy=FedAvg() or FedAvgM() (secure weighted mean), or run the "
                "median with smpc.make_aggregator('plaintext')."
            )
        states = aggregator.gather([res.state for res in results], reference=global_state)
        out: State = {}
        for k, ref in states[0].items():
            stacked = np.stack([torch.as_tensor(s[k]).to(torch.float64).numpy() for s in states])
            med = torch.from_numpy(np.median(stacked, axis=0))
            if not ref.is_floating_point():
                med = torch.round(med)
            out[k] = med.to(ref.dtype)
        return out
