"""A tiny pancreas subset for the robustness tests (imported by name: no package here)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from fedsc.datasets import pancreas


def pancreas_subset(cells_per_batch: int = 30, genes: int = 200) -> ad.AnnData:
    """The first cells of each pancreas batch and the first genes, counts as CSR."""
    a = pancreas()
    batch = a.obs["batch"].to_numpy()
    keep = np.concatenate(
        [np.flatnonzero(batch == b)[:cells_per_batch] for b in sorted(set(batch))]
    )
    a = a[keep, :genes].copy()
    a.X = sp.csr_matrix(a.X.toarray())
    return a
