"""FedscGen deployed on Flower vs the same run in simulation: wall time and bytes per round.

Bundled pancreas (normalize_total + log1p), the three batches celseq, celseq2 and
smartseq2 as three sites (one SuperNode + worker each, on 127.0.0.1), FedscGen with
``--rounds`` rounds x 1 local epoch, one torch thread everywhere. Runs, in this script:

- simulation, plaintext aggregator (``run_fedscgen`` in this process): the baseline;
- deployment, plaintext transport;
- deployment, SecAgg+ transport (Flower's SecAggPlusWorkflow);
- with ``--cold``, also the plaintext deployment with Flower's own SuperExec (a fresh
  ``flwr-clientapp`` interpreter per message) instead of fedsc's warm one
  (:mod:`fedsc.deploy.superexec`).

Prints per variant: wall time, this process's CPU time (the deployment's work happens in
other processes, so its CPU column is the coordinator's share only), bytes the
coordinator received per round (simulation: the plaintext ledger's coordinator bytes;
deployment: every array in every message the ServerApp received, incl. SecAgg+'s keys
and shares), and both as ratios to simulation. Deployment start-up (SuperLink, SuperNodes,
workers) is timed separately and not in the run's wall time.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_deployment.py [--rounds 2] [--cold]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SITES = ["celseq", "celseq2", "smartseq2"]


def _received_bytes(folder: Path) -> int:
    total = 0
    for npz in (folder / "messages").glob("*.npz"):
        with np.load(npz) as arrays:
            total += sum(arrays[k].nbytes for k in arrays.files)
    return total


def main() -> None:
    """Run the three variants and print the table."""
    import torch

    torch.set_num_threads(1)
    import smpc
    from fedsc.datasets import pancreas
    from fedsc.deploy.local import LocalDeployment, split_by_batch
    from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen
    from fedsc.preprocessing import preprocess

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also Flower's own SuperExec")
    args = parser.parse_args()
    data = preprocess(pancreas(), n_top_genes=None)
    data = data[data.obs["batch"].isin(SITES)].copy()
    config = FedScGenConfig(rounds=args.rounds, local_epochs=1, num_threads=1)
    params = {"config": config.to_dict(), "seed": 0, "batch_key": "batch", "label_key": "celltype"}
    rows = []

    w0, c0 = time.perf_counter(), time.process_time()
    with smpc.make_aggregator("plaintext") as agg:
        run_fedscgen(
            data.copy(), batch_key="batch", label_key="celltype", aggregator=agg, config=config
        )
        sim_bytes = int(agg.ledger.totals()["coordinator_bytes"])
    rows.append(
        ("simulation (plaintext)", time.perf_counter() - w0, time.process_time() - c0, sim_bytes)
    )

    startup = {}
    setups = [(True, ("plaintext", "secagg+"))] + ([(False, ("plaintext",))] if args.cold else [])
    for warm, transports in setups:
        label = "" if warm else ", Flower's SuperExec"
        with tempfile.TemporaryDirectory() as tmp:
            paths = split_by_batch(data, "batch", Path(tmp) / "sites")
            t = time.perf_counter()
            with LocalDeployment(paths, Path(tmp) / "work", warm_clientapps=warm) as dep:
                startup[warm] = time.perf_counter() - t
                for transport in transports:
                    folder = Path(tmp) / transport.replace("+", "p")
                    run_config = {
                        "params": json.dumps(params),
                        "transport": transport,
                        "log-messages": True,
                    }
                    w0, c0 = time.perf_counter(), time.process_time()
                    dep.run(run_config, folder, timeout=1200)
                    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                    name = f"deployment ({transport}{label})"
                    rows.append((name, wall, cpu, _received_bytes(folder)))

    base_wall, base_bytes = rows[0][1], rows[0][3]
    print(
        f"FedscGen, 3 pancreas sites, {args.rounds} rounds x 1 epoch, 1 thread; "
        f"deployment start-up {startup[True]:.1f} s (not included)"
    )
    print(
        f"{'variant':44s} {'wall s':>8s} {'cpu s':>7s} {'x wall':>7s} {'bytes/round':>12s} {'x bytes':>8s}"
    )
    for name, wall, cpu, nbytes in rows:
        print(
            f"{name:44s} {wall:8.2f} {cpu:7.2f} {wall / base_wall:7.2f} "
            f"{nbytes / args.rounds:12.0f} {nbytes / max(base_bytes, 1):8.2f}"
        )


if __name__ == "__main__":
    main()
