"""Small AnnData builders from the bundled pancreas data (counts, log-normalised)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from fedsc.datasets import pancreas


def pancreas_subset(
    cells_per_batch: int = 30, genes: int = 200, pcs: int | None = None
) -> ad.AnnData:
    """The first cells of each pancreas batch and the first genes, counts as CSR; with
    ``pcs``, only the first ``pcs`` columns of ``obsm["X_pca"]``."""
    a = pancreas()
    batch = a.obs["batch"].to_numpy()
    keep = np.concatenate(
        [np.flatnonzero(batch == b)[:cells_per_batch] for b in sorted(set(batch))]
    )
    a = a[keep, :genes].copy()
    a.X = sp.csr_matrix(a.X.toarray())
    if pcs is not None:
        a.obsm["X_pca"] = a.obsm["X_pca"][:, :pcs].copy()
    return a


def lognormalize(a: ad.AnnData) -> ad.AnnData:
    """``a`` normalised to 1e4 counts per cell and log1p'd, in place; returned."""
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def lognormalized_pancreas() -> ad.AnnData:
    """The whole bundled pancreas data, log-normalised (all 2000 genes)."""
    return lognormalize(pancreas())
