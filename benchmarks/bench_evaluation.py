"""scIB panel (fedsc.evaluation.scib_panel) vs scib-metrics' Benchmarker, same metric set.

Data: ../shared/data/cell_lines_293t_jurkat_harmony_pcs.h5ad (9478 cells x 20 PCs in X),
X as the embedding and as the pre-integration embedding (so PCR comparison is 0 in both),
obs "batch" / "cell_type". Both run in this process; each is run once to warm up (JIT,
numba), then timed as the median of ``--reps`` runs. Prints both times, the ratio
ours / Benchmarker (target <= 1.0) and the max |difference| of the values (target <= 0.02).

    .venv/bin/python benchmarks/bench_evaluation.py [--reps 3] [--n-cells N]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from fedsc.evaluation.scib_panel import BENCHMARKER_NAMES, scib_panel

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILE = "cell_lines_293t_jurkat_harmony_pcs.h5ad"


def benchmarker_values(adata: ad.AnnData, emb: str, pre: str, batch_key: str, labels_key: str):
    """Run scib-metrics' Benchmarker with the scBatchProx metric set; metric -> value."""
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    bm = Benchmarker(
        adata,
        batch_key=batch_key,
        label_key=labels_key,  # scib-metrics' name
        embedding_obsm_keys=[emb],
        pre_integrated_embedding_obsm_key=pre,
        bio_conservation_metrics=BioConservation(),  # kmeans NMI/ARI, ASW, iso labels, cLISI
        # BRAS with euclidean distance and the nearest other batch *is* silhouette_batch.
        batch_correction_metrics=BatchCorrection(
            bras={"metric": "euclidean", "between_cluster_distances": "nearest"}
        ),
        progress_bar=False,
    )
    bm.benchmark()
    res = bm.get_results(min_max_scale=False, clean_names=False)
    col = res.loc[emb]
    return {BENCHMARKER_NAMES[k]: float(col[k]) for k in BENCHMARKER_NAMES if k in col.index}


def _time(fn, reps: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n-cells", type=int, default=None, help="subsample (default: all)")
    args = p.parse_args()
    logging.getLogger("scib_metrics").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    adata = ad.read_h5ad(DATA / FILE)
    if args.n_cells:
        rng = np.random.default_rng(0)
        adata = adata[np.sort(rng.choice(adata.n_obs, args.n_cells, replace=False))].copy()
    adata.obsm["emb"] = np.asarray(adata.X, dtype=np.float32)
    X = adata.obsm["emb"]
    b, lab = adata.obs["batch"].to_numpy(), adata.obs["cell_type"].to_numpy()

    t_ours, ours = _time(lambda: scib_panel(X, b, lab, X_pre=X), args.reps)
    t_bm, theirs = _time(
        lambda: benchmarker_values(adata.copy(), "emb", "emb", "batch", "cell_type"), args.reps
    )
    ours = dict(zip(ours["metric"], ours["value"], strict=True))
    table = pd.DataFrame({"fedsc": ours, "benchmarker": pd.Series(theirs)})
    table["abs_diff"] = (table["fedsc"] - table["benchmarker"]).abs()
    print(f"data: {FILE} {adata.n_obs} cells x {X.shape[1]} dims; median of {args.reps} warm runs")
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))
    print(f"time fedsc scib_panel : {t_ours:.2f} s")
    print(f"time Benchmarker      : {t_bm:.2f} s")
    print(f"ratio ours/Benchmarker: {t_ours / t_bm:.2f}  (target <= 1.0)")
    print(f"max |diff|            : {table['abs_diff'].max():.4f}  (target <= 0.02)")


if __name__ == "__main__":
    main()
