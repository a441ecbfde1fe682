"""What every part of :class:`~smpc.crypten_backend.CryptenAggregator` shares: its state and pool.

The aggregator is split by what it does (:mod:`smpc.crypten_backend`); each part is a
class in the chain ``CryptenState`` <- :class:`~smpc.crypten_backend.masks_ahead.PreparedMasks`
<- :class:`~smpc.crypten_backend.exchange.Exchange` <- the operations, and
:class:`~smpc.crypten_backend.aggregator.CryptenAggregator` sets the state declared here.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from smpc import sharing
from smpc.aggregator import Aggregator
from smpc.options import CryptenOptions
from smpc.party_pool import PartyPool
from smpc.prepared import ClientMasks
from smpc.shared_buffer import SharedBuffer

__all__ = ["CryptenState"]


class CryptenState(Aggregator):
    """The aggregator's state (set by its constructor) and the party pool it waits for."""

    options: CryptenOptions
    parties: int
    mode: str
    seed: int | None
    timeout: float
    provider: str
    precision_bits: int
    sum_precision_bits: int
    record_received: bool
    transport: str
    rendezvous: str | None
    #: Seconds the caller waited for the parties (see ``CryptenAggregator``).
    startup_seconds: float
    _randomness: sharing.ShareRandomness
    _op_id: int
    last_timing: dict[str, float]
    _party_pool: PartyPool | None
    _reserving: threading.Thread | None
    _reserved: tuple[int, int] | None
    _prepared: ClientMasks | None
    prepared_operations: int
    _prepare_masks: bool | None
    prepares_masks: bool
    _workers: ThreadPoolExecutor | None

    @property
    def _pool(self) -> PartyPool | None:
        """The party pool, once started (waits for a background start; raises its error)."""
        pool = self._party_pool
        if pool is not None:
            try:  # 0 s once started; the start's error if it failed
                self.startup_seconds += pool.wait_started()
            except BaseException:
                self._closed = True
                raise
        return pool

    def wait_for_parties(self) -> float:
        """Wait until the parties are up (they start in the background); return ``startup_seconds``.

        Raises :class:`PartyError` if they failed to start or did not within the
        start-up timeout.
        """
        self._pool  # noqa: B018 - the property waits
        return self.startup_seconds

    def _buffer_sizes(self, n_clients: int, size: int, keyed: bool) -> list[int]:
        """Per party, the shared-buffer values one operation needs (result + input shares).

        Party 0 holds every client's share; parties 1.. only their result share when they
        receive keys (else every mask too).
        """
        return [
            SharedBuffer.values_needed(n_clients if rank == 0 or not keyed else 0, size)
            for rank in range(self.parties)
        ]
