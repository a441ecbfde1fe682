"""Plaintext backend: exact float64 aggregation in the caller's process.

The reference for every other backend. Not private: the coordinator receives every
client's contribution, and the ledger says so.
"""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from smpc.aggregator import Aggregator, lowest_index_argmax
from smpc.ledger import Traffic


class PlaintextAggregator(Aggregator):
    """Exact aggregation with numpy; the coordinator sees every contribution."""

    name = "plaintext"

    @override
    @property
    def private(self) -> bool:
        return False

    @override
    @property
    def privacy_note(self) -> str:
        return "not private: the coordinator receives every client's plaintext contribution"

    @staticmethod
    def _received(matrix: np.ndarray, extra: int = 0) -> Traffic:
        received = {f"client[{i}]": [int(matrix.shape[1])] for i in range(matrix.shape[0])}
        if extra:
            received["weights"] = [int(matrix.shape[0])]
        return Traffic(
            coordinator_received=received, coordinator_bytes=int(matrix.nbytes + 8 * extra)
        )

    def _weighted_sum(
        self, matrix: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, float, Traffic]:
        return weights @ matrix, float(weights.sum()), self._received(matrix, extra=len(weights))

    def _sum(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        return matrix.sum(axis=0), self._received(matrix)

    @override
    def _weighted_mean_to_owners(
        self, matrix: np.ndarray, weights: np.ndarray, columns: list[np.ndarray]
    ) -> tuple[list[np.ndarray], float, Traffic]:
        # The same arithmetic as weighted_mean, so the owned rows are bit-identical to
        # the matching rows of weighted_mean's result. Not private: the coordinator's
        # process computes the whole mean from every contribution, and the ledger says so.
        weighted_sum, total, traffic = self._weighted_sum(matrix, weights)
        mean = weighted_sum / total
        traffic.client_received = {
            f"client[{b}]": {"owned": [len(cols)], "sum_weights": []}
            for b, cols in enumerate(columns)
        }
        return [mean[cols] for cols in columns], total, traffic

    def _argmax(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        return lowest_index_argmax(matrix), self._received(matrix)
