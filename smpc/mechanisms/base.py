"""The mechanism interface.

A mechanism transforms a client's contribution before it is shared, and the aggregate
after it is revealed.

A mechanism (clipping, quantisation, differential-privacy noise, ...) never sees another
client's data: :class:`~smpc.mechanisms.aggregator.MechanismAggregator` calls
:meth:`Mechanism.transform_contribution` once per client with a copy of that client's
flat contribution only, as the client itself would before secret sharing it, and
:meth:`Mechanism.transform_result` once with the revealed aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import numpy as np

from smpc.mechanisms.secure_random import SecureRandom

#: What a mechanism draws its randomness from: a seeded numpy generator (``mechanism_seed``
#: given: reproducible, research only) or :class:`~smpc.mechanisms.secure_random.SecureRandom`
#: (no seed: the OS CSPRNG). Both offer ``standard_normal``, ``normal`` and ``random``.
RandomSource: TypeAlias = np.random.Generator | SecureRandom


@dataclass(frozen=True)
class ClientContext:
    """What a mechanism may know when it transforms one client's contribution.

    Attributes
    ----------
    op
        ``"weighted_mean"``, ``"sum"`` or ``"argmax"``.
    client
        Index of the client (row) being transformed.
    n_clients
        Number of clients taking part (public; e.g. to split DP noise among clients).
    weight
        This client's own weight (``weighted_mean``), else ``None``.
    reference
        The flat broadcast state the client started from (read-only), or ``None``.
    generator
        This client's own random source for this operation: the OS CSPRNG
        (:class:`~smpc.mechanisms.secure_random.SecureRandom`) unless the wrapper was
        given a seed, then a numpy PCG64 generator seeded per operation and client. Use
        only ``standard_normal``, ``normal`` and ``random``.
    round, tag
        The ledger scope of the operation.
    """

    op: str
    client: int
    n_clients: int
    weight: float | None
    reference: np.ndarray | None
    generator: RandomSource
    round: int | None
    tag: str | None


@dataclass(frozen=True)
class ResultContext:
    """What a mechanism may know when it transforms the revealed aggregate.

    Attributes
    ----------
    op, n_clients, reference, round, tag
        As in :class:`ClientContext`.
    total_weight
        Sum of the (public) weights for ``weighted_mean``, else ``None``.
    generator
        The coordinator's random source for this operation (as in :class:`ClientContext`).
    """

    op: str
    n_clients: int
    total_weight: float | None
    reference: np.ndarray | None
    generator: RandomSource
    round: int | None
    tag: str | None


class Mechanism:
    """Base class: identity on both sides. Subclasses override one or both hooks.

    Subclasses set :attr:`name` (their registry name) and return their parameters from
    :meth:`params`; the aggregator writes :meth:`describe` into every ledger entry of
    an operation the mechanism applied to.
    """

    #: Registry name.
    name: ClassVar[str] = "identity"
    #: Operations the mechanism applies to (others pass through untouched).
    ops: ClassVar[frozenset[str]] = frozenset({"weighted_mean", "sum"})

    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        """Client side, before sharing: return the (float64, same shape) row to share.

        ``row`` is this client's own flat contribution (a copy); nothing else is given.
        """
        return row

    def transform_result(self, result: np.ndarray, ctx: ResultContext) -> np.ndarray:
        """After the aggregate is revealed: return the (same shape) released result."""
        return result

    def params(self) -> dict[str, Any]:
        """The mechanism's parameters (JSON-ready), for the ledger."""
        return {}

    def describe(self) -> dict[str, Any]:
        """``{"name": ..., **params}``: what the ledger records."""
        return {"name": self.name, **self.params()}

    def applies_to(self, op: str) -> bool:
        """Whether this mechanism transforms operation ``op``."""
        return op in self.ops

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
