"""The federated engine, its strategies and the seed derivation."""

from fedsc.federation.engine import (
    BatchedFederatedMethod,
    FederatedMethod,
    FederationResult,
    run_federation,
)
from fedsc.federation.fedavgm import FedAvgM
from fedsc.federation.local_result import LocalResult, State
from fedsc.federation.median import CoordinateMedian
from fedsc.federation.owner_reveal import OwnerRevealFedAvg
from fedsc.federation.seeding import client_generators, derive_generator, derive_rng
from fedsc.federation.strategy import FedAvg, Strategy
from fedsc.federation.strategy_registry import STRATEGIES, make_strategy

__all__ = [
    "STRATEGIES",
    "BatchedFederatedMethod",
    "CoordinateMedian",
    "FedAvg",
    "FedAvgM",
    "FederatedMethod",
    "FederationResult",
    "LocalResult",
    "OwnerRevealFedAvg",
    "State",
    "Strategy",
    "client_generators",
    "derive_generator",
    "derive_rng",
    "make_strategy",
    "run_federation",
]
