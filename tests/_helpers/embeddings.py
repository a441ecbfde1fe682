"""Synthetic embeddings for the metric tests: well-separated Gaussian blobs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def blobs(
    n_per: int = 40, n_types: int = 3, n_batches: int = 2, sep: float = 50.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs in 5 dimensions, one per cell type ``sep`` apart, batches interleaved
    within every blob: ``(X float32, batch, labels)``."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(sep * t, 1.0, size=(n_per, 5)) for t in range(n_types)])
    labels = np.repeat([f"t{t}" for t in range(n_types)], n_per)
    batch = np.array([f"b{i % n_batches}" for i in range(len(X))])
    return X.astype(np.float32), batch, labels


def blobs_adata(X: np.ndarray, batch: np.ndarray, labels: np.ndarray) -> ad.AnnData:
    """An AnnData of ``X`` with ``obs`` batch and cell_type, cells named ``c0, c1, ...``."""
    obs = pd.DataFrame(
        {"batch": batch, "cell_type": labels}, index=[f"c{i}" for i in range(len(X))]
    )
    return ad.AnnData(X=X, obs=obs)
