"""Masks prepared ahead of an operation (an offline phase for sums).

A mask does not depend on the value it hides, so the keys of a coming operation's masks
can be drawn, sent to their parties and expanded before the clients' values exist: while
the clients train. The operation itself is then one encode-and-subtract pass for the
clients and nothing but a copy for the parties that received keys.

* :class:`ClientMasks`, the clients' side: fresh keys (one per client and party ``1..``)
  and each client's mask total (the sum of its masks), expanded in a background thread.
* :class:`PartyMasks`, a party's side: the sum over clients of the masks of its keys,
  expanded in a background thread.

Nothing is weaker than sharing at operation time: every key is fresh, is used for one
operation only (a prepared set is consumed once, or dropped), and reaches only its party.
"""

from __future__ import annotations

import secrets
import threading

import numpy as np

from smpc.masks import sum_masks


class _Expansion:
    """Run ``_fill`` in a daemon thread; ``_wait`` re-raises what it raised."""

    def __init__(self, name: str) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded, name=name, daemon=True)

    def _guarded(self) -> None:
        try:
            self._fill()
        except BaseException as err:  # re-raised by wait()
            self._error = err

    def _fill(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise RuntimeError("expanding the prepared masks failed") from self._error


class ClientMasks(_Expansion):
    """The clients' masks of one coming operation of ``len(keys)`` clients x ``size`` values.

    Parameters
    ----------
    keys
        ``keys[c][r - 1]``: client ``c``'s mask key for party ``r`` (fresh, 32 bytes).
    size
        Values per client (the operation's vector length).
    reuse
        A used set of the same shape whose memory this one takes over (saves faulting in
        fresh pages every round).
    """

    _totals: np.ndarray

    def __init__(
        self, keys: list[list[bytes]], size: int, reuse: ClientMasks | None = None
    ) -> None:
        super().__init__("smpc-prepare-clients")
        #: Names this set in the parties' messages (random: sets of earlier sessions of a
        #: warm party can never be mistaken for it).
        self.token = secrets.token_hex(8)
        self.keys = keys
        self.n_clients = len(keys)
        self.size = int(size)
        shape = (self.n_clients, self.size)
        if reuse is not None and reuse._totals.shape == shape:
            reuse._wait()
            self._totals, reuse._totals = reuse._totals, np.empty((0, 0), np.int64)
        else:
            self._totals = np.empty(shape, dtype=np.int64)
        self._thread.start()

    def _fill(self) -> None:
        for client, keys in enumerate(self.keys):
            sum_masks(keys, self._totals[client])

    def totals(self) -> np.ndarray:
        """Per client, the sum of its masks (mod 2^64), ``(n_clients, size)`` int64."""
        self._wait()
        return self._totals


class PartyMasks(_Expansion):
    """One party's share total of a coming operation: the sum of the masks of ``keys``.

    Parameters
    ----------
    token
        The set's name, as the coordinator sent it.
    size
        Values per client.
    keys
        This party's key of each client, in client order.
    reuse
        A used set of the same size whose memory this one takes over.
    """

    _total: np.ndarray

    def __init__(
        self, token: str, size: int, keys: list[bytes], reuse: PartyMasks | None = None
    ) -> None:
        super().__init__("smpc-prepare-party")
        self.token = token
        self.size = int(size)
        self.keys = keys
        self.n_clients = len(keys)
        if reuse is not None and reuse._total.size == self.size:
            reuse._wait()
            self._total, reuse._total = reuse._total, np.empty(0, np.int64)
        else:
            self._total = np.empty(self.size, dtype=np.int64)
        self._thread.start()

    def _fill(self) -> None:
        sum_masks(self.keys, self._total)

    def total(self) -> np.ndarray:
        """The sum of this party's masks over the clients (mod 2^64), ``size`` int64."""
        self._wait()
        return self._total
