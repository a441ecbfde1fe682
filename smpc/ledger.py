"""What crossed each boundary during secure aggregation.

Every aggregator keeps a :class:`Ledger`. One :class:`LedgerEntry` is written per
operation (``weighted_mean``, ``sum``, ``argmax``, ``gather``,
``weighted_mean_to_owners``). The ledger is the evidence for the privacy claims of a run:
it lists what each computation party received, every value the coordinator (the caller)
received, what each client received (owner-revealed results), and the mechanisms applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Traffic:
    """What one backend operation moved: returned by every backend hook.

    The :class:`~smpc.aggregator.Aggregator` base class turns it into a
    :class:`LedgerEntry`, so no backend or wrapper can skip the privacy evidence.
    Field meanings are those of :class:`LedgerEntry`.
    """

    bytes_to_party: list[int] = field(default_factory=list)
    messages_to_party: list[int] = field(default_factory=list)
    bytes_between_parties: list[int] = field(default_factory=list)
    mpc_rounds: int = 0
    coordinator_received: dict[str, list[int]] = field(default_factory=dict)
    coordinator_bytes: int = 0
    client_received: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass
class LedgerEntry:
    """One aggregation operation.

    Attributes
    ----------
    op
        ``"weighted_mean"``, ``"sum"``, ``"argmax"``, ``"gather"`` (every contribution
        revealed to the coordinator; non-private aggregators only) or
        ``"weighted_mean_to_owners"`` (segments of the mean revealed to their owners).
    round
        Federation round the operation belongs to (``None`` outside rounds).
    tag
        Free label set by the caller (e.g. ``"fedavg"``, ``"dominant_batch"``).
    n_clients
        Number of client contributions.
    n_values
        Number of scalar values per contribution.
    bytes_to_party
        Bytes each computation party received from clients (shares). Empty for backends
        without parties.
    messages_to_party
        Messages each computation party received from clients.
    bytes_between_parties
        Bytes the parties exchanged among themselves (MPC protocol traffic), per party.
    mpc_rounds
        Communication rounds among parties (0 for additions-only).
    seconds
        Wall time of the operation.
    coordinator_received
        Every value the coordinator received: name -> shape.
    coordinator_bytes
        Total bytes the coordinator received.
    private
        Whether client inputs stayed hidden from the coordinator and from each party:
        the backend's claim (``Aggregator.private``), and False whenever
        ``coordinator_received`` names a client's contribution (``client[i]``).
    mechanisms
        What each mechanism wrapped around the backend did (name and parameters), in
        the order applied to client contributions.
    client_received
        Operations that reveal results to clients (``weighted_mean_to_owners``): per
        client (``"client[b]"``), every value that client alone received: name -> shape.
        Empty for operations whose result goes to the coordinator only.
    """

    op: str
    round: int | None
    tag: str | None
    n_clients: int
    n_values: int
    bytes_to_party: list[int] = field(default_factory=list)
    messages_to_party: list[int] = field(default_factory=list)
    bytes_between_parties: list[int] = field(default_factory=list)
    mpc_rounds: int = 0
    seconds: float = 0.0
    coordinator_received: dict[str, list[int]] = field(default_factory=dict)
    coordinator_bytes: int = 0
    private: bool = False
    mechanisms: list[dict[str, Any]] = field(default_factory=list)
    client_received: dict[str, dict[str, list[int]]] = field(default_factory=dict)


class Ledger:
    """Append-only record of aggregation operations.

    The caller attributes entries to a round and a tag with :meth:`scope` (the federation
    engine does).
    """

    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []
        self.round: int | None = None
        self.tag: str | None = None

    @contextmanager
    def scope(self, round: int | None, tag: str | None) -> Iterator[Ledger]:
        """Attribute the entries written inside the block to ``round`` and ``tag``.

        Restores the previous round and tag on exit, also after an error; scopes nest.
        """
        previous = self.round, self.tag
        self.round, self.tag = round, tag
        try:
            yield self
        finally:
            self.round, self.tag = previous

    def record(self, entry: LedgerEntry) -> None:
        """Append one entry."""
        self.entries.append(entry)

    def totals(self) -> dict[str, Any]:
        """Totals over all entries (bytes, messages, MPC rounds, seconds, operations)."""
        n_parties = max((len(e.bytes_to_party) for e in self.entries), default=0)
        bytes_to_party = [0] * n_parties
        messages_to_party = [0] * n_parties
        bytes_between = [0] * n_parties
        for e in self.entries:
            for i, b in enumerate(e.bytes_to_party):
                bytes_to_party[i] += b
            for i, m in enumerate(e.messages_to_party):
                messages_to_party[i] += m
            for i, b in enumerate(e.bytes_between_parties):
                bytes_between[i] += b
        return {
            "operations": len(self.entries),
            "bytes_to_party": bytes_to_party,
            "messages_to_party": messages_to_party,
            "bytes_between_parties": bytes_between,
            "mpc_rounds": sum(e.mpc_rounds for e in self.entries),
            "seconds": sum(e.seconds for e in self.entries),
            "coordinator_bytes": sum(e.coordinator_bytes for e in self.entries),
            "private": all(e.private for e in self.entries) if self.entries else None,
        }

    def per_round(self) -> list[dict[str, Any]]:
        """Totals per (round, op): one dict per group, in first-seen order."""
        groups: dict[tuple[Any, str], dict[str, Any]] = {}
        for e in self.entries:
            g = groups.setdefault(
                (e.round, e.op),
                {
                    "round": e.round,
                    "op": e.op,
                    "operations": 0,
                    "bytes_to_party": [0] * len(e.bytes_to_party),
                    "messages_to_party": [0] * len(e.messages_to_party),
                    "mpc_rounds": 0,
                    "seconds": 0.0,
                    "coordinator_bytes": 0,
                },
            )
            g["operations"] += 1
            g["bytes_to_party"] = [
                a + b for a, b in zip(g["bytes_to_party"], e.bytes_to_party, strict=False)
            ]
            g["messages_to_party"] = [
                a + b for a, b in zip(g["messages_to_party"], e.messages_to_party, strict=False)
            ]
            g["mpc_rounds"] += e.mpc_rounds
            g["seconds"] += e.seconds
            g["coordinator_bytes"] += e.coordinator_bytes
        return list(groups.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: totals, per-round totals and every entry."""
        return {
            "totals": self.totals(),
            "per_round": self.per_round(),
            "entries": [asdict(e) for e in self.entries],
        }
