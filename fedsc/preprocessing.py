"""Preprocessing (normalise, log, HVG) and upstream embeddings (PCA/ICA/FA, scVI/LDVAE/scANVI).

``preprocess`` follows scanpy: counts kept in ``layers["counts"]``, ``normalize_total``,
``log1p``, highly variable genes (``flavor="seurat"`` on the log data) and subsetting.
``fit_embedding`` fits a scikit-learn PCA, FastICA or FactorAnalysis (40 dims by default,
as in scBatchProx) and returns an :class:`UpstreamModel` that projects new cells with the
same genes, preprocessing and projection, e.g. new batches in continual training; or one of
scvi-tools' scVI, LDVAE, scANVI (:mod:`fedsc.upstream.scvi_models`), which embed new cells
by scArches query mapping where scvi-tools supports it.

Embeddings are stored and returned as float32 (computed in float64).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from fedsc._deprecation import renamed_arguments
from fedsc.data.access import obs_column
from fedsc.errors import FedscInputError
from fedsc.uns import uns_safe
from fedsc.upstream import (
    CENTRAL,
    EMBEDDING_METHODS,
    check_upstream_params,
    register_embedding,
    register_upstream,
)

if TYPE_CHECKING:
    from fedsc.upstream import Estimator, FittedUpstream

__all__ = [
    "EMBEDDING_METHODS",
    "PREPROCESS_KEY",
    "UpstreamModel",
    "fit_embedding",
    "preprocess",
    "register_embedding",
    "register_upstream",
]

PREPROCESS_KEY = "fedsc_preprocess"


def _check_counts(adata: ad.AnnData) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise FedscInputError(
            f"adata is empty ({adata.n_obs} cells × {adata.n_vars} genes); nothing to preprocess."
        )
    X = adata.X
    if X is None or not np.issubdtype(X.dtype, np.number):
        raise FedscInputError(
            f"adata.X must be a numeric counts matrix, got "
            f"{None if X is None else X.dtype}; store raw counts in adata.X."
        )
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size and not np.isfinite(values).all():
        raise FedscInputError("adata.X contains NaN or infinite values; raw counts are expected.")
    if values.size and values.min() < 0:
        raise FedscInputError(
            f"adata.X has negative values (min {values.min():.4g}); preprocess expects raw "
            f"counts, not scaled or centred data (e.g. put adata.layers['counts'] in adata.X)."
        )
    if "log1p" in adata.uns or PREPROCESS_KEY in adata.uns:
        raise FedscInputError(
            "adata looks already log-transformed (adata.uns has 'log1p' or "
            f"{PREPROCESS_KEY!r}); pass the raw counts (e.g. adata.X = adata.layers['counts'] "
            "and del adata.uns['log1p']), or skip preprocess."
        )


def preprocess(
    adata: ad.AnnData,
    *,
    n_top_genes: int | None = 2000,
    target_sum: float = 1e4,
    batch_key: str | None = None,
    layer_counts: str | None = "counts",
    genes: list[str] | np.ndarray | None = None,
) -> ad.AnnData:
    """Normalise, log-transform and select highly variable genes; the input is not modified.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (dense or sparse).
    n_top_genes
        Highly variable genes to keep (scanpy ``flavor="seurat"`` on the log data). When
        ``None`` or ``>= n_vars`` every gene is kept.
    target_sum
        Counts per cell after ``normalize_total``.
    batch_key
        Passed to ``highly_variable_genes`` (genes ranked across batches).
    layer_counts
        Layer that keeps the raw counts (``None``: do not keep them).
    genes
        A fixed gene set to keep instead of selecting HVGs (e.g. an upstream model's genes);
        normalisation still uses all genes of ``adata``.

    Returns
    -------
    A new AnnData with log-normalised ``X`` (float32), ``var["highly_variable"]`` and
    ``uns["fedsc_preprocess"]`` recording the settings.
    """
    _check_counts(adata)
    if target_sum <= 0:
        raise FedscInputError(f"target_sum must be > 0, got {target_sum}.")
    if n_top_genes is not None and n_top_genes < 1:
        raise FedscInputError(f"n_top_genes must be >= 1 or None, got {n_top_genes}.")
    if batch_key is not None:
        obs_column(adata, batch_key, "batch_key")
    if genes is not None:
        genes = np.asarray(genes, dtype=str)
        missing = np.setdiff1d(genes, adata.var_names.to_numpy(dtype=str))
        if missing.size:
            raise FedscInputError(
                f"{missing.size} of the requested genes are not in adata.var_names "
                f"(e.g. {missing[:5].tolist()}); the new data must measure the model's genes."
            )

    out = adata.copy()
    if out.X.dtype != np.float32:
        out.X = out.X.astype(np.float32)
    if layer_counts is not None:
        out.layers[layer_counts] = out.X.copy()
    sc.pp.normalize_total(out, target_sum=target_sum)
    sc.pp.log1p(out)

    if genes is not None:
        out = out[:, genes].copy()
        out.var["highly_variable"] = True
    elif n_top_genes is not None and n_top_genes < out.n_vars:
        sc.pp.highly_variable_genes(
            out, n_top_genes=n_top_genes, flavor="seurat", batch_key=batch_key, subset=True
        )
    else:
        out.var["highly_variable"] = True
    out.uns[PREPROCESS_KEY] = {
        "target_sum": float(target_sum),
        "log1p": True,
        "n_top_genes": -1 if n_top_genes is None else int(n_top_genes),
        "batch_key": "" if batch_key is None else batch_key,
        "layer_counts": "" if layer_counts is None else layer_counts,
        "fixed_genes": genes is not None,
    }
    return out


def _dense64(matrix) -> np.ndarray:
    if sp.issparse(matrix):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype=np.float64)


@dataclass
class UpstreamModel:
    """A fitted upstream embedding: genes, optional preprocessing and scaling, projection.

    Attributes
    ----------
    method
        ``"pca"``, ``"ica"`` or ``"fa"``.
    n_comps, seed
        Embedding dimensions and the seed it was fitted with.
    genes
        The genes (``var_names``) the projection reads, in order.
    estimator
        The fitted scikit-learn estimator.
    key
        ``obsm`` key written at fit time.
    layer
        Layer read instead of ``X`` (``None``: ``X``).
    preprocessing
        The ``uns["fedsc_preprocess"]`` settings of the training data, or ``None`` when the
        training data were not produced by :func:`preprocess`.
    scale_mean, scale_std
        Per-gene standardisation applied before the projection (``None``: none).
    """

    method: str
    n_comps: int
    seed: int
    genes: np.ndarray
    estimator: Estimator
    key: str
    layer: str | None = None
    preprocessing: dict | None = None
    scale_mean: np.ndarray | None = field(default=None, repr=False)
    scale_std: np.ndarray | None = field(default=None, repr=False)

    def _matrix(self, adata: ad.AnnData) -> np.ndarray:
        """The model's input for ``adata``: preprocessed, gene-aligned, scaled, float64."""
        if self.preprocessing is not None and PREPROCESS_KEY not in adata.uns:
            # raw counts: the same normalisation over all genes, then the model's genes
            adata = preprocess(
                adata,
                target_sum=self.preprocessing["target_sum"],
                genes=self.genes,
                layer_counts=None,
            )
            source = adata.X
        else:
            if self.preprocessing is not None:
                ts = adata.uns[PREPROCESS_KEY].get("target_sum")
                if ts is not None and float(ts) != float(self.preprocessing["target_sum"]):
                    raise FedscInputError(
                        f"adata was normalised to target_sum={ts} but the model to "
                        f"{self.preprocessing['target_sum']}; pass the raw counts instead."
                    )
            names = adata.var_names.to_numpy(dtype=str)
            missing = np.setdiff1d(self.genes, names)
            if missing.size:
                raise FedscInputError(
                    f"{missing.size} of the model's {self.genes.size} genes are not in "
                    f"adata.var_names (e.g. {missing[:5].tolist()}); pass data measuring all "
                    f"of them (for new batches: their raw counts over all genes)."
                )
            idx = adata.var_names.get_indexer(self.genes)
            if self.layer is not None and self.layer not in adata.layers:
                raise FedscInputError(
                    f"the model reads adata.layers[{self.layer!r}], which this AnnData lacks; "
                    f"store the preprocessed matrix there."
                )
            mat = adata.layers[self.layer] if self.layer is not None else adata.X
            source = mat[:, idx]
        x = _dense64(source)
        if self.scale_mean is not None:
            x = (x - self.scale_mean) / self.scale_std
        return x

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        """Project cells into the fitted embedding (float32, ``n_obs × n_comps``).

        ``adata`` is either data preprocessed like the training data (``uns`` has
        ``"fedsc_preprocess"``; its genes must include the model's) or, when the model was
        fitted on :func:`preprocess` output, raw counts over all genes, which are
        normalised and log-transformed with the training settings first.
        """
        if adata.n_obs == 0:
            return np.zeros((0, self.n_comps), dtype=np.float32)
        return self.estimator.transform(self._matrix(adata)).astype(np.float32)


@renamed_arguments(label_key="labels_key")
def fit_embedding(
    adata: ad.AnnData,
    method: str = "pca",
    n_comps: int | None = None,
    seed: int = 0,
    key_added: str | None = None,
    *,
    layer: str | None = None,
    scale: bool = False,
    batch_key: str | None = None,
    labels_key: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> UpstreamModel | FittedUpstream:
    """Fit an upstream embedding and store it in ``adata.obsm``.

    Parameters
    ----------
    adata
        Preprocessed cells (e.g. the output of :func:`preprocess`); ``X`` dense or sparse.
        Upstreams on counts (scVI, LDVAE, scANVI) read ``layers["counts"]`` (kept by
        :func:`preprocess`), else ``X`` if it holds raw counts.
    method
        A name in :data:`fedsc.upstream.EMBEDDING_METHODS`: ``"pca"`` (sklearn PCA; exact
        solver), ``"ica"`` (FastICA, unit-variance whitening), ``"fa"`` (FactorAnalysis),
        ``"scvi"``, ``"ldvae"`` or ``"scanvi"`` (scvi-tools, needs ``fedsc[scvi]``).
    n_comps
        Dimensions (the latent size of the scvi-tools models); must be smaller than
        ``min(n_obs, n_vars)``. ``None``: the upstream's default (``spec.dims``: 40 for
        PCA/ICA/FA as in scBatchProx, scvi-tools' 10 for scVI/LDVAE/scANVI).
    seed
        Seed of the estimator or of scvi-tools (results are deterministic given the seed
        and, for scvi-tools, the thread setting).
    key_added
        ``obsm`` key; defaults to ``"X_<method>"``.
    layer
        Read ``adata.layers[layer]`` instead of ``X`` (linear upstreams).
    scale
        Standardise each gene (training mean and SD) before fitting and projecting (linear
        upstreams).
    batch_key, labels_key
        ``obs`` columns of the batch and the cell type; batch-aware upstreams need the
        first, label-aware ones (scANVI) the second (the others ignore them).
    params
        Upstream options (``spec.params``, e.g. ``{"max_epochs": 50}``).

    Returns
    -------
    The fitted model (``transform(new_cells)`` embeds cells it was not fitted on);
    ``adata.obsm[key]`` holds the embedding (float32) and ``adata.uns["fedsc_embedding"][key]``
    the settings, including where it was computed.
    """
    method = str(method).lower()
    spec = EMBEDDING_METHODS.get(method)  # unknown names: a clear error before any work
    params = check_upstream_params(method, params)
    n_comps = spec.dims if n_comps is None else n_comps
    limit = min(adata.n_obs, adata.n_vars)
    if not 1 <= n_comps < limit:
        raise FedscInputError(
            f"n_comps={n_comps} must be >= 1 and smaller than min(n_obs, n_vars) = {limit} "
            f"({adata.n_obs} cells × {adata.n_vars} genes); lower n_comps."
        )
    key = key_added or f"X_{method}"
    if spec.estimator is None:
        if layer is not None or scale:
            raise FedscInputError(
                f"layer and scale apply to the linear upstreams; {method} reads raw counts "
                "(layers['counts'] or X)."
            )
        emb, deep = spec.fit_function()(
            adata,
            spec,
            n_comps,
            seed,
            key=key,
            batch_key=batch_key,
            labels_key=labels_key,
            params=params,
        )
        adata.obsm[key] = emb
        adata.uns.setdefault("fedsc_embedding", {})[key] = uns_safe(deep.settings)
        return deep
    if params:
        raise FedscInputError(f"upstream {method!r} takes no params, got {sorted(params)}.")
    if layer is not None and layer not in adata.layers:
        raise FedscInputError(
            f"layer {layer!r} is not a key of adata.layers (keys: {list(adata.layers)}); "
            f"pass layer=None to use adata.X."
        )
    x = _dense64(adata.layers[layer] if layer is not None else adata.X)
    if not np.isfinite(x).all():
        raise FedscInputError(
            "the matrix to embed contains NaN or infinite values; fix the preprocessing."
        )
    mean = std = None
    if scale:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std == 0] = 1.0
        x = (x - mean) / std
    estimator = spec.estimator(n_comps, seed, x.shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_components.*", category=UserWarning)
        emb = estimator.fit_transform(x)
    pre = adata.uns.get(PREPROCESS_KEY)
    model = UpstreamModel(
        method=method,
        n_comps=int(n_comps),
        seed=int(seed),
        genes=adata.var_names.to_numpy(dtype=str).copy(),
        estimator=estimator,
        key=key,
        layer=layer,
        preprocessing=None if pre is None else copy.deepcopy(dict(pre)),
        scale_mean=mean,
        scale_std=std,
    )
    adata.obsm[key] = emb.astype(np.float32)
    settings = adata.uns.setdefault("fedsc_embedding", {})
    settings[key] = {
        "method": method,
        "n_comps": int(n_comps),
        "seed": int(seed),
        "scale": scale,
        "library": spec.library,
        "computed": CENTRAL,
    }
    return model
