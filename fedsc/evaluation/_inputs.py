"""Validation of the arrays every metric panel takes (embedding, batch and label vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import sparse

from fedsc.errors import FedscInputError


def check_embedding(X: object, name: str = "X") -> np.ndarray:
    """Return ``X`` as a finite float32 C-contiguous (n_cells, n_dims) array."""
    if sparse.issparse(X):
        X = cast(Any, X).toarray()
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise FedscInputError(
            f"{name} must be a 2-D (cells x dims) embedding, got shape {arr.shape}; "
            "pass an obsm matrix or adata.X."
        )
    if arr.shape[0] < 3 or arr.shape[1] < 1:
        raise FedscInputError(f"{name} has shape {arr.shape}; need at least 3 cells and 1 dim.")
    if not np.issubdtype(arr.dtype, np.number):
        raise FedscInputError(f"{name} must be numeric, got dtype {arr.dtype}.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise FedscInputError(
            f"{name} has NaN or infinite values in {bad} cells; drop or impute them first."
        )
    return arr


def check_groups(
    values: Sequence[object] | np.ndarray | pd.Series,
    n_cells: int,
    name: str,
    *,
    min_groups: int = 2,
) -> np.ndarray:
    """Return a categorical vector as an array of strings, checked for length, NaN and groups."""
    s = pd.Series(np.asarray(values, dtype=object) if not isinstance(values, pd.Series) else values)
    if len(s) != n_cells:
        raise FedscInputError(
            f"{name} has {len(s)} entries but the embedding has {n_cells} cells; "
            "they must be aligned one per cell."
        )
    if s.isna().any():
        raise FedscInputError(
            f"{name} has {int(s.isna().sum())} missing values; drop those cells or fill them."
        )
    out = s.astype(str).to_numpy()
    n_groups = len(np.unique(out))
    if n_groups < min_groups:
        raise FedscInputError(
            f"{name} has {n_groups} distinct value(s); the metrics need at least {min_groups}."
        )
    return out
