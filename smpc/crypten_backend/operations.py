"""The aggregator's operations: sums, weighted means (also owner-revealed) and argmax.

The backend hooks of :class:`smpc.aggregator.Aggregator`, each with the ring-bound check
of its inputs before anything is sent.
"""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from smpc import sharing
from smpc.crypten_backend.exchange import Exchange
from smpc.crypten_backend.owners import OwnerEndpoint
from smpc.ledger import Traffic

__all__ = ["Operations"]


class Operations(Exchange):
    """``sum``, ``weighted_mean``, ``weighted_mean_to_owners`` and ``argmax`` over the parties."""

    def _label(self, column: int) -> str:
        spec = self._current_spec
        if spec is None:
            return f"value index {column}"
        offset = 0
        for leaf in spec.leaves:
            n = int(np.prod(leaf.shape))
            if column < offset + n:
                position = np.unravel_index(column - offset, leaf.shape) if leaf.shape else ()
                name = f"tensor {leaf.key!r}" if leaf.key is not None else "tensor"
                return f"{name} at {tuple(int(i) for i in position)}"
            offset += n
        return "the client's weight"

    def _check_bounds(
        self, matrix: np.ndarray, precision: int, weights: np.ndarray | None = None
    ) -> None:
        """Ring-bound check before anything is sent (one chunked pass over the matrix)."""
        n_clients = matrix.shape[0]
        if matrix.size >= 1 << 20 and n_clients > 1:
            # Two halves of the clients on the two client threads (numpy releases the GIL).
            half = (n_clients + 1) // 2
            parts = self._client_workers().map(
                sharing.peak_magnitudes, [matrix[:half], matrix[half:]]
            )
            peaks = np.concatenate(list(parts))
        else:
            peaks = sharing.peak_magnitudes(matrix)
        if weights is not None:
            peaks = np.maximum(peaks * weights, weights)
        if np.all(peaks <= sharing.ring_bound(matrix.shape[0], precision)):
            return
        # Slow path, only on failure: the full check names client, tensor and factor.
        if weights is not None:
            full = np.empty((matrix.shape[0], matrix.shape[1] + 1), dtype=np.float64)
            np.multiply(matrix, weights[:, None], out=full[:, :-1])
            full[:, -1] = weights
            sharing.check_ring_bounds(full, precision, what="w*x", label=self._label)
        else:
            sharing.check_ring_bounds(matrix, precision, what="x", label=self._label)

    def _weighted_sum(
        self, matrix: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, float, Traffic]:
        # FedAvg is additions only: each client pre-multiplies by its weight locally and
        # shares [w*x, w]; the parties reveal sum w*x and sum w; division is in plaintext.
        p = self.sum_precision_bits
        self._check_bounds(matrix, p, weights)
        decoded, stats = self._run("weighted_mean", matrix, p, weights)
        received = {"sum_weighted": [matrix.shape[1]], "sum_weights": []}
        return decoded[:-1], float(decoded[-1]), Traffic(coordinator_received=received, **stats)

    def _sum(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        p = self.sum_precision_bits
        self._check_bounds(matrix, p)
        total, stats = self._run("sum", matrix, p)
        traffic = Traffic(coordinator_received={"sum": [matrix.shape[1]]}, **stats)
        return total, traffic

    @override
    def _weighted_mean_to_owners(
        self, matrix: np.ndarray, weights: np.ndarray, columns: list[np.ndarray]
    ) -> tuple[list[np.ndarray], float, Traffic]:
        # As _weighted_sum, but the parties send their result-share slices of client b's
        # columns (and of sum w) to client b's endpoint, and only the share of sum w to
        # the coordinator; unowned columns go to nobody.
        p = self.sum_precision_bits
        self._check_bounds(matrix, p, weights)
        endpoints = [OwnerEndpoint(b, cols, self.parties, p) for b, cols in enumerate(columns)]
        decoded, stats = self._run("weighted_mean", matrix, p, weights, endpoints=endpoints)
        total = float(decoded[-1])
        traffic = Traffic(coordinator_received={"sum_weights": []}, **stats)
        traffic.coordinator_bytes = int(self.parties * 8)
        traffic.client_received = {
            f"client[{e.client}]": {"owned": [len(e.columns)], "sum_weights": []} for e in endpoints
        }
        return [e.reveal() for e in endpoints], total, traffic

    def _argmax(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        if self.transport == "threads":
            raise ValueError(
                "argmax needs CrypTen party processes (comparisons are interactive); "
                "in-process parties (transport='threads') serve sums and weighted means only."
            )
        # Values are compared at the fixed-point resolution 2^-p (integer counts exactly);
        # parties form K*x + (K-1-i), hence the K-fold ring bound.
        self._check_bounds(matrix, self.precision_bits)
        raw, stats = self._run("argmax", matrix, self.precision_bits, decode=False)
        traffic = Traffic(coordinator_received={"argmax_index": [matrix.shape[1]]}, **stats)
        return raw.astype(np.int64), traffic
