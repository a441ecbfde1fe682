"""Cell-type inclusion scenarios (FedscGen): All, Combined, Dropped.

Definitions (plaintext utilities, for centralized use and tests):

- *minority* cell type: fewer than ``min_cells`` cells in total, summed over all batches.
  The default ``min_cells=10`` marks exactly the 5 endothelial cells of the bundled
  pancreas data (``fedsc.datasets.pancreas()``: the next-smallest type, delta, has 33);
  the CellBench data has no minority type.
- *standalone* cell type: present (≥ 1 cell) in exactly one batch.
- *shared* cell type: present in at least two batches.
"""

from __future__ import annotations

from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from fedsc._deprecation import renamed_arguments
from fedsc.data.access import obs_column
from fedsc.errors import FedscInputError

__all__ = [
    "DEFAULT_MIN_CELLS",
    "SCENARIOS",
    "apply_inclusion",
    "cell_type_presence",
    "minority_types",
    "shared_types",
    "standalone_types",
]

SCENARIOS = ("all", "combined", "dropped")
DEFAULT_MIN_CELLS = 10

Scenario = Literal["all", "combined", "dropped"]


@renamed_arguments(label_key="labels_key")
def cell_type_presence(adata: ad.AnnData, batch_key: str, labels_key: str) -> pd.DataFrame:
    """Cell counts per batch (rows, sorted) and cell type (columns, sorted)."""
    batches = obs_column(adata, batch_key, "batch_key").astype(str)
    labels = obs_column(adata, labels_key, "labels_key").astype(str)
    table = pd.crosstab(batches.to_numpy(), labels.to_numpy())
    table.index.name = batch_key
    table.columns.name = labels_key
    return table.sort_index(axis=0).sort_index(axis=1)


@renamed_arguments(label_key="labels_key")
def standalone_types(adata: ad.AnnData, batch_key: str, labels_key: str) -> list[str]:
    """Cell types present in exactly one batch (sorted)."""
    present = cell_type_presence(adata, batch_key, labels_key) > 0
    return sorted(present.columns[present.sum(axis=0) == 1].tolist())


@renamed_arguments(label_key="labels_key")
def shared_types(adata: ad.AnnData, batch_key: str, labels_key: str) -> list[str]:
    """Cell types present in at least two batches (sorted)."""
    present = cell_type_presence(adata, batch_key, labels_key) > 0
    return sorted(present.columns[present.sum(axis=0) >= 2].tolist())


@renamed_arguments(label_key="labels_key")
def minority_types(
    adata: ad.AnnData, labels_key: str, *, min_cells: int = DEFAULT_MIN_CELLS
) -> list[str]:
    """Cell types with fewer than ``min_cells`` cells in total (sorted)."""
    counts = obs_column(adata, labels_key, "labels_key").astype(str).value_counts()
    return sorted(counts.index[counts < min_cells].tolist())


@renamed_arguments(label_key="labels_key")
def apply_inclusion(
    adata: ad.AnnData,
    *,
    batch_key: str,
    labels_key: str,
    scenario: Scenario | str = "all",
    min_cells: int = DEFAULT_MIN_CELLS,
    other_label: str = "others",
) -> ad.AnnData:
    """Apply an inclusion scenario to the cell-type labels.

    Parameters
    ----------
    adata
        Cells of all batches; never modified.
    batch_key, labels_key
        Columns of ``adata.obs`` with the batch and the cell type.
    scenario
        ``"all"``: keep every cell type. ``"combined"``: relabel minority cell types
        (fewer than ``min_cells`` cells in total) as ``other_label``. ``"dropped"``: remove
        the cells of minority cell types.
    min_cells
        Threshold defining a minority cell type (total cells over all batches).
    other_label
        Label given to minority cell types in ``"combined"``.

    Returns
    -------
    A new AnnData: for ``"all"`` a copy; for ``"combined"`` a copy with
    ``obs[labels_key]`` relabelled (categorical); for ``"dropped"`` a copy of the kept cells.
    ``uns["inclusion"]`` records the scenario, threshold and affected types.
    """
    scenario = str(scenario).lower()
    if scenario not in SCENARIOS:
        raise FedscInputError(
            f"unknown inclusion scenario {scenario!r}; choose one of {list(SCENARIOS)}."
        )
    if min_cells < 1:
        raise FedscInputError(f"min_cells must be >= 1, got {min_cells}.")
    obs_column(adata, batch_key, "batch_key").astype(str)
    labels = obs_column(adata, labels_key, "labels_key").astype(str)
    minority = minority_types(adata, labels_key, min_cells=min_cells)
    info: dict[str, Any] = {
        "scenario": scenario,
        "min_cells": int(min_cells),
        "minority_types": minority,
    }

    if scenario == "all":
        out = adata.copy()
    elif scenario == "combined":
        clash = other_label in set(labels) and other_label not in minority
        if clash and minority:
            raise FedscInputError(
                f"other_label {other_label!r} is already a cell type in adata.obs"
                f"[{labels_key!r}]; pass a different other_label=."
            )
        out = adata.copy()
        new = labels.where(~labels.isin(minority), other_label).to_numpy()
        cats = sorted(set(new) - {other_label}) + ([other_label] if other_label in new else [])
        out.obs[labels_key] = pd.Categorical(new, categories=cats)
        info["other_label"] = other_label
    else:
        keep = ~labels.isin(minority).to_numpy()
        if not keep.any():
            raise FedscInputError(
                f"scenario 'dropped' with min_cells={min_cells} removes every cell; "
                f"lower min_cells."
            )
        out = adata[np.flatnonzero(keep)].copy()
        if isinstance(out.obs[labels_key].dtype, pd.CategoricalDtype):
            out.obs[labels_key] = out.obs[labels_key].cat.remove_unused_categories()
        info["n_dropped"] = int((~keep).sum())
    out.uns["inclusion"] = info
    return out
