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
from typing import Any

import numpy as np


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


def is_remote(values: Sequence[Any]) -> bool:
    """True when ``values`` are :class:`RemoteValue` references (all or none)."""
    remote = [isinstance(v, RemoteValue) for v in values]
    if any(remote) and not all(remote):
        raise TypeError("mix of site references and local values in one aggregation.")
    return bool(remote) and all(remote)


def as_float_metrics(arrays: Mapping[str, Any]) -> dict[str, float]:
    """Metric arrays (one value each) as floats, the form the engine's clients report."""
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in arrays.items()}
