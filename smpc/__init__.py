"""smpc: secure aggregation backends (plaintext, CrypTen). Knows nothing about cells.

Names load on first use, so ``import smpc`` (and light submodules such as
:mod:`smpc.cpus`) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smpc.aggregator import Aggregator, AggregatorClosedError, RevealRefusedError
    from smpc.ledger import Ledger, LedgerEntry
    from smpc.mechanisms import MECHANISMS, Mechanism, MechanismAggregator, make_mechanism
    from smpc.registry import BACKENDS, make_aggregator, prestart

#: Public name -> the module that defines it.
_EXPORTS = {
    "Aggregator": "smpc.aggregator",
    "AggregatorClosedError": "smpc.aggregator",
    "RevealRefusedError": "smpc.aggregator",
    "Ledger": "smpc.ledger",
    "LedgerEntry": "smpc.ledger",
    "MECHANISMS": "smpc.mechanisms",
    "Mechanism": "smpc.mechanisms",
    "MechanismAggregator": "smpc.mechanisms",
    "make_mechanism": "smpc.mechanisms",
    "BACKENDS": "smpc.registry",
    "make_aggregator": "smpc.registry",
    "prestart": "smpc.registry",
}

__all__ = [
    "BACKENDS",
    "MECHANISMS",
    "Aggregator",
    "AggregatorClosedError",
    "Ledger",
    "LedgerEntry",
    "Mechanism",
    "MechanismAggregator",
    "RevealRefusedError",
    "make_aggregator",
    "make_mechanism",
    "prestart",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:  # a submodule (``smpc.crypten_backend``), as attribute access found it before
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
