"""Federated preprocessing: highly variable genes and the upstream PCA without pooling cells.

Pattern: a per-site step object (:class:`PreprocessingSite`, local work on one site's
AnnData) and drivers (:func:`federated_hvg`, :func:`federated_pca`) that only call the
sites' step methods and an :class:`smpc.Aggregator`. The drivers never look inside a step
result, they hand it to the aggregator, so a deployment can pass remote proxies whose
steps return references that its aggregator resolves. Site metadata (``name``,
``var_names``) is read directly: the gene panel is public schema, not data.

Both results equal the pooled computation: HVGs equal
``sc.pp.highly_variable_genes(pooled, flavor="seurat", n_top_genes=k)`` on the pooled
normalised cells, and the PCA equals scikit-learn's on the pooled cells (see
docs/algorithms.md, "Federated preprocessing").

Privacy. Normalisation, log1p and the projection run at the sites; cells never leave
them. Through the aggregator the coordinator learns only pooled statistics: the total
number of cells ``N``, per-gene pooled sums ``sum x`` and ``sum x^2`` (expm1 scale,
i.e. pooled means and variances of every gene), and for the PCA the pooled ``sum x`` and
``sum x x^T`` over the selected genes (the pooled mean and covariance), from which it
derives the HVG list, the mean and the components it publishes to the sites. It does not
learn any site's cell count, per-site means, variances or covariances, nor any cell;
with the CrypTen backend no party sees a site's contribution either (with the plaintext
backend the coordinator receives each site's moments; its ledger says so). Not covered:
pooled statistics of few sites can still say much about each (with two sites, a site
that knows its own moments learns the other's), and the published components and HVGs
reveal what they reveal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from fedsc.errors import FedscInputError
from fedsc.preprocessing import PREPROCESS_KEY, _check_counts

__all__ = [
    "PreprocessingSite",
    "SiteLike",
    "federated_hvg",
    "federated_pca",
]

#: Gene names: a list or a 1-D string array.
Genes = Sequence[str] | np.ndarray

#: Mean-expression bins of scanpy's ``flavor="seurat"`` (its ``n_bins`` default).
N_BINS = 20


class SiteLike(Protocol):
    """What the drivers use of a site: public metadata and step methods (opaque results)."""

    name: str
    var_names: np.ndarray

    def hvg_moments(self, genes: Genes | None = None, *, scale: float = 1.0) -> Any:
        """Per-gene ``n``, ``sum x``, ``sum x^2`` (or a reference to them)."""

    def pca_moments(self, genes: Genes) -> Any:
        """``n``, ``sum x``, ``sum x x^T`` over ``genes`` (or a reference to them)."""


class PreprocessingSite:
    """One site's cells and the local steps of federated preprocessing.

    Parameters
    ----------
    adata
        The site's raw counts (``X``, dense or sparse; or ``layers[layer]``); not modified.
    name
        How errors and logs name the site (e.g. the hospital or batch).
    layer
        Layer holding the raw counts instead of ``X``.
    """

    def __init__(self, adata: ad.AnnData, name: str, *, layer: str | None = None) -> None:
        if layer is not None and layer not in adata.layers:
            raise FedscInputError(
                f"site {name!r}: layer {layer!r} is not in adata.layers "
                f"(keys: {list(adata.layers)}); pass the layer holding raw counts or None."
            )
        source = adata.layers[layer] if layer is not None else adata.X
        counts = ad.AnnData(
            X=source.copy(),  # normalise works in place; the caller's matrix stays raw
            obs=pd.DataFrame(index=adata.obs_names.copy()),
            var=pd.DataFrame(index=adata.var_names.copy()),
            uns={k: adata.uns[k] for k in ("log1p", PREPROCESS_KEY) if k in adata.uns},
        )
        try:
            _check_counts(counts)
        except FedscInputError as err:
            raise FedscInputError(f"site {name!r}: {err}") from None
        if not adata.var_names.is_unique:
            raise FedscInputError(
                f"site {name!r}: var_names are not unique; call adata.var_names_make_unique()."
            )
        self.name = str(name)
        self.var_names = adata.var_names.to_numpy(dtype=str).copy()
        self._adata = counts
        self._target_sum: float | None = None

    @property
    def target_sum(self) -> float | None:
        """The ``target_sum`` of :meth:`normalise` (``None``: not normalised yet)."""
        return self._target_sum

    def normalise(self, target_sum: float = 1e4) -> None:
        """``normalize_total`` + ``log1p`` in float32, as :func:`fedsc.preprocessing.preprocess`.

        Per-cell operations: the result equals the rows of the pooled normalisation.
        """
        if self._target_sum is not None:
            raise FedscInputError(
                f"site {self.name!r} is already normalised (target_sum={self._target_sum}); "
                "make a new PreprocessingSite from the raw counts to normalise again."
            )
        if not target_sum > 0:
            raise FedscInputError(f"target_sum must be > 0, got {target_sum}.")
        a = self._adata
        if a.X.dtype != np.float32:
            a.X = a.X.astype(np.float32)
        sc.pp.normalize_total(a, target_sum=target_sum)
        sc.pp.log1p(a)
        self._target_sum = float(target_sum)

    def _columns(self, genes: Genes | None, step: str) -> Any:
        """The normalised matrix, its columns in the order of ``genes`` (all when ``None``)."""
        if self._target_sum is None:
            raise FedscInputError(
                f"site {self.name!r}: {step} needs normalised data; call normalise() first."
            )
        x = self._adata.X
        if genes is None:
            return x
        idx = self._adata.var_names.get_indexer(np.asarray(genes, dtype=str))
        if (idx < 0).any():
            missing = np.asarray(genes, dtype=str)[idx < 0]
            raise FedscInputError(
                f"site {self.name!r} lacks {missing.size} of the requested genes "
                f"(e.g. {missing[:5].tolist()}); give every site the same gene panel."
            )
        return x[:, idx]

    def hvg_moments(
        self, genes: Genes | None = None, *, scale: float = 1.0
    ) -> dict[str, np.ndarray]:
        """Per-gene sums that pooled ``flavor="seurat"`` HVG selection needs.

        On the expm1 scale (as scanpy): ``x = expm1(log data)`` in float32, squares in
        float32 (as scanpy's ``_get_mean_var``), sums in float64.

        Parameters
        ----------
        genes
            Gene order of the result (default: ``var_names``).
        scale
            Public divisor applied to both sums (keeps them inside a fixed-point ring).

        Returns
        -------
        ``{"n": [n_cells], "sum": sum x / scale, "sum_sq": sum x^2 / scale}`` (float64).
        """
        x = self._columns(genes, "hvg_moments")
        if sp.issparse(x):
            x = sp.csr_matrix(x)
            x.sum_duplicates()
            data = np.expm1(x.data)
            n_genes = x.shape[1]
            s1 = np.bincount(x.indices, weights=data.astype(np.float64), minlength=n_genes)
            s2 = np.bincount(x.indices, weights=(data * data).astype(np.float64), minlength=n_genes)
        else:
            dense = np.expm1(np.asarray(x))
            s1 = dense.sum(axis=0, dtype=np.float64)
            s2 = (dense * dense).sum(axis=0, dtype=np.float64)
        return {
            "n": np.array([float(x.shape[0])]),
            "sum": s1 / scale,
            "sum_sq": s2 / scale,
        }

    def _dense(self, genes: Genes, step: str) -> np.ndarray:
        x = self._columns(genes, step)
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)

    def pca_moments(self, genes: Genes) -> dict[str, np.ndarray]:
        """``{"n": [n_cells], "sum": sum x, "outer": sum x x^T}`` over ``genes`` (float64)."""
        x = self._dense(genes, "pca_moments")
        return {"n": np.array([float(x.shape[0])]), "sum": x.sum(axis=0), "outer": x.T @ x}

    def project(self, genes: Genes, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
        """The site's embedding ``(x - mean) @ components.T`` (float64, cells x comps)."""
        x = self._dense(genes, "project")
        components = np.asarray(components, dtype=np.float64)
        # grouped as sklearn's PCA.transform: x C^T - mean C^T
        return x @ components.T - np.asarray(mean, dtype=np.float64) @ components.T


def _check_panels(sites: Sequence[SiteLike], genes: Genes | None = None) -> np.ndarray:
    """The first site's gene order; every site must measure the same genes (or ``genes``)."""
    if len(sites) == 0:
        raise FedscInputError("no sites given; pass at least one site.")
    ref = np.asarray(sites[0].var_names, dtype=str)
    for site in sites:
        names = np.asarray(site.var_names, dtype=str)
        if genes is not None:
            missing = np.setdiff1d(np.asarray(genes, dtype=str), names)
            if missing.size:
                raise FedscInputError(
                    f"site {site.name!r} lacks {missing.size} of the requested genes "
                    f"(e.g. {missing[:5].tolist()}); choose genes every site measures."
                )
            continue
        if names.size != ref.size or not np.array_equal(np.sort(names), np.sort(ref)):
            missing = np.setdiff1d(ref, names)
            extra = np.setdiff1d(names, ref)
            raise FedscInputError(
                f"site {site.name!r} measures a different gene set than site "
                f"{sites[0].name!r} ({missing.size} missing, e.g. {missing[:5].tolist()}; "
                f"{extra.size} extra, e.g. {extra[:5].tolist()}); subset every site to the "
                "shared genes (adata[:, common_genes]) before federated preprocessing."
            )
    return ref


def _seurat_hvg(
    n: float, s1: np.ndarray, s2: np.ndarray, n_top_genes: int, n_bins: int = N_BINS
) -> np.ndarray:
    """Boolean HVG mask from pooled moments, mirroring scanpy's ``flavor="seurat"``.

    Written by hand because scanpy cannot take precomputed moments; every step follows
    scanpy 1.11 ``_highly_variable_genes_single_batch`` / ``_get_mean_var`` /
    ``_get_disp_stats`` / ``_subset_genes`` so the selection is the same, ties included.
    """
    mean = s1 / n
    var = s2 / n - mean**2  # _get_mean_var: E[x^2] - E[x]^2 ...
    if n != 1:
        var *= n / (n - 1)  # ... with the unbiased (R) convention
    with np.errstate(divide="ignore", invalid="ignore"):
        mean[mean == 0] = 1e-12
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    stats = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    # a bin holding one gene has no SD: scanpy sets that gene's normalised dispersion to 1
    single = stats["dev"].isnull()
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    per_gene = stats.loc[df["mean_bin"]]
    norm = (dispersion - per_gene["avg"].to_numpy()) / per_gene["dev"].to_numpy()
    # _nth_highest over non-NaN values, then every gene >= that value (ties all kept)
    valid = np.sort(norm[~np.isnan(norm)])[::-1]
    if valid.size == 0:
        raise FedscInputError("no gene has a finite normalised dispersion; check the data.")
    cut = valid[min(n_top_genes, valid.size) - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cut


def federated_hvg(
    sites: Sequence[SiteLike],
    aggregator: Any,
    n_top_genes: int,
    *,
    scale: float = 1.0,
) -> np.ndarray:
    """Highly variable genes (scanpy ``flavor="seurat"``) of the pooled normalised cells.

    Parameters
    ----------
    sites
        Normalised sites (:class:`PreprocessingSite` or proxies with the same steps).
    aggregator
        An :class:`smpc.Aggregator`; one ``sum`` call.
    n_top_genes
        Genes to select; ties at the cut-off are all kept, as in scanpy.
    scale
        Public divisor each site applies to its sums before aggregation and the driver
        multiplies back. With CrypTen each site's ``sum x^2`` must stay below the ring
        bound (~2.7e10 for 5 sites); the absolute error of the sums is then
        ``scale * K * 2^-25``.

    Returns
    -------
    The selected gene names, in the first site's gene order.
    """
    genes = _check_panels(sites)
    if not 1 <= n_top_genes <= genes.size:
        raise FedscInputError(
            f"n_top_genes={n_top_genes} must be between 1 and the number of genes "
            f"({genes.size}); lower n_top_genes."
        )
    if not (np.isfinite(scale) and scale > 0):
        raise FedscInputError(f"scale must be positive and finite, got {scale}.")
    pooled = aggregator.sum([site.hvg_moments(genes, scale=scale) for site in sites])
    n = float(np.asarray(pooled["n"]).reshape(-1)[0])
    s1 = np.asarray(pooled["sum"], dtype=np.float64) * scale
    s2 = np.asarray(pooled["sum_sq"], dtype=np.float64) * scale
    mask = _seurat_hvg(n, s1, s2, int(n_top_genes))
    return genes[mask]


def federated_pca(
    sites: Sequence[SiteLike],
    aggregator: Any,
    genes: Genes,
    n_comps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the pooled normalised cells over ``genes`` from aggregated moments.

    The pooled covariance ``(sum x x^T - N m m^T) / (N - 1)`` is eigendecomposed as
    scikit-learn's ``svd_solver="covariance_eigh"``, with its sign convention (the
    largest-magnitude loading of each component is positive).

    Parameters
    ----------
    sites
        Normalised sites (:class:`PreprocessingSite` or proxies with the same steps).
    aggregator
        An :class:`smpc.Aggregator`; one ``sum`` call.
    genes
        The genes to embed (e.g. :func:`federated_hvg`'s), in this order.
    n_comps
        Components; must be smaller than ``min(total cells, len(genes))``.

    Returns
    -------
    ``(mean, components, explained_variance)``: shapes ``(G,)``, ``(n_comps, G)``,
    ``(n_comps,)``; sites embed with ``site.project(genes, mean, components)``.
    """
    names = np.asarray(genes, dtype=str)
    if names.ndim != 1 or names.size == 0 or np.unique(names).size != names.size:
        raise FedscInputError("genes must be a non-empty list of distinct gene names.")
    if not 1 <= n_comps < names.size:
        raise FedscInputError(
            f"n_comps={n_comps} must be >= 1 and smaller than the number of genes "
            f"({names.size}); lower n_comps or select more genes."
        )
    _check_panels(sites, names)
    pooled = aggregator.sum([site.pca_moments(names) for site in sites])
    n = float(np.asarray(pooled["n"]).reshape(-1)[0])
    if not n_comps < n:
        raise FedscInputError(
            f"n_comps={n_comps} must be smaller than the total number of cells ({n:.0f}); "
            "lower n_comps."
        )
    mean = np.asarray(pooled["sum"], dtype=np.float64) / n
    cov = np.array(pooled["outer"], dtype=np.float64)
    cov -= n * mean[:, None] * mean[None, :]
    cov /= n - 1
    eigenvals, eigenvecs = np.linalg.eigh(cov)
    eigenvals = eigenvals[::-1]
    eigenvecs = eigenvecs[:, ::-1]
    eigenvals[eigenvals < 0.0] = 0.0
    components = np.ascontiguousarray(eigenvecs.T[:n_comps])
    rows = np.arange(n_comps)
    signs = np.sign(components[rows, np.argmax(np.abs(components), axis=1)])
    components *= signs[:, None]
    return mean, components, eigenvals[:n_comps].copy()
