"""Operations over shares that deployed clients made and sealed (:mod:`smpc.sealed`).

The coordinator relays ciphertext to the parties and never holds a share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from smpc import messages as msg
from smpc import sharing
from smpc.crypten_backend.exchange import Exchange
from smpc.crypten_backend.owners import SealedRelay
from smpc.party_pool import PartyError

__all__ = ["SealedOperations"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging


class SealedOperations(Exchange):
    """``aggregate_sealed``: one operation over deployed clients' sealed shares."""

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
