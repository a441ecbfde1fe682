"""Time and peak memory per stage as the number of cells grows (issue 20, "Must show").

Data: ``fedsc.datasets.simulate_h5ad`` (the generative model in docs/data.md, "Simulated
data"): ``--genes`` genes (2,000), ``--batches`` sites (8), ``--donors`` donors per site (6),
10 cell types; written once per size into ``--workdir`` and reused. Every stage runs in
its own fresh process (so its peak RSS is its own), threads pinned to ``--threads``, and
reads the h5ad file as a run does:

- ``fedscgen``: ``execute_run`` of FedscGen, 8 rounds x 2 local epochs, plaintext, no
  panels: loading, preprocessing, training and correction (``method_seconds``);
- ``scbatchprox``: ``execute_run`` of scBatchProx at its defaults (PCA upstream), no panels;
- ``evaluation``: the scIB panel (``fedsc.evaluation.evaluate``) on the 40-dim PCA
  embedding of the same cells (the PCA is computed first and not timed);
- ``attack``: ``execute_run`` of scBatchProx with the ``scbatchprox_rows`` attack, timed
  as the whole run minus its method time (the attack and its recording); its CPU column
  is the whole run's;
- ``knn`` (not in the default list): the error of the approximate neighbours the scIB
  panel uses above ``EXACT_KNN_MAX_CELLS`` (pynndescent, as scib-metrics'
  Benchmarker): on the same PCA embedding, recall of the 90 exact neighbours (brute
  force), the relative error of the 90th neighbour distance, both searches' seconds, and
  the largest difference of any scIB metric between the panel on exact and on
  approximate neighbours (timed: the approximate search);
- ``evaluation_parts`` (not in the default list): the scIB panel's steps one by one on the
  same PCA embedding (k-NN search, UMAP connectivities, k-means, NMI/ARI, cLISI, iLISI,
  kBET per label, graph connectivity, label and batch silhouettes, PCR comparison), wall
  and CPU seconds each, to see where the panel's time goes.

Per stage and size it prints wall seconds, CPU seconds (process + reaped children) and
peak RSS (GB), then the growth exponent of each (the slope of log time / log peak RSS
against log cells, least squares over the sizes; 1 = linear), the ratio of the largest
to the smallest size, and saves ``scale.png`` and ``scale.json`` in ``--workdir``. The
machine's load average is printed beside each stage, since other jobs change wall time.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/bench_scale.py \
        [--sizes 10000 30000 100000] [--stages fedscgen scbatchprox evaluation attack] \
        [--train-only-sizes 1000000] [--rounds 8 --epochs 2] [--workdir /tmp/fedsc_scale]
        [--resume]

``--train-only-sizes`` adds sizes at which only ``fedscgen`` runs (10^6 cells).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("fedscgen", "scbatchprox", "evaluation", "attack", "knn", "evaluation_parts")


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_gb() -> float:
    """Peak RSS of this process and of its largest reaped child (CrypTen parties), GB."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 2**20


def data_path(workdir: Path, cells: int, args: argparse.Namespace) -> Path:
    """The simulated data of one size (written once, then reused)."""
    from fedsc.datasets import simulate_h5ad

    name = f"sim_{cells}c_{args.genes}g_{args.batches}b_{args.donors}d.h5ad"
    path = workdir / name
    if not path.exists():
        t0 = time.perf_counter()
        simulate_h5ad(path, cells, args.genes, args.batches, 10, n_donors=args.donors, seed=0)
        print(f"  simulated {cells} cells in {time.perf_counter() - t0:.0f} s -> {path}")
    return path


def _run_config(path: Path, method: str, args: argparse.Namespace, **extra):
    from fedsc.run.config import RunConfig

    params = {"rounds": args.rounds, "local_epochs": args.epochs} if method == "fedscgen" else {}
    return RunConfig(method=method, dataset=str(path), seed=0, params=params, panels=[], **extra)


def run_stage(stage: str, path: Path, args: argparse.Namespace) -> dict:
    """Run one stage in this process; return its measurements."""
    from fedsc import settings
    from fedsc.run.execute import execute_run

    settings.apply()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    out: dict = {}
    if stage in ("fedscgen", "scbatchprox"):
        res = execute_run(_run_config(path, stage, args), show_progress=False)
        out["method_seconds"] = res.info["method_seconds"]
    elif stage == "attack":
        cfg = _run_config(path, "scbatchprox", args, attacks=["scbatchprox_rows"])
        res = execute_run(cfg, show_progress=False)
        out["method_seconds"] = res.info["method_seconds"]
        out["attack_rows"] = int((res.rows["metric"].notna()).sum())
    elif stage == "evaluation":
        from fedsc.evaluation import evaluate
        from fedsc.preprocessing import fit_embedding, preprocess
        from fedsc.run.load import load_dataset

        adata = preprocess(load_dataset(str(path)), n_top_genes=2000)
        fit_embedding(adata, method="pca", n_comps=40, seed=0)
        cpu0, t0 = _cpu_seconds(), time.perf_counter()  # the panel only
        rows = evaluate(
            adata, rep="X_pca", batch_key="batch", labels_key="cell_type", panels=["scib"],
            X_pre_rep="X_pca", seed=0,
        )  # fmt: skip
        out["metrics"] = dict(zip(rows["metric"], rows["value"].astype(float), strict=False))
    elif stage == "evaluation_parts":
        out["parts"] = evaluation_parts(path)
        # the stage's time: the sum of the steps (not the preprocessing and PCA)
        cpu0 = _cpu_seconds() - sum(p["cpu_s"] for p in out["parts"].values())
        t0 = time.perf_counter() - sum(p["wall_s"] for p in out["parts"].values())
    elif stage == "knn":
        out.update(knn_error(path))
        cpu0, t0 = _cpu_seconds() - out["cpu_approx_s"], time.perf_counter() - out["approx_s"]
    else:
        raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
    wall = time.perf_counter() - t0
    out.update(wall_s=wall, cpu_s=_cpu_seconds() - cpu0, peak_rss_gb=_peak_gb())
    if stage == "attack":
        out["wall_s"] = wall - out["method_seconds"]
        out["run_wall_s"] = wall
    return out


def _pca_embedding(path: Path):
    """The 40-dim PCA embedding, batches and labels of ``path`` (as the evaluation stage)."""
    import numpy as np

    from fedsc.preprocessing import fit_embedding, preprocess
    from fedsc.run.load import load_dataset

    adata = preprocess(load_dataset(str(path)), n_top_genes=2000)
    fit_embedding(adata, method="pca", n_comps=40, seed=0)
    X = np.ascontiguousarray(adata.obsm["X_pca"], dtype=np.float32)
    return X, adata.obs["batch"].to_numpy(), adata.obs["cell_type"].to_numpy()


def evaluation_parts(path: Path) -> dict:
    """Wall and CPU seconds of each step of the scIB panel, in the panel's order."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from fedsc.evaluation._kbet import kbet_per_label
    from fedsc.evaluation._scib import scib_metrics
    from fedsc.evaluation._silhouette import silhouette_batch, silhouette_samples
    from fedsc.evaluation.scib_panel import knn

    X, b, lab = _pca_embedding(path)
    scib_metrics.load()  # its import is not a step
    parts: dict = {}

    def timed(name, fn):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        result = fn()
        parts[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu_seconds() - c0}
        return result

    neigh = timed("knn", lambda: knn(X, 90, seed=0))
    neigh_kbet = neigh.subset_neighbors(50)
    timed("umap_connectivities", lambda: neigh_kbet.knn_graph_connectivities)
    pred = timed(
        "kmeans", lambda: scib_metrics.utils.KMeans(len(np.unique(lab)), seed=0).fit(X).labels_
    )
    timed(
        "nmi_ari",
        lambda: (normalized_mutual_info_score(lab, pred), adjusted_rand_score(lab, pred)),
    )
    timed("clisi", lambda: scib_metrics.clisi_knn(neigh, lab))
    timed("ilisi", lambda: scib_metrics.ilisi_knn(neigh, b))
    timed("kbet_per_label", lambda: kbet_per_label(neigh_kbet, b, lab))
    timed(
        "graph_connectivity",
        lambda: scib_metrics.graph_connectivity(neigh.subset_neighbors(15), lab),
    )
    timed("silhouette_label", lambda: silhouette_samples(X, lab))
    timed("silhouette_batch", lambda: silhouette_batch(X, lab, b))
    timed("pcr_comparison", lambda: scib_metrics.pcr_comparison(X, X, b, categorical=True))
    return parts


def knn_error(path: Path) -> dict:
    """Approximate (pynndescent) vs exact neighbours on the PCA embedding of ``path``."""
    import numpy as np

    from fedsc.evaluation.scib_panel import knn, scib_panel

    X, b, lab = _pca_embedding(path)
    c0, t0 = _cpu_seconds(), time.perf_counter()
    approx = knn(X, 90, method="pynndescent", seed=0)
    approx_s, cpu_approx = time.perf_counter() - t0, _cpu_seconds() - c0
    t0 = time.perf_counter()
    exact = knn(X, 90, method="exact")
    exact_s = time.perf_counter() - t0
    hits = [
        len(np.intersect1d(a, e, assume_unique=True))
        for a, e in zip(approx.indices, exact.indices, strict=True)
    ]
    recall = float(np.mean(hits)) / exact.indices.shape[1]
    kth = exact.distances[:, -1].astype(np.float64)
    rel = (approx.distances[:, -1] - kth) / np.maximum(kth, 1e-12)
    panels = {
        m: scib_panel(X, b, lab, X_pre=X, knn_method=m, seed=0) for m in ("exact", "pynndescent")
    }
    values = {m: dict(zip(r["metric"], r["value"], strict=True)) for m, r in panels.items()}
    diff = {
        k: abs(float(values["exact"][k]) - float(values["pynndescent"][k]))
        for k in values["exact"]
        if np.isfinite(values["exact"][k])
    }
    worst = max(diff, key=diff.get) if diff else None
    return {
        "recall_at_90": recall,
        "min_recall_cell": float(min(hits)) / exact.indices.shape[1],
        "kth_distance_rel_error_mean": float(np.mean(rel)),
        "kth_distance_rel_error_max": float(np.max(rel)),
        "exact_s": exact_s,
        "approx_s": approx_s,
        "cpu_approx_s": cpu_approx,
        "metric_max_abs_diff": diff[worst] if worst else None,
        "metric_max_abs_diff_name": worst,
    }


def _spawn(stage: str, path: Path, args: argparse.Namespace) -> dict:
    # passive OpenMP waiting must be in the environment before torch loads (the child
    # imports it before fedsc.settings.apply() runs): spinning threads inflated CPU time
    # ~5x on the loaded machine
    env = {**os.environ, "FEDSC_THREADS": str(args.threads)}
    env.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="0")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, __file__, "--child", stage, "--data", str(path)]
    cmd += ["--rounds", str(args.rounds), "--epochs", str(args.epochs)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:], "rc": proc.returncode}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load_before"] = load
    res["load_after"] = os.getloadavg()[0]
    return res


def exponent(cells: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(cells) (1: linear growth)."""
    import numpy as np

    if len(cells) < 2:
        return float("nan")
    return float(np.polyfit(np.log(cells), np.log(values), 1)[0])


def report(results: list[dict], workdir: Path) -> None:
    """Print the table and exponents; save scale.json and scale.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print(f"\n{'stage':<12}{'cells':>9}{'wall s':>9}{'cpu s':>9}{'peak GB':>9}{'load':>6}")
    for r in results:
        if "error" in r:
            print(f"{r['stage']:<12}{r['cells']:>9}  FAILED: {r['error']}")
            continue
        print(
            f"{r['stage']:<12}{r['cells']:>9}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}"
            f"{r['peak_rss_gb']:>9.2f}{r['load_before']:>6.1f}"
        )
    for r in results:
        for part, t in r.get("parts", {}).items():
            print(f"  {part:<20}{r['cells']:>9}{t['wall_s']:>9.1f}{t['cpu_s']:>9.1f}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    print(f"\n{'stage':<12}{'exp. wall':>10}{'exp. cpu':>10}{'exp. RSS':>10}  (1 = linear)")
    for stage in dict.fromkeys(r["stage"] for r in results):
        ok = [r for r in results if r["stage"] == stage and "error" not in r]
        if not ok:
            continue
        cells = [r["cells"] for r in ok]
        walls = [r["wall_s"] for r in ok]
        cpus = [r["cpu_s"] for r in ok]
        rss = [r["peak_rss_gb"] for r in ok]
        print(
            f"{stage:<12}{exponent(cells, walls):>10.2f}{exponent(cells, cpus):>10.2f}"
            f"{exponent(cells, rss):>10.2f}"
        )
        axes[0].loglog(cells, walls, "o-", label=stage)
        axes[1].loglog(cells, rss, "o-", label=stage)
    axes[0].set(xlabel="cells", ylabel="wall seconds", title="time per stage")
    axes[1].set(xlabel="cells", ylabel="peak RSS (GB)", title="peak memory per stage")
    for ax in axes:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(workdir / "scale.png", dpi=120)
    (workdir / "scale.json").write_text(json.dumps(results, indent=1))
    print(f"\nsaved {workdir / 'scale.png'} and {workdir / 'scale.json'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    p.add_argument("--train-only-sizes", type=int, nargs="*", default=[])
    p.add_argument("--stages", nargs="+", default=list(STAGES[:4]), choices=STAGES)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--donors", type=int, default=6)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fedsc_scale"))
    p.add_argument("--resume", action="store_true", help="keep the results in scale.json")
    p.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_stage(args.child, args.data, args)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"bench_scale: {args.genes} genes, {args.batches} sites x {args.donors} donors, "
        f"FedscGen {args.rounds} x {args.epochs}, {args.threads} threads, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    # stage by stage (every size of one stage before the next), so an interrupted run
    # still has each finished stage's growth; --resume keeps what scale.json holds
    plan = [(n, s) for s in args.stages for n in args.sizes]
    plan += [(n, "fedscgen") for n in args.train_only_sizes]
    results: list[dict] = []
    saved = args.workdir / "scale.json"
    if args.resume and saved.exists():
        results = [r for r in json.loads(saved.read_text()) if "error" not in r]
    done = {(r["cells"], r["stage"]) for r in results}
    for cells, stage in plan:
        if (cells, stage) in done:
            continue
        path = data_path(args.workdir, cells, args)
        res = {"stage": stage, "cells": cells, **_spawn(stage, path, args)}
        shown = {k: v for k, v in res.items() if k not in ("metrics", "parts")}
        print(f"  {json.dumps(shown)}", flush=True)
        results.append(res)
        (args.workdir / "scale.json").write_text(json.dumps(results, indent=1))
    report(results, args.workdir)


if __name__ == "__main__":
    main()
