"""Shared data of the deployment tests: three pancreas batches, log-normalised."""

from __future__ import annotations

import anndata as ad
import pytest
from _sites import SITES

from fedsc.datasets import pancreas
from fedsc.preprocessing import preprocess


@pytest.fixture(scope="session")
def data() -> ad.AnnData:
    a = preprocess(pancreas(), n_top_genes=None)
    return a[a.obs["batch"].isin(SITES)].copy()
