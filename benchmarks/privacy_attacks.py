"""Privacy attacks on FedscGen (issue 9, 2c-2e): membership, property inference, revealed values.

Data: the bundled 500-cell pancreas (5 technologies = 5 clients, 100 cells each, 6 cell
types), normalize_total(1e4) + log1p, all 2000 genes; for property inference also a
simulation (``fedsc.datasets.simulate``: 600 cells, 500 genes, 5 batches, 4 types, Dirichlet
1 compositions) without and with batch effects. Settings of FedscGen (``--settings``):

- ``small``: hidden (64, 64), batch 30, 3 rounds x 1 local epoch (the test scale);
- ``default``: FedscGen's table: hidden (800, 800), batch 50, 8 rounds x 2 local epochs;
- ``overfit``: hidden (128, 128), batch 30, 2 rounds x 20 local epochs (local overfitting).

Each run is recorded as runs record it (``capture_fedscgen_views``) and attacked with the
registered attacks (``fedsc.privacy.ATTACKS``) on the coordinator's and client 0's views.
Membership (members: a client's 90 % training cells; non-members: its 10 % validation
cells; pooled over the 5 clients: 450 vs 50 per seed) by the loss, reference
(broadcast/initial state) and offline LiRA (``--shadows`` shadows of the same
hyper-parameters on auxiliary cells) scorers, for the plaintext coordinator (a client's
last local update, ``update_*``) and for client 0 (the global model of the 4 others,
``global_*``); mean over seeds with a 95 % t interval. Property inference: plaintext
coordinator (``update_*``: update's batch-norm mean + NNLS on auxiliary type profiles) and
the revealed values (``revealed_*``: dominant clients and counts). Revealed values: the
dominant client's decoded mean latent vs its true mean expression per shared type.
``--crypten`` repeats the revealed-value attacks on a CrypTen run (overfit setting, seed
0) next to the same plaintext run.

    PYTHONPATH=. .venv/bin/python benchmarks/privacy_attacks.py [--seeds 0 1 2]
        [--settings small overfit default] [--shadows 4] [--sim-seeds 10] [--crypten]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scanpy as sc
import torch

from fedsc.datasets import pancreas, simulate
from fedsc.methods.fedscgen import FedScGenConfig
from fedsc.privacy import run_attacks
from fedsc.privacy.fedscgen_runs import FedScGenViews, capture_fedscgen_views
from fedsc.privacy.membership import membership_scores, scores_to_metrics, summarize_over_seeds

SETTINGS = {
    "small": {"hidden": (64, 64), "batch_size": 30, "rounds": 3, "local_epochs": 1},
    "default": {"hidden": (800, 800), "batch_size": 50, "rounds": 8, "local_epochs": 2},
    "overfit": {"hidden": (128, 128), "batch_size": 30, "rounds": 2, "local_epochs": 20},
}
KEYS = {"batch_key": "batch", "labels_key": "cell_type"}


def _log(adata):
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def _show(title: str, df: pd.DataFrame) -> None:
    print(f"\n## {title}")
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.precision", 3):
        print(df.to_string(index=False))


def _scores(views: FedScGenViews, n_shadows: int) -> pd.DataFrame:
    """Per-cell membership scores: the coordinator's (updates) and client 0's (global)."""
    return pd.concat(
        [
            membership_scores(views.view(o), views.truth, n_shadows=n_shadows)
            for o in ("coordinator", "client")
        ],
        ignore_index=True,
    )


def _attack(views: FedScGenViews, name: str, seed: int) -> pd.DataFrame:
    """The coordinator's rows of one registered attack, with the seed."""
    return run_attacks(views.view("coordinator"), views.truth, [name]).assign(seed=seed)


def main() -> None:
    """Run the attacks and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="*", default=["small", "overfit", "default"])
    p.add_argument("--sim-seeds", type=int, default=10, help="seeds of the simulation part")
    p.add_argument("--shadows", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--crypten", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    panc = _log(pancreas())
    for name in args.settings:
        cfg = FedScGenConfig(**SETTINGS[name], num_threads=args.threads)
        scores, rows, prop, prof = [], [], [], []
        start = time.perf_counter()
        for seed in args.seeds:
            views = capture_fedscgen_views(panc, **KEYS, config=cfg, seed=seed)
            scores.append(_scores(views, args.shadows))
            rows.append(scores_to_metrics(scores[-1]).assign(seed=seed))
            prop.append(_attack(views, "fedscgen_property", seed))
            prof.append(_attack(views, "fedscgen_revealed_values", seed))
        seconds = time.perf_counter() - start
        rows = pd.concat(rows, ignore_index=True)
        print(f"\n# setting {name}: {SETTINGS[name]}, seeds {args.seeds}, {seconds:.0f} s")
        pooled = rows[rows["target_client"] == -1]
        _show(
            "membership, pooled over clients (mean over seeds, 95 % t interval)",
            summarize_over_seeds(pooled),
        )
        _show(
            "membership, cells of all clients and seeds in one ROC (resolves low FPRs)",
            scores_to_metrics(pd.concat(scores, ignore_index=True), per_client=False),
        )
        auc = rows[(rows["target_client"] != -1) & rows["metric"].str.endswith("_auc")]
        per_client = summarize_over_seeds(
            auc, by=("attack", "observer", "metric")
        )  # client mean per seed
        _show("membership AUC, per-client attacks averaged over clients and seeds", per_client)
        _show(
            "property inference over clients (mean over seeds)",
            summarize_over_seeds(pd.concat(prop), by=("attack", "observer", "metric")),
        )
        _show(
            "revealed mean latents decoded vs the dominant client's truth (per dominant "
            "client, mean over its types and the seeds)",
            summarize_over_seeds(pd.concat(prof), by=("target_client", "metric")),
        )
    for effect in (0.0, 0.5):
        frames = []
        for seed in range(args.sim_seeds):
            sim = _log(
                simulate(
                    n_cells=600,
                    n_genes=500,
                    n_batches=5,
                    n_cell_types=4,
                    batch_effect=effect,
                    composition=1.0,
                    seed=seed,
                )
            )
            cfg = FedScGenConfig(**{**SETTINGS["small"], "local_epochs": 2, "rounds": 2})
            views = capture_fedscgen_views(sim, **KEYS, config=cfg, seed=seed)
            frames.append(_attack(views, "fedscgen_property", seed))
        _show(
            f"property inference on the simulation, batch_effect={effect} (mean over seeds)",
            summarize_over_seeds(pd.concat(frames), by=("attack", "observer", "metric")),
        )
    if args.crypten:
        # the overfit setting (a trained decoder), seed 0, against the same plaintext run
        cfg = FedScGenConfig(**SETTINGS["overfit"], num_threads=args.threads)
        crypt = capture_fedscgen_views(panc, **KEYS, config=cfg, seed=0, backend="crypten")
        plain = capture_fedscgen_views(panc, **KEYS, config=cfg, seed=0)
        diff = max(
            float(np.abs(c.aggregate - p.aggregate).max())
            for c, p in zip(crypt.record.operations, plain.record.operations, strict=True)
            if c.tag == "correction/mean_latent"
        )
        print(
            f"\n# crypten vs plaintext (overfit, seed 0): max |mean-latent sum difference| = {diff:.2e}"
        )
        for name, views in (("crypten", crypt), ("plaintext", plain)):
            _show(
                f"{name}: property inference from revealed values",
                _attack(views, "fedscgen_property", 0),
            )
            prof = _attack(views, "fedscgen_revealed_values", 0)
            _show(f"{name}: revealed profiles", prof.groupby("metric")[["value", "chance"]].mean())


if __name__ == "__main__":
    main()
