"""smpc: secure aggregation backends (plaintext, CrypTen). Knows nothing about cells."""

from smpc.aggregator import Aggregator, AggregatorClosedError
from smpc.ledger import Ledger, LedgerEntry
from smpc.registry import BACKENDS, make_aggregator

__all__ = [
    "BACKENDS",
    "Aggregator",
    "AggregatorClosedError",
    "Ledger",
    "LedgerEntry",
    "make_aggregator",
]
