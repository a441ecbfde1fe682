"""validate_adata: one test per bad input, asserting the exception type and the message."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fedsc.data import validate_adata
from fedsc.errors import FedscInputError


def make(n_per_batch=(3, 3), sparse=False, n_genes=4) -> ad.AnnData:
    n = sum(n_per_batch)
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, (n, n_genes)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "batch": np.repeat([f"b{i}" for i in range(len(n_per_batch))], n_per_batch),
            "cell_type": ["t0", "t1"] * (n // 2) + ["t0"] * (n % 2),
        },
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(sp.csr_matrix(X) if sparse else X, obs=obs)
    a.obsm["X_emb"] = rng.normal(size=(n, 2))
    return a


def check(adata, phrase, **kw):
    kw.setdefault("batch_key", "batch")
    with pytest.raises(FedscInputError, match=phrase):
        validate_adata(adata, **kw)


@pytest.mark.parametrize("sparse", [False, True])
def test_valid_passes(sparse):
    a = make(sparse=sparse)
    validate_adata(
        a, batch_key="batch", labels_key="cell_type", use_rep="X_emb", expect_counts=True
    )
    validate_adata(a, batch_key="batch", use_rep="X", expect_counts=True)
    a.layers["counts"] = a.X.copy()
    a.X = a.X * -1.0  # scaled-looking X; counts in the layer
    validate_adata(a, batch_key="batch", layer="counts", expect_counts=True)


def test_missing_batch_key():
    check(make(), "batch_key 'study' is not a column", batch_key="study")


def test_missing_label_key():
    check(make(), "labels_key 'celltype' is not a column", labels_key="celltype")


def test_missing_use_rep():
    check(make(), r"use_rep='X_pca' is not a key of adata.obsm.*fit_embedding", use_rep="X_pca")


def test_missing_layer():
    check(make(), "layer 'counts' is not a key of adata.layers", layer="counts")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_representation(bad):
    a = make()
    a.obsm["X_emb"][1, 0] = bad
    check(a, r"adata.obsm\['X_emb'\] contains", use_rep="X_emb")


@pytest.mark.parametrize("sparse", [False, True])
def test_nan_in_X(sparse):
    a = make(sparse=sparse)
    if sparse:
        a.X.data[0] = np.nan
    else:
        a.X[0, 0] = np.nan
    check(a, r"adata.X contains 1 NaN")


def test_fewer_than_two_batches():
    check(make(n_per_batch=(6,)), "has 1 batch.*at least 2")


def test_small_batch_is_named():
    check(make(n_per_batch=(3, 1)), r"fewer than 2 cells: 'b1' \(1 cell\)")


def test_duplicate_obs_names():
    a = make()
    a.obs_names = ["dup"] * 2 + [f"c{i}" for i in range(4)]
    check(a, r"not unique \(e.g. \['dup'\]\).*obs_names_make_unique")


def test_non_numeric_X():
    a = make()
    a.obsm["X_str"] = np.array([["a", "b"]] * a.n_obs)
    check(a, "non-numeric dtype", use_rep="X_str")


@pytest.mark.parametrize("sparse", [False, True])
def test_negative_counts(sparse):
    a = make(sparse=sparse)
    if sparse:
        a.X.data[0] = -1.0
    else:
        a.X[0, 0] = -1.0
    check(a, "negative values.*raw counts are expected", expect_counts=True)
    validate_adata(a, batch_key="batch")  # fine when counts are not expected


def test_empty_adata():
    a = make()[[]].copy()
    check(a, "no cells")


def test_nan_in_labels():
    a = make()
    a.obs["cell_type"] = a.obs["cell_type"].astype("category")
    a.obs.loc["c0", "cell_type"] = np.nan
    check(a, r"adata.obs\['cell_type'\] has 1 missing", labels_key="cell_type")


def test_nan_in_batch():
    a = make()
    a.obs["batch"] = a.obs["batch"].astype(object)
    a.obs.loc["c2", "batch"] = None
    check(a, r"adata.obs\['batch'\] has 1 missing")


def test_not_an_anndata():
    check(np.zeros((3, 3)), "expected an anndata.AnnData")


def test_counts_checked_in_X_even_with_use_rep():
    a = make()
    a.X[0, 0] = -3.0
    check(a, r"adata.X has negative values", use_rep="X_emb", expect_counts=True)


def test_embedding_only_adata_passes():
    from fedsc.datasets import simulate_embedding

    a = simulate_embedding(40, 3, 2, 2, seed=0)
    validate_adata(a, batch_key="batch", labels_key="cell_type", use_rep="X_emb")
    with pytest.raises(FedscInputError, match="no genes"):
        validate_adata(a, batch_key="batch")
