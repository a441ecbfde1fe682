"""An aggregator that applies mechanisms around any other aggregator (backend).

``MechanismAggregator(inner, [m1, m2])`` holds ``inner`` and delegates the computation to
it, so it composes with every backend (plaintext, crypten, another wrapper). For each
operation the mechanisms apply to:

1. client side, before sharing: for every client ``i``, ``m1`` then ``m2`` transform a
   copy of client ``i``'s own flat contribution (:class:`~smpc.mechanisms.base.ClientContext`
   gives it the broadcast reference, its index, its own random source; never another row);
2. the inner aggregator computes the aggregate of the transformed rows;
3. after reveal: ``m2`` then ``m1`` transform the aggregate.

Every client has its own copy of each mechanism (state a mechanism keeps, e.g. an error
feedback buffer, stays with that client); a client is its row index, so callers keep a
fixed client order across operations (the engine does). The :class:`~smpc.aggregator.Aggregator` base
class writes the ledger entry, listing the mechanisms applied (``LedgerEntry.mechanisms``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from typing_extensions import override

from smpc.aggregator import Aggregator
from smpc.flatten import Spec, flatten_like
from smpc.ledger import Traffic
from smpc.mechanisms.base import ClientContext, Mechanism, RandomSource, ResultContext
from smpc.mechanisms.secure_random import SecureRandom


def seeded_generator(seed: int, operation: int, *key: int) -> np.random.Generator:
    """The reproducible stream of operation ``operation`` and ``key`` under ``seed``.

    ``key`` is ``(1, client)`` for a client's contribution and ``(0,)`` for the result, as
    :class:`MechanismAggregator` draws them; a deployed site that transforms its own value
    (``fedsc.deploy.site_mechanisms``) draws the same stream. Not private: anyone who knows
    the seed regenerates it.
    """
    entropy = int(np.random.SeedSequence(seed).entropy)  # type: ignore[arg-type]
    return np.random.default_rng(np.random.SeedSequence([entropy, operation, *key]))


class MechanismAggregator(Aggregator):
    """Wrap ``inner`` so that ``mechanisms`` act on every contribution and result.

    Parameters
    ----------
    inner
        The aggregator doing the (secure) computation; the wrapper shares its ledger and
        closes it on :meth:`close`.
    mechanisms
        :class:`~smpc.mechanisms.base.Mechanism` instances, in the order applied to
        contributions (results are transformed in reverse order).
    seed
        ``None`` (default): every client and the coordinator draw their randomness (DP
        noise, stochastic rounding) from the OS CSPRNG
        (:class:`~smpc.mechanisms.secure_random.SecureRandom`): nothing is seeded or
        recorded, so nobody can replay a client's noise. An integer seeds a numpy PCG64
        generator per (operation, client) instead: reproducible (research, tests), and
        anyone who knows the seed can regenerate and subtract the noise.
    """

    def __init__(
        self, inner: Aggregator, mechanisms: Sequence[Mechanism], *, seed: int | None = None
    ) -> None:
        if not isinstance(inner, Aggregator):
            raise TypeError(
                f"inner must be an smpc.Aggregator, got {type(inner).__name__}; create one "
                "with smpc.make_aggregator(name)."
            )
        bad = [repr(m) for m in mechanisms if not isinstance(m, Mechanism)]
        if bad:
            raise TypeError(
                f"mechanisms must be smpc.mechanisms.Mechanism instances, got {bad}; "
                "build them with smpc.mechanisms.make_mechanism(name, **options)."
            )
        super().__init__()
        self.inner = inner
        self.mechanisms: tuple[Mechanism, ...] = tuple(mechanisms)
        self.ledger = inner.ledger
        self.name = inner.name
        #: The seed of the mechanisms' generators; ``None``: the OS CSPRNG, no seed exists.
        self.seed: int | None = (
            None if seed is None else int(np.random.SeedSequence(seed).entropy)  # type: ignore[arg-type]
        )
        self._operations = 0
        self._client_copies: dict[int, tuple[Mechanism, ...]] = {}

    # ----------------------------------------------------------------- delegation
    @override
    @property
    def private(self) -> bool:
        return self.inner.private

    @override
    @property
    def privacy_note(self) -> str:
        names = ", ".join(repr(m) for m in self.mechanisms)
        return (
            f"{self.inner.privacy_note}; mechanisms: {names}" if names else self.inner.privacy_note
        )

    @override
    def close(self) -> None:
        self.inner.close()
        super().close()

    @override
    def reserve(self, n_clients: int, n_values: int) -> None:
        self.inner.reserve(n_clients, n_values)

    def _check_open(self) -> None:
        super()._check_open()
        self.inner._check_open()

    def __getattr__(self, name: str) -> Any:
        # Backend-specific attributes (e.g. crypten's ``pids``) come from the inner one.
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _weighted_sum(
        self, matrix: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, float, Traffic]:
        return self.inner._weighted_sum(matrix, weights)

    def _sum(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        return self.inner._sum(matrix)

    def _argmax(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        return self.inner._argmax(matrix)

    @override
    def _compute_owned(
        self, matrix: np.ndarray, spec: Spec, weights: np.ndarray, columns: list[np.ndarray]
    ) -> tuple[list[np.ndarray], float, Traffic]:
        active = [
            m
            for m in self.mechanisms
            if m.applies_to("weighted_mean_to_owners") or m.applies_to("weighted_mean")
        ]
        if active:
            # A result transform (e.g. noise on the mean) would run where the mean is
            # whole, i.e. at the coordinator; owner-revealed results never are.
            raise NotImplementedError(
                f"mechanisms {active} are not supported by weighted_mean_to_owners: the "
                "mean is never whole at the coordinator, where they would transform it."
            )
        self.inner._current_spec = spec
        return self.inner._compute_owned(matrix, spec, weights, columns)

    # ----------------------------------------------------------------- mechanisms
    def _mechanism_records(self, op: str) -> list[dict[str, Any]]:
        own = [m.describe() for m in self.mechanisms if m.applies_to(op)]
        return own + self.inner._mechanism_records(op)

    def _generator(self, operation: int, *key: int) -> RandomSource:
        if self.seed is None:  # no seed to derive from, record or replay
            return SecureRandom()
        return seeded_generator(self.seed, operation, *key)

    def _copies_for(self, client: int) -> tuple[Mechanism, ...]:
        if client not in self._client_copies:
            self._client_copies[client] = tuple(copy.deepcopy(m) for m in self.mechanisms)
        return self._client_copies[client]

    def _compute_flat(
        self,
        op: str,
        matrix: np.ndarray,
        spec: Spec,
        weights: np.ndarray | None,
        reference: Any,
    ) -> tuple[np.ndarray, Traffic]:
        self.inner._current_spec = spec
        active = [k for k, m in enumerate(self.mechanisms) if m.applies_to(op)]
        if not active:
            return self.inner._compute_flat(op, matrix, spec, weights, reference)
        operation = self._operations
        self._operations += 1
        ref = None
        if reference is not None:
            ref = flatten_like(reference, spec)
            ref.setflags(write=False)
        n = matrix.shape[0]
        scope = self.ledger.round, self.ledger.tag
        rows = []
        for i in range(n):
            ctx = ClientContext(
                op=op,
                client=i,
                n_clients=n,
                weight=None if weights is None else float(weights[i]),
                reference=ref,
                generator=self._generator(operation, 1, i),
                round=scope[0],
                tag=scope[1],
            )
            row = matrix[i].copy()  # the client's own row only (a copy owns its data)
            mine = self._copies_for(i)
            for k in active:
                row = _checked(mine[k].transform_contribution(row, ctx), matrix.shape[1:], mine[k])
            rows.append(row)
        result, traffic = self.inner._compute_flat(op, np.stack(rows), spec, weights, reference)
        rctx = ResultContext(
            op=op,
            n_clients=n,
            total_weight=None if weights is None else float(weights.sum()),
            reference=ref,
            generator=self._generator(operation, 0),
            round=scope[0],
            tag=scope[1],
        )
        for k in reversed(active):
            m = self.mechanisms[k]
            result = _checked(m.transform_result(result, rctx), np.shape(result), m)
        return result, traffic


def _checked(value: Any, shape: tuple[int, ...], mechanism: Mechanism) -> np.ndarray:
    out = np.asarray(value, dtype=np.float64)
    if out.shape != tuple(shape):
        raise ValueError(
            f"mechanism {mechanism!r} returned shape {out.shape}, expected {tuple(shape)}; "
            "a mechanism must keep the shape of what it transforms."
        )
    if not np.all(np.isfinite(out)):
        raise ValueError(f"mechanism {mechanism!r} returned NaN or Inf.")
    return out
