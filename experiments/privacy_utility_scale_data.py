"""Write the data of experiments/privacy_utility_scale.yaml into results/data/.

* ``kang_donors.h5ad``: Kang et al. 2018 IFN-beta PBMCs (the shared
  ``kang2018_ifnb_pbmc_14k.h5ad``: 13,999 cells, raw counts, ctrl/stim as ``batch``) with
  **simulated donors**: the file has no donor column, so each batch's cells are assigned
  at random to 25 donors (sizes from LogNormal(0, 0.5) weights; seed 0). The donors are
  labels only: they carry no donor effect, so donor-level DP here protects 25 arbitrary
  groups of ~280 cells per site, not real people.
* ``consortium_100k.h5ad``: :func:`fedsc.datasets.simulate_h5ad`, 100,000 cells x 2,000
  genes, 5 sites (batches) x 10 donors (50 donors with donor effects), 8 cell types.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python experiments/privacy_utility_scale_data.py``
(``--only kang`` or ``--only consortium``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "results" / "data"
DONORS_PER_BATCH = 25


def kang_with_donors(path: Path) -> None:
    """Kang with 25 simulated donors per batch (``obs["donor"]``), written to ``path``."""
    from fedsc import datasets

    adata = datasets.read(datasets.shared_path("kang2018_ifnb_pbmc_14k.h5ad"))
    rng = np.random.default_rng(0)
    donor = np.empty(adata.n_obs, dtype=object)
    for batch in sorted(adata.obs["batch"].astype(str).unique()):
        rows = np.flatnonzero(adata.obs["batch"].astype(str).to_numpy() == batch)
        weights = rng.lognormal(0.0, 0.5, DONORS_PER_BATCH)
        picks = rng.choice(DONORS_PER_BATCH, size=len(rows), p=weights / weights.sum())
        donor[rows] = [f"{batch}_donor{d:02d}" for d in picks]
    adata.obs["donor"] = donor.astype(str)
    adata.uns["donors"] = (
        f"simulated: each batch's cells assigned at random to {DONORS_PER_BATCH} donors "
        "(LogNormal(0, 0.5) size weights, seed 0); no donor effect"
    )
    adata.write_h5ad(path, compression="gzip")


def consortium(path: Path) -> None:
    """The simulated 100k-cell, 50-donor consortium (5 sites x 10 donors)."""
    from fedsc.datasets.simulation import simulate_h5ad

    simulate_h5ad(
        path,
        n_cells=100_000,
        n_genes=2000,
        n_batches=5,
        n_cell_types=8,
        n_donors=10,
        seed=0,
        overwrite=True,
    )


def main() -> None:
    """Write the files named by --only (default: both)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["kang", "consortium"])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "kang"):
        kang_with_donors(OUT / "kang_donors.h5ad")
    if args.only in (None, "consortium"):
        consortium(OUT / "consortium_100k.h5ad")


if __name__ == "__main__":
    main()
