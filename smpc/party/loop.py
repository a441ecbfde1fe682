"""The command loop of one computation party, the same over every channel."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from smpc import messages as msg
from smpc.channel import Channel
from smpc.framing import FrameError
from smpc.masks import KEY_BYTES, MaskStream, expand_key, sum_masks
from smpc.party.comparison import recording_openings, secure_argmax
from smpc.party.join import LazyCrypten
from smpc.prepared import PartyMasks
from smpc.shared_buffer import SharedBuffer

__all__ = ["RECORD_MAX_VALUES", "PartyLoop"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging

#: Arrays up to this many values are kept verbatim by ``record_received`` (digests beyond).
RECORD_MAX_VALUES = 1 << 20


class PartyLoop:
    """The command loop of one computation party, over any :class:`~smpc.channel.Channel`.

    Parameters
    ----------
    rank
        This party's rank.
    channel
        Connection to the coordinator.
    crypten
        The imported CrypTen module (after ``crypten.init()``), a :class:`LazyCrypten`
        (initialising in the background; ``argmax`` waits for it), or None for a party
        that serves additions only (``argmax`` then fails with a clear error).
    record
        Keep what this party received from clients and every value it opened with the
        other parties inside an ``argmax`` (instrumentation for tests; see
        :func:`recording_openings`).
    agreed_clients
        The client set every sealed operation must list (default ``$SMPC_AGREED_CLIENTS``,
        else per phase the set of the phase's first sealed operation;
        :class:`smpc.sealed.ContextPolicy`).
    """

    def __init__(
        self,
        rank: int,
        channel: Channel,
        crypten: Any | None = None,
        record: bool = False,
        agreed_clients: Sequence[str] | None = None,
    ) -> None:
        from smpc import sealed

        self.rank = rank
        self.channel = channel
        self.crypten = crypten
        self.record = record
        self.records: list[tuple[dict[str, Any], np.ndarray | None]] = []
        #: With ``record``: what this party opened (learned in the clear) from the others.
        self.opened: list[tuple[dict[str, Any], np.ndarray]] = []
        self.counters = {"operations": 0, "messages": 0, "bytes": 0}
        self._buffer: SharedBuffer | None = None
        #: The checks of sealed operations (agreed clients, replays, a step twice).
        self._policy = sealed.ContextPolicy(
            frozenset(agreed_clients) if agreed_clients else sealed.agreed_from_env()
        )
        #: This party's secret for deployed clients' sealed shares (``$SMPC_CLIENT_SECRET``).
        self._client_secret: bytes | None = None
        #: Masks of a coming operation, expanding in the background (:mod:`smpc.prepared`).
        self._prepared: PartyMasks | None = None
        self._spent: PartyMasks | None = None  # the last used set (its memory is reused)

    def run(self) -> None:
        """Serve commands until :class:`~smpc.messages.Close` or the coordinator leaves."""
        try:
            while True:
                try:
                    message = self.channel.recv()
                except (EOFError, OSError):
                    log.info("party %d: coordinator gone, exiting", self.rank)
                    return
                if isinstance(message, msg.Close):
                    log.info("party %d: closed by the coordinator", self.rank)
                    return
                try:
                    self._dispatch(message)
                except (EOFError, BrokenPipeError, ConnectionResetError):
                    return
                except Exception:
                    log.exception("party %d failed", self.rank)
                    self.channel.send(msg.Failure(rank=self.rank, error=traceback.format_exc()))
        finally:
            if self._buffer is not None:
                self._buffer.close()
                self._buffer = None

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, msg.Aggregate):
            self._aggregate(message)
        elif isinstance(message, msg.PrepareMasks):
            self._prepare(message)
        elif isinstance(message, msg.Query) and message.what == "counters":
            self.channel.send(msg.Counters(**self.counters))
        elif isinstance(message, msg.Query) and message.what == "received":
            self.channel.send(msg.Received(records=[r for r, _ in self.records]))
            for _, values in self.records:
                if values is not None:
                    self.channel.send_array(values)
            self.records = []
        elif isinstance(message, msg.Query) and message.what == "opened":
            self.channel.send(msg.Received(records=[r for r, _ in self.opened]))
            for _, values in self.opened:
                self.channel.send_array(values)
            self.opened = []
        else:
            raise ValueError(f"unexpected message {message!r}")

    # ------------------------------------------------------------------ one operation
    def _prepare(self, message: msg.PrepareMasks) -> None:
        """Receive the mask keys of a coming sum and expand them in the background."""
        if message.n_clients < 1 or message.size < 1:
            raise ValueError(f"nothing to prepare in {message!r}")
        keys: list[bytes] = []
        for client in range(message.n_clients):
            key_message = self.channel.recv()
            if not isinstance(key_message, msg.MaskKey) or key_message.client != client:
                raise ValueError(
                    f"expected the mask key of client {client} to prepare, got {key_message!r}"
                )
            key = bytes.fromhex(key_message.key)
            if len(key) != KEY_BYTES:
                raise FrameError(f"a mask key has {KEY_BYTES} bytes, got {len(key)}")
            keys.append(key)
        # An unused earlier set is dropped (its keys never used); a used one lends its memory.
        self._prepared = PartyMasks(message.token, message.size, keys, self._spent)
        self._spent = None

    def _take_prepared(self, op: msg.Aggregate) -> PartyMasks:
        """The prepared set ``op`` names (used once), checked against ``op``."""
        prepared, self._prepared = self._prepared, None
        if prepared is None or op.prepared != prepared.token:
            raise ValueError(f"{op} names masks this party did not prepare")
        if op.kind != "sum" or (op.n_clients, op.size) != (prepared.n_clients, prepared.size):
            raise ValueError(
                f"masks prepared for a sum of {prepared.n_clients} x {prepared.size}, not for {op}"
            )
        return prepared

    def _use_prepared(self, op: msg.Aggregate, result: np.ndarray) -> None:
        """Write the sum of the masks prepared for ``op`` into ``result``; count each key."""
        prepared = self._take_prepared(op)
        np.copyto(result, prepared.total())
        self._spent = prepared
        for client, key in enumerate(prepared.keys):
            self._count(op, client, KEY_BYTES, key, None)

    def _count(
        self, op: msg.Aggregate, client: int, nbytes: int, key: bytes | None, share: Any
    ) -> None:
        """Count client ``client``'s share (and keep it, with ``record``)."""
        self.counters["messages"] += 1
        self.counters["bytes"] += nbytes
        if self.record:
            values = expand_key(key, op.size) if key is not None else np.array(share)
            self._record(op, client, values)

    def _map_buffer(self, path: str | None) -> SharedBuffer | None:
        if path is None:
            return None
        if self._buffer is None or self._buffer.path != path:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = SharedBuffer(path)
        return self._buffer

    def _next_share(
        self, op: msg.Aggregate, client: int, buffer: SharedBuffer | None
    ) -> tuple[bytes | None, np.ndarray | None, int]:
        """Receive client ``client``'s share: returns (key or None, array or None, bytes)."""
        message: Any = self.channel.recv()
        expected: dict[str, type] = {
            "key": msg.MaskKey,
            "array": msg.ShareArray,
            "buffer": msg.ShareInBuffer,
            "sealed": msg.SealedShare,
        }
        kind = expected.get(op.share_format)
        if (
            kind is None
            or not isinstance(message, kind)
            or getattr(message, "client", -1) != client
        ):
            raise ValueError(
                f"expected the {op.share_format} share of client {client}, got {message!r}"
            )
        if isinstance(message, msg.MaskKey):
            key = bytes.fromhex(message.key)
            if len(key) != KEY_BYTES:
                raise FrameError(f"a mask key has {KEY_BYTES} bytes, got {len(key)}")
            return key, None, KEY_BYTES
        if isinstance(message, msg.SealedShare):
            return self._open_sealed(op, message)
        if isinstance(message, msg.ShareInBuffer):
            if buffer is None:
                raise ValueError("a share in the shared buffer, but no buffer was announced")
            return None, buffer.inputs(op.n_clients, op.size)[client], 8 * op.size
        row = self.channel.recv_array(into=np.empty(op.size, dtype=np.int64))
        return None, row, row.nbytes

    def _open_sealed(
        self, op: msg.Aggregate, message: msg.SealedShare
    ) -> tuple[bytes | None, np.ndarray | None, int]:
        """A deployed client's share, opened with the key this party shares with it."""
        from smpc import sealed

        payload_bytes = 8 * op.size if self.rank == 0 else KEY_BYTES
        if message.nbytes != sealed.sealed_size(payload_bytes):
            raise ValueError(f"a sealed share of {message.nbytes} bytes; expected another size")
        blob = self.channel.recv_array(into=np.empty(message.nbytes, dtype=np.uint8))
        key = sealed.client_key(self._secret(), message.name)
        payload = sealed.open_sealed(key, blob.tobytes(), message.context, message.name, self.rank)
        self._sealed_seen.append((message.name, message.context))
        if self.rank == 0:
            return None, np.frombuffer(payload, dtype=np.int64).copy(), message.nbytes
        return payload, None, message.nbytes

    def _secret(self) -> bytes:
        """The party's secret for deployed clients' keys (``$SMPC_CLIENT_SECRET``)."""
        from smpc import sealed

        if self._client_secret is None:
            secret = os.environ.get(sealed.SECRET_ENV, "")
            if not secret:
                raise ValueError(
                    f"sealed client shares need this party's secret in ${sealed.SECRET_ENV}."
                )
            self._client_secret = sealed.party_secret(bytes.fromhex(secret), self.rank)
        return self._client_secret

    def _check_sealed_operation(self, op: msg.Aggregate) -> None:
        """Check one sealed operation before anything is computed or revealed.

        One context for every share, passing the session's checks
        (:class:`~smpc.sealed.ContextPolicy`), and result slices going where that context
        says (:func:`smpc.sealed.check_owner_destinations`).
        """
        from smpc import sealed

        contexts = {c for _, c in self._sealed_seen}
        if len(contexts) != 1:
            raise sealed.SealError(
                "check 'one context': the shares of one operation were sealed for different "
                "operations (or with different weights or steps)."
            )
        names = [n for n, _ in self._sealed_seen]
        body = self._policy.check(contexts.pop(), names, op.kind)
        sealed.check_owner_destinations(body, names, op.destinations, op.size)

    def _owner_slice(self, op: msg.Aggregate, owner: int, lo: int, hi: int, values: Any) -> Any:
        """The party's result slice for client ``owner``, sealed for that client only."""
        from smpc import sealed

        payload = np.ascontiguousarray(values).tobytes()
        if op.share_format == "sealed":  # deployed: the key this party shares with the site
            name, context = self._sealed_seen[owner]
            key = sealed.client_key(self._secret(), name)
            blob = sealed.seal_result(key, payload, context, name, self.rank, lo, hi)
        else:
            if op.owner_keys is None or not 0 <= owner < len(op.owner_keys):
                raise ValueError(
                    f"no key of client {owner} to seal its result slice: owner-revealed "
                    "slices never leave a party in the clear."
                )
            key = bytes.fromhex(op.owner_keys[owner])
            blob = sealed.seal_result(key, payload, str(op.op_id), str(owner), self.rank, lo, hi)
        return np.frombuffer(blob, dtype=np.uint8)

    def _aggregate(self, op: msg.Aggregate) -> None:
        start = time.perf_counter()
        self._sealed_seen: list[tuple[str, str]] = []
        if op.kind not in ("sum", "argmax"):
            raise ValueError(f"unknown operation kind {op.kind!r}")
        if op.destinations is not None:
            self._check_destinations(op)
        buffer = self._map_buffer(op.buffer_path)
        if buffer is not None and buffer.capacity < SharedBuffer.values_needed(
            op.n_clients if op.share_format == "buffer" else 0, op.size
        ):
            raise ValueError(f"shared buffer {buffer.path} is too small for {op}")
        # An owner-revealed result share never goes into the buffer the coordinator maps.
        in_buffer = buffer is not None and op.destinations is None
        result = buffer.result(op.size) if buffer is not None and in_buffer else None
        if result is None:
            result = np.empty(op.size, np.int64)
        rows = np.empty((op.n_clients, op.size), np.int64) if op.kind == "argmax" else None
        keys: list[bytes] = []  # a sum of keyed shares is expanded once all keys are in
        if op.share_format == "prepared":  # the shares are masks expanded ahead
            self._use_prepared(op, result)
        else:
            for client in range(op.n_clients):
                key, share, nbytes = self._next_share(op, client, buffer)
                if rows is None and key is not None:
                    keys.append(key)
                elif rows is not None:  # argmax keeps every share
                    target = rows[client]
                    if key is not None:
                        MaskStream(key).fill(target)
                    else:
                        target[...] = share
                elif share is None:
                    raise ValueError(f"no share received for client {client}")
                elif client == 0:
                    np.copyto(result, share)
                else:
                    np.add(result, share, out=result)
                self._count(op, client, nbytes, key, share)
        if op.share_format == "sealed":
            self._check_sealed_operation(op)  # before anything is computed or revealed
        if rows is not None and self.crypten is None:  # refused once every share is read
            raise RuntimeError("argmax needs CrypTen parties (processes), not in-process ones")
        if keys:
            sum_masks(keys, result)
        self.counters["operations"] += 1
        self.channel.send(msg.SharesReceived(op_id=op.op_id, rank=self.rank))
        traffic, rounds = 0, 0
        if rows is not None:
            share, traffic, rounds = self._argmax(rows, op.op_id)
            result[...] = share
        log.debug("party %d: %s of %d x %d done", self.rank, op.kind, op.n_clients, op.size)
        self.channel.send(
            msg.Result(
                op_id=op.op_id,
                rank=self.rank,
                bytes_between_parties=traffic,
                mpc_rounds=rounds,
                seconds=time.perf_counter() - start,
                in_buffer=in_buffer,
            )
        )
        if op.destinations is not None:
            # Owner-revealed: each slice to its recipient only; the rest to nobody.
            # A client's slice is sealed for it: the coordinator relays ciphertext only.
            for owner, lo, hi in op.destinations:
                self.channel.send(
                    msg.OwnerShare(op_id=op.op_id, rank=self.rank, owner=owner, start=lo, stop=hi)
                )
                part = result[lo:hi]
                if owner >= 0:
                    part = self._owner_slice(op, owner, lo, hi, part)
                self.channel.send_array(np.ascontiguousarray(part))
            return
        # Each party sends its share of the result to the coordinator only: no party ever
        # holds the aggregate in the clear (CrypTen's reveal() would give it to them).
        if not in_buffer:
            self.channel.send_array(result)

    @staticmethod
    def _check_destinations(op: msg.Aggregate) -> None:
        if op.kind != "sum":
            raise ValueError(f"destinations are for sums only, got kind {op.kind!r}")
        for item in op.destinations or []:
            if (
                len(item) != 3
                or not all(isinstance(v, int) for v in item)
                or item[0] < -1
                or not 0 <= item[1] < item[2] <= op.size
                or item[0] >= op.n_clients
            ):
                raise ValueError(f"bad destination {item!r} for a result of {op.size} values")

    def _argmax(self, shares: np.ndarray, op_id: int = 0) -> tuple[np.ndarray, int, int]:
        """Return this party's share of the per-column winning index (lowest index on ties).

        With ``record``, every value this party opens with the others meanwhile is kept
        (:func:`recording_openings`), for the coordinator's ``Query("opened")``.
        """
        crypten: Any = self.crypten
        if isinstance(crypten, LazyCrypten):
            crypten = crypten.get()
        opened: list[np.ndarray] | None = [] if self.record else None
        with recording_openings(crypten.comm.get(), opened):
            result = secure_argmax(crypten, shares)
        for k, values in enumerate(opened or []):
            record = {"op": "argmax", "id": op_id, "opening": k, "size": int(values.size)}
            self.opened.append((record, values))
        return result

    def _record(self, op: msg.Aggregate, client: int, share: np.ndarray) -> None:
        keep = share.size <= RECORD_MAX_VALUES
        record = {
            "op": op.kind,
            "id": op.op_id,
            "client": client,
            "sha256": hashlib.sha256(share.tobytes()).hexdigest(),
            "with_values": keep,
        }
        self.records.append((record, share.copy() if keep else None))
