"""Simulated data with known batches, donors and cell types (tests and scale benchmarks).

Everything draws from ``numpy.random.Generator`` streams seeded by ``seed``; the global RNG
is never touched. The generative model of :func:`simulate` is documented in
``docs/data.md`` ("Simulated data").
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc.errors import FedscInputError

__all__ = ["simulate", "simulate_embedding", "simulate_h5ad"]

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


@dataclass(frozen=True)
class _Design:
    """Everything of one simulation except the counts (which are drawn chunk by chunk)."""

    base: np.ndarray  # (genes,) base proportions
    type_lfc: np.ndarray  # (types, genes)
    batch_lfc: np.ndarray  # (batches, genes)
    donor_lfc: np.ndarray  # (donors, genes); zeros with one donor per batch
    batch: np.ndarray  # (cells,) batch code
    donor: np.ndarray  # (cells,) donor code (global over batches)
    ctype: np.ndarray  # (cells,) cell-type code
    lib: np.ndarray  # (cells,) library size
    donors_per_batch: tuple[int, ...]


def _donors_per_batch(n_donors: int | Sequence[int], n_batches: int) -> tuple[int, ...]:
    if isinstance(n_donors, (int, np.integer)):
        counts = (int(n_donors),) * n_batches
    else:
        counts = tuple(int(d) for d in n_donors)
        if len(counts) != n_batches:
            raise FedscInputError(
                f"n_donors lists {len(counts)} batches but n_batches={n_batches}; give one "
                "donor count per batch or a single int for all."
            )
    if min(counts) < 1:
        raise FedscInputError(f"every batch needs >= 1 donor, got n_donors={list(counts)}.")
    return counts


def _assign_donors(
    rng: np.random.Generator,
    batch: np.ndarray,
    donors_per_batch: tuple[int, ...],
    n_cell_types: int,
    composition: float,
    donor_composition: float,
    donor_size_sd: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Donors nested in batches: sizes and type proportions of each donor.

    Within batch ``b`` (its cells contiguous), donor sizes are proportional to
    ``LogNormal(0, donor_size_sd)`` weights (every donor keeps >= 1 cell; the largest
    remainders get the rounding); donor ``d`` draws its type proportions from
    ``Dirichlet(donor_composition · π_b)`` around the batch's proportions
    ``π_b ~ Dirichlet(composition · 1)`` (uniform for ``composition=inf``), so donors of
    one site differ around the site's composition.
    """
    n_batches = len(donors_per_batch)
    donor = np.empty(batch.shape[0], dtype=np.int64)
    ctype = np.empty(batch.shape[0], dtype=np.int64)
    first = 0
    starts = np.searchsorted(batch, np.arange(n_batches + 1))
    for b, n_d in enumerate(donors_per_batch):
        lo, hi = int(starts[b]), int(starts[b + 1])
        size = hi - lo
        if size < n_d:
            raise FedscInputError(
                f"batch{b} has {size} cells for {n_d} donors; every donor needs a cell: raise "
                "n_cells or lower n_donors."
            )
        w = rng.lognormal(0.0, donor_size_sd, n_d) if donor_size_sd > 0 else np.ones(n_d)
        extra = (size - n_d) * w / w.sum()
        sizes = 1 + np.floor(extra).astype(np.int64)
        short = size - int(sizes.sum())
        sizes[np.argsort(-(extra - np.floor(extra)), kind="stable")[:short]] += 1
        if np.isinf(composition):
            pi = np.full(n_cell_types, 1.0 / n_cell_types)
        else:
            pi = rng.dirichlet(np.full(n_cell_types, float(composition)))
        at = lo
        for d, n in enumerate(sizes):
            if np.isinf(donor_composition):
                probs = pi
            else:
                # floor keeps Dirichlet parameters positive for types absent from π_b
                probs = rng.dirichlet(np.maximum(donor_composition * pi, 1e-3))
            donor[at : at + n] = first + d
            ctype[at : at + n] = rng.choice(n_cell_types, size=int(n), p=probs)
            at += int(n)
        first += n_d
    return donor, ctype


def _design(
    n_cells: int,
    n_genes: int,
    n_batches: int,
    n_cell_types: int,
    *,
    batch_effect: float,
    cell_type_effect: float,
    de_fraction: float,
    library_size: float,
    library_sd: float,
    composition: float,
    n_donors: int | Sequence[int],
    donor_effect: float,
    donor_composition: float,
    donor_size_sd: float,
    rng: np.random.Generator,
    donor_rng: np.random.Generator,
) -> _Design:
    donors_per_batch = _donors_per_batch(n_donors, n_batches)
    base = rng.lognormal(0.0, 1.0, size=n_genes)
    de = rng.random((n_cell_types, n_genes)) < de_fraction
    type_lfc = np.where(de, rng.normal(0.0, cell_type_effect, (n_cell_types, n_genes)), 0.0)
    batch_lfc = rng.normal(0.0, batch_effect, (n_batches, n_genes))
    total_donors = sum(donors_per_batch)
    if max(donors_per_batch) == 1:
        # one donor per batch: the donor is the batch (its effect is the batch effect)
        batch, ctype = _assign(rng, n_cells, n_batches, n_cell_types, composition)
        donor = batch.copy()
        donor_lfc = np.zeros((total_donors, n_genes))
    else:
        sizes = np.full(n_batches, n_cells // n_batches)
        sizes[: n_cells % n_batches] += 1
        batch = np.repeat(np.arange(n_batches), sizes)
        donor, ctype = _assign_donors(
            donor_rng,
            batch,
            donors_per_batch,
            n_cell_types,
            composition,
            donor_composition,
            donor_size_sd,
        )
        donor_lfc = donor_rng.normal(0.0, donor_effect, (total_donors, n_genes))
    lib = rng.lognormal(np.log(library_size), library_sd, size=n_cells)
    return _Design(base, type_lfc, batch_lfc, donor_lfc, batch, donor, ctype, lib, donors_per_batch)


def _count_blocks(
    design: _Design, dispersion: float, rng: np.random.Generator, chunk: int = _CHUNK
) -> Iterator[sp.csr_matrix]:
    """CSR float32 count blocks of ``chunk`` cells, in cell order (one generator, in order)."""
    for start in range(0, design.batch.shape[0], chunk):
        stop = min(start + chunk, design.batch.shape[0])
        b, t, d = design.batch[start:stop], design.ctype[start:stop], design.donor[start:stop]
        props = design.base[None, :] * np.exp(
            design.type_lfc[t] + design.batch_lfc[b] + design.donor_lfc[d]
        )
        props /= props.sum(axis=1, keepdims=True)
        mu = props * design.lib[start:stop, None]
        if dispersion > 0:
            mu = rng.gamma(1.0 / dispersion, mu * dispersion)
        yield sp.csr_matrix(rng.poisson(mu).astype(np.float32))


def _check_simulation(
    n_cells: int, n_genes: int, n_batches: int, n_cell_types: int, **params: float
) -> None:
    _check_sizes(n_cells, n_batches, n_cell_types, n_genes=n_genes)
    negative = sorted(
        k
        for k in ("batch_effect", "cell_type_effect", "dispersion", "library_sd", "donor_effect",
                  "donor_size_sd")
        if params[k] < 0
    )  # fmt: skip
    if negative:
        raise FedscInputError(f"{', '.join(negative)} must be >= 0.")
    if not 0 <= params["de_fraction"] <= 1:
        raise FedscInputError(f"de_fraction must lie in [0, 1], got {params['de_fraction']}.")
    for k in ("composition", "donor_composition", "library_size"):
        if not params[k] > 0:
            raise FedscInputError(
                f"{k} must be > 0 (inf allowed for compositions), got {params[k]}."
            )


def _simulation_record(design: _Design, seed: int, params: dict[str, float]) -> dict[str, Any]:
    return {
        "model": (
            "gamma-Poisson; cell-type programs, per-batch and per-donor per-gene log effects, "
            "batch- and donor-specific composition (docs/data.md#simulated-data)"
        ),
        **{k: float(v) for k, v in params.items()},
        "n_donors": [int(d) for d in design.donors_per_batch],
        "seed": int(seed),
    }


def _obs_with_donors(design: _Design, n_batches: int, n_cell_types: int) -> pd.DataFrame:
    obs = _obs(design.batch, design.ctype, n_batches, n_cell_types)
    names = pd.Index([f"donor{d}" for d in range(int(sum(design.donors_per_batch)))])
    obs["donor"] = pd.Categorical.from_codes(design.donor, categories=names)
    return obs


def _prepare(
    n_cells: int, n_genes: int, n_batches: int, n_cell_types: int, seed: int, params: dict
) -> tuple[_Design, np.random.Generator]:
    _check_simulation(n_cells, n_genes, n_batches, n_cell_types, **params)
    rng = np.random.default_rng(seed)
    # donors draw from their own stream, so one donor per batch reproduces earlier versions
    donor_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    design = _design(
        n_cells,
        n_genes,
        n_batches,
        n_cell_types,
        rng=rng,
        donor_rng=donor_rng,
        **{k: v for k, v in params.items() if k != "dispersion"},
    )
    return design, rng


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
    n_donors: int | Sequence[int] = 1,
    donor_effect: float = 0.1,
    donor_composition: float = 20.0,
    donor_size_sd: float = 0.5,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate counts: cell-type programs, batch and donor effects, varying composition.

    The generative model (``docs/data.md``, "Simulated data"): gene base proportions
    ``p_g ~ LogNormal(0, 1)``; each cell type ``t`` has a program of differentially
    expressed genes (a fraction ``de_fraction``, log fold changes ``N(0, cell_type_effect²)``);
    each batch ``b`` a per-gene log effect ``β_bg ~ N(0, batch_effect²)``; each donor ``d``
    (nested in one batch) a per-gene log effect ``δ_dg ~ N(0, donor_effect²)``. Cell means
    ``mu_ig = L_i · normalise_g(p_g · exp(lfc_{t(i)g} + β_{b(i)g} + δ_{d(i)g}))`` with
    library sizes ``L_i ~ LogNormal(log(library_size), library_sd²)``; counts are
    gamma-Poisson (negative binomial, variance ``mu + dispersion · mu²``; 0 is Poisson).
    Batch ``b``'s type proportions are ``π_b ~ Dirichlet(composition · 1)``; a donor's are
    ``Dirichlet(donor_composition · π_b)``; donor sizes within a batch are proportional to
    ``LogNormal(0, donor_size_sd²)`` weights.

    Memory: counts are drawn 2,048 cells at a time; for sizes whose CSR matrix should not
    be held in memory, :func:`simulate_h5ad` writes the same data to disk block by block.

    Parameters
    ----------
    n_cells, n_genes, n_batches, n_cell_types
        Sizes. Cells are ordered by batch, then donor; batch sizes differ by at most one.
    batch_effect
        SD of the per-batch per-gene log multiplicative effect (0: no batch effect).
    cell_type_effect
        SD of the log fold changes of each cell type's program (0: no cell-type signal).
    de_fraction
        Fraction of genes in each cell type's program.
    dispersion
        Negative-binomial dispersion ``phi``.
    library_size, library_sd
        Median and log-scale SD of the total counts per cell.
    composition
        Dirichlet concentration of each batch's cell-type proportions (``inf``: uniform).
    n_donors
        Donors per batch (one int for all, or one per batch). With one donor per batch
        the donor is the batch: no donor effect, and the output equals earlier versions'.
    donor_effect
        SD of each donor's per-gene log effect (within-batch, between-person variation).
    donor_composition
        Dirichlet concentration of a donor's type proportions around its batch's
        (larger: donors closer to their batch; ``inf``: equal to it).
    donor_size_sd
        Log-scale SD of the donors' relative sizes within a batch (0: equal sizes).
    seed
        Seed of the ``numpy.random.Generator`` streams used (global RNG untouched).

    Returns
    -------
    AnnData with ``X`` CSR float32 counts, categorical ``obs["batch"]``,
    ``obs["donor"]`` (``donor0``… numbered over all batches) and ``obs["cell_type"]``, and
    ``uns["simulation"]`` holding the parameters.
    """
    params = {
        "batch_effect": batch_effect,
        "cell_type_effect": cell_type_effect,
        "de_fraction": de_fraction,
        "dispersion": dispersion,
        "library_size": library_size,
        "library_sd": library_sd,
        "composition": composition,
        "donor_effect": donor_effect,
        "donor_composition": donor_composition,
        "donor_size_sd": donor_size_sd,
    }
    design, rng = _prepare(
        n_cells, n_genes, n_batches, n_cell_types, seed, {**params, "n_donors": n_donors}
    )
    X = sp.vstack(list(_count_blocks(design, dispersion, rng)), format="csr", dtype=np.float32)
    adata = ad.AnnData(
        X=X,
        obs=_obs_with_donors(design, n_batches, n_cell_types),
        var=pd.DataFrame(index=pd.Index([f"gene{g}" for g in range(n_genes)])),
    )
    adata.uns["simulation"] = _simulation_record(design, seed, params)
    return adata


def simulate_h5ad(
    path: str | Path,
    n_cells: int,
    n_genes: int = 2000,
    n_batches: int = 3,
    n_cell_types: int = 5,
    *,
    overwrite: bool = False,
    show_progress: bool | None = None,
    **params: Any,
) -> Path:
    """Write :func:`simulate`'s data to an ``.h5ad`` file block by block (any size).

    Takes :func:`simulate`'s parameters and writes the same cells (bit for bit) without
    holding the count matrix in memory: ``obs``/``var`` first, then ``X`` (CSR) appended
    2,048 cells at a time. Peak memory is ``obs`` plus one block; read the file back with
    ``anndata.read_h5ad(path, backed="r")`` to keep ``X`` on disk.

    Returns
    -------
    The path written.
    """
    from anndata.io import sparse_dataset, write_elem

    from fedsc.progress import progress

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    unknown = sorted(set(params) - set(inspect.signature(simulate).parameters))
    if unknown:
        raise FedscInputError(
            f"simulate_h5ad got unknown parameter(s) {unknown}; it takes simulate()'s."
        )
    seed = int(params.pop("seed", 0))
    defaults = {
        k: p.default
        for k, p in inspect.signature(simulate).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "seed"
    }
    full = {**defaults, **params}
    dispersion = float(full["dispersion"])
    design, rng = _prepare(n_cells, n_genes, n_batches, n_cell_types, seed, full)
    shell = ad.AnnData(
        obs=_obs_with_donors(design, n_batches, n_cell_types),
        var=pd.DataFrame(index=pd.Index([f"gene{g}" for g in range(n_genes)])),
    )
    shell.uns["simulation"] = _simulation_record(
        design, seed, {k: v for k, v in full.items() if k != "n_donors"}
    )
    tmp = path.with_name(path.name + ".partial")
    shell.write_h5ad(tmp)
    n_blocks = -(-n_cells // _CHUNK)
    with h5py.File(tmp, "a") as f:
        blocks = progress(
            _count_blocks(design, dispersion, rng),
            desc="simulate",
            total=n_blocks,
            enable=show_progress,
        )
        for i, block in enumerate(blocks):
            if i == 0:
                if "X" in f:
                    del f["X"]
                write_elem(f, "X", block)
                X = sparse_dataset(f["X"])
            else:
                X.append(block)
    tmp.replace(path)
    return path


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
