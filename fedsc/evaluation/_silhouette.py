"""Silhouettes with scib-metrics' definitions, from tiled float64 BLAS distances.

Same values as ``scib_metrics.utils.silhouette_samples`` (Euclidean distance, nearest other
cluster) and ``scib_metrics.silhouette_batch`` (rescaled, per label over batches), within
float64 rounding (tested against scib-metrics run in float64).

Written here (not called) for speed: scib-metrics computes each chunk of the n x n
distances from per-pair differences in JAX (float32) and sums them per cluster with a
vmapped ``bincount`` (a scatter), which JAX runs slowly on CPU: the label and batch
silhouettes took 22 s of CPU at 3·10^4 cells x 40 dimensions and grow as n^2 (~4 minutes at
10^5). scikit-learn's ``silhouette_samples`` (chunked, float64) took 15 s for the label
silhouette alone: it sums each row per cluster with a Python-level ``bincount`` loop and
runs its elementwise passes on one thread. Here each cache-sized tile of the upper
triangle is one torch GEMM giving squared distances (``|x|^2 + |y|^2 - 2 x.y`` from
augmented matrices), a clamp and square root, and GEMMs with the one-hot cluster matrix
adding to the per-cluster sums of its rows and columns; torch runs all of them on the
configured threads. The data are centred first (distances do not change; the expansion's
cancellation does), and pairs closer than 1e-3 of the largest norm, where the expansion
loses relative precision (a duplicated cell would be ~1e-8 apart), are recomputed from
their differences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

#: Rows (and columns) of one tile of the distance matrix: 512 x 512 float64 is 2 MiB, so
#: the passes over a tile (clamp, square root, sums) run in cache.
TILE = 512

#: Pairs with squared distance below this fraction of the largest squared norm (after
#: centring) are recomputed from their coordinate differences.
_RECOMPUTE_BELOW = 1e-6


def _cluster_distance_sums(x: torch.Tensor, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """(n_cells, n_codes): each cell's summed distance to the cells of each code.

    Tiles on and above the diagonal only: a tile's distances add to its rows' sums and,
    transposed, to its columns' sums (the distance matrix is symmetric).
    """
    import torch  # start-up time: building a RunConfig imports the panels, not torch

    n = x.shape[0]
    sq = (x * x).sum(dim=1)
    ones = torch.ones(n, 1, dtype=x.dtype)
    left = torch.cat([x, sq[:, None], ones], dim=1)  # left_i . right_j = |x_i - x_j|^2
    right = torch.cat([-2.0 * x, ones, sq[:, None]], dim=1)
    onehot = torch.zeros(n, n_codes, dtype=x.dtype)
    onehot[torch.arange(n), torch.from_numpy(codes.astype(np.int64))] = 1.0
    threshold = _RECOMPUTE_BELOW * float(sq.max())
    sums = torch.zeros(n, n_codes, dtype=x.dtype)
    for i in range(0, n, TILE):
        i2 = min(i + TILE, n)
        for j in range(i, n, TILE):
            j2 = min(j + TILE, n)
            d = left[i:i2] @ right[j:j2].T
            rows, cols = torch.nonzero(d <= threshold, as_tuple=True)
            d.clamp_min_(0.0).sqrt_()
            if len(rows):  # self-pairs are among them: exactly 0
                diff = x[rows + i] - x[cols + j]
                d[rows, cols] = (diff * diff).sum(dim=1).sqrt()
            sums[i:i2].addmm_(d, onehot[j:j2])
            if j > i:
                sums[j:j2].addmm_(d.T, onehot[i:i2])
    return sums.numpy()


def silhouette_samples(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Silhouette of every cell for the clusters ``labels`` (Euclidean distance).

    ``a`` = mean distance to the other cells of its cluster, ``b`` = smallest mean distance
    to the cells of another cluster, ``s = (b - a) / max(a, b)``; NaN (a singleton cluster,
    or a single cluster) becomes 0, as in ``scib_metrics.utils.silhouette_samples``.
    """
    codes = np.asarray(pd.Categorical(labels).codes)
    freqs = np.bincount(codes)
    import torch  # start-up time (see _cluster_distance_sums)

    x = torch.from_numpy(np.asarray(X, dtype=np.float64))
    x = x - x.mean(dim=0)
    sums = _cluster_distance_sums(x, codes, len(freqs))
    cells = np.arange(len(codes))
    with np.errstate(divide="ignore", invalid="ignore"):
        intra = sums[cells, codes] / (freqs[codes] - 1)
        mean = sums / freqs
        mean[cells, codes] = np.inf
        inter = mean.min(axis=1)
        sil = (inter - intra) / np.maximum(intra, inter)
    return np.nan_to_num(sil)


def silhouette_batch(X: np.ndarray, labels: np.ndarray, batch: np.ndarray) -> float:
    """scib-metrics' batch silhouette: per label, mean of ``1 - |s|`` over batches.

    ``s`` is the silhouette of the label's cells for their batches; labels in one batch,
    or with as many batches as cells, are skipped; the result is the mean over the other
    labels, NaN when there are none.
    """
    labels, batch = np.asarray(labels), np.asarray(batch)
    per_label = []
    for label in np.unique(labels):
        mask = labels == label
        n_batches = len(np.unique(batch[mask]))
        if n_batches == 1 or n_batches == mask.sum():
            continue
        per_label.append(np.mean(1.0 - np.abs(silhouette_samples(X[mask], batch[mask]))))
    return float(np.mean(per_label)) if per_label else float("nan")
