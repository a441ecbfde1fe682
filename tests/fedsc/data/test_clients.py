"""split_clients: views not copies, order, hold-out, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from fedsc.data import Client, split_clients
from fedsc.errors import FedscInputError


@pytest.fixture
def adata() -> ad.AnnData:
    batches = ["b", "a", "c", "a", "b", "c", "c"]
    X = np.arange(len(batches) * 2, dtype=np.float32).reshape(-1, 2)
    return ad.AnnData(X, obs=pd.DataFrame({"batch": batches}, index=[f"c{i}" for i in range(7)]))


def test_views_and_indices(adata):
    train, held = split_clients(adata, "batch")
    assert held == []
    assert [c.name for c in train] == ["a", "b", "c"]
    assert [c.index for c in train] == [0, 1, 2]
    for c in train:
        assert isinstance(c, Client)
        assert c.adata.is_view
        assert not c.held_out
        assert (adata.obs["batch"].to_numpy()[c.obs_indices] == c.name).all()
        np.testing.assert_array_equal(c.adata.X, adata.X[c.obs_indices])
    assert [c.n_obs for c in train] == [2, 2, 3]
    np.testing.assert_array_equal(train[2].obs_indices, [2, 5, 6])


def test_order(adata):
    train, _ = split_clients(adata, "batch", order=["c", "a", "b"])
    assert [c.name for c in train] == ["c", "a", "b"]
    assert [c.index for c in train] == [0, 1, 2]


def test_holdout_goes_last(adata):
    train, held = split_clients(adata, "batch", holdout=["a"])
    assert [c.name for c in train] == ["b", "c"]
    assert [(c.name, c.index, c.held_out) for c in held] == [("a", 2, True)]
    assert held[0].adata.is_view


def test_errors(adata):
    with pytest.raises(FedscInputError, match="batch_key 'study' is not a column"):
        split_clients(adata, "study")
    with pytest.raises(FedscInputError, match=r"missing \['c'\]"):
        split_clients(adata, "batch", order=["a", "b"])
    with pytest.raises(FedscInputError, match=r"held-out batch\(es\) \['z'\] not found"):
        split_clients(adata, "batch", holdout=["z"])
    with pytest.raises(FedscInputError, match="every batch is held out"):
        split_clients(adata, "batch", holdout=["a", "b", "c"])
