"""Client-level DP deployed on Flower, per transport, against the same run simulated.

Three pancreas batches (celseq, celseq2, smartseq2) as three sites on 127.0.0.1 (one
SuperNode and worker each; the CrypTen parties and dealer for ``crypten``), FedscGen
(1 round x 1 epoch, hidden 128-128) with ``dp: {level: client, noise_multiplier: 1,
clip: 1, delta: 0.01, simulated: true}``: each site clips its update and adds its noise
share (``fedsc.deploy.site_mechanisms``), seeded from the run seed only because the run
says ``simulated`` (so the deployment can be compared with the simulation). Prints per
transport: wall seconds of the run (deployment start-up excluded), the largest |latent
difference| to the simulated run's outputs (plaintext: 0; SecAgg+: its quantisation;
CrypTen: fixed-point rounding), whether the ``dp`` record equals the simulation's, and
the ε per observer read off the coordinator's ledger (plaintext: the coordinator sees
each site's noisy update, σ/√3; SecAgg+ and CrypTen: only aggregates).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/deployed_dp_transports.py \
        [plaintext secagg+ crypten]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import anndata as ad
import numpy as np

import smpc
from fedsc.datasets import pancreas
from fedsc.deploy.local import LocalDeployment, split_by_batch
from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen
from fedsc.preprocessing import preprocess
from fedsc.privacy.accounting import DPConfig

SITES = ["celseq", "celseq2", "smartseq2"]
SEED = 3
CONFIG = FedScGenConfig(rounds=1, local_epochs=1, num_threads=1, hidden=(128, 128))
DP = {"level": "client", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-2, "simulated": True}


def main(transports: list[str]) -> None:
    """Run each transport once on one deployment; print one line each."""
    full = preprocess(pancreas(), n_top_genes=None)
    data = full[full.obs["batch"].isin(SITES)].copy()
    config = replace(CONFIG, dp=DP)
    fields = {k: v for k, v in DP.items() if k != "simulated"}
    spec = DPConfig.from_dict(fields).resolve(CONFIG.rounds).mechanism_spec()
    sim = data.copy()
    with smpc.make_aggregator("plaintext", mechanisms=[spec], mechanism_seed=SEED) as agg:
        result = run_fedscgen(
            sim, batch_key="batch", labels_key="celltype", aggregator=agg, config=config, seed=SEED
        )
    root = Path(tempfile.mkdtemp(prefix="fedsc-deployed-dp-"))
    paths = split_by_batch(data, "batch", root / "site-files")
    params = {"config": config.to_dict(), "seed": SEED, "batch_key": "batch"}
    params["labels_key"] = "celltype"
    with LocalDeployment(paths, root / "work", parties="crypten" in transports) as dep:
        for transport in transports:
            start = time.perf_counter()
            record = dep.run(
                {"params": json.dumps(params), "transport": transport},
                root / transport.replace("+", "p"),
                timeout=600,
            )
            seconds = time.perf_counter() - start
            diff = 0.0
            for s in SITES:
                got = ad.read_h5ad(dep.site_out(s) / f"{s}.h5ad").obsm["X_fedscgen"]
                want = sim[sim.obs["batch"] == s].obsm["X_fedscgen"]
                diff = max(diff, float(np.abs(got - want).max()))
            by_observer = record["dp"].pop("epsilon_by_observer")
            same = record["dp"] == json.loads(json.dumps(result.info["dp"]))
            eps = {o: None if e is None else round(e, 3) for o, e in by_observer.items()}
            print(
                f"{transport}: run {seconds:.1f} s, max |latent diff| {diff:.2g}, "
                f"dp record equal {same}, epsilon by observer {eps}",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:] or ["plaintext", "secagg+", "crypten"])
