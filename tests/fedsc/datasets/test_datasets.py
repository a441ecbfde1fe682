"""Bundled data, shared-data lookup, reading, simulators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
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


# --- donors (issue 20): the documented generative model, docs/data.md "Simulated data" ---


def test_simulate_donors_nested_in_batches():
    a = ds.simulate(900, 40, 3, 4, n_donors=[2, 3, 4], donor_size_sd=1.0, seed=4)
    assert a.obs["donor"].dtype == "category"
    assert list(a.obs["donor"].cat.categories) == [f"donor{d}" for d in range(9)]
    per_donor = a.obs.groupby("donor", observed=True)["batch"].nunique()
    assert (per_donor == 1).all()  # a donor belongs to exactly one batch
    donors = a.obs.groupby("batch", observed=True)["donor"].nunique()
    assert donors.tolist() == [2, 3, 4]
    assert a.obs["batch"].value_counts().sort_index().tolist() == [300, 300, 300]
    sizes = a.obs["donor"].value_counts()
    assert sizes.min() >= 1 and sizes.max() > 2 * sizes.min()  # unequal donor sizes
    # cells ordered by batch, then donor
    codes = a.obs["donor"].cat.codes.to_numpy()
    assert (np.diff(codes) >= 0).all()
    assert a.uns["simulation"]["n_donors"] == [2, 3, 4]
    equal = ds.simulate(900, 40, 3, 4, n_donors=3, donor_size_sd=0.0, seed=4)
    assert equal.obs["donor"].value_counts().tolist() == [100] * 9


def test_simulate_one_donor_is_the_batch():
    a = ds.simulate(300, 30, 3, 2, seed=9)
    np.testing.assert_array_equal(
        a.obs["donor"].cat.codes.to_numpy(), a.obs["batch"].cat.codes.to_numpy()
    )
    # donor parameters have no effect with one donor per batch (donor = batch)
    b = ds.simulate(300, 30, 3, 2, seed=9, donor_effect=3.0, donor_composition=0.1)
    assert (a.X != b.X).nnz == 0


def _log_donor_means(a, donors):
    X = a.X.toarray()
    X = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    return np.stack([X[(a.obs["donor"] == d).to_numpy()].mean(0) for d in donors])


def test_simulate_donor_effect_present():
    common = dict(n_cells=2000, n_genes=300, n_batches=1, n_cell_types=1, n_donors=2, seed=3)
    common |= dict(donor_size_sd=0.0)
    strong = _log_donor_means(ds.simulate(**common, donor_effect=0.6), ["donor0", "donor1"])
    none = _log_donor_means(ds.simulate(**common, donor_effect=0.0), ["donor0", "donor1"])
    d_strong = np.abs(strong[0] - strong[1]).mean()
    d_none = np.abs(none[0] - none[1]).mean()
    assert d_strong > 0.2
    assert d_strong > 4 * d_none


def _donor_proportions(a):
    return pd.crosstab(a.obs["donor"], a.obs["cell_type"], normalize="index").to_numpy()


def test_simulate_donor_composition():
    # donors of one batch: close to each other for a large concentration, far for a small one
    common = dict(n_cells=6000, n_genes=20, n_batches=1, n_cell_types=4, n_donors=6, seed=1)
    common |= dict(donor_size_sd=0.0, composition=float("inf"))
    near = _donor_proportions(ds.simulate(**common, donor_composition=float("inf")))
    far = _donor_proportions(ds.simulate(**common, donor_composition=1.0))
    assert np.abs(near - 0.25).max() < 0.06  # binomial noise of 1000 cells around 1/4
    assert np.abs(far - far.mean(0)).max() > 0.2


def test_simulate_library_size_and_mean():
    # Poisson: a cell's counts sum to Poisson(L_i), L_i ~ LogNormal(log 500, 0.3²), whatever
    # its batch, donor and type (the proportions are normalised over genes)
    a = ds.simulate(4000, 50, 2, 3, dispersion=0.0, n_donors=4, donor_effect=0.5,
                    seed=0, library_size=500.0)  # fmt: skip
    totals = np.asarray(a.X.sum(1)).ravel()
    assert abs(np.median(totals) / 500.0 - 1) < 0.03
    assert abs(np.std(np.log(totals)) - np.sqrt(0.3**2 + 1 / 500)) < 0.02


def test_simulate_h5ad_equals_simulate(tmp_path: Path):
    import anndata as ad

    kw = dict(n_donors=[2, 3], donor_size_sd=0.7, seed=5)
    path = ds.simulate_h5ad(tmp_path / "sim.h5ad", 4500, 60, 2, 3, **kw)  # 3 blocks
    mem = ds.simulate(4500, 60, 2, 3, **kw)
    disk = ad.read_h5ad(path, backed="r")
    assert disk.isbacked and disk.shape == (4500, 60)
    assert (disk.X[:] != mem.X).nnz == 0
    pd.testing.assert_frame_equal(disk.obs, mem.obs)
    assert list(disk.uns["simulation"]["n_donors"]) == [2, 3]
    disk.file.close()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ds.simulate_h5ad(path, 10, 5, 1, 1)
    with pytest.raises(FedscInputError, match=r"unknown parameter\(s\) \['donors'\]"):
        ds.simulate_h5ad(tmp_path / "x.h5ad", 10, 5, 1, 1, donors=3)
    assert not (tmp_path / "x.h5ad").exists()


def test_simulate_donor_errors():
    with pytest.raises(FedscInputError, match="n_donors lists 2 batches but n_batches=3"):
        ds.simulate(30, 5, 3, 1, n_donors=[1, 2])
    with pytest.raises(FedscInputError, match="batch0 has 5 cells for 6 donors"):
        ds.simulate(10, 5, 2, 1, n_donors=6)
    with pytest.raises(FedscInputError, match="every batch needs >= 1 donor"):
        ds.simulate(10, 5, 2, 1, n_donors=[1, 0])
    with pytest.raises(FedscInputError, match="donor_effect must be >= 0"):
        ds.simulate(10, 5, 2, 1, n_donors=2, donor_effect=-1.0)
