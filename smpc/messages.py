"""The coordinator <-> party protocol: one typed dataclass per message, shared by both ends.

Messages travel as JSON message frames (:mod:`smpc.framing`); arrays (shares) travel as
array frames right after the message that announces them. :func:`encode` and
:func:`decode` are the only way in and out, and :func:`decode` checks that a frame names
a known message type with exactly its fields, each of the declared type.

One aggregation, seen from party ``r`` (``n`` clients)::

    coordinator -> party   Aggregate(op_id, kind, n_clients, size, share_format, buffer_path)
    coordinator -> party   n per-client messages, by share_format:
                             "key":    MaskKey(client, key)            (32-byte mask key)
                             "array":  ShareArray(client) + array frame (int64 share)
                             "buffer": ShareInBuffer(client)          (share already written
                                                                       to the shared buffer)
                             "sealed": SealedShare(client, name, context, nbytes) + uint8
                                       array frame (made and sealed by a deployed client;
                                       party 0: the int64 share, others: the mask key)
                             "prepared": nothing (the keys came before, see below)
    party -> coordinator   SharesReceived(op_id, rank)
    party -> coordinator   Result(op_id, rank, ...) + array frame of its result share, or
                           nothing more when the result share went into the shared buffer
    coordinator -> party   Close()

Owner-revealed sums (``Aggregate.destinations`` set): instead of one result share, the
party sends one ``OwnerShare(op_id, rank, owner, start, stop)`` + array frame per
destination, the slice ``[start, stop)`` of its result share addressed to client
``owner`` (``-1``: the coordinator, an int64 frame); result values in no destination are
sent to nobody. A client's slice is a uint8 frame sealed for that client
(:func:`smpc.sealed.seal_result`) under the key in ``Aggregate.owner_keys[owner]`` (the
client's fresh key for this party, sent the way its shares are) or, for sealed
operations, the key the party shares with the named client: the coordinator relays
ciphertext to the client's endpoint (:class:`smpc.crypten_backend.OwnerEndpoint`), which
alone opens it.

Prepared masks (an offline phase, :mod:`smpc.prepared`): before an operation's values
exist, the coordinator may send a party ``r >= 1`` ``PrepareMasks(token, n_clients, size)``
followed by ``n_clients`` ``MaskKey`` messages; the party expands and adds those masks in
the background and answers nothing. The next operation that uses them is an ``Aggregate``
with ``share_format="prepared"`` and ``prepared=token`` (kind ``"sum"``, same
``n_clients`` and ``size``); a set is used once, and a new ``PrepareMasks`` replaces it.

Start-up: the party sends :class:`Ready` with its settings; instrumentation:
:class:`Query` -> :class:`Counters` or :class:`Received` (+ array frames; also the
answer to ``Query("opened")``).
Any failure inside a party answers :class:`Failure` with the traceback.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from smpc.framing import FrameError, pack_message, unpack_message

#: Bumped whenever a message changes; both ends must agree.
PROTOCOL_VERSION = 5


@dataclass(frozen=True)
class Ready:
    """A party is up and joined the MPC; its settings must match the coordinator's."""

    rank: int
    pid: int
    world_size: int
    provider: str
    mode: str
    precision_bits: int
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Aggregate:
    """Start one operation: ``kind`` is ``"sum"`` (additions only) or ``"argmax"``."""

    op_id: int
    kind: str
    n_clients: int
    size: int
    share_format: str  # "key" | "array" | "buffer" | "sealed" | "prepared"
    buffer_path: str | None = None  # shared buffer: result share first, then inputs
    #: ``[[owner, start, stop], ...]``: send these slices of the result share to these
    #: recipients (owner -1: the coordinator) and nothing else; ``None``: the whole
    #: result share to the coordinator. Only with kind ``"sum"``.
    destinations: list[list[int]] | None = None
    #: With ``share_format="prepared"``: the token of the :class:`PrepareMasks` set whose
    #: masks are this party's shares (no per-client messages follow).
    prepared: str | None = None
    #: Owner-revealed, not sealed: per client index, the hex key that client gave this
    #: party for sealing its result slices (fresh per operation).
    owner_keys: list[str] | None = None


@dataclass(frozen=True)
class PrepareMasks:
    """Offline phase: the mask keys of a coming sum follow (``n_clients`` :class:`MaskKey`)."""

    token: str
    n_clients: int
    size: int


@dataclass(frozen=True)
class MaskKey:
    """Client ``client``'s share for this party, as the hex 256-bit key of its mask."""

    client: int
    key: str


@dataclass(frozen=True)
class ShareArray:
    """Client ``client``'s share follows as an int64 array frame."""

    client: int


@dataclass(frozen=True)
class ShareInBuffer:
    """Client ``client``'s share is in row ``client`` of the shared buffer's inputs."""

    client: int


@dataclass(frozen=True)
class SealedShare:
    """Client ``client``'s share, sealed by the client for this party (:mod:`smpc.sealed`).

    It follows as a uint8 array frame of ``nbytes``; ``name`` is the client's name (which
    selects its key) and ``context`` the operation it was sealed for.
    """

    client: int
    name: str
    context: str
    nbytes: int


@dataclass(frozen=True)
class SharesReceived:
    """The party holds every client's share of operation ``op_id``."""

    op_id: int
    rank: int


@dataclass(frozen=True)
class Result:
    """The party's result share is ready (array frame follows unless ``in_buffer``)."""

    op_id: int
    rank: int
    bytes_between_parties: int
    mpc_rounds: int
    seconds: float
    in_buffer: bool


@dataclass(frozen=True)
class OwnerShare:
    """Slice ``[start, stop)`` of the party's result share, for ``owner`` (-1: coordinator).

    An int64 array frame of ``stop - start`` values follows for the coordinator; for a
    client, a uint8 frame of ``smpc.sealed.sealed_size(8 * (stop - start))`` bytes.
    """

    op_id: int
    rank: int
    owner: int
    start: int
    stop: int


@dataclass(frozen=True)
class Failure:
    """Something failed inside the party."""

    rank: int
    error: str


@dataclass(frozen=True)
class Query:
    """Instrumentation request: ``what`` is ``"counters"``, ``"received"`` or ``"opened"``.

    ``"opened"`` (parties started with ``record_received``) is answered with
    :class:`Received` listing the values the party opened inside ``argmax`` operations.
    """

    what: str


@dataclass(frozen=True)
class Counters:
    """Operations, messages and bytes this party received from clients so far."""

    operations: int
    messages: int
    bytes: int


@dataclass(frozen=True)
class Received:
    """What the party received since the last query.

    ``with_values`` records are followed by one int64 array frame each, in order.
    """

    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Close:
    """The session ends: the party exits (or, pooled, waits for the next session)."""


#: Every message type of the protocol.
MESSAGE_CLASSES: tuple[type, ...] = (
    Ready,
    Aggregate,
    PrepareMasks,
    MaskKey,
    ShareArray,
    ShareInBuffer,
    SealedShare,
    SharesReceived,
    Result,
    OwnerShare,
    Failure,
    Query,
    Counters,
    Received,
    Close,
)
MESSAGE_TYPES: dict[str, type] = {cls.__name__: cls for cls in MESSAGE_CLASSES}


def encode(message: Any) -> bytes:
    """The message frame of ``message``."""
    name = type(message).__name__
    if MESSAGE_TYPES.get(name) is not type(message):
        raise TypeError(f"{message!r} is not a protocol message.")
    cls: Any = type(message)
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(cls)}
    return pack_message({"type": name, **fields})


def decode(frame: bytes | memoryview) -> Any:
    """Parse and type-check a message frame; raises :class:`FrameError` if malformed."""
    fields = unpack_message(frame)
    name = fields.pop("type")
    cls = MESSAGE_TYPES.get(name)
    if cls is None:
        raise FrameError(f"unknown message type {name!r}.")
    hints = typing.get_type_hints(cls)
    declared = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if not required <= set(fields) <= declared:
        raise FrameError(
            f"{name} needs fields {sorted(required)} (of {sorted(declared)}), got {sorted(fields)}."
        )
    for key, value in fields.items():
        if not _matches(value, hints[key]):
            raise FrameError(f"{name}.{key} = {value!r} is not {hints[key]}.")
    return cls(**fields)


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is Any:
        return True
    return isinstance(value, annotation)
