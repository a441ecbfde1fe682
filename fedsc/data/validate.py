"""Validate an AnnData before a run: every problem is named together with its fix."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc._deprecation import renamed_arguments
from fedsc.data.access import get_representation, obs_column
from fedsc.data.input_kind import check_input_kind
from fedsc.errors import FedscInputError

__all__ = ["get_representation", "obs_column", "validate_adata"]


def _values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densifying of sparse data)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix)


@renamed_arguments(label_key="labels_key")
def validate_adata(
    adata: ad.AnnData,
    *,
    batch_key: str,
    labels_key: str | None = None,
    use_rep: str | None = None,
    layer: str | None = None,
    expect_counts: bool = False,
    min_batches: int = 2,
    min_cells_per_batch: int = 2,
) -> None:
    """Check that ``adata`` can be used for a federated run; raise on the first problem.

    Parameters
    ----------
    adata
        Cells × genes (dense or sparse ``X``).
    batch_key
        Column of ``adata.obs`` naming each cell's batch (one client per batch).
    labels_key
        Column of ``adata.obs`` with cell-type labels, checked when given.
    use_rep
        Key of ``adata.obsm`` the method reads (``"X"`` means ``adata.X``).
    layer
        Key of ``adata.layers`` to read instead of ``X`` (when ``use_rep`` is not given).
    expect_counts
        Require non-negative values (raw counts) in the checked matrix.
    min_batches
        Fewest batches (clients) allowed.
    min_cells_per_batch
        Fewest cells allowed in any batch.

    Raises
    ------
    FedscInputError
        With a message naming the problem and its fix.
    """
    if not isinstance(adata, ad.AnnData):
        raise FedscInputError(
            f"expected an anndata.AnnData, got {type(adata).__name__}; read your data with "
            f"fedsc.data.read_h5ad(path) or build one with anndata.AnnData(X, obs=...)."
        )
    if adata.n_obs == 0:
        raise FedscInputError(
            "adata has no cells (n_obs == 0); check the filtering that produced it."
        )
    if adata.n_vars == 0 and use_rep in (None, "X"):
        raise FedscInputError(
            "adata has no genes (n_vars == 0); check the gene filtering that produced it."
        )
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        raise FedscInputError(
            f"adata.obs_names are not unique (e.g. {dup}); call adata.obs_names_make_unique() "
            f"first."
        )

    for arg, value in (("batch_key", batch_key), ("labels_key", labels_key),
                       ("use_rep", use_rep), ("layer", layer)):  # fmt: skip
        if value is not None and not isinstance(value, str):
            example = next(iter(value), None) if isinstance(value, list | tuple) else None
            raise FedscInputError(
                f"{arg} must be one name (a string), got {type(value).__name__} {value!r}"
                + (f"; pass {arg}={example!r}." if example is not None else ".")
            )
    batches = obs_column(adata, batch_key, "batch_key")
    if labels_key is not None:
        obs_column(adata, labels_key, "labels_key")

    counts = batches.astype(str).value_counts()
    if len(counts) < min_batches:
        raise FedscInputError(
            f"adata.obs[{batch_key!r}] has {len(counts)} batch(es) ({counts.index.tolist()}); "
            f"a federation needs at least {min_batches}: check batch_key or add batches."
        )
    small = counts[counts < min_cells_per_batch]
    if len(small):
        named = ", ".join(f"{b!r} ({n} cell{'s' if n != 1 else ''})" for b, n in small.items())
        raise FedscInputError(
            f"batch(es) with fewer than {min_cells_per_batch} cells: {named}; remove them "
            f"(adata = adata[~adata.obs[{batch_key!r}].isin([...])].copy()) or merge them "
            f"into another batch."
        )

    if use_rep is not None and use_rep != "X":
        where = f"adata.obsm[{use_rep!r}]"
    elif layer is not None:
        where = f"adata.layers[{layer!r}]"
    else:
        where = "adata.X"
    _check_matrix(adata, get_representation(adata, use_rep, layer), where, counts=False)
    if expect_counts:
        # the counts live in the layer (or X), whatever embedding the method reads
        where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
        _check_matrix(adata, get_representation(adata, None, layer), where, counts=True)


def _check_matrix(adata: ad.AnnData, matrix, where: str, *, counts: bool) -> None:
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if matrix is None:
        raise FedscInputError(f"{where} is empty (None); store the expression matrix there.")
    if matrix.shape[0] != adata.n_obs:
        raise FedscInputError(
            f"{where} has {matrix.shape[0]} rows but adata has {adata.n_obs} cells; "
            f"recompute it on this AnnData."
        )
    dtype = matrix.dtype
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)) or np.issubdtype(
        dtype, np.complexfloating
    ):
        raise FedscInputError(
            f"{where} has non-numeric dtype {dtype}; convert it to floats "
            f"(e.g. {where} = {where}.astype(np.float32))."
        )
    values = _values(matrix)
    if np.issubdtype(dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            n_nan = int(np.isnan(values).sum())
            n_inf = int(values.size - finite.sum() - n_nan)
            raise FedscInputError(
                f"{where} contains {n_nan} NaN and {n_inf} infinite value(s); remove or impute "
                f"them (check the normalisation/embedding that produced {where})."
            )
    if counts and values.size and values.min() < 0:
        raise FedscInputError(
            f"{where} has negative values (min {values.min():.4g}) but raw counts are expected; "
            f"pass the counts (e.g. layer='counts') rather than scaled/log data."
        )


@renamed_arguments(label_key="labels_key")
def validate_expression_input(
    adata: ad.AnnData,
    *,
    batch_key: str,
    labels_key: str | None,
    layer: str | None,
    method: str,
) -> None:
    """Validate ``adata`` for a method that trains on expression (FedscGen, scGen).

    The keys and the layer as :func:`validate_adata`, then the matrix must be
    log-normalised expression (:func:`fedsc.data.input_kind.check_input_kind`).
    """
    validate_adata(adata, batch_key=batch_key, labels_key=labels_key, layer=layer)
    check_input_kind(
        get_representation(adata, None, layer, what="layer"),
        "expression",
        where="adata.X" if layer is None else f"adata.layers[{layer!r}]",
        method=method,
        adata=adata,
    )
