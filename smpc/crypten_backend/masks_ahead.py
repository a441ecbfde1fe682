"""Masks prepared ahead of an operation, while the clients train (:mod:`smpc.prepared`).

See docs/smpc.md, "Prepared masks".
"""

from __future__ import annotations

import logging
import sys
import threading

from smpc import messages as msg
from smpc.cpus import available_cpus
from smpc.crypten_backend.state import CryptenState
from smpc.party_pool import PartyError, PartyPool
from smpc.prepared import ClientMasks

__all__ = ["PreparedMasks"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging


class PreparedMasks(CryptenState):
    """``reserve``: the next weighted mean's masks and shared buffers, made ahead."""

    def reserve(self, n_clients: int, n_values: int) -> None:
        """Prepare for weighted means (and sums) of ``n_clients`` x ``n_values`` values.

        * The masks of the next such operation are drawn, sent to their parties as keys and
          expanded now, in background threads (:mod:`smpc.prepared`), and after each such
          operation those of the next one: the operation itself then costs one
          encode-and-subtract pass instead of four mask expansions per value. Keyed masks
          only (not ``mask_source="urandom"`` in secure mode), once the parties are up (a
          fresh start prepares after the first operation), and with ``prepare_masks``
          (by default only where CPUs are spare).
        * The parties' shared-memory buffers are allocated now, in a background thread
          (the pages cost ~0.2 s per 200 MB to allocate, which the first operation would
          otherwise pay while everyone waits). Shared-memory parties only; the next
          operation waits for it.
        """
        pool = self._party_pool
        if self._closed or pool is None:
            return
        self._reserved = (int(n_clients), int(n_values) + 1)
        self.prepares_masks = self._randomness.keyed and self._spare_cpus_for_masks()
        if not pool.starting:
            try:
                self._prepare(pool, *self._reserved)
            except PartyError:
                self._closed = True
                raise
        if self.transport != "shm" or pool.remote:
            return
        self._join_reserve()
        sizes = self._buffer_sizes(int(n_clients), int(n_values) + 1, self._randomness.keyed)

        def allocate() -> None:
            try:
                for rank, needed in enumerate(sizes):
                    pool.buffer(rank, needed, populate=True)
            except Exception:  # only a hint: the operation allocates what it needs
                log.debug("reserving shared buffers failed", exc_info=True)

        self._reserving = threading.Thread(target=allocate, name="smpc-reserve", daemon=True)
        self._reserving.start()

    def _spare_cpus_for_masks(self) -> bool:
        """``prepare_masks``, or (``None``) whether background expansions find idle CPUs.

        They need one thread here and one per party 1.., besides the caller's torch
        threads. On 2 CPUs with 1 torch thread, FedscGen on the bundled pancreas trained
        ~1.3 s slower with prepared masks while its aggregations saved ~0.3 s.
        """
        if self._prepare_masks is not None:
            return bool(self._prepare_masks)
        torch = sys.modules.get("torch")
        busy = torch.get_num_threads() if torch is not None else 1
        return available_cpus() - busy >= self.parties

    def _join_reserve(self) -> None:
        if self._reserving is not None:
            self._reserving.join()
            self._reserving = None

    def _prepare(
        self, pool: PartyPool, n_clients: int, size: int, reuse: ClientMasks | None = None
    ) -> None:
        """Draw the next operation's mask keys, send them, expand them in the background.

        The clients' totals expand in a thread of this process, each party's in the party;
        the set is used by the next sum of this shape (:meth:`_take_prepared`).
        """
        if not self.prepares_masks:
            return
        keys = self._draw_keys(n_clients)
        masks = ClientMasks(keys, size, reuse)
        self._prepared = None  # an unused earlier set is dropped with its keys
        for rank in range(1, self.parties):
            channel = pool.channels[rank]
            try:
                channel.send(msg.PrepareMasks(token=masks.token, n_clients=n_clients, size=size))
                for client in range(n_clients):
                    channel.send(msg.MaskKey(client=client, key=keys[client][rank - 1].hex()))
            except (EOFError, OSError) as err:
                raise pool.lost(rank, "preparing masks", err) from err
        self._prepared = masks

    def _draw_keys(self, n_clients: int) -> list[list[bytes]]:
        """Fresh mask keys: ``keys[c][r - 1]`` is client ``c``'s for party ``r`` (keyed masks)."""
        keys = [
            [self._randomness.mask_key() for _ in range(1, self.parties)] for _ in range(n_clients)
        ]
        return [[k for k in row if k is not None] for row in keys]

    def _take_prepared(
        self, kind: str, n_clients: int, size: int, early: bool
    ) -> ClientMasks | None:
        """The prepared set, if it fits this operation (it is then used up)."""
        prepared = self._prepared
        if (
            prepared is None
            or early
            or kind != "sum"
            or (prepared.n_clients, prepared.size) != (n_clients, size)
        ):
            return None
        self._prepared = None
        return prepared
