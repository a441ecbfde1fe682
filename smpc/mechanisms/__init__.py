"""Mechanisms around any aggregator.

Client-side transforms before sharing (clipping, quantisation, DP noise) and transforms
of the revealed result. One file per mechanism, one line in :mod:`smpc.mechanisms.registry`.
"""

from smpc.mechanisms.aggregator import MechanismAggregator
from smpc.mechanisms.base import ClientContext, Mechanism, ResultContext
from smpc.mechanisms.clip import ClipL2
from smpc.mechanisms.quantize import Quantize
from smpc.mechanisms.registry import (
    MECHANISMS,
    make_mechanism,
    make_mechanisms,
    register_mechanism,
)

__all__ = [
    "MECHANISMS",
    "ClientContext",
    "ClipL2",
    "Mechanism",
    "MechanismAggregator",
    "Quantize",
    "ResultContext",
    "make_mechanism",
    "make_mechanisms",
    "register_mechanism",
]
