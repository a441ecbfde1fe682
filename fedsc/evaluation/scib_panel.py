"""The scIB panel used by the scBatchProx paper, computed through scib-metrics.

Metrics and aggregation are those of ``scib_metrics.benchmark.Benchmarker`` (0.5.x) with
batch silhouette selected instead of BRAS (docs/algorithms.md#scib-panel):

- bio conservation: KMeans NMI, KMeans ARI, label silhouette, isolated labels, cLISI;
- batch correction: batch silhouette, iLISI, kBET per label, graph connectivity,
  PCR comparison;
- ``bio_conservation`` / ``batch_correction`` are the plain means of their metrics and
  ``total = 0.6 * bio + 0.4 * batch``.

Differences from the Benchmarker, none of which change a metric's definition:

- one exact k-NN search (scikit-learn, brute force) per embedding instead of pynndescent's
  approximate one; the 15-, 50- and 90-neighbour graphs the metrics use are its prefixes.
  On the embeddings evaluated here (tens of dimensions, up to ~10^5 cells) the exact search
  is faster and pynndescent's recall is ~1, so values agree (tested within 0.02);
- kBET per label finds its diffusion-space neighbours exactly (``_kbet.py`` says why:
  pynndescent's core cannot be cached by numba and cost every process 10-25 s);
- the label silhouette is computed once and shared by ``silhouette_label`` and
  ``isolated_labels`` (scib-metrics computes the same ``silhouette_samples`` twice);
- the silhouettes come from ``_silhouette.py`` (chunked float64 BLAS distances, same
  values within float64 rounding; scib-metrics' JAX kernels grew to ~4 minutes of CPU
  at 10^5 cells);
- without ``X_pre`` the PCR comparison row is omitted (it needs a pre-integration
  embedding) and ``batch_correction`` averages the four other batch metrics.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

from fedsc.errors import FedscInputError
from fedsc.evaluation import _missing
from fedsc.evaluation._inputs import check_embedding, check_groups
from fedsc.evaluation._kbet import kbet_per_label
from fedsc.evaluation._scib import neighbors_results, scib_metrics
from fedsc.evaluation._silhouette import silhouette_batch, silhouette_samples
from fedsc.evaluation.sensitivity import append_deltas, perturb

if TYPE_CHECKING:
    from scib_metrics.nearest_neighbors import NeighborsResults

PANEL = "scib"

#: scib-metrics ``Benchmarker`` result names -> this panel's metric names (with
#: ``BatchCorrection(bras=...)`` set to the plain batch silhouette, its "bras" row is ours
#: ``silhouette_batch``). For comparing the two side by side.
BENCHMARKER_NAMES: dict[str, str] = {
    "isolated_labels": "isolated_labels",
    "nmi_ari_cluster_labels_kmeans_nmi": "kmeans_nmi",
    "nmi_ari_cluster_labels_kmeans_ari": "kmeans_ari",
    "silhouette_label": "silhouette_label",
    "clisi_knn": "clisi_knn",
    "bras": "silhouette_batch",
    "ilisi_knn": "ilisi_knn",
    "kbet_per_label": "kbet_per_label",
    "graph_connectivity": "graph_connectivity",
    "pcr_comparison": "pcr_comparison",
    "Bio conservation": "bio_conservation",
    "Batch correction": "batch_correction",
    "Total": "total",
}

#: Neighbourhood sizes the Benchmarker uses: graph connectivity, kBET, LISI.
_K_GC, _K_KBET = 15, 50

BIO_METRICS: tuple[str, ...] = (
    "kmeans_nmi",
    "kmeans_ari",
    "silhouette_label",
    "isolated_labels",
    "clisi_knn",
)
BATCH_METRICS: tuple[str, ...] = (
    "silhouette_batch",
    "ilisi_knn",
    "kbet_per_label",
    "graph_connectivity",
    "pcr_comparison",
)

#: Metrics that can jump under a tiny perturbation of the embedding, measured by
#: ``sensitivity=True`` (with the aggregates, which inherit the jumps): kmeans_nmi and
#: kmeans_ari are computed on a k-means clustering; clisi_knn, ilisi_knn, kbet_per_label
#: (plus a per-cell accept/reject test) and graph_connectivity on hard k-NN sets. Left
#: out: silhouette_label, isolated_labels (scIB's silhouette variant) and silhouette_batch
#: are silhouettes of fixed labels/batches, i.e. ratios of mean distances, continuous in
#: the embedding; pcr_comparison is a variance-weighted regression on principal
#: components, continuous too (barring tied eigenvalues at its component cutoff).
DISCONTINUOUS: tuple[str, ...] = (
    "kmeans_nmi",
    "kmeans_ari",
    "clisi_knn",
    "ilisi_knn",
    "kbet_per_label",
    "graph_connectivity",
)

#: Above this many cells the exact search gives way to pynndescent (as in the Benchmarker).
#: Measured at 10^5 cells x 40 dims on 2 threads (two runs each): exact 21-40 s wall /
#: 37-38 CPU-s, pynndescent 46-49 / 45-47 (numba compilation included; recall of the 90
#: neighbours 0.99999); the exact search grows as n^2, so it stops being the cheaper one
#: near 1.2-1.7·10^5 cells.
EXACT_KNN_MAX_CELLS = 120_000


def knn(
    X: np.ndarray, n_neighbors: int, *, method: str = "auto", seed: int = 0
) -> NeighborsResults:
    """k nearest neighbours of every cell, self included, as scib-metrics expects.

    Parameters
    ----------
    X
        (n_cells, n_dims) float array.
    n_neighbors
        Neighbours per cell including the cell itself; capped at ``n_cells``.
    method
        ``"exact"`` (scikit-learn brute force), ``"pynndescent"`` (the Benchmarker's
        default) or ``"auto"`` (exact up to ``EXACT_KNN_MAX_CELLS`` cells).
    seed
        Random state for pynndescent.
    """
    k = min(int(n_neighbors), X.shape[0])
    if method == "auto":
        method = "exact" if X.shape[0] <= EXACT_KNN_MAX_CELLS else "pynndescent"
    if method == "exact":
        idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(X)[1]
        return _exact_distances(X, idx)
    if method == "pynndescent":
        return scib_metrics.nearest_neighbors.pynndescent(X, n_neighbors=k, random_state=seed)
    raise FedscInputError(f"knn method {method!r} unknown; use 'auto', 'exact' or 'pynndescent'.")


def _exact_distances(X: np.ndarray, idx: np.ndarray, chunk: int = 2048) -> NeighborsResults:
    """Neighbour distances recomputed directly from coordinate differences, then sorted.

    scikit-learn's brute search uses the ||x||^2 - 2 x.y + ||y||^2 expansion in blocks
    whose rounding depends on the BLAS/OpenMP thread layout, so the same embedding could
    give distances differing in the last bits from one call to the next; kBET (through
    the UMAP connectivities and a diffusion map) turned those into score changes of
    ~0.003. Differences computed per pair in float64 are the same on every call.
    """
    x = np.asarray(X, dtype=np.float64)
    dist = np.empty(idx.shape, dtype=np.float64)
    for start in range(0, len(x), chunk):
        block = idx[start : start + chunk]
        diff = x[block] - x[start : start + chunk, None, :]
        dist[start : start + chunk] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    order = np.argsort(dist, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    return neighbors_results(indices=idx, distances=dist.astype(np.float32))


def isolated_label_names(labels: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Labels present in the fewest batches (scib's default isolated-label rule)."""
    n_batches = pd.DataFrame({"l": labels, "b": batch}).groupby("l", sort=True)["b"].nunique()
    return n_batches.index[n_batches == n_batches.min()].to_numpy()


AGGREGATES: tuple[str, ...] = ("bio_conservation", "batch_correction", "total")


def _aggregate(values: dict[str, float], reasons: dict[str, str] | None = None) -> dict[str, float]:
    """The three aggregates; one with a missing (NaN) component is missing, with a reason."""
    reasons = {} if reasons is None else reasons
    v = dict(values)
    bio = list(BIO_METRICS)
    batch = [m for m in BATCH_METRICS if m in values]
    _missing.aggregate(v, reasons, "bio_conservation", bio, lambda: np.mean([v[m] for m in bio]))
    _missing.aggregate(
        v, reasons, "batch_correction", batch, lambda: np.mean([v[m] for m in batch])
    )
    _missing.aggregate(
        v,
        reasons,
        "total",
        ["bio_conservation", "batch_correction"],
        lambda: 0.6 * v["bio_conservation"] + 0.4 * v["batch_correction"],
    )
    return {k: float(v[k]) for k in AGGREGATES}


def scib_panel(
    X: np.ndarray,
    batch: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    *,
    X_pre: np.ndarray | None = None,
    n_neighbors: int = 90,
    seed: int = 0,
    knn_method: str = "auto",
    sensitivity: bool = False,
) -> pd.DataFrame:
    """Compute the scIB panel (scib-metrics) on one embedding.

    Parameters
    ----------
    X
        Embedding to evaluate, (n_cells, n_dims).
    batch, labels
        Batch and cell-type label per cell.
    X_pre
        Pre-integration embedding of the same cells for the PCR comparison; without it the
        ``pcr_comparison`` row is omitted and not part of ``batch_correction``.
    n_neighbors
        Largest neighbourhood (LISI); graph connectivity and kBET use its first 15 and 50.
    seed
        Seed of the k-means initialisation (0 reproduces the Benchmarker exactly).
    knn_method
        See :func:`knn`.
    sensitivity
        Also recompute the :data:`DISCONTINUOUS` metrics on ``X`` plus 1e-6 relative noise
        (:func:`fedsc.evaluation.sensitivity.perturb`, from ``seed``) and add one
        ``<metric>_perturbation_delta`` row each, and one per aggregate.

    Returns
    -------
    DataFrame with columns ``panel`` (``"scib"``), ``metric``, ``value``: the ten metrics
    (nine without ``X_pre``) then ``bio_conservation``, ``batch_correction``, ``total``.
    A metric that cannot be computed has value NaN and its reason in
    ``attrs["missing_reasons"]``; an aggregate with a missing component is missing too.
    The sensitivity rows, if asked, come last.
    """
    X = check_embedding(X)
    n = X.shape[0]
    batch = check_groups(batch, n, "batch")
    labels = check_groups(labels, n, "labels")
    if X_pre is not None:
        X_pre = check_embedding(X_pre, "X_pre")
        if X_pre.shape[0] != n:
            raise FedscInputError(
                f"X_pre has {X_pre.shape[0]} cells but X has {n}; pass the same cells in order."
            )
    if n_neighbors < _K_KBET:
        raise FedscInputError(f"n_neighbors={n_neighbors} must be >= {_K_KBET} (kBET uses 50).")

    v, why = _discontinuous_values(X, batch, labels, n_neighbors, seed, knn_method)
    _continuous_values(v, why, X, X_pre, batch, labels)
    order = [m for m in BIO_METRICS + BATCH_METRICS if m in v]
    v.update(_aggregate(v, why))
    order += list(AGGREGATES)
    if sensitivity:  # the discontinuous metrics again, on X + 1e-6 std(X) noise (same seed)
        perturbed, _ = _discontinuous_values(
            perturb(X, seed), batch, labels, n_neighbors, seed, knn_method
        )
        # the continuous metrics keep their values (they move by O(1e-6)); the aggregates
        # are recomputed from them and the perturbed discontinuous ones
        perturbed = {**{m: v[m] for m in order if m not in AGGREGATES}, **perturbed}
        perturbed.update(_aggregate(perturbed))
        append_deltas(v, order, perturbed, [*DISCONTINUOUS, *AGGREGATES])
    return _missing.frame(PANEL, v, order, why)


def _discontinuous_values(
    X: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    n_neighbors: int,
    seed: int,
    knn_method: str,
) -> tuple[dict[str, float], dict[str, str]]:
    """The :data:`DISCONTINUOUS` metrics (k-means and k-NN based): values and reasons."""
    neigh = knn(X, n_neighbors, method=knn_method, seed=seed)
    neigh_gc = neigh.subset_neighbors(min(_K_GC, neigh.n_neighbors))
    neigh_kbet = neigh.subset_neighbors(min(_K_KBET, neigh.n_neighbors))

    v: dict[str, float] = {}
    why: dict[str, str] = {}
    # Bio conservation.
    n_types = len(np.unique(labels))
    pred = scib_metrics.utils.KMeans(n_types, seed=seed).fit(X).labels_
    _missing.compute(
        v,
        why,
        "kmeans_nmi",
        lambda: normalized_mutual_info_score(labels, pred, average_method="arithmetic"),
    )
    _missing.compute(v, why, "kmeans_ari", lambda: adjusted_rand_score(labels, pred))
    _missing.compute(v, why, "clisi_knn", lambda: scib_metrics.clisi_knn(neigh, labels))
    # Batch correction.
    _missing.compute(v, why, "ilisi_knn", lambda: scib_metrics.ilisi_knn(neigh, batch))
    _missing.compute(v, why, "kbet_per_label", lambda: kbet_per_label(neigh_kbet, batch, labels))
    _missing.compute(
        v, why, "graph_connectivity", lambda: scib_metrics.graph_connectivity(neigh_gc, labels)
    )
    return v, why


def _continuous_values(
    v: dict[str, float],
    why: dict[str, str],
    X: np.ndarray,
    X_pre: np.ndarray | None,
    batch: np.ndarray,
    labels: np.ndarray,
) -> None:
    """The silhouettes and the PCR comparison, into ``v`` and ``why``."""
    # One silhouette for both: scib_metrics.silhouette_label and .isolated_labels each call
    # scib_metrics.utils.silhouette_samples(X, labels) and rescale it to (s + 1) / 2.
    sil = (silhouette_samples(X, labels) + 1.0) / 2.0
    _missing.compute(v, why, "silhouette_label", lambda: np.mean(sil))
    _missing.compute(
        v,
        why,
        "isolated_labels",
        lambda: np.mean([sil[labels == lab].mean() for lab in isolated_label_names(labels, batch)]),
    )
    _missing.compute(v, why, "silhouette_batch", lambda: silhouette_batch(X, labels, batch))
    if np.isnan(v["silhouette_batch"]) and "silhouette_batch" in why:
        why["silhouette_batch"] = (
            "no cell type spans two batches with fewer batches than cells, so the batch "
            "silhouette is undefined"
        )
    if X_pre is not None:
        with warnings.catch_warnings():
            # scib-metrics warns each time it clips a negative score to 0 (as documented);
            # the clipped value is what the scIB convention reports.
            warnings.filterwarnings("ignore", message="PCR comparison score is negative")
            _missing.compute(
                v,
                why,
                "pcr_comparison",
                lambda: scib_metrics.pcr_comparison(X_pre, X, batch, categorical=True),
            )
