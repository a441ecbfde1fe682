"""CrypTen backend: additive secret sharing among three computation parties.

The coordinator (this process) plays the clients' side of the protocol: for each client
it encodes the contribution in fixed point and splits it into three shares
(:mod:`smpc.sharing`), and sends share ``i`` of every client to party ``i`` only
(parties 1.. receive the 32-byte key of their mask, :mod:`smpc.masks`). The parties
(:mod:`smpc.party`, started and reaped by :mod:`smpc.party_pool`) add the shares, or run
CrypTen's comparison protocol for argmax with a trusted dealer, and each sends its share
of the result to the coordinator, which alone reconstructs the aggregate. Messages are
the typed dataclasses of :mod:`smpc.messages` over a :mod:`smpc.channel`. See
``docs/smpc.md`` for the trust model.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from typing_extensions import override

from smpc import messages as msg
from smpc import sharing
from smpc.aggregator import Aggregator
from smpc.cpus import available_cpus
from smpc.ledger import Traffic
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
from smpc.shared_buffer import SharedBuffer

__all__ = ["CryptenAggregator", "OwnerEndpoint", "PartyError"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging

_KINDS = {"sum": "sum", "weighted_mean": "sum", "argmax": "argmax"}


def _path(buffer: SharedBuffer | None) -> str | None:
    return buffer.path if buffer is not None else None


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
        self.runs: list[tuple[int, int]] = _runs(self.columns[self._order])
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


def _runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """Sorted, distinct ``columns`` as contiguous ``(start, stop)`` runs."""
    if len(columns) == 0:
        return []
    if np.any(np.diff(columns) <= 0):
        raise ValueError("owned columns must be increasing")
    breaks = np.flatnonzero(np.diff(columns) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(columns)]])
    return [(int(columns[a]), int(columns[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


class CryptenAggregator(Aggregator):
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
        settings = PoolSettings(
            parties=self.parties,
            mode=self.mode,
            seed=self.seed,
            provider=self.provider,
            precision_bits=self.precision_bits,
            record_received=self.record_received,
            transport="pipe" if remote is not None else opts.transport,
            start_method=opts.start_method,
        )
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

    @staticmethod
    def _connect(
        settings: PoolSettings,
        addresses: Sequence[tuple[str, int]],
        authkey: bytes | None,
        startup_timeout: float,
    ) -> PartyPool:
        from smpc.party import AUTHKEY_ENV

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

    # ----------------------------------------------------------------- properties
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

    # ----------------------------------------------------------------- one round trip
    def _run(
        self,
        op: str,
        matrix: np.ndarray,
        precision: int,
        weights: np.ndarray | None = None,
        decode: bool = True,
        endpoints: list[OwnerEndpoint] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Share each client's row, send share i to party i; return the reconstructed result.

        With ``weights``, client ``c`` shares ``[w_c * x_c, w_c]`` (FedAvg). The result is
        the decoded float64 aggregate, or (``decode=False``) the ring element (raw int64)
        the parties' result shares add up to. With ``endpoints`` (owner-revealed), the
        parties send the slices of their result shares to the endpoints and only the
        total weight (last value) to the coordinator, which is all this returns.
        """
        self._check_open()
        pool = self._party_pool
        if pool is None or not pool.starting:
            pool = self._pool  # raises a failed start's error
        assert pool is not None
        try:
            return self._exchange(
                pool, op, matrix, precision, weights, precision if decode else None, endpoints
            )
        except PartyError:
            self._closed = True
            raise
        except BaseException:
            # Interrupted mid-protocol: the parties' state is unknown, never reuse them.
            log.exception("%s interrupted; stopping the parties", op)
            pool.kill()
            self._closed = True
            raise

    def _exchange(
        self,
        pool: PartyPool,
        op: str,
        matrix: np.ndarray,
        precision: int,
        weights: np.ndarray | None,
        decode_bits: int | None,
        endpoints: list[OwnerEndpoint] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        n_clients, n_values = matrix.shape
        size = n_values + (1 if weights is not None else 0)
        kind = _KINDS[op]
        destinations = None
        if endpoints is not None:
            # Each owner gets its runs of columns and the total weight; the coordinator
            # gets the total weight only.
            destinations = [
                [e.client, lo, hi] for e in endpoints for lo, hi in [*e.runs, (size - 1, size)]
            ] + [[-1, size - 1, size]]
        self._op_id += 1
        op_id = self._op_id
        for endpoint in endpoints or []:
            endpoint.op_id = op_id
        # Fresh parties still starting: the clients' side (encoding, masks, party 0's
        # shares written into its buffer) needs no party, so it runs first and overlaps
        # the wait; the messages are queued and sent once the parties are up.
        early = pool.starting
        deadline = time.monotonic() + self.timeout
        if not early:
            pool.check(op, deadline, [], self.timeout)
        self._join_reserve()
        t0 = time.perf_counter()

        # Masks prepared ahead (while the clients trained), else keys first: parties 1..
        # expand their masks while we compute party 0's shares.
        prepared = self._take_prepared(kind, n_clients, size, early)
        keyed = self._randomness.keyed
        # Keys sent with this operation (none when prepared or drawn from the OS CSPRNG).
        keys = self._draw_keys(n_clients) if keyed and prepared is None else None
        buffers: list[SharedBuffer | None] = []
        formats: list[str] = []
        for rank, needed in enumerate(self._buffer_sizes(n_clients, size, keyed)):
            buffer = pool.buffer(rank, needed)
            buffers.append(buffer)
            if rank > 0 and keyed:
                formats.append("prepared" if prepared is not None else "key")
            else:
                formats.append("buffer" if buffer is not None else "array")

        # One sender thread per party: a stopped party blocks only its own channel.
        outboxes: list[queue.Queue] = [queue.Queue() for _ in range(self.parties)]
        errors: list[BaseException | None] = [None] * self.parties

        def send(rank: int) -> None:
            channel = pool.channels[rank]
            try:
                while (item := outboxes[rank].get()) is not None:
                    if isinstance(item, np.ndarray):
                        channel.send_array(item)
                    else:
                        channel.send(item)
            except BaseException as err:  # reported by the main thread
                errors[rank] = err

        threads = [
            threading.Thread(target=send, args=(r,), daemon=True, name=f"smpc-send-{r}")
            for r in range(self.parties)
        ]
        if not early:
            for t in threads:
                t.start()
        try:
            for rank in range(self.parties):
                outboxes[rank].put(
                    msg.Aggregate(
                        op_id=op_id,
                        kind=kind,
                        n_clients=n_clients,
                        size=size,
                        share_format=formats[rank],
                        buffer_path=_path(buffers[rank]),
                        destinations=destinations,
                        prepared=(
                            prepared.token
                            if prepared is not None and formats[rank] == "prepared"
                            else None
                        ),
                        # each client's key for this party only, as its shares travel
                        owner_keys=(
                            None if endpoints is None else [e.keys[rank].hex() for e in endpoints]
                        ),
                    )
                )
            if keys is not None:
                for client in range(n_clients):
                    for rank in range(1, self.parties):
                        key = keys[client][rank - 1]
                        outboxes[rank].put(msg.MaskKey(client=client, key=key.hex()))

            # Clients' work runs on two worker threads (numpy and AES release the GIL);
            # each client's shares are handed to the senders in client order.
            totals = prepared.totals() if prepared is not None else None

            def client_shares(client: int) -> list[tuple[int, Any]]:
                return self._share_client(client, matrix, weights, precision, keys, buffers, totals)

            for items in self._client_workers().map(client_shares, range(n_clients)):
                for rank, item in items:
                    outboxes[rank].put(item)
                for rank in range(self.parties):
                    self._raise_if_send_failed(pool, op, rank, errors)
            if early:
                self.wait_for_parties()  # raises PartyError if they failed to start
                deadline = time.monotonic() + self.timeout
                pool.check(op, deadline, [], self.timeout)
                for t in threads:
                    t.start()
        finally:
            for box in outboxes:
                box.put(None)
        for rank in range(self.parties):
            while threads[rank].ident is not None and threads[rank].is_alive():
                threads[rank].join(0.02)
                pool.check(op, deadline, [rank], self.timeout)
            self._raise_if_send_failed(pool, op, rank, errors)
        t1 = time.perf_counter()
        results, result_shares, t2 = self._collect(
            pool, op, op_id, deadline, size, buffers, destinations, endpoints
        )
        t3 = time.perf_counter()
        if decode_bits is None:
            revealed = sharing.reconstruct(result_shares)
        else:
            revealed = sharing.reconstruct_decode(result_shares, decode_bits)
        del result_shares
        self._time(op, n_clients, size, results, t0, t1, t2, t3)
        if prepared is not None:
            self.prepared_operations += 1
        if kind == "sum" and (n_clients, size) == self._reserved:
            # the next one's, while the clients train (in this one's memory)
            self._prepare(pool, n_clients, size, reuse=prepared)
        share_bytes = n_clients * size * 8
        stats = {
            "coordinator_bytes": int(self.parties * size * 8),
            "bytes_to_party": [share_bytes]
            + [n_clients * sharing.KEY_BYTES if keyed else share_bytes] * (self.parties - 1),
            "messages_to_party": [n_clients] * self.parties,
            "bytes_between_parties": [r.bytes_between_parties for r in results],
            "mpc_rounds": max(r.mpc_rounds for r in results),
        }
        return revealed, stats

    def _collect(
        self,
        pool: PartyPool,
        op: str,
        op_id: int,
        deadline: float,
        size: int,
        buffers: Sequence[SharedBuffer | None],
        destinations: list[list[int]] | None = None,
        endpoints: Sequence[Any] | None = None,
    ) -> tuple[list[msg.Result], list[np.ndarray], float]:
        """Every party's ack, then its ``Result`` and result share.

        The share comes from the party's shared buffer, an array frame, or (owner-revealed)
        the coordinator's slices. Returns (results, result shares, time the acks were in).
        """
        # Every party acknowledges its shares before the MPC starts, so a party that
        # stops answering is named precisely rather than the ones waiting for it.
        for rank in range(self.parties):
            ack = pool.receive(rank, op, deadline, self.timeout)
            if not isinstance(ack, msg.SharesReceived) or ack.op_id != op_id:
                raise pool.fail(f"{pool.names[rank]} sent {ack!r} instead of an ack during {op}")
        acked = time.perf_counter()
        results: list[msg.Result] = []
        result_shares: list[np.ndarray] = []
        for rank in range(self.parties):
            reply = pool.receive(rank, op, deadline, self.timeout)
            if not isinstance(reply, msg.Result) or reply.op_id != op_id:
                raise pool.fail(
                    f"{pool.names[rank]} sent {reply!r} instead of a result during {op}"
                )
            results.append(reply)
            buffer = buffers[rank]
            if destinations is not None:
                assert endpoints is not None
                result_shares.append(
                    self._route_owner_shares(pool, op, rank, op_id, destinations, endpoints)
                )
            elif reply.in_buffer and buffer is not None:
                result_shares.append(buffer.result(size))
            else:
                try:
                    share = pool.channels[rank].recv_array(into=np.empty(size, np.int64))
                except (EOFError, OSError) as err:
                    raise pool.lost(rank, op, err) from err
                result_shares.append(share)
        return results, result_shares, acked

    def _time(
        self, op: str, n_clients: int, size: int, results: list[msg.Result], *marks: float
    ) -> None:
        """Record :attr:`last_timing` from the marks: start, shares sent, acks in, results in."""
        t0, t1, t2, t3 = marks
        self.last_timing = {
            "share_send": t1 - t0,
            "receive": t2 - t1,
            "mpc_results": t3 - t2,
            "reconstruct": time.perf_counter() - t3,
            "party_max": max(r.seconds for r in results),
        }
        log.debug("%s of %d x %d: %s", op, n_clients, size, self.last_timing)

    def _buffer_sizes(self, n_clients: int, size: int, keyed: bool) -> list[int]:
        """Per party, the shared-buffer values one operation needs (result + input shares).

        Party 0 holds every client's share; parties 1.. only their result share when they
        receive keys (else every mask too).
        """
        return [
            SharedBuffer.values_needed(n_clients if rank == 0 or not keyed else 0, size)
            for rank in range(self.parties)
        ]

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

    def _route_owner_shares(
        self,
        pool: PartyPool,
        op: str,
        rank: int,
        op_id: int,
        destinations: list[list[int]],
        endpoints: Sequence[Any],
    ) -> np.ndarray:
        """Relay party ``rank``'s sealed owner slices to their endpoints; return the coordinator's.

        A client's slice arrives sealed for that client (uint8 ciphertext); this process
        hands it on unopened. Only the coordinator's own slice (the total weight) is a
        plain int64 share.
        """
        from smpc import sealed

        deadline = time.monotonic() + self.timeout
        mine: np.ndarray | None = None
        for owner, lo, hi in destinations:
            note = pool.receive(rank, op, deadline, self.timeout)
            if not isinstance(note, msg.OwnerShare) or (
                note.op_id,
                note.rank,
                note.owner,
                note.start,
                note.stop,
            ) != (op_id, rank, owner, lo, hi):
                raise pool.fail(
                    f"{pool.names[rank]} sent {note!r} instead of the share slice "
                    f"[{lo}, {hi}) for {owner} during {op}"
                )
            into = (
                np.empty(hi - lo, np.int64)
                if owner < 0
                else np.empty(sealed.sealed_size(8 * (hi - lo)), np.uint8)
            )
            try:
                frame = pool.channels[rank].recv_array(into=into)
            except (EOFError, OSError) as err:
                raise pool.lost(rank, op, err) from err
            if owner < 0:
                mine = frame
            else:
                endpoints[owner].receive(rank, lo, hi, frame)
        if mine is None:
            raise pool.fail(f"no coordinator slice from {pool.names[rank]} during {op}")
        return mine

    def _share_client(
        self,
        client: int,
        matrix: np.ndarray,
        weights: np.ndarray | None,
        precision: int,
        keys: list[list[bytes]] | None,
        buffers: list[SharedBuffer | None],
        totals: np.ndarray | None = None,
    ) -> list[tuple[int, Any]]:
        """Client-side work for one client: encode, split; share i goes to party i.

        The masks of parties 1.. are the expansions of ``keys[client]``, or (prepared
        masks) sum to ``totals[client]``; with neither they are drawn from the OS CSPRNG
        and sent in full. Returns what to send, as ``(rank, message or array)`` in order.
        """
        out: list[tuple[int, Any]] = []
        n_clients, n_values = matrix.shape
        size = n_values + (1 if weights is not None else 0)
        scale = float(weights[client]) if weights is not None else 1.0
        extra = scale if weights is not None else None
        buffer0 = buffers[0]
        first = buffer0.inputs(n_clients, size)[client] if buffer0 is not None else None
        if first is None:
            first = np.empty(size, dtype=np.int64)
        sharing.write_first_share(
            matrix[client],
            scale,
            keys[client] if keys is not None else [],
            first,
            precision,
            extra,
            mask_total=totals[client] if totals is not None else None,
        )
        if not self._randomness.keyed:  # masks drawn from the OS CSPRNG and sent in full
            for rank in range(1, self.parties):
                mask = np.frombuffer(os.urandom(8 * size), dtype=np.int64)
                np.subtract(first, mask, out=first)
                buffer = buffers[rank]
                if buffer is not None:
                    buffer.inputs(n_clients, size)[client] = mask
                    out.append((rank, msg.ShareInBuffer(client=client)))
                else:
                    out += [(rank, msg.ShareArray(client=client)), (rank, mask)]
        if buffer0 is not None:
            out.append((0, msg.ShareInBuffer(client=client)))
        else:
            out += [(0, msg.ShareArray(client=client)), (0, first)]
        return out

    def _client_workers(self) -> ThreadPoolExecutor:
        """Two threads for the clients' side of the protocol (created on first use)."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smpc-client")
        return self._workers

    @staticmethod
    def _raise_if_send_failed(
        pool: PartyPool, op: str, rank: int, errors: list[BaseException | None]
    ) -> None:
        err = errors[rank]
        if err is not None:
            time.sleep(0.05)  # let the exit code arrive, for a precise message
            dead = pool.dead_party()
            raise pool.fail(
                f"{dead or pool.names[rank] + f' refused the shares ({err!r})'} during {op}"
            ) from err

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

    # ----------------------------------------------------------------- backend hooks
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

    # ----------------------------------------------------------------- deployed clients
    def aggregate_sealed(
        self,
        kind: str,
        sealed: Sequence[Sequence[bytes]],
        names: Sequence[str],
        context: str,
        size: int,
        decode_bits: int | None,
        owned: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One operation over shares deployed clients made and sealed (:mod:`smpc.sealed`).

        ``sealed[c][i]`` is client ``c``'s share for party ``i``, opaque here: this
        process relays it and never holds a share. ``kind`` is ``"sum"`` or ``"argmax"``;
        the result is decoded at ``decode_bits`` (``None``: the raw ring value, e.g. the
        argmax index). Returns (result, traffic statistics).

        ``owned`` (a weighted sum whose last value is the total weight): client ``c``'s
        ``(start, stop)`` runs of the result, revealed to that client only. Each party
        seals its slices of them (and of the total weight) for the client, under the key
        it shares with it; the statistics' ``owner_slices[c]`` holds them, ciphertext for
        the coordinator to relay (``smpc.sealed.open_owner_slices`` opens them at the
        client), and the result is the total weight alone.
        """
        self._check_open()
        pool = self._pool
        assert pool is not None
        if kind not in ("sum", "argmax"):
            raise ValueError(f"kind must be 'sum' or 'argmax', got {kind!r}.")
        if len(sealed) != len(names) or any(len(s) != self.parties for s in sealed):
            raise ValueError("one sealed share per party for every named client is needed.")
        destinations = None
        relays: list[Any] = []
        if owned is not None:
            if kind != "sum" or len(owned) != len(sealed):
                raise ValueError("owned: one list of runs per client, for a weighted sum only.")
            destinations = [
                [c, int(lo), int(hi)]
                for c, runs in enumerate(owned)
                for lo, hi in [*runs, (size - 1, size)]
            ] + [[-1, size - 1, size]]
            relays = [SealedRelay() for _ in sealed]
        self._op_id += 1
        op_id = self._op_id
        deadline = time.monotonic() + self.timeout
        t0 = time.perf_counter()
        try:
            pool.check(kind, deadline, [], self.timeout)
            for rank in range(self.parties):
                channel = pool.channels[rank]
                try:
                    channel.send(
                        msg.Aggregate(
                            op_id=op_id,
                            kind=kind,
                            n_clients=len(sealed),
                            size=int(size),
                            share_format="sealed",
                            destinations=destinations,
                        )
                    )
                    for client, (name, blobs) in enumerate(zip(names, sealed, strict=True)):
                        blob = np.frombuffer(blobs[rank], dtype=np.uint8)
                        channel.send(
                            msg.SealedShare(
                                client=client, name=str(name), context=context, nbytes=blob.size
                            )
                        )
                        channel.send_array(blob)
                except OSError as err:
                    raise pool.lost(rank, kind, err) from err
            t1 = time.perf_counter()
            # No shared buffers: sealed shares and result shares travel as frames.
            results, shares, t2 = self._collect(
                pool,
                kind,
                op_id,
                deadline,
                int(size),
                [None] * self.parties,
                destinations,
                relays or None,
            )
        except PartyError:
            self._closed = True
            raise
        except BaseException:
            # Interrupted mid-protocol: the parties' state is unknown, never reuse them.
            log.exception("sealed %s interrupted; stopping the parties", kind)
            pool.kill()
            self._closed = True
            raise
        t3 = time.perf_counter()
        if decode_bits is None:
            revealed = sharing.reconstruct(shares)
        else:
            revealed = sharing.reconstruct_decode(shares, decode_bits)
        self._time(f"sealed {kind}", len(sealed), int(size), results, t0, t1, t2, t3)
        stats = {
            "coordinator_bytes": int(self.parties * size * 8),
            "bytes_to_party": [sum(len(s[r]) for s in sealed) for r in range(self.parties)],
            "messages_to_party": [len(sealed)] * self.parties,
            "bytes_between_parties": [r.bytes_between_parties for r in results],
            "mpc_rounds": max(r.mpc_rounds for r in results),
        }
        if owned is not None:
            stats["owner_slices"] = [r.slices for r in relays]
            stats["coordinator_bytes"] = int(self.parties * 8)
        return revealed, stats

    # ----------------------------------------------------------------- instrumentation
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
        CrypTen communicator handed it (:func:`smpc.party.recording_openings`).
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

    # ----------------------------------------------------------------- shutdown
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
