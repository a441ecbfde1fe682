"""One round trip with the parties: the clients' shares out, the result shares back.

The clients' side of the protocol (encode, split, share ``i`` to party ``i`` only, on two
worker threads and one sender thread per party), the parties' acknowledgements and result
shares (from shared memory, array frames, or owner-revealed slices relayed sealed), the
reconstruction and the timings.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from smpc import messages as msg
from smpc import sharing
from smpc.crypten_backend.masks_ahead import PreparedMasks
from smpc.crypten_backend.owners import OwnerEndpoint
from smpc.party_pool import PartyError, PartyPool
from smpc.shared_buffer import SharedBuffer

__all__ = ["Exchange"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging

_KINDS = {"sum": "sum", "weighted_mean": "sum", "argmax": "argmax"}


def _path(buffer: SharedBuffer | None) -> str | None:
    return buffer.path if buffer is not None else None


class Exchange(PreparedMasks):
    """Share, send, collect, reconstruct: the protocol every operation runs."""

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
