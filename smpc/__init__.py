"""smpc: secure aggregation backends (plaintext, CrypTen). Knows nothing about cells."""

from smpc.aggregator import Aggregator, AggregatorClosedError, RevealRefusedError
from smpc.ledger import Ledger, LedgerEntry
from smpc.mechanisms import MECHANISMS, Mechanism, MechanismAggregator, make_mechanism
from smpc.registry import BACKENDS, make_aggregator

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
]
