"""Shared data of the deployment tests: three pancreas batches, log-normalised."""

from __future__ import annotations

import anndata as ad
import pytest
from _sites import CONFIG, SEED, SITES

from fedsc.datasets import pancreas
from fedsc.methods.fedscgen import run_fedscgen
from fedsc.preprocessing import preprocess


@pytest.fixture(scope="session")
def data() -> ad.AnnData:
    a = preprocess(pancreas(), n_top_genes=None)
    return a[a.obs["batch"].isin(SITES)].copy()


@pytest.fixture(scope="session")
def simulation(data):
    """The in-process FedscGen run every deployed FedscGen run is compared with."""
    sim = data.copy()
    result = run_fedscgen(
        sim,
        batch_key="batch",
        label_key="celltype",
        aggregator="plaintext",
        config=CONFIG,
        seed=SEED,
    )
    return sim, result
