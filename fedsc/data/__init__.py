"""AnnData in, validated; clients (views), inclusion scenarios, reading files."""

from fedsc.data.access import get_representation, obs_column, representation
from fedsc.data.clients import Client, split_clients
from fedsc.data.inclusion import (
    SCENARIOS,
    apply_inclusion,
    cell_type_presence,
    minority_types,
    shared_types,
    standalone_types,
)
from fedsc.data.io import read_h5ad
from fedsc.data.validate import validate_adata

__all__ = [
    "SCENARIOS",
    "Client",
    "apply_inclusion",
    "cell_type_presence",
    "get_representation",
    "minority_types",
    "obs_column",
    "read_h5ad",
    "representation",
    "shared_types",
    "split_clients",
    "standalone_types",
    "validate_adata",
]
