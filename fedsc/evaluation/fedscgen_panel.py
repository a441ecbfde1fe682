"""The FedscGen evaluation panel (Bakhtiari et al. 2025; docs/algorithms.md#fedscgen-panel).

Everything runs on the top ``n_pcs`` principal components of the evaluated representation
(all of its centred dimensions when it has no more than ``n_pcs``; PCA is then a rotation,
which no metric here can see). One exact k-NN search serves all graph metrics: each cell's
``k`` nearest other cells (the FedscGen code's ``NearestNeighbors(k + 1)`` minus self) and,
for Leiden and graph connectivity, the same graph with the self edge, i.e. ``k + 1``
neighbours in scanpy's convention.

Where scib-metrics implements a metric with the same definition it is used:
ASW_C (``silhouette_label``), ASW_B (``silhouette_batch``), GC (``graph_connectivity``),
the kBET test (``kbet``), LISI (``lisi_knn``). NMI/ARI (20 Leiden resolutions), EBM, kNN
accuracy, ILF1 and the kBET neighbourhood sweep are written here (see each function).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import igraph
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

from fedsc.errors import FedscInputError
from fedsc.evaluation import _missing
from fedsc.evaluation._inputs import check_embedding, check_groups
from fedsc.evaluation._scib import neighbors_results, scib_metrics
from fedsc.evaluation._silhouette import silhouette_samples
from fedsc.evaluation.scib_panel import isolated_label_names, silhouette_batch
from fedsc.evaluation.sensitivity import append_deltas, perturb

if TYPE_CHECKING:
    from scib_metrics.nearest_neighbors import NeighborsResults

PANEL = "fedscgen"
METRICS: tuple[str, ...] = (
    "nmi",
    "ari",
    "ebm",
    "knn_acc",
    "asw_c",
    "asw_b",
    "gc",
    "ilf1",
    "kbet",
    "ilisi",
    "clisi",
)
#: Metrics that can jump under a tiny perturbation of the embedding, measured by
#: ``sensitivity=True``: nmi, ari and ilf1 are computed on Leiden clusterings; ebm,
#: knn_acc, gc, kbet, ilisi and clisi on hard k-NN sets (a neighbour at a near-tied
#: distance enters or leaves; kBET adds a per-cell accept/reject test). Left out:
#: asw_c and asw_b, silhouettes of the fixed labels/batches, i.e. ratios of mean
#: distances, continuous in the embedding (they move by O(1e-6)). ebm and kbet draw
#: from one rng in turn: keep both or neither, or kbet's draws would differ.
DISCONTINUOUS: tuple[str, ...] = (
    "nmi",
    "ari",
    "ebm",
    "knn_acc",
    "gc",
    "ilf1",
    "kbet",
    "ilisi",
    "clisi",
)
#: Leiden resolutions searched for NMI: 0.1, 0.2, ..., 2.0. ARI and ILF1 use 1.0.
RESOLUTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 21))
#: kBET neighbourhood sizes as fractions of the number of cells (FedscGen's kBET script).
KBET_FRACTIONS: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20, 0.25)


def top_pcs(X: np.ndarray, n_pcs: int = 20, seed: int = 0) -> np.ndarray:
    """Top ``n_pcs`` principal components of ``X`` (centred ``X`` if it has <= n_pcs dims)."""
    if X.shape[1] <= n_pcs or X.shape[0] <= n_pcs:
        return np.ascontiguousarray(X - X.mean(axis=0), dtype=np.float32)
    Z = PCA(n_components=n_pcs, random_state=seed).fit_transform(X)
    return np.ascontiguousarray(Z, dtype=np.float32)


def knn_without_self(Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of each cell's ``k`` nearest other cells (exact)."""
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(Z)
    dist, idx = nn.kneighbors()  # no query: sklearn leaves each point itself out
    return idx, dist.astype(np.float32)


def with_self(idx: np.ndarray, dist: np.ndarray) -> NeighborsResults:
    """Prepend the self edge (distance 0), the convention of scanpy and scib-metrics."""
    n = idx.shape[0]
    return neighbors_results(
        indices=np.hstack([np.arange(n)[:, None], idx]),
        distances=np.hstack([np.zeros((n, 1), dtype=dist.dtype), dist]),
    )


def leiden_clusterings(
    neigh: NeighborsResults, resolutions: tuple[float, ...] = RESOLUTIONS, seed: int = 0
) -> dict[float, np.ndarray]:
    """Leiden (modularity, igraph) on the UMAP connectivities, one clustering per resolution.

    What scanpy's ``tl.leiden(flavor="igraph", n_iterations=2)`` does on ``pp.neighbors``;
    written with igraph directly so the graph is built once for all resolutions. igraph's
    C implementation is ~20x faster than leidenalg here. igraph draws from a process-wide
    RNG: it is seeded with ``random.Random(seed)`` for these calls and handed back to
    Python's ``random`` module (igraph's default) afterwards.
    """
    conn = neigh.knn_graph_connectivities.tocsr()
    upper = sparse.triu(conn, k=1).tocoo()
    g = igraph.Graph(n=conn.shape[0], edges=list(zip(upper.row, upper.col, strict=True)))
    g.es["weight"] = upper.data
    out = {}
    try:
        for r in resolutions:
            igraph.set_random_number_generator(random.Random(seed))
            part = g.community_leiden(
                objective_function="modularity", weights="weight", resolution=r, n_iterations=2
            )
            out[r] = np.asarray(part.membership)
    finally:
        igraph.set_random_number_generator(random)
    return out


def entropy_batch_mixing(
    knn_idx: np.ndarray,
    batch_codes: np.ndarray,
    n_batches: int,
    *,
    n_cells: int = 100,
    n_draws: int = 50,
    rng: np.random.Generator,
) -> float:
    """EBM: batch entropy among each cell's neighbours / log(n_batches), over random cells.

    Mean over ``n_cells`` cells drawn without replacement, averaged over ``n_draws`` draws.
    Hand-written: scib-metrics has no EBM. 1 = neighbours spread evenly over batches.
    """
    counts = np.zeros((knn_idx.shape[0], n_batches))
    np.add.at(counts, (np.repeat(np.arange(knn_idx.shape[0]), knn_idx.shape[1]),
                       batch_codes[knn_idx].ravel()), 1.0)  # fmt: skip
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1) / np.log(n_batches)
    m = min(n_cells, knn_idx.shape[0])
    return float(np.mean([h[rng.choice(h.size, m, replace=False)].mean() for _ in range(n_draws)]))


def knn_accuracy(knn_idx: np.ndarray, labels: np.ndarray) -> float:
    """Share of a cell's neighbours with its label; mean per label, then over labels.

    Hand-written (scib-metrics has no kNN purity metric); FedscGen's ``knn_accuracy``.
    """
    per_cell = (labels[knn_idx] == labels[:, None]).mean(axis=1)
    return float(pd.Series(per_cell).groupby(labels).mean().mean())


def isolated_label_f1(clusters: np.ndarray, labels: np.ndarray, batch: np.ndarray) -> float:
    """ILF1: for each isolated label, F1 of the cluster that best matches it; mean over labels.

    Isolated labels are those in the fewest batches. F1 of cluster c for label l treats
    "in c" as the prediction of "is l". Hand-written: scib-metrics' ``isolated_labels`` is
    the silhouette variant; FedscGen's code matched clusters (fixed here to use clusters,
    not the batch column).
    """
    scores = []
    for lab in isolated_label_names(labels, batch):
        is_lab = labels == lab
        tab = pd.crosstab(clusters, is_lab)
        tp = tab[True].to_numpy(dtype=float) if True in tab else np.zeros(len(tab))
        size = tab.sum(axis=1).to_numpy(dtype=float)
        f1 = 2 * tp / (size + is_lab.sum())
        scores.append(f1.max())
    return float(np.mean(scores))


def kbet_sweep(
    Z: np.ndarray,
    batch: np.ndarray,
    *,
    fractions: tuple[float, ...] = KBET_FRACTIONS,
    max_k: int = 100,
    n_draws: int = 5,
    rng: np.random.Generator,
) -> float:
    """kBET acceptance rate at k = each fraction of n cells; median over the fractions.

    FedscGen ran R kBET with k0 = 5..25 % of n, which is infeasible for large n. The
    neighbourhood is kept at the same fraction of the data while k <= ``max_k``: with more
    than ``max_k / max(fractions)`` cells (400 by default) kBET runs on that many cells drawn
    at random, ``n_draws`` times, and the acceptance rates are averaged per fraction.
    The test per cell is scib-metrics' ``kbet`` (chi-square, alpha 0.05).
    """
    n = Z.shape[0]
    m = min(n, int(max_k / max(fractions)))
    draws = 1 if m == n else n_draws
    rates = np.zeros((draws, len(fractions)))
    for d in range(draws):
        sub = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
        ks = [max(1, min(m - 1, int(f * m))) for f in fractions]
        idx, dist = knn_without_self(Z[sub], max(ks))
        for j, k in enumerate(ks):
            res = neighbors_results(indices=idx[:, :k], distances=dist[:, :k])
            rates[d, j] = scib_metrics.kbet(res, batch[sub])[0]
    return float(np.median(rates.mean(axis=0)))


def fedscgen_panel(
    X: np.ndarray,
    batch: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    *,
    n_pcs: int = 20,
    k: int = 15,
    seed: int = 0,
    lisi_perplexity: int = 30,
    kbet_max_k: int = 100,
    sensitivity: bool = False,
) -> pd.DataFrame:
    """Compute the FedscGen panel on one embedding.

    Parameters
    ----------
    X
        Representation to evaluate, (n_cells, n_features); reduced to its top ``n_pcs`` PCs.
    batch, labels
        Batch and cell-type label per cell.
    n_pcs
        Principal components kept.
    k
        Neighbours per cell (self excluded) for EBM, kNN accuracy, Leiden, GC.
    seed
        Seeds PCA, Leiden, the EBM draws and the kBET subsamples; same seed, same values.
    lisi_perplexity
        LISI perplexity; 30 (R ``lisi`` default, 3 x 30 neighbours) as FedscGen ran it.
        ``ilisi``/``clisi`` are medians of the per-cell LISI, unscaled: iLISI lies in
        [1, n_batches] (higher = better mixed), cLISI in [1, n_labels] (lower = purer).
    kbet_max_k
        Largest kBET neighbourhood; see :func:`kbet_sweep`.
    sensitivity
        Also recompute the :data:`DISCONTINUOUS` metrics on ``X`` plus 1e-6 relative noise
        (:func:`fedsc.evaluation.sensitivity.perturb`, from ``seed``; PCA included) and add
        one ``<metric>_perturbation_delta`` row each (``|perturbed - value|``).

    Returns
    -------
    DataFrame with columns ``panel`` (``"fedscgen"``), ``metric``, ``value``; metrics are
    nmi, ari, ebm, knn_acc, asw_c, asw_b, gc, ilf1, kbet, ilisi, clisi, then the
    sensitivity rows if asked.
    """
    X = check_embedding(X)
    n = X.shape[0]
    batch = check_groups(batch, n, "batch")
    labels = check_groups(labels, n, "labels", min_groups=2)
    if k < 1 or k >= n:
        raise FedscInputError(f"k={k} must be between 1 and n_cells - 1 = {n - 1}.")
    options = {"k": k, "seed": seed, "lisi_perplexity": lisi_perplexity, "kbet_max_k": kbet_max_k}
    Z = top_pcs(X, n_pcs, seed)
    v, why = _values(Z, batch, labels, METRICS, **options)
    order = list(METRICS)
    if sensitivity:  # the discontinuous metrics again, on X + 1e-6 std(X) noise (same seed)
        Z_perturbed = top_pcs(perturb(X, seed), n_pcs, seed)
        v_perturbed, _ = _values(Z_perturbed, batch, labels, DISCONTINUOUS, **options)
        append_deltas(v, order, v_perturbed, DISCONTINUOUS)
    return _missing.frame(PANEL, v, order, why)


def _values(
    Z: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    names: tuple[str, ...],
    *,
    k: int,
    seed: int,
    lisi_perplexity: int,
    kbet_max_k: int,
) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics ``names`` (a subset of :data:`METRICS`) on the top PCs ``Z``: values, reasons.

    The random draws (EBM, then kBET) start from ``seed`` on every call, so a call for
    :data:`DISCONTINUOUS` on a perturbed ``Z`` draws the same cells as the full panel.
    """
    n = Z.shape[0]
    rng = np.random.default_rng(seed)
    batch_codes, batch_names = pd.factorize(batch, sort=True)
    n_batches = len(batch_names)
    k_lisi = min(3 * lisi_perplexity, n - 1)
    idx_all, dist_all = knn_without_self(Z, max(k, k_lisi))
    idx, dist = idx_all[:, :k], dist_all[:, :k]
    graph = with_self(idx, dist)

    v: dict[str, float] = {}
    why: dict[str, str] = {}
    clustered = any(m in names for m in ("nmi", "ari", "ilf1"))
    clusterings = leiden_clusterings(graph, RESOLUTIONS, seed) if clustered else {}
    lisi_graph = with_self(idx_all[:, :k_lisi], dist_all[:, :k_lisi])
    computations = {
        "nmi": lambda: max(
            normalized_mutual_info_score(labels, c, average_method="arithmetic")
            for c in clusterings.values()
        ),
        "ari": lambda: adjusted_rand_score(labels, clusterings[1.0]),
        "ebm": lambda: entropy_batch_mixing(idx, batch_codes, n_batches, rng=rng),
        "knn_acc": lambda: knn_accuracy(idx, labels),
        # scib_metrics.silhouette_label's value, from the faster silhouette (_silhouette.py)
        "asw_c": lambda: (np.mean(silhouette_samples(Z, labels)) + 1.0) / 2.0,
        "asw_b": lambda: silhouette_batch(Z, labels, batch),
        "gc": lambda: scib_metrics.graph_connectivity(graph, labels),
        "ilf1": lambda: isolated_label_f1(clusterings[1.0], labels, batch),
        "kbet": lambda: kbet_sweep(Z, batch, max_k=kbet_max_k, rng=rng),
        "ilisi": lambda: np.nanmedian(
            scib_metrics.lisi_knn(lisi_graph, batch, perplexity=lisi_perplexity)
        ),
        "clisi": lambda: np.nanmedian(
            scib_metrics.lisi_knn(lisi_graph, labels, perplexity=lisi_perplexity)
        ),
    }
    for name in METRICS:  # in this order: ebm and kbet draw from rng in turn
        if name in names:
            _missing.compute(v, why, name, computations[name])
    return v, why
