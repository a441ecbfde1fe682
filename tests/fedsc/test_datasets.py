"""Bundled data, shared-data lookup, reading, simulators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fedsc.datasets as ds
from fedsc.data import read_h5ad
from fedsc.errors import FedscInputError


def test_pancreas_loads_fresh_copies():
    a = ds.pancreas()
    assert a.shape == (500, 2000)
    assert a.obs["batch"].nunique() == 5
    assert a.obs["cell_type"].nunique() == 6
    assert sorted(a.obs["batch"].value_counts().unique()) == [100]
    assert sp.issparse(a.X)
    a.obs["batch"] = "changed"
    assert ds.pancreas().obs["batch"].nunique() == 5


def test_cellbench_3cl():
    a = ds.cellbench_3cl()
    assert a.shape == (499, 2000)
    assert sorted(a.obs["batch"].unique()) == ["CEL-seq2", "Drop-seq"]
    assert a.obs["cell_type"].nunique() == 3


def test_read_errors(tmp_path: Path):
    with pytest.raises(FedscInputError, match="no such file"):
        ds.read(tmp_path / "missing.h5ad")
    with pytest.raises(FedscInputError, match="is a directory"):
        read_h5ad(tmp_path)
    bad = tmp_path / "bad.h5ad"
    bad.write_text("cell,gene\n")
    with pytest.raises(FedscInputError, match="not an h5ad"):
        read_h5ad(bad)


def test_read_roundtrip(tmp_path: Path):
    a = ds.simulate(30, 10, 2, 2, seed=1)
    a.write_h5ad(tmp_path / "sim.h5ad")
    b = ds.read(tmp_path / "sim.h5ad")
    assert (a.X != b.X).nnz == 0


def test_shared_path():
    with pytest.raises(FileNotFoundError, match="looked in"):
        ds.shared_path("no_such_dataset_here")
    try:
        folder = ds.shared_path()
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("../shared/data is absent (and CI is not set)")
    assert folder.is_dir()
    assert ds.shared_path("pancreas_panc8_small_5tech").name == "pancreas_panc8_small_5tech.h5ad"


def test_simulate_shapes_types_determinism():
    a = ds.simulate(600, 200, 3, 4, seed=7)
    assert a.shape == (600, 200)
    assert sp.isspmatrix_csr(a.X) or isinstance(a.X, sp.csr_array)
    assert a.X.dtype == np.float32
    assert (a.X.data >= 0).all() and np.array_equal(a.X.data, np.round(a.X.data))
    assert list(a.obs["batch"].cat.categories) == ["batch0", "batch1", "batch2"]
    assert a.obs["cell_type"].dtype == "category"
    assert a.obs["batch"].value_counts().tolist() == [200, 200, 200]
    b = ds.simulate(600, 200, 3, 4, seed=7)
    assert (a.X != b.X).nnz == 0
    assert (a.obs["cell_type"] == b.obs["cell_type"]).all()
    c = ds.simulate(600, 200, 3, 4, seed=8)
    assert (a.X != c.X).nnz > 0


def test_simulate_leaves_global_rng_alone():
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    ds.simulate(50, 20, 2, 2, seed=0)
    ds.simulate_embedding(50, 4, 2, 2, seed=0)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002


def _log_batch_means(a):
    X = a.X.toarray()
    X = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    return np.stack([X[(a.obs["batch"] == b).to_numpy()].mean(0) for b in ["batch0", "batch1"]])


def test_simulate_batch_effect_present():
    common = dict(n_cells=2000, n_genes=300, n_batches=2, n_cell_types=1, seed=3)
    strong = _log_batch_means(ds.simulate(**common, batch_effect=0.8))
    none = _log_batch_means(ds.simulate(**common, batch_effect=0.0))
    d_strong = np.abs(strong[0] - strong[1]).mean()
    d_none = np.abs(none[0] - none[1]).mean()
    assert d_strong > 0.2
    assert d_strong > 4 * d_none


def test_simulate_cell_types_differ():
    a = ds.simulate(1500, 300, 1, 3, batch_effect=0.0, cell_type_effect=2.0, seed=2)
    X = np.log1p(a.X.toarray())
    means = np.stack([X[(a.obs["cell_type"] == t).to_numpy()].mean(0) for t in ["type0", "type1"]])
    assert np.abs(means[0] - means[1]).max() > 1.0


def test_simulate_embedding():
    a = ds.simulate_embedding(1000, 8, 4, 3, seed=5, return_truth=True)
    assert a.shape == (1000, 0)
    z = a.obsm["X_emb"]
    assert z.shape == (1000, 8) and z.dtype == np.float32
    assert a.obsm["X_emb_true"].shape == (1000, 8)
    b = ds.simulate_embedding(1000, 8, 4, 3, seed=5)
    np.testing.assert_array_equal(z, b.obsm["X_emb"])
    means = np.stack([z[(a.obs["batch"] == f"batch{i}").to_numpy()].mean(0) for i in range(2)])
    assert np.abs(means[0] - means[1]).max() > 0.5


def test_simulate_errors():
    with pytest.raises(FedscInputError, match="n_cells=2 is smaller than n_batches=3"):
        ds.simulate(2, 10, 3, 2)
    with pytest.raises(FedscInputError, match="n_genes must be >= 1"):
        ds.simulate(10, 0, 2, 2)
