"""The federated engine."""

from fedsc.federation.engine import (
    BatchedFederatedMethod,
    FederatedMethod,
    FederationResult,
    LocalResult,
    State,
    client_generators,
    run_federation,
)

__all__ = [
    "BatchedFederatedMethod",
    "FederatedMethod",
    "FederationResult",
    "LocalResult",
    "State",
    "client_generators",
    "run_federation",
]
