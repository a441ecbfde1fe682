"""The threat model as data: what each observer receives, read off a run's ledger.

:func:`exposure` turns a ledger (``aggregator.ledger`` or its ``to_dict()``, e.g. from a
``run.json``) into one tidy row per (operation, observer): what that observer received
and how many values. It is the evidence behind the tables in ``docs/privacy.md``;
:data:`MEASURED_BY` names the attacks in :data:`fedsc.privacy.ATTACKS` that measure what an
observer can do with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from fedsc.privacy.attacks import ATTACKS
from fedsc.privacy.views import OBSERVERS
from smpc import Ledger


class _MeasuredBy(Mapping[str, tuple[str, ...]]):
    """Observer -> the registered attacks that read its view (``Attack.observers``), live."""

    def __getitem__(self, observer: str) -> tuple[str, ...]:
        if observer not in OBSERVERS:
            raise KeyError(observer)
        return tuple(name for name, a in ATTACKS.items() if observer in a.observers)

    def __iter__(self) -> Iterator[str]:
        return iter(OBSERVERS)

    def __len__(self) -> int:
        return len(OBSERVERS)


#: Observer -> attacks (registry names) that measure its view.
MEASURED_BY: Mapping[str, tuple[str, ...]] = _MeasuredBy()

EXPOSURE_COLUMNS = ["index", "round", "tag", "op", "observer", "receives", "values", "private"]


def _entries(ledger: Ledger | Mapping[str, Any]) -> list[dict[str, Any]]:
    if isinstance(ledger, Ledger):
        return [vars(e) for e in ledger.entries]
    return list(ledger["entries"])


def exposure(ledger: Ledger | Mapping[str, Any]) -> pd.DataFrame:
    """What each observer received per ledger operation.

    Parameters
    ----------
    ledger
        An :class:`smpc.Ledger` or its ``to_dict()``.

    Returns
    -------
    Columns ``index, round, tag, op, observer, receives, values, private``. ``receives``
    names what was received: the coordinator's entries of ``coordinator_received``
    (``client[i]`` = a client's contribution in the clear; ``sum_weighted``,
    ``sum_weights``, ``sum``, ``argmax_index`` = aggregates), ``shares`` for each party
    (``values`` = bytes received from clients), and for clients the broadcast state of
    FedAvg-type operations (``reference``). ``output_reader`` rows are not derivable from
    the ledger (the released result is the caller's) and are omitted.
    """
    rows: list[dict[str, Any]] = []
    for k, e in enumerate(_entries(ledger)):
        base = {
            "index": k,
            "round": e["round"],
            "tag": e["tag"],
            "op": e["op"],
            "private": bool(e["private"]),
        }
        for name, shape in e["coordinator_received"].items():
            n = int(np.prod(shape)) if shape else 1
            rows.append({**base, "observer": "coordinator", "receives": name, "values": n})
        for party, nbytes in enumerate(e["bytes_to_party"]):
            rows.append(
                {**base, "observer": f"party[{party}]", "receives": "shares", "values": nbytes}
            )
        if e["op"] == "weighted_mean" and e["tag"] != "metrics":
            rows.append(
                {**base, "observer": "client", "receives": "reference", "values": e["n_values"]}
            )
    return pd.DataFrame(rows, columns=EXPOSURE_COLUMNS)


def clear_contributions(ledger: Ledger | Mapping[str, Any]) -> int:
    """How many client contributions the coordinator received in the clear (0 if private)."""
    table = exposure(ledger)
    coordinator = table[table["observer"] == "coordinator"]
    return int(coordinator["receives"].str.startswith("client[").sum())


__all__ = ["EXPOSURE_COLUMNS", "MEASURED_BY", "OBSERVERS", "clear_contributions", "exposure"]
