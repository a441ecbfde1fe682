"""Inclusion scenarios on a hand-made AnnData with known counts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from fedsc.data import (
    apply_inclusion,
    cell_type_presence,
    minority_types,
    shared_types,
    standalone_types,
)
from fedsc.errors import FedscInputError

# batch x type counts:      A   B   C   D
COUNTS = {"s1": {"A": 6, "B": 4, "C": 2, "D": 0}, "s2": {"A": 5, "B": 0, "C": 1, "D": 3}}


@pytest.fixture
def adata() -> ad.AnnData:
    batch, label = [], []
    for b, row in COUNTS.items():
        for t, n in row.items():
            batch += [b] * n
            label += [t] * n
    n = len(batch)
    obs = pd.DataFrame(
        {"batch": pd.Categorical(batch), "cell_type": pd.Categorical(label)},
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(np.arange(n * 2, dtype=np.float32).reshape(n, 2), obs=obs)
    return a


def test_presence_and_helpers(adata):
    table = cell_type_presence(adata, "batch", "cell_type")
    expected = pd.DataFrame(COUNTS).T
    np.testing.assert_array_equal(table.to_numpy(), expected.to_numpy())
    assert list(table.index) == ["s1", "s2"]
    assert list(table.columns) == ["A", "B", "C", "D"]
    assert standalone_types(adata, "batch", "cell_type") == ["B", "D"]
    assert shared_types(adata, "batch", "cell_type") == ["A", "C"]
    # totals: A 11, B 4, C 3, D 3
    assert minority_types(adata, "cell_type", min_cells=4) == ["C", "D"]
    assert minority_types(adata, "cell_type", min_cells=5) == ["B", "C", "D"]


def test_all_keeps_everything(adata):
    before = adata.obs.copy()
    out = apply_inclusion(adata, batch_key="batch", labels_key="cell_type", scenario="all")
    assert out is not adata
    pd.testing.assert_frame_equal(out.obs, before)
    assert out.uns["inclusion"]["scenario"] == "all"


def test_combined_relabels_minority(adata):
    before = adata.obs.copy()
    out = apply_inclusion(
        adata, batch_key="batch", labels_key="cell_type", scenario="combined", min_cells=4
    )
    pd.testing.assert_frame_equal(adata.obs, before)  # input untouched
    assert out.n_obs == adata.n_obs
    counts = out.obs["cell_type"].value_counts()
    assert counts.to_dict() == {"A": 11, "B": 4, "others": 6}
    assert list(out.obs["cell_type"].cat.categories) == ["A", "B", "others"]
    assert out.uns["inclusion"]["minority_types"] == ["C", "D"]


def test_dropped_removes_minority(adata):
    out = apply_inclusion(
        adata, batch_key="batch", labels_key="cell_type", scenario="dropped", min_cells=4
    )
    assert adata.n_obs == 21
    assert out.n_obs == 15
    assert not out.is_view
    assert set(out.obs["cell_type"]) == {"A", "B"}
    assert list(out.obs["cell_type"].cat.categories) == ["A", "B"]
    np.testing.assert_array_equal(out.X, adata[out.obs_names].X)
    assert out.uns["inclusion"]["n_dropped"] == 6


def test_no_minority_is_identity(adata):
    for scenario in ("combined", "dropped"):
        out = apply_inclusion(
            adata, batch_key="batch", labels_key="cell_type", scenario=scenario, min_cells=1
        )
        assert out.n_obs == adata.n_obs
        assert list(out.obs["cell_type"]) == list(adata.obs["cell_type"])


def test_pancreas_default_threshold():
    from fedsc.datasets import pancreas

    a = pancreas()
    assert minority_types(a, "cell_type") == ["endothelial"]
    out = apply_inclusion(a, batch_key="batch", labels_key="cell_type", scenario="dropped")
    assert out.n_obs == 495


def test_errors(adata):
    with pytest.raises(FedscInputError, match="unknown inclusion scenario 'some'"):
        apply_inclusion(adata, batch_key="batch", labels_key="cell_type", scenario="some")
    with pytest.raises(FedscInputError, match="labels_key 'ct' is not a column"):
        apply_inclusion(adata, batch_key="batch", labels_key="ct")
    with pytest.raises(FedscInputError, match="removes every cell"):
        apply_inclusion(
            adata, batch_key="batch", labels_key="cell_type", scenario="dropped", min_cells=100
        )
    with pytest.raises(FedscInputError, match="other_label 'A' is already a cell type"):
        apply_inclusion(
            adata,
            batch_key="batch",
            labels_key="cell_type",
            scenario="combined",
            min_cells=4,
            other_label="A",
        )
