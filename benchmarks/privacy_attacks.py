"""Privacy attacks on FedscGen (issue 9, 2c-2e): membership, property inference, revealed values.

Data: the bundled 500-cell pancreas (5 technologies = 5 clients, 100 cells each, 6 cell
types), normalize_total(1e4) + log1p, all 2000 genes; for property inference also a
simulation (``fedsc.datasets.simulate``: 600 cells, 500 genes, 5 batches, 4 types, Dirichlet
1 compositions) without and with batch effects. Settings of FedscGen (``--settings``):

- ``small``: hidden (64, 64), batch 30, 3 rounds x 1 local epoch (the test scale);
- ``default``: FedscGen's table: hidden (800, 800), batch 50, 8 rounds x 2 local epochs;
- ``overfit``: hidden (128, 128), batch 30, 2 rounds x 20 local epochs (local overfitting).

Membership (members: a client's 90 % training cells; non-members: its 10 % validation
cells; pooled over the 5 clients: 450 vs 50 per seed) by the loss-threshold, reference
(broadcast/initial state) and offline LiRA (``--shadows`` shadows of the same
hyper-parameters on the other clients' cells) attacks, for the plaintext coordinator (a
client's last local update) and for every client (the global model); mean over seeds with
a 95 % t interval. Property inference: plaintext coordinator (update's batch-norm mean +
NNLS on auxiliary type profiles) and secure aggregation (revealed dominant clients and
counts). Revealed values: the dominant client's decoded mean latent vs its true mean
expression per type. ``--crypten`` repeats the revealed-value attacks on a CrypTen run
(overfit setting, seed 0) next to the same plaintext run.

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
from fedsc.privacy.membership import (
    capture_fedscgen_views,
    fedscgen_membership_scores,
    scores_to_metrics,
    summarize_over_seeds,
)
from fedsc.privacy.property_inference import (
    revealed_composition_attack,
    update_composition_attack,
)
from fedsc.privacy.revealed_values import revealed_profile_attack

SETTINGS = {
    "small": {"hidden": (64, 64), "batch_size": 30, "rounds": 3, "local_epochs": 1},
    "default": {"hidden": (800, 800), "batch_size": 50, "rounds": 8, "local_epochs": 2},
    "overfit": {"hidden": (128, 128), "batch_size": 30, "rounds": 2, "local_epochs": 20},
}
KEYS = {"batch_key": "batch", "label_key": "cell_type"}


def _log(adata):
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def _show(title: str, df: pd.DataFrame) -> None:
    print(f"\n## {title}")
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.precision", 3):
        print(df.to_string(index=False))


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
        scores, prop, prof = [], [], []
        start = time.perf_counter()
        for seed in args.seeds:
            views = capture_fedscgen_views(panc, **KEYS, config=cfg, seed=seed)
            scores.append(fedscgen_membership_scores(views, n_shadows=args.shadows))
            prop.append(update_composition_attack(views))
            prop.append(revealed_composition_attack(views))
            prof.append(revealed_profile_attack(views))
        seconds = time.perf_counter() - start
        all_scores = pd.concat(scores, ignore_index=True)
        rows = scores_to_metrics(all_scores)
        print(f"\n# setting {name}: {SETTINGS[name]}, seeds {args.seeds}, {seconds:.0f} s")
        pooled = rows[rows["target_client"] == "all"]
        _show(
            "membership, pooled over clients (mean over seeds, 95 % t interval)",
            summarize_over_seeds(pooled),
        )
        _show(
            "membership, cells of all clients and seeds in one ROC (resolves low FPRs)",
            scores_to_metrics(all_scores.assign(seed="pooled"), per_client=False),
        )
        auc = rows[(rows["target_client"] != "all") & (rows["metric"] == "auc")]
        per_client = summarize_over_seeds(
            auc, by=("attack", "observer", "metric")
        )  # client mean per seed
        _show("membership AUC, per-client attacks averaged over clients and seeds", per_client)
        props = pd.concat(prop, ignore_index=True)
        _show(
            "property inference over clients (mean over seeds)",
            summarize_over_seeds(
                props[props["target_client"] == "all"], by=("attack", "observer", "metric")
            ),
        )
        profiles = pd.concat(prof, ignore_index=True)
        _show(
            "revealed mean latents decoded vs the dominant client's truth (per type, mean over "
            "seeds)",
            summarize_over_seeds(profiles, by=("cell_type", "metric")),
        )
    for effect in (0.0, 0.5):
        rows = []
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
            rows += [update_composition_attack(views), revealed_composition_attack(views)]
        df = pd.concat(rows, ignore_index=True)
        _show(
            f"property inference on the simulation, batch_effect={effect} (mean over seeds)",
            summarize_over_seeds(
                df[df["target_client"] == "all"], by=("attack", "observer", "metric")
            ),
        )
    if args.crypten:
        # the overfit setting (a trained decoder), seed 0, against the same plaintext run
        cfg = FedScGenConfig(**SETTINGS["overfit"], num_threads=args.threads)
        crypt = capture_fedscgen_views(panc, **KEYS, config=cfg, seed=0, backend="crypten")
        plain = capture_fedscgen_views(panc, **KEYS, config=cfg, seed=0)
        diff = max(
            float(np.abs(crypt.revealed["mean_latent"][t] - plain.revealed["mean_latent"][t]).max())
            for t in plain.revealed["mean_latent"]
        )
        print(f"\n# crypten vs plaintext (overfit, seed 0): max |M_t difference| = {diff:.2e}")
        for name, views in (("crypten", crypt), ("plaintext", plain)):
            _show(
                f"{name}: property inference from revealed values",
                revealed_composition_attack(views),
            )
            prof = revealed_profile_attack(views)
            _show(f"{name}: revealed profiles", prof[prof["cell_type"] == "all"])


if __name__ == "__main__":
    main()
