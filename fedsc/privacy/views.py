"""What each observer of a federated run received: recorded, then split by observer.

A :class:`RecordingMechanism` sits last in an aggregator's mechanism list
(``smpc.make_aggregator(name, mechanisms=[..., recorder])``). Through the mechanism seam
(:mod:`smpc.mechanisms`) it sees, per aggregation operation, each client's flat
contribution exactly as that client secret-shares it (after every other client-side
mechanism), the public weights, the broadcast reference, and the aggregate as the
backend reveals it to the coordinator (before any result-side mechanism). It changes
nothing. Everything it holds is the *truth* of the run; :func:`observer_view` keeps only
what one observer receives, as the values the observer computes from it (last paragraph):

``coordinator``
    Under ``plaintext`` every client's contribution and weight (the ledger records
    ``client[i]`` and ``weights``). Under ``crypten`` only the revealed aggregates
    (``sum_weighted``, ``sum_weights``, ``sum``, ``argmax_index``): the weighted mean and
    the total weight ``W = sum_c w_c``, never a client's row. In both it knows the
    broadcast states it computed itself (the previous aggregates). Per-client weights
    under crypten: the protocol shares ``[w_c x_c, w_c]`` and reveals only ``W``; pass
    ``public_weights=True`` when the cell counts are public metadata (in fedsc the
    engine hands them to the aggregator in the coordinator's process, and
    :class:`~fedsc.federation.LocalResult` documents the weight as a public input).
``party``
    One computation party (crypten only): its additive share of every client's
    contribution (int64 ring elements, uniform on their own), no aggregate.
``colluding_parties``
    Two parties pooling their shares. With three parties that is still one share short.
``client``
    One client: its own contributions and the broadcast global state of every round
    (the ``reference`` it trains from), plus the final released state and the results
    returned to every client (FedscGen's ``correction/*`` aggregates).
``output_reader``
    Whoever receives the result: the final released state (for scBatchProx the tables;
    the corrected embedding ``gamma_b * z + beta_b`` determines row ``b`` from two cells).

What an observer holds is what it can compute (``ObservedOp.contributions`` and
``aggregate``), not the raw values on the wire (kept as ``shared`` and ``revealed``).
The mechanisms' descriptions, the weights (where the observer knows them), ``W`` and K
are public (ledger), so the public, invertible transforms are undone. Under the
``gaussian`` mechanism with uniform weighting (:mod:`smpc.mechanisms.gaussian`) client c
shares ``x̂_c = r + (ũ_c + n_c) / w_c`` and the backend reveals
``r + Σ_c (ũ_c + n_c) / W``; the observer holds client c's noised model
``r + (x̂_c − r) · w_c = r + ũ_c + n_c`` and the released aggregate
``r + (revealed − r) · W / K`` (the coordinator computes that rescale itself), which is
the *unweighted* mean of the clients' noised models (``mean_weights`` all 1). Reading
the raw values instead made a noiseless client model look off by ``1 − 1 / w_c`` (0.989
for 90 cells). The clients' true models stay in :attr:`RunRecord.inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from typing_extensions import override

from smpc import Aggregator, make_aggregator
from smpc.mechanisms import ClientContext, Mechanism, ResultContext, make_mechanism

#: Ledger tag prefix of results returned to every client (FedscGen's correction).
CORRECTION_PREFIX = "correction/"

OBSERVERS: tuple[str, ...] = (
    "coordinator",
    "party",
    "colluding_parties",
    "client",
    "output_reader",
)


@dataclass(frozen=True)
class ObservedOp:
    """One aggregation operation as one observer saw it (``None``: not received).

    Attributes
    ----------
    index
        Position of the operation in the run (0-based).
    round, tag, op
        The ledger scope and operation (``"weighted_mean"``, ``"sum"``, ``"argmax"``,
        ``"gather"``).
    n_clients, n_values
        Public sizes: clients taking part, values per contribution.
    weights
        Per-client weights (``weighted_mean``), if this observer knows them.
    total_weight
        ``W = sum_c w_c`` (``weighted_mean``), if revealed to this observer.
    reference
        The broadcast state of the round (flat), if this observer knows it.
    aggregate
        The aggregate as the observer holds it (flat: the weighted mean, the sum, or
        argmax indices): after the result-side transforms the coordinator applies (the
        ``gaussian`` mechanism's rescale by ``W / K``), i.e. the released value. In a
        :class:`RunRecord`: as the backend revealed it.
    contributions
        ``(n_clients, n_values)``: each client's contribution with the public, invertible
        sharing transforms undone (under the ``gaussian`` mechanism's uniform weighting
        the client's noised model ``r + (x̂_c − r) · w_c``), for the clients this observer
        received in the clear (all under plaintext for the coordinator; a client's own
        row for that client; the other rows are NaN). In a :class:`RunRecord`: as shared.
    shares
        Party index -> ``(n_clients, n_values)`` int64 shares that party received.
    shared
        The same rows as ``contributions`` as they were secret-shared (raw).
    revealed
        The aggregate as the backend revealed it (raw, before result-side transforms).
    mean_weights
        The weights of the mean ``aggregate`` is (``weighted_mean``), if the observer knows
        them: ``weights``, or all 1 where the ``gaussian`` mechanism's uniform weighting
        releases the unweighted mean of the clients' models (public, whatever ``weights``).
    """

    index: int
    round: int | None
    tag: str | None
    op: str
    n_clients: int
    n_values: int
    weights: np.ndarray | None = None
    total_weight: float | None = None
    reference: np.ndarray | None = None
    aggregate: np.ndarray | None = None
    contributions: np.ndarray | None = None
    shares: dict[int, np.ndarray] | None = None
    shared: np.ndarray | None = None
    revealed: np.ndarray | None = None
    mean_weights: np.ndarray | None = None


@dataclass(frozen=True)
class ObserverView:
    """Everything one observer received during a run.

    Attributes
    ----------
    observer
        One of :data:`OBSERVERS`.
    backend
        ``"plaintext"`` or ``"crypten"``.
    private
        Whether the backend claims privacy (``Aggregator.private``).
    mechanisms
        The mechanisms applied (``describe()`` of each, recorder excluded).
    operations
        What the observer received, per operation.
    parties
        The party indices whose shares the view holds (party observers).
    client
        The client index (client observer).
    public
        Public information every observer has (e.g. the method's hyper-parameters).
    """

    observer: str
    backend: str
    private: bool
    mechanisms: tuple[dict[str, Any], ...]
    operations: tuple[ObservedOp, ...]
    parties: tuple[int, ...] = ()
    client: int | None = None
    public: dict[str, Any] = field(default_factory=dict)

    def select(self, *, tag: str | None = None, op: str | None = None) -> list[ObservedOp]:
        """The operations with this ``tag`` and/or ``op`` (``None``: any), in run order."""
        return [
            o
            for o in self.operations
            if (tag is None or o.tag == tag) and (op is None or o.op == op)
        ]


@dataclass
class _Captured:
    """What the recorder captured for one operation (the truth)."""

    index: int
    round: int | None
    tag: str | None
    op: str
    n_clients: int
    contributions: list[np.ndarray | None]
    weights: list[float | None]
    reference: np.ndarray | None = None
    aggregate: np.ndarray | None = None
    total_weight: float | None = None


class RecordingMechanism(Mechanism):
    """Identity mechanism that records contributions and revealed aggregates.

    With ``stage="shared"`` put it last in the mechanism list: it sees each contribution
    as it is shared (after clipping, noise, ...) and the aggregate as revealed (before
    result-side transforms). With ``stage="input"`` put it first: it sees each client's
    contribution before any mechanism (the client's true local state) and the result as
    finally released (after every result-side transform). All per-client copies the
    aggregator makes share one record. Instrumentation for privacy evaluation: it holds
    every client's contribution.

    Parameters
    ----------
    stage
        ``"shared"`` or ``"input"`` (see above).
    """

    name = "record"
    ops: ClassVar[frozenset[str]] = frozenset({"weighted_mean", "sum", "argmax", "gather"})

    def __init__(self, stage: str = "shared") -> None:
        if stage not in ("shared", "input"):
            raise ValueError(f"stage must be 'shared' or 'input', got {stage!r}.")
        self.stage = stage
        self.captured: list[_Captured] = []
        self._open: _Captured | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> RecordingMechanism:
        return self  # every client's copy writes into the same record

    def _current(self, op: str, n: int, round_: int | None, tag: str | None) -> _Captured:
        if self._open is None:
            self._open = _Captured(
                index=len(self.captured),
                round=round_,
                tag=tag,
                op=op,
                n_clients=n,
                contributions=[None] * n,
                weights=[None] * n,
            )
        return self._open

    @override
    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        cap = self._current(ctx.op, ctx.n_clients, ctx.round, ctx.tag)
        cap.contributions[ctx.client] = np.array(row, dtype=np.float64, copy=True)
        cap.weights[ctx.client] = ctx.weight
        if ctx.reference is not None and cap.reference is None:
            cap.reference = np.array(ctx.reference, dtype=np.float64, copy=True)
        return row

    @override
    def transform_result(self, result: np.ndarray, ctx: ResultContext) -> np.ndarray:
        cap = self._current(ctx.op, ctx.n_clients, ctx.round, ctx.tag)
        cap.aggregate = np.array(result, dtype=np.float64, copy=True)
        cap.total_weight = ctx.total_weight
        self.captured.append(cap)
        self._open = None
        return result

    @override
    def params(self) -> dict[str, Any]:
        return {"stage": self.stage}


@dataclass(frozen=True)
class RunRecord:
    """The truth of one run: every operation with every client's contribution.

    Build observer views from it with :func:`observer_view` / :func:`all_views`.

    Attributes
    ----------
    backend
        Backend name.
    private
        ``Aggregator.private`` of the run's aggregator, and every ledger entry private
        (the ledger marks an entry not private when the coordinator received a client's
        contribution, whatever the backend claims).
    mechanisms
        The mechanisms applied besides the recorder.
    operations
        Per operation, the truth: ``contributions`` holds every client's row.
    party_shares
        Per operation index, per party, the ``(n_clients, n_values)`` int64 shares the
        party received (crypten with ``record_received=True``; else empty).
    inputs
        Per operation index, the clients' contributions *before* any mechanism (their true
        local states), when other mechanisms were applied; else empty (then
        ``contributions`` are the inputs).
    released
        Per operation index, the result after every result-side mechanism (what the
        caller got back), when other mechanisms were applied; else empty (then
        ``aggregate`` is released as is).
    n_parties
        Number of computation parties (0 for plaintext).
    public
        Public run information (hyper-parameters, seed), copied into every view.
    """

    backend: str
    private: bool
    mechanisms: tuple[dict[str, Any], ...]
    operations: tuple[ObservedOp, ...]
    party_shares: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    n_parties: int = 0
    public: dict[str, Any] = field(default_factory=dict)
    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    released: dict[int, np.ndarray] = field(default_factory=dict)

    def local_contributions(self, index: int) -> np.ndarray:
        """``(n_clients, n_values)``: the clients' true contributions to operation ``index``.

        Before any mechanism if recorded (:attr:`inputs`), else as shared.
        """
        if index in self.inputs:
            return self.inputs[index]
        contrib = self.operations[index].contributions
        assert contrib is not None
        return contrib

    def released_result(self, index: int) -> np.ndarray | None:
        """The result of operation ``index`` as released to the caller."""
        return self.released.get(index, self.operations[index].aggregate)

    @classmethod
    def from_run(
        cls,
        aggregator: Aggregator,
        recorder: RecordingMechanism,
        *,
        public: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Collect the recorder's operations (and the parties' shares, if recorded).

        Parameters
        ----------
        aggregator
            The aggregator the run used (wrapping ``recorder``). For crypten created with
            ``record_received=True``, the parties' shares are fetched (and cleared there).
        recorder
            The :class:`RecordingMechanism` (``stage="shared"``) in its mechanism list. An
            ``stage="input"`` recorder in the list fills :attr:`inputs` and
            :attr:`released`.
        public
            Public run information (e.g. ``{"config": ..., "seed": ...}``).
        """
        ops = tuple(
            ObservedOp(
                index=c.index,
                round=c.round,
                tag=c.tag,
                op=c.op,
                n_clients=c.n_clients,
                n_values=int(c.aggregate.size) if c.aggregate is not None else 0,
                weights=None
                if any(w is None for w in c.weights)
                else np.asarray(c.weights, dtype=np.float64),
                total_weight=c.total_weight,
                reference=c.reference,
                aggregate=c.aggregate,
                contributions=np.stack([np.asarray(r) for r in c.contributions]),
            )
            for c in recorder.captured
        )
        ops = tuple(replace(o, shared=o.contributions, revealed=o.aggregate) for o in ops)
        all_mechanisms = tuple(getattr(aggregator, "mechanisms", ()))
        mechanisms = tuple(
            m.describe() for m in all_mechanisms if not isinstance(m, RecordingMechanism)
        )
        inputs: dict[int, np.ndarray] = {}
        released: dict[int, np.ndarray] = {}
        for m in all_mechanisms:
            if isinstance(m, RecordingMechanism) and m.stage == "input" and m is not recorder:
                if len(m.captured) != len(ops):
                    raise RuntimeError("the input and shared recorders saw different operations.")
                for c in m.captured:
                    inputs[c.index] = np.stack([np.asarray(r) for r in c.contributions])
                    if c.aggregate is not None:
                        released[c.index] = c.aggregate
        shares: dict[int, dict[int, np.ndarray]] = {}
        n_parties = int(getattr(aggregator, "parties", 0) or 0)
        backend: Any = aggregator  # crypten's instrumentation, reached through the wrapper
        if getattr(backend, "record_received", False):
            shares = _party_shares(backend.received_by_parties(), ops)
        return cls(
            backend=aggregator.name,
            # what the ledger shows, not only what the backend claims: a backend that
            # claims privacy while its coordinator received a client[i] contribution
            # gets the plaintext coordinator's view (every contribution in the clear)
            private=bool(aggregator.private) and all(e.private for e in aggregator.ledger.entries),
            mechanisms=mechanisms,
            operations=ops,
            party_shares=shares,
            n_parties=n_parties,
            public=dict(public or {}),
            inputs=inputs,
            released=released,
        )


def _party_shares(
    received: Sequence[Sequence[dict[str, Any]]], ops: Sequence[ObservedOp]
) -> dict[int, dict[int, np.ndarray]]:
    """Per operation, per party, the (clients, values) shares; ops matched in run order."""
    ids: list[int] = []
    for records in received:
        for rec in records:
            if rec["id"] not in ids:
                ids.append(rec["id"])
    ids.sort()
    if len(ids) != len(ops):
        raise RuntimeError(
            f"the parties recorded {len(ids)} operations but the recorder {len(ops)}; "
            "use a fresh aggregator per recorded run."
        )
    out: dict[int, dict[int, np.ndarray]] = {}
    for party, records in enumerate(received):
        for rec in records:
            k = ids.index(rec["id"])
            op = ops[k]
            if rec.get("values") is None:
                continue
            block = out.setdefault(k, {}).setdefault(
                party, np.zeros((op.n_clients, np.asarray(rec["values"]).size), dtype=np.int64)
            )
            block[rec["client"]] = np.asarray(rec["values"], dtype=np.int64).ravel()
    return out


def recording_aggregator(
    name: str,
    *,
    mechanisms: Sequence[Any] | None = None,
    mechanism_seed: int | None = None,
    record_shares: bool = True,
    **options: Any,
) -> tuple[Aggregator, RecordingMechanism]:
    """An aggregator with a :class:`RecordingMechanism` appended to its mechanisms.

    Parameters
    ----------
    name
        Backend (``"plaintext"``, ``"crypten"``).
    mechanisms
        Other mechanisms (as for :func:`smpc.make_aggregator`), applied before the recorder.
    mechanism_seed
        As for :func:`smpc.make_aggregator`.
    record_shares
        Crypten: have every party keep its shares (``record_received=True``), so that
        party views can be built.

    When ``mechanisms`` are given, a second recorder (``stage="input"``) goes first, so
    the record also holds the clients' contributions before any mechanism and the
    released results (:attr:`RunRecord.inputs`, :attr:`RunRecord.released`).
    **options
        Backend options (e.g. ``parties=3``).

    Returns
    -------
    The aggregator (use it as a context manager) and the recorder.
    """
    recorder = RecordingMechanism()
    if name == "crypten" and record_shares:
        options.setdefault("record_received", True)
    others = list(mechanisms or [])
    first = [RecordingMechanism("input")] if others else []
    agg = make_aggregator(
        name, mechanisms=[*first, *others, recorder], mechanism_seed=mechanism_seed, **options
    )
    return agg, recorder


def _gaussian(mechanisms: Sequence[dict[str, Any]]) -> list[Any]:
    """The ``gaussian`` mechanisms of a run, rebuilt from their ledger descriptions."""
    return [make_mechanism(dict(m)) for m in mechanisms if m.get("name") == "gaussian"]


def _rescaled(m: Any, op: str, tag: str | None) -> str | None:
    """``"state"``/``"metrics"`` if ``m`` divides by the weight under ``op``/``tag``."""
    if not m.applies_to(op) or op != "weighted_mean" or m.weighting != "uniform":
        return None
    role = m.role(op, tag)
    return role if role in ("state", "metrics") else None


def client_model(
    row: np.ndarray,
    *,
    mechanisms: Sequence[dict[str, Any]],
    op: str,
    tag: str | None,
    weight: float | None,
    reference: np.ndarray | None,
) -> np.ndarray:
    """A client's shared contribution with the public, invertible sharing transforms undone.

    Under the ``gaussian`` mechanism with uniform weighting client c shares
    ``x̂_c = r + (ũ_c + n_c) / w_c`` (``smpc.mechanisms.gaussian``); whoever holds
    ``x̂_c``, ``w_c`` (public) and ``r`` (broadcast) computes the client's noised model
    ``r + (x̂_c − r) · w_c`` (metrics: ``x̂_c · w_c``). Other mechanisms (clipping,
    quantisation) are not invertible and stay applied; without any, ``row`` is returned.

    Parameters
    ----------
    row
        The contribution as shared (flat).
    mechanisms
        The run's mechanism descriptions (:attr:`RunRecord.mechanisms`, from the ledger).
    op, tag
        The operation and its ledger tag.
    weight
        The client's weight (``weighted_mean``).
    reference
        The broadcast state of the round (flat), if any.
    """
    out = np.asarray(row, dtype=np.float64)
    for m in reversed(_gaussian(mechanisms)):
        role = _rescaled(m, op, tag)
        if role is None:
            continue
        if weight is None:
            raise ValueError(
                "client_model: the gaussian mechanism's uniform weighting divided the "
                "contribution by the client's weight; pass weight= (the public weight)."
            )
        base = 0.0 if role == "metrics" or reference is None else np.asarray(reference)
        out = base + (out - base) * float(weight)
    return out


def released_aggregate(
    revealed: np.ndarray,
    *,
    mechanisms: Sequence[dict[str, Any]],
    op: str,
    tag: str | None,
    n_clients: int,
    total_weight: float | None,
    reference: np.ndarray | None,
) -> np.ndarray:
    """The aggregate after the coordinator's result-side transforms, from the revealed one.

    The ``gaussian`` mechanism's result transform is public and deterministic (under
    uniform weighting ``r + (revealed − r) · W / K``; suppressed metrics read 0), so it is
    recomputed from the mechanism's ledger description; without one, ``revealed`` is
    returned.
    """
    out = np.asarray(revealed, dtype=np.float64)
    for m in reversed(_gaussian(mechanisms)):
        if not m.applies_to(op):
            continue
        ctx = ResultContext(
            op=op,
            n_clients=n_clients,
            total_weight=total_weight,
            reference=reference,
            generator=np.random.default_rng(0),  # unused: the transform draws nothing
            round=None,
            tag=tag,
        )
        out = np.asarray(m.transform_result(out, ctx), dtype=np.float64)
    return out


def _observable(record: RunRecord, o: ObservedOp, weights: np.ndarray | None) -> ObservedOp:
    """``o`` (as recorded) with the values an observer computes from what it received.

    ``contributions`` become the clients' models (:func:`client_model`, with ``weights``:
    the ones the observer knows; without them the rows stay as shared), ``aggregate`` the
    released value (the recorded one if the run recorded it, else
    :func:`released_aggregate`) and ``mean_weights`` the weights of that mean.
    """
    mechs = record.mechanisms
    models = o.contributions  # not invertible without the weights: as shared
    if o.contributions is not None and (weights is not None or o.op != "weighted_mean"):
        rows = [
            client_model(
                row,
                mechanisms=mechs,
                op=o.op,
                tag=o.tag,
                weight=None if weights is None else float(weights[c]),
                reference=o.reference,
            )
            for c, row in enumerate(o.contributions)
        ]
        models = np.stack(rows) if rows else o.contributions
    aggregate = o.aggregate
    if aggregate is not None:
        if o.index in record.released:
            aggregate = record.released[o.index]
        else:
            aggregate = released_aggregate(
                aggregate,
                mechanisms=mechs,
                op=o.op,
                tag=o.tag,
                n_clients=o.n_clients,
                total_weight=o.total_weight,
                reference=o.reference,
            )
    return replace(
        o,
        contributions=models,
        aggregate=aggregate,
        shared=o.contributions,
        revealed=o.aggregate,
        mean_weights=_mean_weights(record, o, weights),
    )


def _mean_weights(
    record: RunRecord, o: ObservedOp, weights: np.ndarray | None
) -> np.ndarray | None:
    """The weights of the mean ``o``'s released aggregate is, if known (see ObservedOp)."""
    if o.op != "weighted_mean":
        return None
    if any(_rescaled(m, o.op, o.tag) for m in _gaussian(record.mechanisms)):
        return np.ones(o.n_clients)  # the unweighted mean of the clients' models
    return weights


def _public_op(o: ObservedOp) -> ObservedOp:
    """Only the public sizes and scope of an operation."""
    return ObservedOp(o.index, o.round, o.tag, o.op, o.n_clients, o.n_values)


def observer_view(
    record: RunRecord,
    observer: str,
    *,
    party: int = 0,
    parties: Sequence[int] = (0, 1),
    client: int = 0,
    public_weights: bool | None = None,
) -> ObserverView:
    """What ``observer`` received during the recorded run.

    Parameters
    ----------
    record
        The run's :class:`RunRecord`.
    observer
        One of :data:`OBSERVERS`.
    party
        The party of a ``"party"`` view.
    parties
        The parties of a ``"colluding_parties"`` view.
    client
        The client of a ``"client"`` view.
    public_weights
        Whether per-client weights are public metadata. ``None``: what the backend reveals
        (plaintext: yes, the coordinator receives them; crypten: no, only their sum).

    Returns
    -------
    The :class:`ObserverView`; values the observer did not receive are ``None``.
    """
    if observer not in OBSERVERS:
        raise ValueError(f"unknown observer {observer!r}; choose one of {list(OBSERVERS)}.")
    plaintext = not record.private
    weights_known = plaintext if public_weights is None else bool(public_weights)
    ops: list[ObservedOp] = []
    chosen: tuple[int, ...] = ()
    if observer == "party":
        chosen = (int(party),)
    elif observer == "colluding_parties":
        chosen = tuple(int(p) for p in parties)
    if chosen and plaintext:
        chosen = ()  # no computation parties: nothing received
    elif chosen and any(not 0 <= p < record.n_parties for p in chosen):
        raise ValueError(f"parties {chosen} out of range for {record.n_parties} parties.")
    for o in record.operations:
        base = _public_op(o)
        weights = o.weights if weights_known else None
        if observer == "coordinator":
            seen = _observable(record, o, weights)
            ops.append(
                replace(
                    base,
                    weights=weights,
                    total_weight=o.total_weight,
                    reference=o.reference,
                    aggregate=seen.aggregate,
                    revealed=o.aggregate,
                    mean_weights=seen.mean_weights,
                    contributions=seen.contributions if plaintext else None,
                    shared=o.contributions if plaintext else None,
                )
            )
        elif observer in ("party", "colluding_parties"):
            held = record.party_shares.get(o.index, {})
            ops.append(
                replace(
                    base,
                    weights=weights,
                    shares={p: held[p] for p in chosen if p in held} or None,
                )
            )
        elif observer == "client":
            # a client knows its own weight: its own row is inverted with it
            seen = _observable(record, o, o.weights)
            own = shared = None
            if o.contributions is not None and seen.contributions is not None:
                own = np.full_like(o.contributions, np.nan)
                own[client] = seen.contributions[client]
                shared = np.full_like(o.contributions, np.nan)
                shared[client] = o.contributions[client]
            mean_weights = _mean_weights(record, o, weights)
            ops.append(
                replace(
                    base,
                    weights=weights,
                    reference=o.reference,
                    contributions=own,
                    shared=shared,
                    mean_weights=mean_weights,
                )
            )
        else:  # output_reader: the released result only, filled below
            ops.append(base)
    if observer in ("client", "output_reader"):
        # The final state of each tag is released to the clients and to the output.
        last_of_tag = {o.tag: o.index for o in record.operations if o.reference is not None}
        ops = [
            replace(o, aggregate=record.released_result(o.index))
            if last_of_tag.get(o.tag) == o.index
            else o
            for o in ops
        ]
    if observer == "client":
        # FedscGen's correction results (holders per type, dominant clients, M_t) go back
        # to every client: each corrects its own cells with them.
        ops = [
            replace(o, aggregate=record.released_result(o.index))
            if str(o.tag).startswith(CORRECTION_PREFIX)
            else o
            for o in ops
        ]
    return ObserverView(
        observer=observer,
        backend=record.backend,
        private=record.private,
        mechanisms=record.mechanisms,
        operations=tuple(ops),
        parties=chosen,
        client=client if observer == "client" else None,
        public=dict(record.public),
    )


def all_views(record: RunRecord, **options: Any) -> dict[str, ObserverView]:
    """One view per observer in :data:`OBSERVERS` (options as in :func:`observer_view`)."""
    return {name: observer_view(record, name, **options) for name in OBSERVERS}
