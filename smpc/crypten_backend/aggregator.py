"""``CryptenAggregator``: its options, its parties' start and end, its instrumentation.

What it does is in the classes it is made of (:mod:`smpc.crypten_backend`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from typing_extensions import override

from smpc import messages as msg
from smpc import sharing
from smpc.crypten_backend.operations import Operations
from smpc.crypten_backend.sealed_ops import SealedOperations
from smpc.options import CryptenOptions
from smpc.party_pool import (
    PartyError,
    PartyPool,
    PoolSettings,
    borrow,
    give_back,
    keeping_warm,
)
from smpc.prepared import ClientMasks

__all__ = ["CryptenAggregator"]


class CryptenAggregator(SealedOperations, Operations):
    """Secure aggregation by three CrypTen parties (semi-honest, non-colluding, with a dealer).

    Parameters
    ----------
    parties
        Number of computation parties (3 by default; at least 2).
    mode
        ``"secure"`` (OS randomness, trusted dealer) or ``"debug"`` (seeded masks and seeded
        CrypTen randomness for bit-for-bit reproducibility; NOT private).
    seed
        Debug-mode seed; refused in secure mode.
    timeout
        Seconds one operation may take before the caller gets a :class:`PartyError`.
    provider
        CrypTen's source of correlated randomness: ``"TTP"`` (a trusted dealer process).
        ``"TFP"`` (party 0 generates everything) is allowed only in debug mode.
    precision_bits
        Fixed-point fractional bits of values compared by ``argmax`` (CrypTen's encoder).
    rendezvous
        ``torch.distributed`` init method for local parties (default: a fresh file in a
        private temporary directory).
    sum_precision_bits
        Fixed-point fractional bits for ``sum``/``weighted_mean``: additions never
        multiply shares, so they afford more precision (24 bits: per-value rounding
        <= 3e-8) while the ring bound still admits |w*x| up to ~2.7e10 for 5 clients.
    party_addresses
        ``[(host, port), ...]`` of parties already running elsewhere
        (``python -m smpc.party --listen HOST:PORT ...``); the coordinator then starts no
        process and authenticates with ``authkey`` (default ``$SMPC_AUTHKEY``).
    authkey
        Shared key for ``party_addresses``.
    start_method
        ``multiprocessing`` start method for local parties. ``"forkserver"`` (default)
        forks parties from a clean server process that pre-imported CrypTen: fast, and the
        parties do not inherit the coordinator's memory (which holds the clients' data).
    startup_timeout
        Seconds for the parties to come up (fork server included). Fresh local parties
        start in the background: the constructor returns at once and the first use of the
        parties (an operation, :attr:`pids`, :meth:`wait_for_parties`) waits for them,
        raising :class:`PartyError` if they failed or did not start in time.
    record_received
        Instrumentation: each party keeps what it received from clients; read it with
        :meth:`received_by_parties`.
    mask_source
        ``"prng"`` (default): each mask is expanded with AES-256-CTR from its own 256-bit
        OS-random key, and parties 1.. receive the key instead of the mask (pseudo-random
        secret sharing). ``"urandom"``: masks drawn from the OS CSPRNG and sent in full.
    transport
        Local parties only. ``"shm"`` (default): party processes, shares and result shares
        in per-party shared-memory files; ``"pipe"``: party processes, shares framed
        through the pipes; ``"threads"``: additions-only parties as threads of this
        process (no CrypTen, no argmax; for tests).
    warm
        Borrow parties kept warm by an earlier aggregator with the same settings and
        give them back on :meth:`close` (see :mod:`smpc.party_pool`). Default: on inside
        :func:`smpc.party_pool.warm_parties` (sweep workers), off elsewhere.
    prepare_masks
        Expand the masks of the next weighted mean while the clients train (after
        :meth:`reserve`; :mod:`smpc.prepared`). The expansions then run beside the
        clients' work, in one thread here and one in each party 1..: ``None`` (default)
        prepares only when that many CPUs are spare besides torch's threads, because on
        fewer they slow the training more than they save (see docs/smpc.md).
    options
        All of the above as one :class:`smpc.options.CryptenOptions` (validated once),
        instead of the keyword arguments.
    """

    name = "crypten"

    def __init__(
        self,
        parties: int = 3,
        mode: str = "secure",
        seed: int | None = None,
        timeout: float = 30.0,
        provider: str = "TTP",
        precision_bits: int = 16,
        rendezvous: str | None = None,
        *,
        sum_precision_bits: int = 24,
        party_addresses: Sequence[tuple[str, int]] | None = None,
        authkey: bytes | None = None,
        start_method: str = "forkserver",
        startup_timeout: float = 120.0,
        record_received: bool = False,
        mask_source: str = "prng",
        transport: str = "shm",
        warm: bool | None = None,
        prepare_masks: bool | None = None,
        options: CryptenOptions | None = None,
    ) -> None:
        super().__init__()
        self._party_pool: PartyPool | None = None
        self._reserving: threading.Thread | None = None
        #: ``(n_clients, size)`` of the operations ``reserve`` announced (their masks are
        #: prepared ahead, :mod:`smpc.prepared`) and the set prepared for the next one.
        self._reserved: tuple[int, int] | None = None
        self._prepared: ClientMasks | None = None
        #: Operations whose masks were prepared ahead (expanded while the clients trained).
        self.prepared_operations = 0
        #: Whether :meth:`reserve` turned preparing masks ahead on (``prepare_masks``).
        self.prepares_masks = False
        self._workers: ThreadPoolExecutor | None = None
        self._shutdown_done = False
        given = CryptenOptions(
            parties=parties,
            mode=mode,
            seed=seed,
            timeout=timeout,
            provider=provider,
            precision_bits=precision_bits,
            rendezvous=rendezvous,
            sum_precision_bits=sum_precision_bits,
            party_addresses=None if party_addresses is None else tuple(party_addresses),
            authkey=authkey,
            start_method=start_method,
            startup_timeout=startup_timeout,
            record_received=record_received,
            mask_source=mask_source,
            transport=transport,
            warm=warm,
            prepare_masks=prepare_masks,
        )
        if options is not None and given != CryptenOptions():
            raise ValueError(
                "pass either options= (a CryptenOptions) or keyword options, not both; "
                "use options.replace(...) to change some."
            )
        opts = options if options is not None else given
        #: The validated options this aggregator runs with.
        self.options = opts
        self._prepare_masks = opts.prepare_masks
        self.parties = opts.parties
        self.mode = opts.mode
        self.seed = opts.seed
        self.timeout = opts.timeout
        self.provider = opts.provider
        self.precision_bits = opts.precision_bits
        self.sum_precision_bits = opts.sum_precision_bits
        self.record_received = opts.record_received
        self._randomness = sharing.ShareRandomness(self.mode, self.seed, source=opts.mask_source)
        self._op_id = 0
        #: Seconds per phase of the last operation.
        self.last_timing: dict[str, float] = {}
        remote = opts.party_addresses
        settings = PoolSettings.from_options(opts)
        self.transport = settings.transport
        self._warm = bool(keeping_warm() if opts.warm is None else opts.warm) and remote is None
        start = time.perf_counter()
        #: Whether the parties were borrowed from a warm pool (see :mod:`smpc.party_pool`).
        self.borrowed = False
        if remote is not None:
            pool = self._connect(settings, remote, opts.authkey, opts.startup_timeout)
        elif opts.transport == "threads":
            pool = PartyPool.start_threads(settings)
        else:
            borrowed = borrow(settings) if self._warm and opts.rendezvous is None else None
            self.borrowed = borrowed is not None
            # Fresh local parties start in the background (fork server, processes, Ready)
            # while the caller loads data and builds models; the first use of the pool
            # (``_pool``) waits for them, within the start-up timeout.
            pool = borrowed or PartyPool.start_processes(
                settings, opts.rendezvous, opts.startup_timeout, wait=False
            )
        self._party_pool = pool
        self.rendezvous = pool.rendezvous
        #: Seconds the caller waited for the parties: construction, then (after a
        #: background start) the wait at the first operation.
        self.startup_seconds = time.perf_counter() - start
        atexit.register(self.close)

    @staticmethod
    def _connect(
        settings: PoolSettings,
        addresses: Sequence[tuple[str, int]],
        authkey: bytes | None,
        startup_timeout: float,
    ) -> PartyPool:
        from smpc.party.process import AUTHKEY_ENV

        addresses = [(str(h), int(p)) for h, p in addresses]
        if len(addresses) != settings.parties:
            raise ValueError(
                f"party_addresses lists {len(addresses)} parties but parties={settings.parties}."
            )
        key = authkey if authkey is not None else os.environ.get(AUTHKEY_ENV, "").encode()
        if not key:
            raise ValueError(
                f"remote parties need a shared authkey: pass authkey= or set {AUTHKEY_ENV} "
                "to the value the parties were started with."
            )
        return PartyPool.connect(settings, addresses, key, startup_timeout)

    @override
    @property
    def private(self) -> bool:
        return self.mode == "secure"

    @override
    @property
    def privacy_note(self) -> str:
        if self.mode == "debug":
            return "not private (debug mode: seeded masks)"
        return (
            f"private: {self.parties} semi-honest non-colluding CrypTen parties each see only "
            "uniformly random shares; comparisons use a trusted dealer; only the coordinator "
            "reconstructs the aggregates (no party sees them)"
        )

    @property
    def pids(self) -> list[int]:
        """Process ids of the local parties, then the dealer (empty for remote parties)."""
        pool = self._party_pool
        if pool is None:
            return []
        with contextlib.suppress(PartyError):
            pool.wait_started()  # every pid is known once started (a failed start: those begun)
        return pool.pids

    def _query(self, what: str) -> list[Any]:
        self._check_open()
        pool = self._pool
        assert pool is not None
        deadline = time.monotonic() + self.timeout
        for rank, channel in enumerate(pool.channels):
            try:
                channel.send(msg.Query(what=what))
            except OSError as err:
                raise pool.lost(rank, what, err) from err
        return [pool.receive(rank, what, deadline, self.timeout) for rank in range(self.parties)]

    def party_counters(self) -> list[dict[str, int]]:
        """Per party: operations, messages and bytes received from clients so far."""
        return [
            {"operations": c.operations, "messages": c.messages, "bytes": c.bytes}
            for c in self._query("counters")
        ]

    def received_by_parties(self) -> list[list[dict[str, Any]]]:
        """Per party, what it received from clients since the last call (then cleared).

        Needs ``record_received=True``. Each record: ``op``, ``id``, ``client``, ``sha256``
        of the share and ``values`` (the int64 share, for up to 2^20 values).
        """
        if not self.record_received:
            raise RuntimeError("create the aggregator with record_received=True to use this.")
        pool = self._pool
        assert pool is not None
        out = []
        for rank, reply in enumerate(self._query("received")):
            records = []
            for record in reply.records:
                record = dict(record)
                with_values = record.pop("with_values")
                record["values"] = pool.channels[rank].recv_array() if with_values else None
                records.append(record)
            out.append(records)
        return out

    def opened_by_parties(self) -> list[list[dict[str, Any]]]:
        """Per party, every value it opened with the others since the last call (then cleared).

        Needs ``record_received=True``; only ``argmax`` opens values (sums are local
        additions). Each record: ``op``, ``id`` (the operation), ``opening`` (its order
        within the operation), ``size`` and ``values`` (flat int64): what the party's
        CrypTen communicator handed it (:func:`smpc.party.comparison.recording_openings`).
        """
        if not self.record_received:
            raise RuntimeError("create the aggregator with record_received=True to use this.")
        pool = self._pool
        assert pool is not None
        out = []
        for rank, reply in enumerate(self._query("opened")):
            records = []
            for record in reply.records:
                record = dict(record)
                record["values"] = pool.channels[rank].recv_array()
                records.append(record)
            out.append(records)
        return out

    def close(self) -> None:
        """Stop the parties (or give them back to the warm pool). Idempotent."""
        if self._shutdown_done:
            return
        self._shutdown_done = True
        self._closed = True
        self._prepared = None  # its keys are never used
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        self._join_reserve()
        if self._workers is not None:
            self._workers.shutdown(wait=False)
            self._workers = None
        pool = self._party_pool  # kept: pids stay readable after close
        if pool is None or pool.closed:
            return
        if pool.starting:
            with contextlib.suppress(Exception):
                pool.wait_started()  # bounded; a failed start stopped everything
        if self._warm:
            give_back(pool)
        else:
            pool.close()
