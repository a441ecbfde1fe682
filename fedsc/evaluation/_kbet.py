"""kBET per cell-type label (scIB definition) with exact neighbours in diffusion space.

Same algorithm as ``scib_metrics.kbet_per_label`` (0.5.x): per label, the UMAP
connectivities restricted to that label, a 100-component diffusion map of them, the
``k0`` nearest neighbours in the diffusion map, scib-metrics' ``kbet`` test; labels with
< 10 cells or a single batch are skipped; disconnected subgraphs are handled the same way.

Written here (not called) for one reason: scib-metrics finds the diffusion neighbours with
pynndescent, whose core (``nn_descent``) numba cannot cache, so every new process paid
~10-25 s compiling it. The neighbours are found exactly with scikit-learn instead, which is
what pynndescent approximates, on at most a few thousand cells x 100 components. The ARPACK
start vector is seeded, so the result does not depend on earlier ARPACK calls.

The diffusion-map transition matrix (``transition_matrix``) is written here too, rather than
imported from scib-metrics' private ``scib_metrics.utils._diffusion_nn._compute_transitions``:
a private function can change or vanish in any release of the open ``scib-metrics`` pin.
It performs the same operations in the same order, so the results are bit-identical (a test
compares the two while the private function is importable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from fedsc.evaluation._scib import neighbors_results, scib_metrics

if TYPE_CHECKING:
    from scib_metrics.nearest_neighbors import NeighborsResults

_EPS = 1e-8


def transition_matrix(conn: sparse.spmatrix) -> sparse.spmatrix:
    """Symmetric diffusion transition matrix of a connectivity graph (Coifman et al. 2005).

    Density normalisation ``K = Q^-1 C Q^-1`` with ``q`` the column sums of ``C`` (the
    degrees of the graph), then ``T = Z^-1 K Z^-1`` with ``z = sqrt`` of the column sums of
    ``K``: ``T_ij = K_ij / (z_i z_j)``. Same operations, in the same order, as scanpy's
    diffusion map and scib-metrics' private ``_compute_transitions`` (sparse input).
    """
    n = conn.shape[0]
    q = np.asarray(conn.sum(axis=0))
    q_inv = sparse.spdiags(1.0 / q, 0, n, n)
    kernel = q_inv @ conn @ q_inv
    z = np.sqrt(np.asarray(kernel.sum(axis=0)))
    z_inv = sparse.spdiags(1.0 / z, 0, n, n)
    return z_inv @ kernel @ z_inv


def diffusion_nn_exact(conn: sparse.spmatrix, k: int, n_comps: int = 100) -> NeighborsResults:
    """``scib_metrics.utils.diffusion_nn`` with exact neighbours and a seeded ARPACK start."""
    transitions = transition_matrix(conn)
    n_comps = min(conn.shape[0] - 1, n_comps)
    v0 = np.random.default_rng(0).uniform(-1, 1, conn.shape[0])
    # ARPACK makes ~10^3 small BLAS-2 calls per label; on more than one BLAS thread each
    # paid a hand-off between threads: kBET at 3·10^4 cells took 73 CPU-s on 2 OpenBLAS
    # threads, 6.5 on one. One thread also makes the eigenvectors independent of the
    # thread count.
    with threadpool_limits(limits=1, user_api="blas"):
        evals, evecs = eigsh(transitions.astype(np.float64), k=n_comps, which="LM", v0=v0)
    evals, evecs = evals[::-1].astype(np.float32), evecs[:, ::-1].astype(np.float32)
    evals = evals + _EPS
    scaled = np.array([e if e == 1 else e / (1 - e) for e in evals], dtype=np.float32)
    emb = evecs * scaled
    dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(emb).kneighbors(emb)
    return neighbors_results(indices=idx, distances=dist.astype(np.float32))


def _kbet_on(conn_sub: sparse.spmatrix, batches: np.ndarray, k0: int, n_comps: int, alpha: float):
    try:
        nn = diffusion_nn_exact(conn_sub, k=k0, n_comps=min(n_comps, conn_sub.shape[0] - 1))
        return scib_metrics.kbet(nn, batches=batches, alpha=alpha)[0]
    except ValueError:  # diffusion map failed: 100 % rejection, as in scib-metrics
        return 0.0


def kbet_per_label(
    neigh: NeighborsResults,
    batches: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.05,
    diffusion_n_comps: int = 100,
) -> float:
    """kBET acceptance rate per label, averaged over labels (NaN labels skipped)."""
    batches = np.asarray(pd.Categorical(batches).codes)
    labels = np.asarray(labels)
    conn = sparse.csr_matrix(neigh.knn_graph_connectivities)
    size_max = 2**31 - 1
    scores = []
    for lab in np.unique(labels):
        mask = labels == lab
        sub = conn[mask][:, mask]
        sub.sort_indices()
        n_obs, b_sub = sub.shape[0], batches[mask]
        if n_obs < 10 or len(np.unique(b_sub)) == 1:
            scores.append(np.nan)
            continue
        quarter_mean = int(np.floor(np.mean(pd.Series(b_sub).value_counts()) / 4))
        k0 = min(70, max(10, quarter_mean))
        if k0 * n_obs >= size_max:
            k0 = int(size_max // n_obs)
        n_comp, comp = connected_components(sub, connection="strong")
        if n_comp == 1:
            scores.append(_kbet_on(sub, b_sub, k0, diffusion_n_comps, alpha))
            continue
        comp_size = pd.Series(comp).value_counts()
        keep = np.flatnonzero(np.isin(comp, comp_size[comp_size >= 3 * k0].index))
        if len(keep) / len(comp) >= 0.75:
            sub2 = sub[keep][:, keep]
            sub2.sort_indices()
            scores.append(_kbet_on(sub2, b_sub[keep], k0, diffusion_n_comps, alpha))
        else:  # too many small components: 100 % rejection, as in scib-metrics
            scores.append(0.0)
    return float(np.nanmean(scores)) if not np.isnan(scores).all() else float("nan")
