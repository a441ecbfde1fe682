"""References to values that stay at the sites until a secure transport aggregates them.

In a deployment the coordinator runs the method's own driver code (the federated engine,
strategies, FedscGen's correction); where simulation passes a client's value to the
aggregator, deployment passes a :class:`RemoteValue`: which site computes it, with which
step and inputs. The deployed aggregators (:mod:`fedsc.deploy.aggregators`) ask the
sites for those values through the transport, so the coordinator only ever holds what
the transport reveals.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from fedsc.federation import LocalResult, State


@dataclass(frozen=True)
class RemoteValue:
    """A value computed and kept at ``site``.

    Attributes
    ----------
    site
        The site's name.
    step
        The site step that computes it (:mod:`fedsc.deploy.site`).
    params
        JSON parameters of the step (public: the coordinator chose them).
    arrays
        Arrays sent with the request (e.g. the global state; public to the sites).
    torch
        Rebuild the aggregate as torch tensors (a model state) rather than numpy.
    scalars
        The value is a dict of scalars (metrics): rebuild it as floats.
    """

    site: str
    step: str
    params: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, Any] | None = None
    torch: bool = False
    scalars: bool = False


@dataclass(frozen=True)
class RemoteMetrics(Mapping[str, float]):
    """A client's metrics kept at its site; only their weighted mean is ever revealed.

    The engine's :meth:`~fedsc.federation.strategy.Strategy.aggregate_metrics` reads the
    names (public) and passes :meth:`select` to the aggregator.
    """

    site: str
    step: str
    names: Sequence[str]
    params: Mapping[str, Any] = field(default_factory=dict)

    def select(self, names: Sequence[str]) -> RemoteValue:
        """The reference to the metrics ``names`` (for the aggregator)."""
        return RemoteValue(
            self.site, self.step, {**self.params, "names": list(names)}, scalars=True
        )

    def __getitem__(self, key: str) -> float:
        raise TypeError(
            f"metric {key!r} of site {self.site!r} stays at the site; aggregate it "
            "(aggregator.weighted_mean([m.select(names) ...]))."
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class RemoteMethod:
    """The coordinator's stand-in for a method's clients (a ``FederatedMethod``).

    ``local_update`` returns references: the site trains (step ``<method>/update``) when
    the aggregator asks for its update; its metrics stay at the site (``metrics``).

    Attributes
    ----------
    method
        The method's name (its site steps are ``<method>/update``, metrics ``metrics``).
    names
        Client index -> site name.
    params
        Parameters every update request carries (incl. ``n_train``, the public weights,
        unless ``weights`` names others, e.g. donor counts under donor-level DP).
    initial
        The global state before round 0 (same seed, same values as simulation).
    metrics
        Names of the metrics each update reports.
    """

    method: str
    names: Mapping[int, str]
    params: Mapping[str, Any]
    initial: State
    metrics: Sequence[str]

    def initial_state(self) -> State:
        """The global state before round 0."""
        return {k: v.clone() for k, v in self.initial.items()}

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """A reference to the site's update of this round, and to its metrics."""
        from fedsc.federation import LocalResult

        site = self.names[client]
        params = {**self.params, "index": client, "round": round_index}
        state = RemoteValue(site, f"{self.method}/update", params, global_state, torch=True)
        keep = {"method": self.method, "round": round_index}
        metrics = RemoteMetrics(site, "metrics", self.metrics, keep)
        # the public FedAvg weights: training cells, or what the method weighs by instead
        weight = float(self.params.get("weights", self.params["n_train"])[site])
        return LocalResult(state, weight, metrics)  # type: ignore[arg-type]


def is_remote(values: Sequence[Any]) -> bool:
    """True when ``values`` are :class:`RemoteValue` references (all or none)."""
    remote = [isinstance(v, RemoteValue) for v in values]
    if any(remote) and not all(remote):
        raise TypeError("mix of site references and local values in one aggregation.")
    return bool(remote) and all(remote)


def as_float_metrics(arrays: Mapping[str, Any]) -> dict[str, float]:
    """Metric arrays (one value each) as floats, the form the engine's clients report."""
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in arrays.items()}
