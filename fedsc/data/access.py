"""Read what a method or a metric needs from an AnnData: one matrix, one ``obs`` column.

These are the only two readers; methods, metric panels and validation all use them, so
every missing key gets the same message naming the fix.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc.errors import FedscInputError

__all__ = ["get_representation", "obs_column", "representation", "stored_representation"]


def get_representation(
    adata: ad.AnnData,
    use_rep: str | None = None,
    layer: str | None = None,
    *,
    what: str = "use_rep",
):
    """Return the matrix a method reads: ``obsm[use_rep]``, ``layers[layer]`` or ``X``.

    ``use_rep="X"`` (or ``None`` without ``layer``) means ``adata.X``. The matrix is
    returned as stored (dense, sparse or a DataFrame); ``what`` names the caller's
    argument in error messages.
    """
    if use_rep is not None and use_rep != "X":
        if use_rep not in adata.obsm:
            raise FedscInputError(
                f"{what}={use_rep!r} is not a key of adata.obsm (keys: {list(adata.obsm)}); "
                f"compute the embedding first (e.g. fedsc.preprocessing.fit_embedding(adata, "
                f"'pca')) or pass {what}='X' to use adata.X."
            )
        return adata.obsm[use_rep]
    if layer is not None:
        if layer not in adata.layers:
            raise FedscInputError(
                f"layer {layer!r} is not a key of adata.layers (keys: {list(adata.layers)}); "
                f"pass layer=None to use adata.X or store the matrix in adata.layers[{layer!r}]."
            )
        return adata.layers[layer]
    return adata.X


def representation(adata: ad.AnnData, rep: str, what: str = "rep") -> np.ndarray:
    """``"X"``, ``"layers/<name>"`` or an ``obsm`` key of ``adata`` as a dense array.

    Parameters
    ----------
    adata
        The cells.
    rep
        Which matrix: ``"X"``, ``"layers/<name>"`` or an ``obsm`` key.
    what
        The caller's argument name, quoted in error messages.
    """
    m = stored_representation(adata, rep, what)
    return np.asarray(m.toarray() if sp.issparse(m) else m)


def stored_representation(adata: ad.AnnData, rep: str, what: str = "rep") -> Any:
    """:func:`representation` as stored: a sparse matrix stays sparse (no dense copy)."""
    if rep.startswith("layers/"):
        m = get_representation(adata, None, rep.removeprefix("layers/"), what=what)
    else:
        m = get_representation(adata, rep, what=what)
    if m is None:
        raise FedscInputError(f"{what}='X' but adata.X is empty; pass an obsm key instead.")
    return m.to_numpy() if isinstance(m, pd.DataFrame) else m


def obs_column(adata: ad.AnnData, key: str, arg: str) -> pd.Series:
    """``adata.obs[key]``, or a clear error if it is missing or has NaN values.

    ``arg`` is the caller's parameter name (``"batch_key"``, ``"labels_key"``), quoted in
    the message so the user knows which argument to fix.
    """
    what = {"labels_key": "label"}.get(arg, arg.removesuffix("_key"))
    if key not in adata.obs.columns:
        raise FedscInputError(
            f"{arg} {key!r} is not a column of adata.obs (columns: "
            f"{list(adata.obs.columns)}); pass {arg}= the column that names each cell's {what}."
        )
    col = adata.obs[key]
    n_missing = int(col.isna().sum())
    if n_missing:
        raise FedscInputError(
            f"adata.obs[{key!r}] has {n_missing} missing (NaN) value(s); every cell needs a "
            f"{what}: fill them (e.g. adata.obs[{key!r}] = adata.obs[{key!r}]"
            f".cat.add_categories('unknown').fillna('unknown')) or drop those cells."
        )
    return col
