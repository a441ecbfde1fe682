"""Metric panels on an embedding: scIB (scib-metrics), FedscGen, downstream classifier.

Each panel returns tidy rows ``panel, metric, value``; :func:`evaluate` runs several on an
AnnData representation and adds the ``embedding`` column (see ``fedsc.results``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc.errors import FedscInputError
from fedsc.evaluation.caches import enable_compilation_caches
from fedsc.evaluation.downstream import downstream_accuracy
from fedsc.evaluation.fedscgen_panel import fedscgen_panel
from fedsc.evaluation.scib_panel import scib_panel

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "PANELS",
    "downstream_accuracy",
    "enable_compilation_caches",
    "evaluate",
    "fedscgen_panel",
    "representation",
    "scib_panel",
]

PANELS: tuple[str, ...] = ("scib", "fedscgen", "downstream")


def representation(adata: AnnData, rep: str, what: str = "rep") -> np.ndarray:
    """``"X"``, ``"layers/<name>"`` or an ``obsm`` key of ``adata`` as a dense array."""
    if rep == "X":
        if adata.X is None:
            raise FedscInputError(f"{what}='X' but adata.X is empty; pass an obsm key instead.")
        m = adata.X
    elif rep.startswith("layers/"):
        layer = rep.removeprefix("layers/")
        if layer not in adata.layers:
            raise FedscInputError(
                f"{what}={rep!r}: no layer {layer!r} (layers: {sorted(adata.layers.keys())})."
            )
        m = adata.layers[layer]
    elif rep in adata.obsm:
        m = adata.obsm[rep]
    else:
        raise FedscInputError(
            f"{what}={rep!r} is not in adata.obsm (keys: {sorted(adata.obsm.keys())}); "
            "pass an obsm key, 'X' or 'layers/<name>'."
        )
    return np.asarray(m.toarray() if sp.issparse(m) else m)


def _obs(adata: AnnData, key: str, what: str) -> pd.Series:
    if key not in adata.obs:
        raise FedscInputError(
            f"{what}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        )
    return adata.obs[key]


def evaluate(
    adata: AnnData,
    *,
    rep: str,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    panels: Sequence[str] = ("scib",),
    X_pre_rep: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Evaluate one representation of ``adata`` with the chosen metric panels.

    Parameters
    ----------
    adata
        Cells with the representation, batch and label columns.
    rep
        ``adata.obsm`` key of the embedding, ``"X"``, or ``"layers/<name>"`` (e.g. the
        corrected expression ``"layers/fedscgen"``).
    batch_key, label_key
        ``adata.obs`` columns with batch and cell type.
    panels
        Any of ``"scib"``, ``"fedscgen"``, ``"downstream"``.
    X_pre_rep
        obsm key (or ``"X"``) of the pre-integration embedding, for the scIB PCR comparison.
    seed
        Passed to every panel.

    Returns
    -------
    DataFrame with columns ``embedding`` (== ``rep``), ``panel``, ``metric``, ``value``.
    """
    if isinstance(panels, str):
        panels = (panels,)
    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise FedscInputError(f"panels {list(panels)} invalid; choose from {list(PANELS)}.")
    X = representation(adata, rep, "rep")
    batch = _obs(adata, batch_key, "batch_key")
    labels = _obs(adata, label_key, "label_key")
    X_pre = representation(adata, X_pre_rep, "X_pre_rep") if X_pre_rep is not None else None
    if batch.nunique(dropna=True) < 2:
        raise FedscInputError(
            f"adata.obs[{batch_key!r}] has fewer than 2 batches; batch metrics need at least 2."
        )

    frames = []
    for p in panels:
        if p == "scib":
            frames.append(scib_panel(X, batch, labels, X_pre=X_pre, seed=seed))
        elif p == "fedscgen":
            frames.append(fedscgen_panel(X, batch, labels, seed=seed))
        else:
            frames.append(downstream_accuracy(X, batch, labels, seed=seed))
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "embedding", rep)
    return out
