"""Shared data of the deployment tests: three pancreas batches, log-normalised."""

from __future__ import annotations

import anndata as ad
import pytest
from _sites import CONFIG, SEED, SITES

from fedsc.datasets import pancreas
from fedsc.federation.seeding import client_generators
from fedsc.methods.fedscgen import FedScGenMethod, run_fedscgen
from fedsc.methods.vae import as_tensor, torch_threads
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


@pytest.fixture(scope="session")
def local_updates(data) -> dict:
    """Each site's round-0 local update (``LocalResult``), as the site computes it."""
    method = FedScGenMethod(
        {i: as_tensor(data[data.obs["batch"] == s].X) for i, s in enumerate(SITES)}, CONFIG, SEED
    )
    start = method.initial_state()
    with torch_threads(CONFIG.num_threads):  # as the sites train (results depend on it)
        return {
            s: method.local_update(i, start, 0, client_generators(SEED, 0, [i])[0])
            for i, s in enumerate(SITES)
        }
