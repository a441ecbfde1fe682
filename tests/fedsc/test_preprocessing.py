"""preprocess and fit_embedding: shapes, determinism, projection of new cells."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import fedsc.datasets as ds
from fedsc.errors import FedscInputError
from fedsc.preprocessing import PREPROCESS_KEY, UpstreamModel, fit_embedding, preprocess


@pytest.fixture(scope="module")
def raw():
    return ds.simulate(300, 120, 3, 3, seed=0)


@pytest.fixture(scope="module")
def pre(raw):
    return preprocess(raw, n_top_genes=60, batch_key="batch")


def test_preprocess_keeps_counts_and_selects_hvgs(raw, pre):
    assert pre.shape == (300, 60)
    assert raw.shape == (300, 120) and "counts" not in raw.layers  # input untouched
    assert PREPROCESS_KEY not in raw.uns
    assert pre.var["highly_variable"].all()
    counts = raw[:, pre.var_names].X
    assert (pre.layers["counts"] != counts).nnz == 0
    # X = log1p(counts / total_all_genes * 1e4)
    total = np.asarray(raw.X.sum(axis=1)).ravel()
    expected = np.log1p(counts.toarray() / total[:, None] * 1e4)
    np.testing.assert_allclose(pre.X.toarray(), expected, rtol=1e-5, atol=1e-5)
    assert pre.uns[PREPROCESS_KEY]["target_sum"] == 1e4


def test_preprocess_all_genes_when_n_top_genes_large(raw):
    out = preprocess(raw, n_top_genes=5000)
    assert out.n_vars == raw.n_vars
    out = preprocess(raw, n_top_genes=None, layer_counts=None)
    assert out.n_vars == raw.n_vars and "counts" not in out.layers


def test_preprocess_dense_input(raw):
    dense = raw.copy()
    dense.X = dense.X.toarray()
    a = preprocess(dense, n_top_genes=60)
    b = preprocess(raw, n_top_genes=60)
    assert list(a.var_names) == list(b.var_names)
    np.testing.assert_allclose(np.asarray(a.X), b.X.toarray(), rtol=1e-6)


def test_preprocess_rejects_bad_input(raw, pre):
    with pytest.raises(FedscInputError, match="already log-transformed"):
        preprocess(pre)
    neg = raw.copy()
    neg.X = neg.X.toarray() - 1.0
    with pytest.raises(FedscInputError, match="negative values"):
        preprocess(neg)
    with pytest.raises(FedscInputError, match="batch_key 'study' is not a column"):
        preprocess(raw, batch_key="study")
    with pytest.raises(FedscInputError, match=r"not in adata\.var_names"):
        preprocess(raw, genes=["gene0", "nope"])


@pytest.mark.parametrize("method", ["pca", "ica", "fa"])
def test_fit_embedding_shapes_determinism_transform(pre, method):
    a = pre.copy()
    model = fit_embedding(a, method, n_comps=10, seed=3)
    assert isinstance(model, UpstreamModel)
    z = a.obsm[f"X_{method}"]
    assert z.shape == (300, 10) and z.dtype == np.float32
    assert a.uns["fedsc_embedding"][f"X_{method}"]["n_comps"] == 10
    b = pre.copy()
    fit_embedding(b, method, n_comps=10, seed=3)
    np.testing.assert_array_equal(z, b.obsm[f"X_{method}"])
    # transform of the training cells reproduces the stored embedding
    np.testing.assert_allclose(model.transform(a), z, rtol=1e-4, atol=1e-4)


def test_transform_projects_raw_new_batch(raw, pre):
    """Continual training: fit on the first stage, project a new batch from its raw counts."""
    first = raw[raw.obs["batch"] != "batch2"].copy()
    new = raw[raw.obs["batch"] == "batch2"].copy()
    stage1 = preprocess(first, n_top_genes=60)
    model = fit_embedding(stage1, "pca", n_comps=8, key_added="X_ref")
    assert "X_ref" in stage1.obsm
    z_new = model.transform(new)
    assert z_new.shape == (new.n_obs, 8) and z_new.dtype == np.float32
    # same as preprocessing the new batch with the model's genes, then projecting
    new_pre = preprocess(new, genes=model.genes)
    np.testing.assert_allclose(model.transform(new_pre), z_new, rtol=1e-5, atol=1e-5)
    manual = model.estimator.transform(new_pre.X.toarray().astype(np.float64))
    np.testing.assert_allclose(z_new, manual, rtol=1e-4, atol=1e-4)
    # raw training cells map onto their stored coordinates
    np.testing.assert_allclose(model.transform(first), stage1.obsm["X_ref"], atol=1e-4)


def test_scaled_and_dense(pre):
    a = pre.copy()
    a.X = a.X.toarray()
    model = fit_embedding(a, "pca", n_comps=5, scale=True)
    assert model.scale_mean is not None
    np.testing.assert_allclose(model.transform(a), a.obsm["X_pca"], atol=1e-4)
    b = pre.copy()
    fit_embedding(b, "pca", n_comps=5, scale=False)
    assert not np.allclose(np.abs(b.obsm["X_pca"]), np.abs(a.obsm["X_pca"]), atol=1e-2)


def test_fit_embedding_errors(pre):
    with pytest.raises(FedscInputError, match=r"smaller than min\(n_obs, n_vars\) = 60"):
        fit_embedding(pre.copy(), "pca", n_comps=60)
    with pytest.raises(FedscInputError, match="unknown embedding method 'umap'"):
        fit_embedding(pre.copy(), "umap")
    model = fit_embedding(pre.copy(), "pca", n_comps=4)
    with pytest.raises(FedscInputError, match=r"not in adata\.var_names"):
        model.transform(pre[:, :30].copy())


def test_pancreas_embedding_40_dims():
    a = preprocess(ds.pancreas(), n_top_genes=2000)
    assert a.shape == (500, 2000)
    model = fit_embedding(a, "pca", n_comps=40, seed=0)
    assert a.obsm["X_pca"].shape == (500, 40)
    assert sp.issparse(a.X)
    np.testing.assert_allclose(model.transform(a), a.obsm["X_pca"], atol=1e-4)
