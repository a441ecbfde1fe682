"""The secure-aggregation interface every backend implements.

Clients' contributions go in; only the aggregate comes out. Backends implement three
primitives on float64 matrices with one row per client (``_weighted_sum``, ``_sum``,
``_argmax``); this base class validates inputs, restores the caller's structure and
writes every entry of the :class:`~smpc.ledger.Ledger`. ``gather`` (non-private
aggregators only) reveals the contributions themselves, and the ledger says so.
``weighted_mean_to_owners`` reveals each segment of a weighted mean only to the client
that owns it (the coordinator learns the total weight only); backends implement it with
``_weighted_mean_to_owners``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
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
    def reserve(self, n_clients: int, n_values: int) -> None:
        """Hint that operations over ``n_clients`` contributions of ``n_values`` values follow.

        Backends may prepare for them in the background (the crypten backend allocates
        its shared-memory buffers); the default does nothing. Results never depend on it.

        Parameters
        ----------
        n_clients
            Number of contributions per operation.
        n_values
            Scalar values in one flattened contribution (e.g. a model's parameters).
        """
        del n_clients, n_values

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
        w = self._checked_weights(weights, matrix.shape[0])
        return spec.unflatten(self._operate("weighted_mean", matrix, spec, w, reference))

    @staticmethod
    def _checked_weights(weights: Sequence[float], n_clients: int) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) != n_clients:
            raise ValueError(
                f"weights must have one entry per client: got {w.shape} for "
                f"{n_clients} contributions."
            )
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(
                f"weights must be positive and finite (e.g. cell counts), got {w.tolist()}; "
                "drop clients with no cells before aggregating."
            )
        return w

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

    def weighted_mean_to_owners(
        self,
        contributions: Sequence[Any],
        weights: Sequence[float],
        owners: Sequence[Mapping[str | None, Sequence[int]]],
        deliver: Callable[[int, dict[str | None, np.ndarray]], None],
    ) -> float:
        """Weighted mean whose segments are revealed only to the clients that own them.

        The mean is that of :meth:`weighted_mean` (same arithmetic), but nobody sees it
        whole: segment ``owners[b]`` goes to client ``b`` only (through ``deliver``),
        segments nobody owns are revealed to nobody, and the caller (the coordinator)
        learns the total weight only.

        Parameters
        ----------
        contributions, weights
            As in :meth:`weighted_mean`.
        owners
            One mapping per client: tensor key (``None`` for a bare tensor) -> indices
            along that tensor's first axis (rows) client ``b`` may see. A row has at most
            one owner.
        deliver
            ``deliver(b, {key: rows})``: the channel to client ``b`` (in a deployment, its
            process). Called once per client with the mean's owned rows, float64, shape
            ``(len(indices), *tensor.shape[1:])``, in the order of ``owners[b]``.

        Returns
        -------
        The total weight ``sum_c w_c``, the only value revealed to the coordinator by a
        private backend (a non-private one reveals every contribution; the ledger says
        so). The ledger's ``client_received`` lists what each client received.
        """
        self._check_open()
        matrix, spec = flatten_all(contributions)
        w = self._checked_weights(weights, matrix.shape[0])
        if len(owners) != matrix.shape[0]:
            raise ValueError(
                f"owners must have one entry per client: got {len(owners)} for "
                f"{matrix.shape[0]} contributions."
            )
        columns, layouts = owned_columns(spec, owners)
        self._current_spec = spec
        start = time.perf_counter()
        means, total, traffic = self._compute_owned(matrix, spec, w, columns)
        self._record("weighted_mean_to_owners", matrix, traffic, time.perf_counter() - start)
        for b, (flat, layout) in enumerate(zip(means, layouts, strict=True)):
            out: dict[str | None, np.ndarray] = {}
            offset = 0
            for key, shape in layout:
                n = int(np.prod(shape))
                out[key] = flat[offset : offset + n].reshape(shape)
                offset += n
            deliver(b, out)
        return total

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

    def _compute_owned(
        self, matrix: np.ndarray, spec: Spec, weights: np.ndarray, columns: list[np.ndarray]
    ) -> tuple[list[np.ndarray], float, Traffic]:
        """Owned segments of the weighted mean, the total weight, traffic; wrappers override."""
        return self._weighted_mean_to_owners(matrix, weights, columns)

    def _weighted_mean_to_owners(
        self, matrix: np.ndarray, weights: np.ndarray, columns: list[np.ndarray]
    ) -> tuple[list[np.ndarray], float, Traffic]:
        """Return (per client b: mean[columns[b]], sum_c w_c, traffic).

        ``mean`` is ``sum_c w_c x_c / sum_c w_c``. The traffic's ``client_received`` says
        what each client received; ``coordinator_received`` what the caller did.
        """
        raise NotImplementedError(
            f"the {self.name!r} aggregator does not implement weighted_mean_to_owners."
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
                # the claim, unless the backend's own traffic shows a clear contribution
                private=self.private and not received_in_clear(traffic),
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


def owned_columns(
    spec: Spec, owners: Sequence[Mapping[str | None, Sequence[int]]]
) -> tuple[list[np.ndarray], list[list[tuple[str | None, tuple[int, ...]]]]]:
    """Flat column indices each client owns, and the (key, shape) layout of its segments.

    Raises ``ValueError`` for unknown keys, rows out of range, 0-d tensors or a row owned
    by two clients.
    """
    leaves = {leaf.key: leaf for leaf in spec.leaves}
    offsets: dict[str | None, int] = {}
    offset = 0
    for leaf in spec.leaves:
        offsets[leaf.key] = offset
        offset += int(np.prod(leaf.shape))
    taken: dict[tuple[str | None, int], int] = {}
    columns: list[np.ndarray] = []
    layouts: list[list[tuple[str | None, tuple[int, ...]]]] = []
    for b, owned in enumerate(owners):
        cols: list[np.ndarray] = []
        layout: list[tuple[str | None, tuple[int, ...]]] = []
        for key, rows in owned.items():
            found = leaves.get(key)
            if found is None:
                raise ValueError(
                    f"owners[{b}] names tensor {key!r}, but the contributions hold "
                    f"{[lf.key for lf in spec.leaves]}."
                )
            leaf = found
            if len(leaf.shape) < 1:
                raise ValueError(f"tensor {key!r} is 0-d: owners name rows of >= 1-d tensors.")
            rows = [int(r) for r in rows]
            for r in rows:
                if not 0 <= r < leaf.shape[0]:
                    raise ValueError(
                        f"owners[{b}] names row {r} of tensor {key!r}, which has "
                        f"{leaf.shape[0]} rows."
                    )
                if (key, r) in taken:
                    raise ValueError(
                        f"row {r} of tensor {key!r} is owned by clients {taken[key, r]} and "
                        f"{b}; a row has at most one owner."
                    )
                taken[key, r] = b
            width = int(np.prod(leaf.shape[1:]))
            base = offsets[key]
            for r in rows:
                cols.append(np.arange(base + r * width, base + (r + 1) * width))
            layout.append((key, (len(rows), *leaf.shape[1:])))
        columns.append(np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64))
        layouts.append(layout)
    return columns, layouts


def received_in_clear(traffic: Traffic) -> list[str]:
    """What the coordinator received of single clients' contributions (``client[i]`` names).

    A backend names each contribution it hands the coordinator in the clear so; an entry
    with any is never recorded as private, whatever the backend claims.
    """
    return [name for name in traffic.coordinator_received if name.startswith("client[")]


def lowest_index_argmax(matrix: np.ndarray) -> np.ndarray:
    """Reference rule: per column, the first row holding the maximum (numpy's argmax)."""
    return np.argmax(matrix, axis=0).astype(np.int64)
