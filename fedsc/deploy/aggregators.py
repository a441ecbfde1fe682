"""Deployed aggregators: the smpc interface over values that stay at the sites.

Each takes :class:`~fedsc.deploy.remote.RemoteValue` references where a simulated
aggregator takes the clients' values, and gets the aggregate through one transport:

* :class:`DeployedPlaintext`: the sites send their values; the coordinator aggregates them
  with smpc's plaintext backend (so results, and ledger entries, are those of simulation);
* :class:`SecureSiteAggregator`: the base of the private transports, which return only
  aggregates: :class:`~fedsc.deploy.secagg.DeployedSecAggPlus` (Flower's SecAgg+ workflow)
  and :class:`~fedsc.deploy.crypten.DeployedCrypten` (sealed shares to the CrypTen parties).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from fedsc.deploy.fleet import Fleet
from fedsc.deploy.remote import RemoteValue, as_float_metrics, is_remote
from fedsc.deploy.site import arrays_to_value
from smpc.aggregator import Aggregator
from smpc.flatten import flatten
from smpc.plaintext import PlaintextAggregator


def ask_values(fleet: Fleet, values: Sequence[RemoteValue], transport: str) -> dict[str, Any]:
    """Send each reference's step to its site (one per site); replies by site."""
    sites = [v.site for v in values]
    if len(set(sites)) != len(sites):
        raise ValueError(f"one aggregation asks a site twice: {sites}.")
    return fleet.ask(
        {v.site: (v.step, {**v.params, "transport": transport}, v.arrays) for v in values}
    )


class SiteMechanismRecords:
    """The ledger entries of a deployed aggregator list the mechanisms its sites apply.

    :class:`~fedsc.deploy.site_mechanisms.SiteMechanisms` sets ``site_mechanisms``; the
    accountant (:func:`fedsc.privacy.accounting.client_level_from_ledger`) reads them
    from the ledger as it reads a simulated run's.
    """

    site_mechanisms: tuple[Any, ...] = ()

    def _mechanism_records(self, op: str) -> list[dict[str, Any]]:
        return [m.describe() for m in self.site_mechanisms if m.applies_to(op)]


class DeployedPlaintext(SiteMechanismRecords, PlaintextAggregator):
    """Plaintext over a deployment: every site's value reaches the coordinator (not private)."""

    name = "plaintext"

    def __init__(self, fleet: Fleet) -> None:
        super().__init__()
        self.fleet = fleet

    @property
    def privacy_note(self) -> str:
        """What the coordinator receives."""
        return (
            "not private: the coordinator receives every site's plaintext contribution "
            "(deployed; cells stay at the sites)"
        )

    def _resolve(self, values: Sequence[Any]) -> list[Any]:
        if not is_remote(values):
            return list(values)
        replies = ask_values(self.fleet, values, "plaintext")
        out = []
        for v in values:
            arrays, bare = self.fleet.value(replies[v.site])
            value = arrays_to_value(arrays, bare)
            if v.torch:
                value = {k: torch.from_numpy(a.copy()) for k, a in value.items()}
            elif v.scalars:
                value = as_float_metrics(value)
            out.append(value)
        return out

    @override
    def weighted_mean(
        self, contributions: Sequence[Any], weights: Sequence[float], *, reference: Any = None
    ) -> Any:
        return super().weighted_mean(self._resolve(contributions), weights, reference=reference)

    @override
    def sum(self, contributions: Sequence[Any], *, reference: Any = None) -> Any:
        return super().sum(self._resolve(contributions), reference=reference)

    @override
    def argmax(self, columns: Sequence[Any]) -> Any:
        return super().argmax(self._resolve(columns))

    @override
    def weighted_mean_to_owners(
        self,
        contributions: Sequence[Any],
        weights: Sequence[float],
        owners: Sequence[Mapping[str | None, Sequence[int]]],
        deliver: Callable[[int, dict[str | None, np.ndarray]], None],
    ) -> float:
        return super().weighted_mean_to_owners(
            self._resolve(contributions), weights, owners, deliver
        )

    @override
    def gather(self, contributions: Sequence[Any], *, reference: Any = None) -> list[Any]:
        return super().gather(self._resolve(contributions), reference=reference)


class SecureSiteAggregator(SiteMechanismRecords, Aggregator):
    """Base of the private deployed aggregators: site references in, aggregates out.

    Subclasses implement the public operations through their transport; smpc's flat
    backend hooks do not apply (the coordinator never holds the clients' matrix).
    """

    @property
    def private(self) -> bool:
        """Only aggregates reach the coordinator."""
        return True

    @staticmethod
    def _refs(contributions: Sequence[Any]) -> list[RemoteValue]:
        if not is_remote(contributions):
            raise TypeError("a private deployed aggregator takes site references only.")
        return list(contributions)

    @staticmethod
    def _rebuild(ref: RemoteValue, meta: dict[str, Any], flat: np.ndarray) -> Any:
        """The aggregate in the structure the sites reported (keys, dtypes, shapes; public).

        ``flat`` holds the values in sorted key order, as the sites flattened them.
        """
        template: dict[str, Any] = {}
        for key, dtype, shape in zip(meta["keys"], meta["dtypes"], meta["shapes"], strict=True):
            zeros = np.zeros(tuple(shape), dtype=np.dtype(dtype))
            template[key] = torch.from_numpy(zeros) if ref.torch else zeros
        _, spec = flatten(template)  # leaves in sorted key order
        value = spec.unflatten(np.asarray(flat, dtype=np.float64))
        if ref.scalars:
            return as_float_metrics(value)
        return value["value"] if meta.get("bare") else value

    def _weighted_sum(self, matrix: Any, weights: Any) -> Any:
        raise NotImplementedError("deployed aggregators aggregate site references")

    def _sum(self, matrix: Any) -> Any:
        raise NotImplementedError("deployed aggregators aggregate site references")

    def _argmax(self, matrix: Any) -> Any:
        raise NotImplementedError("deployed aggregators aggregate site references")
