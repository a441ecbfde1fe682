"""Plaintext backend: exact float64 aggregation in the caller's process.

The reference for every other backend. Not private: the coordinator receives every
client's contribution, and the ledger says so.
"""

from __future__ import annotations

import numpy as np

from smpc.aggregator import Aggregator, lowest_index_argmax


class PlaintextAggregator(Aggregator):
    """Exact aggregation with numpy; the coordinator sees every contribution."""

    name = "plaintext"

    @property
    def private(self) -> bool:
        return False

    @property
    def privacy_note(self) -> str:
        return "not private: the coordinator receives every client's plaintext contribution"

    def _received(self, matrix: np.ndarray, op: str, extra: int = 0) -> None:
        received = {f"client[{i}]": [int(matrix.shape[1])] for i in range(matrix.shape[0])}
        if extra:
            received["weights"] = [int(matrix.shape[0])]
        self._entry(
            op,
            matrix,
            coordinator_received=received,
            coordinator_bytes=int(matrix.nbytes + 8 * extra),
        )

    def _weighted_sum(self, matrix: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
        self._received(matrix, "weighted_mean", extra=len(weights))
        return weights @ matrix, float(weights.sum())

    def _sum(self, matrix: np.ndarray) -> np.ndarray:
        self._received(matrix, "sum")
        return matrix.sum(axis=0)

    def _argmax(self, matrix: np.ndarray) -> np.ndarray:
        self._received(matrix, "argmax")
        return lowest_index_argmax(matrix)
