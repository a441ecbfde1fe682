"""The secure-aggregation interface every backend implements.

Clients' contributions go in; only the aggregate comes out. Backends implement three
primitives on float64 matrices with one row per client (``_weighted_sum``, ``_sum``,
``_argmax``); this base class validates inputs, restores the caller's structure and
writes every entry of the :class:`~smpc.ledger.Ledger`. ``gather`` (non-private
aggregators only) reveals the contributions themselves, and the ledger says so.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from smpc.flatten import Spec, flatten_all
from smpc.ledger import Ledger, LedgerEntry, Traffic


class AggregatorClosedError(RuntimeError):
    """Raised when an aggregator is used after :meth:`Aggregator.close`."""


class RevealRefusedError(ValueError):
    """Raised when an operation would reveal client inputs through a private aggregator."""


class Aggregator(ABC):
    """Secure aggregation across clients.

    Use as a context manager so party processes (if any) are always reaped::

        with smpc.make_aggregator("plaintext") as agg:
            mean = agg.weighted_mean([a, b], weights=[10, 30])
    """

    #: Registry name of the backend.
    name: str = "abstract"

    def __init__(self) -> None:
        self.ledger = Ledger()
        self._closed = False
        #: Structure of the contributions of the operation in progress (lets backends name
        #: the tensor behind a flat column in error messages).
        self._current_spec: Spec | None = None

    # ----------------------------------------------------------------- properties
    @property
    @abstractmethod
    def private(self) -> bool:
        """True when no party and no coordinator sees a client's plaintext input."""

    @property
    def privacy_note(self) -> str:
        """One line for reports: what this backend hides and what it does not."""
        return "private" if self.private else "not private"

    # ----------------------------------------------------------------- public API
    def weighted_mean(
        self, contributions: Sequence[Any], weights: Sequence[float], *, reference: Any = None
    ) -> Any:
        """Weighted mean ``sum_c w_c x_c / sum_c w_c`` (FedAvg).

        Parameters
        ----------
        contributions
            One tensor, array, or dict of tensors per client, all of the same structure.
        weights
            One positive finite weight per client (e.g. cell counts).
        reference
            The state every client started from (the broadcast global state), in the
            structure of the contributions, or ``None``. Backends ignore it; mechanisms
            (:mod:`smpc.mechanisms`) use it, e.g. to clip each client's update.

        Returns
        -------
        The weighted mean, in the structure and dtypes of the contributions.
        """
        self._check_open()
        matrix, spec = flatten_all(contributions)
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) != matrix.shape[0]:
            raise ValueError(
                f"weights must have one entry per client: got {w.shape} for "
                f"{matrix.shape[0]} contributions."
            )
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(
                f"weights must be positive and finite (e.g. cell counts), got {w.tolist()}; "
                "drop clients with no cells before aggregating."
            )
        return spec.unflatten(self._operate("weighted_mean", matrix, spec, w, reference))

    def sum(self, contributions: Sequence[Any], *, reference: Any = None) -> Any:
        """Element-wise sum over clients, in the structure of the contributions.

        ``reference`` is as in :meth:`weighted_mean` (used by mechanisms only).
        """
        self._check_open()
        matrix, spec = flatten_all(contributions)
        return spec.unflatten(self._operate("sum", matrix, spec, None, reference))

    def argmax(self, columns: Sequence[Any]) -> np.ndarray:
        """Per column, the index of the client with the largest value.

        Parameters
        ----------
        columns
            One 1-D vector per client (e.g. cell counts per cell type), same length.

        Returns
        -------
        ``int64`` array: for each column the winning client index. Ties go to the
        lowest client index. Only these indices are revealed.
        """
        self._check_open()
        matrix, spec = flatten_all(columns)
        if len(spec.leaves) != 1 or len(spec.leaves[0].shape) != 1:
            raise ValueError(
                "argmax expects one 1-D vector per client (values per column), got "
                f"shapes {[leaf.shape for leaf in spec.leaves]}."
            )
        return np.asarray(self._operate("argmax", matrix, spec, None, None), dtype=np.int64)

    def gather(self, contributions: Sequence[Any], *, reference: Any = None) -> list[Any]:
        """Every client's contribution, revealed as is to the coordinator.

        For algorithms that need the clients' plaintext (e.g. a coordinate-wise median).
        Only non-private aggregators do it, and the ledger records that the coordinator
        received every contribution (op ``"gather"``).

        Raises
        ------
        RevealRefusedError
            If the aggregator is private.
        """
        self._check_open()
        if self.private:
            raise RevealRefusedError(
                f"gather() would reveal every client's contribution, but the {self.name!r} "
                "aggregator is private and reveals only aggregates; use a secure aggregate "
                "(weighted_mean, sum) or make_aggregator('plaintext')."
            )
        matrix, spec = flatten_all(contributions)
        rows = self._operate("gather", matrix, spec, None, reference)
        return [spec.unflatten(row) for row in rows]

    def close(self) -> None:
        """Release resources (party processes). Idempotent."""
        self._closed = True

    def __enter__(self) -> Aggregator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- backend hooks
    # Hooks compute and return what they moved; they never write the ledger themselves.
    @abstractmethod
    def _weighted_sum(
        self, matrix: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, float, Traffic]:
        """Return (sum_c w_c x_c, sum_c w_c, traffic)."""

    @abstractmethod
    def _sum(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        """Return (sum_c x_c, traffic)."""

    @abstractmethod
    def _argmax(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        """Return (per-column argmax over rows, lowest row on ties; traffic)."""

    # ----------------------------------------------------------------- pipeline
    def _operate(
        self,
        op: str,
        matrix: np.ndarray,
        spec: Spec,
        weights: np.ndarray | None,
        reference: Any,
    ) -> np.ndarray:
        """Time one validated operation, compute it and write its ledger entry."""
        self._current_spec = spec
        start = time.perf_counter()
        result, traffic = self._compute_flat(op, matrix, spec, weights, reference)
        self._record(op, matrix, traffic, time.perf_counter() - start)
        return result

    def _compute_flat(
        self,
        op: str,
        matrix: np.ndarray,
        spec: Spec,
        weights: np.ndarray | None,
        reference: Any,
    ) -> tuple[np.ndarray, Traffic]:
        """The flat result of ``op`` and its traffic; wrappers override this step.

        Backends ignore ``reference`` and ``spec``; the mechanism wrapper
        (:class:`smpc.mechanisms.MechanismAggregator`) transforms ``matrix`` before and the
        result after delegating here.
        """
        if op == "weighted_mean":
            assert weights is not None
            weighted_sum, total, traffic = self._weighted_sum(matrix, weights)
            return weighted_sum / total, traffic
        if op == "sum":
            return self._sum(matrix)
        if op == "argmax":
            return self._argmax(matrix)
        if op == "gather":
            received = {f"client[{i}]": [int(matrix.shape[1])] for i in range(matrix.shape[0])}
            traffic = Traffic(coordinator_received=received, coordinator_bytes=int(matrix.nbytes))
            return matrix.copy(), traffic
        raise ValueError(
            f"unknown aggregation {op!r}; expected weighted_mean, sum, argmax or gather."
        )

    def _mechanism_records(self, op: str) -> list[dict[str, Any]]:
        """Descriptions of the mechanisms applied to ``op`` (none for a bare backend)."""
        return []

    # ----------------------------------------------------------------- helpers
    def _record(self, op: str, matrix: np.ndarray, traffic: Traffic, seconds: float) -> None:
        """Write the ledger entry of one operation, stamped with the ledger's scope."""
        self.ledger.record(
            LedgerEntry(
                op=op,
                round=self.ledger.round,
                tag=self.ledger.tag,
                n_clients=int(matrix.shape[0]),
                n_values=int(matrix.shape[1]),
                private=self.private,
                seconds=seconds,
                mechanisms=self._mechanism_records(op),
                **asdict(traffic),
            )
        )

    def _check_open(self) -> None:
        if self._closed:
            raise AggregatorClosedError(
                f"the {self.name!r} aggregator is closed; create a new one with "
                "smpc.make_aggregator(...) (one per federation)."
            )


def lowest_index_argmax(matrix: np.ndarray) -> np.ndarray:
    """Reference rule: per column, the first row holding the maximum (numpy's argmax)."""
    return np.argmax(matrix, axis=0).astype(np.int64)
