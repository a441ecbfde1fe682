"""Owner-revealed results: a client's end of them, and the relay of deployed clients' slices.

Owner-revealed weighted means (``Aggregator.weighted_mean_to_owners``) reveal each
client's rows to that client only; see docs/smpc.md, "Owner-revealed results".
"""

from __future__ import annotations

import os

import numpy as np

from smpc import sharing

__all__ = ["OwnerEndpoint", "SealedRelay", "owned_runs"]


class OwnerEndpoint:
    """Client ``client``'s end of an owner-revealed weighted mean.

    Receives every party's result-share slices of the columns the client owns and of the
    total weight, each sealed for this client (:func:`smpc.sealed.seal_result`) under a
    fresh key per party that the client gives that party with its shares (:attr:`keys`),
    opens them and reconstructs only those (client-side division by the total). In this
    single-machine simulation it is an object in the coordinator's process, fed by
    :meth:`CryptenAggregator._route_owner_shares`, which relays ciphertext it does not
    open; in a deployment it runs in client ``client``'s process.
    """

    def __init__(self, client: int, columns: np.ndarray, parties: int, precision_bits: int) -> None:
        self.client = int(client)
        self.columns = np.asarray(columns, dtype=np.int64)
        self.parties = int(parties)
        self.precision_bits = int(precision_bits)
        self._order = np.argsort(self.columns, kind="stable")
        #: Contiguous ``(start, stop)`` runs of the owned columns, ascending.
        self.runs: list[tuple[int, int]] = owned_runs(self.columns[self._order])
        #: This client's sealing key at each party (fresh per operation).
        self.keys: list[bytes] = [os.urandom(32) for _ in range(self.parties)]
        #: The operation the slices belong to (set by the aggregator before it sends).
        self.op_id = -1
        self._shares: dict[int, dict[int, np.ndarray]] = {}

    def receive(self, rank: int, start: int, stop: int, blob: np.ndarray) -> None:
        """Open and keep party ``rank``'s sealed share of the slice ``[start, stop)``."""
        from smpc import sealed

        payload = sealed.open_result(
            self.keys[rank], blob.tobytes(), str(self.op_id), str(self.client), rank, start, stop
        )
        self._shares.setdefault(rank, {})[int(start)] = np.frombuffer(payload, np.int64).copy()

    def reveal(self) -> np.ndarray:
        """``sum_c w_c x_c / sum_c w_c`` on the owned columns (needs every party's slices)."""
        if sorted(self._shares) != list(range(self.parties)):
            raise RuntimeError(
                f"client {self.client} has result shares from parties {sorted(self._shares)}, "
                f"needs all {self.parties}."
            )
        per_party = []
        for rank in range(self.parties):
            got = self._shares[rank]
            parts = [got[lo] for lo, _ in self.runs]
            total_start = max(got)  # the total weight's slice is the last column
            per_party.append(np.concatenate([*parts, got[total_start]]))
        decoded = sharing.reconstruct_decode(per_party, self.precision_bits)
        self._shares = {}
        out = np.empty(len(self.columns), dtype=np.float64)
        out[self._order] = decoded[:-1] / decoded[-1]  # back to the order of ``columns``
        return out


class SealedRelay:
    """A deployed client's owner slices, kept sealed for relaying to it (never opened here).

    ``slices`` holds ``(rank, start, stop, blob)``; the client opens them with
    :func:`smpc.sealed.open_owner_slices`.
    """

    def __init__(self) -> None:
        self.slices: list[tuple[int, int, int, bytes]] = []

    def receive(self, rank: int, start: int, stop: int, blob: np.ndarray) -> None:
        """Keep party ``rank``'s sealed slice ``[start, stop)``."""
        self.slices.append((int(rank), int(start), int(stop), blob.tobytes()))


def owned_runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """Sorted, distinct ``columns`` as contiguous ``(start, stop)`` runs."""
    if len(columns) == 0:
        return []
    if np.any(np.diff(columns) <= 0):
        raise ValueError("owned columns must be increasing")
    breaks = np.flatnonzero(np.diff(columns) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(columns)]])
    return [(int(columns[a]), int(columns[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]
