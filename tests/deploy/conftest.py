"""Shared data of the deployment tests: three pancreas batches, log-normalised, and one
deployment of them that every module runs on.

Starting a deployment costs ~15 s of CPU on two cores (a SuperLink, three SuperNodes and
site workers, their fork servers importing Flower, torch and CrypTen) before its first
run; the tests in this folder run one after the other on one worker (tests/conftest.py),
so they share one (:func:`deployment`). A test that kills a site restarts it when it is
done (``_sites.revive``), so the next test finds every site.
"""

from __future__ import annotations

from collections.abc import Iterator

import anndata as ad
import pytest
from _sites import CONFIG, SEED, SITES

from fedsc.datasets import pancreas
from fedsc.deploy.local import LocalDeployment, split_by_batch
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
        labels_key="celltype",
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


_SHARED: list[LocalDeployment] = []


@pytest.fixture(scope="session")
def deployment(data, tmp_path_factory) -> Iterator[LocalDeployment]:
    """SuperLink + one SuperNode and worker per site in SITES, with the CrypTen parties'
    and the sites' keys (``parties=True``: the crypten transport starts the parties)."""
    root = tmp_path_factory.mktemp("deploy")
    paths = split_by_batch(data, "batch", root / "site-files")
    with LocalDeployment(paths, root / "work", parties=True) as dep:
        _SHARED.append(dep)
        yield dep


def pytest_runtest_teardown(item, nextitem) -> None:
    """Stop the shared deployment after this folder's last test, not at the session's end:
    idle, its processes still poll (0.1 CPU-s per second, measured), which the worker's
    later tests would pay for. (Called for the tests of this folder only.)"""
    if _SHARED and nextitem is not None and not nextitem.nodeid.startswith("tests/deploy/"):
        _SHARED.pop().close()  # the fixture's own exit closes nothing twice
