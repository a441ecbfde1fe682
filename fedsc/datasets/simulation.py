"""Simulated data with known batches and cell types (for tests and scale benchmarks).

Everything draws from one ``numpy.random.Generator`` seeded by ``seed``; the global RNG is
never touched.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc.errors import FedscInputError

__all__ = ["simulate", "simulate_embedding"]

_CHUNK = 2048  # cells sampled at once (bounds memory for large simulations)


def _check_sizes(n_cells: int, n_batches: int, n_cell_types: int, **dims: int) -> None:
    for name, value in {"n_cells": n_cells, "n_batches": n_batches, **dims}.items():
        if int(value) < 1:
            raise FedscInputError(f"{name} must be >= 1, got {value}.")
    if n_cell_types < 1:
        raise FedscInputError(f"n_cell_types must be >= 1, got {n_cell_types}.")
    if n_cells < n_batches:
        raise FedscInputError(
            f"n_cells={n_cells} is smaller than n_batches={n_batches}; every batch needs cells."
        )


def _assign(
    rng: np.random.Generator, n_cells: int, n_batches: int, n_cell_types: int, composition: float
) -> tuple[np.ndarray, np.ndarray]:
    """Near-equal batch sizes (cells ordered by batch); per-batch type proportions.

    The proportions of each batch are drawn from Dirichlet(``composition`` · 1), so batches
    differ in composition (smaller ``composition`` = more different; ``inf`` = uniform).
    """
    sizes = np.full(n_batches, n_cells // n_batches)
    sizes[: n_cells % n_batches] += 1
    batch = np.repeat(np.arange(n_batches), sizes)
    ctype = np.empty(n_cells, dtype=np.int64)
    start = 0
    for size in sizes:
        if np.isinf(composition):
            probs = np.full(n_cell_types, 1.0 / n_cell_types)
        else:
            probs = rng.dirichlet(np.full(n_cell_types, float(composition)))
        ctype[start : start + size] = rng.choice(n_cell_types, size=size, p=probs)
        start += size
    return batch, ctype


def _obs(batch: np.ndarray, ctype: np.ndarray, n_batches: int, n_cell_types: int) -> pd.DataFrame:
    batch_names = [f"batch{b}" for b in range(n_batches)]
    type_names = [f"type{t}" for t in range(n_cell_types)]
    return pd.DataFrame(
        {
            "batch": pd.Categorical.from_codes(batch, categories=pd.Index(batch_names)),
            "cell_type": pd.Categorical.from_codes(ctype, categories=pd.Index(type_names)),
        },
        index=pd.Index([f"cell{i}" for i in range(len(batch))]),
    )


def simulate(
    n_cells: int = 2000,
    n_genes: int = 1000,
    n_batches: int = 3,
    n_cell_types: int = 5,
    *,
    batch_effect: float = 0.5,
    cell_type_effect: float = 1.5,
    de_fraction: float = 0.1,
    dispersion: float = 0.2,
    library_size: float = 2000.0,
    library_sd: float = 0.3,
    composition: float = 5.0,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate counts with cell-type programs and multiplicative batch effects.

    Model: gene base proportions ``p_g ~ LogNormal(0, 1)``; each cell type ``t`` has a
    program of differentially expressed genes (a fraction ``de_fraction``, log fold changes
    ``N(0, cell_type_effect)``); each batch ``b`` multiplies every gene by
    ``exp(N(0, batch_effect))``. Cell means
    ``mu_ig = L_i · normalise_g(p_g · fc_{t(i) g} · be_{b(i) g})`` with library sizes
    ``L_i ~ LogNormal(log(library_size), library_sd)``; counts are gamma-Poisson
    (negative binomial, variance ``mu + dispersion · mu²``; ``dispersion=0`` is Poisson).

    Parameters
    ----------
    n_cells, n_genes, n_batches, n_cell_types
        Sizes. Cells are ordered by batch; batch sizes differ by at most one.
    batch_effect
        SD of the per-batch per-gene log multiplicative effect (0: no batch effect).
    cell_type_effect
        SD of the log fold changes of each cell type's program (0: no cell types signal).
    de_fraction
        Fraction of genes in each cell type's program.
    dispersion
        Negative-binomial dispersion ``phi``.
    library_size, library_sd
        Median and log-scale SD of the total counts per cell.
    composition
        Dirichlet concentration of each batch's cell-type proportions (``inf``: uniform).
    seed
        Seed of the one ``numpy.random.Generator`` used.

    Returns
    -------
    AnnData with ``X`` CSR float32 counts, ``obs["batch"]`` and ``obs["cell_type"]``
    (categorical), and ``uns["simulation"]`` holding the parameters.
    """
    _check_sizes(n_cells, n_batches, n_cell_types, n_genes=n_genes)
    if min(batch_effect, cell_type_effect, dispersion, library_sd) < 0:
        raise FedscInputError(
            "batch_effect, cell_type_effect, dispersion and library_sd must be >= 0."
        )
    if not 0 <= de_fraction <= 1:
        raise FedscInputError(f"de_fraction must lie in [0, 1], got {de_fraction}.")
    rng = np.random.default_rng(seed)

    base = rng.lognormal(0.0, 1.0, size=n_genes)
    de = rng.random((n_cell_types, n_genes)) < de_fraction
    type_lfc = np.where(de, rng.normal(0.0, cell_type_effect, (n_cell_types, n_genes)), 0.0)
    batch_lfc = rng.normal(0.0, batch_effect, (n_batches, n_genes))
    # proportions per (batch, type) combination: normalised over genes
    props = base[None, None, :] * np.exp(type_lfc[None, :, :] + batch_lfc[:, None, :])
    props /= props.sum(axis=2, keepdims=True)

    batch, ctype = _assign(rng, n_cells, n_batches, n_cell_types, composition)
    lib = rng.lognormal(np.log(library_size), library_sd, size=n_cells)

    blocks = []
    for start in range(0, n_cells, _CHUNK):
        stop = min(start + _CHUNK, n_cells)
        mu = props[batch[start:stop], ctype[start:stop]] * lib[start:stop, None]
        if dispersion > 0:
            mu = rng.gamma(1.0 / dispersion, mu * dispersion)
        counts = rng.poisson(mu).astype(np.float32)
        blocks.append(sp.csr_matrix(counts))
    X = sp.vstack(blocks, format="csr", dtype=np.float32)

    adata = ad.AnnData(
        X=X,
        obs=_obs(batch, ctype, n_batches, n_cell_types),
        var=pd.DataFrame(index=pd.Index([f"gene{g}" for g in range(n_genes)])),
    )
    adata.uns["simulation"] = {
        "model": "gamma-Poisson with cell-type programs and per-batch per-gene effects",
        "batch_effect": float(batch_effect),
        "cell_type_effect": float(cell_type_effect),
        "de_fraction": float(de_fraction),
        "dispersion": float(dispersion),
        "library_size": float(library_size),
        "library_sd": float(library_sd),
        "composition": float(composition),
        "seed": int(seed),
    }
    return adata


def simulate_embedding(
    n_cells: int = 10000,
    n_dims: int = 40,
    n_batches: int = 5,
    n_cell_types: int = 8,
    seed: int = 0,
    *,
    cluster_separation: float = 4.0,
    batch_shift: float = 1.0,
    batch_scale: float = 0.2,
    composition: float = 5.0,
    key: str = "X_emb",
    return_truth: bool = False,
) -> ad.AnnData:
    """Simulate an embedding: Gaussian cell-type clusters distorted per batch.

    ``x_i = c_{t(i)} + N(0, I)`` with centres ``c_t ~ N(0, cluster_separation² I)``; batch
    ``b`` applies ``z = s_b ⊙ x + m_b`` with ``m_b ~ N(0, batch_shift² I)`` and
    ``log s_b ~ N(0, batch_scale²)`` per dimension (a FiLM-like distortion).

    Returns
    -------
    AnnData with no genes (``X`` is an empty ``n_cells × 0`` matrix), ``obsm[key]`` float32
    (``n_cells × n_dims``), ``obs["batch"]``, ``obs["cell_type"]``; with ``return_truth``
    also ``obsm[key + "_true"]`` (before the batch distortion).
    """
    _check_sizes(n_cells, n_batches, n_cell_types, n_dims=n_dims)
    if min(cluster_separation, batch_shift, batch_scale) < 0:
        raise FedscInputError("cluster_separation, batch_shift and batch_scale must be >= 0.")
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, cluster_separation, (n_cell_types, n_dims))
    shift = rng.normal(0.0, batch_shift, (n_batches, n_dims))
    scale = np.exp(rng.normal(0.0, batch_scale, (n_batches, n_dims)))
    batch, ctype = _assign(rng, n_cells, n_batches, n_cell_types, composition)
    truth = (centres[ctype] + rng.standard_normal((n_cells, n_dims))).astype(np.float32)
    emb = (truth * scale[batch] + shift[batch]).astype(np.float32)

    adata = ad.AnnData(
        X=sp.csr_matrix((n_cells, 0), dtype=np.float32),
        obs=_obs(batch, ctype, n_batches, n_cell_types),
    )
    adata.obsm[key] = emb
    if return_truth:
        adata.obsm[f"{key}_true"] = truth
    adata.uns["simulation"] = {
        "model": "Gaussian clusters with per-batch shift and scale",
        "cluster_separation": float(cluster_separation),
        "batch_shift": float(batch_shift),
        "batch_scale": float(batch_scale),
        "composition": float(composition),
        "seed": int(seed),
    }
    return adata
