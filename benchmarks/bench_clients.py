"""Many clients (issue 20, point 3): secure-aggregation cost per round and FedscGen's time.

Part 1, ``aggregation`` (no training): one FedAvg round of a FedscGen-sized model state
(the VAE at ``--genes`` genes, hidden 800-800, latent 10: ~3.9M values at 2,000 genes)
from K clients, K in ``--clients`` (10 50 100), through the plaintext and the
crypten backend (3 parties + dealer on this machine; started once, not timed), and
FedscGen's correction argmax over K x ``--types`` counts (checked against numpy). Prints
per K: median wall and CPU seconds per round (this process + the parties), crypten /
plaintext for both, MB each party received, the MPC rounds, the argmax's seconds and MPC
rounds. Memory: the coordinator holds K x values float64 (K = 200 at 2,000 genes: 6 GB).

Part 2, ``fedscgen``: FedscGen with one client per donor on simulated data
(``fedsc.datasets.simulate``: ``--cells`` cells x ``--genes`` genes, 5 sites x K/5 donors,
``batch_key="donor"``), ``--rounds`` x ``--epochs``, plaintext and crypten, each in a
fresh process: method seconds (training + correction; crypten's party start-up
included), CPU seconds (process + parties), peak RSS; ratio crypten / plaintext (target
<= 1.5 at 10^5 cells and 50 clients).

Threads are pinned (``--threads``, default 2); the load average is printed, since the
machine's other jobs change wall time (CPU seconds less so).

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/bench_clients.py \
        [--parts aggregation fedscgen] [--clients 10 50 100] [--cells 100000] \
        [--fedscgen-clients 50] [--rounds 8 --epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _cpu(pids: list[int]) -> float:
    """CPU seconds of this process, its reaped children and the live ``pids``."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def state_size(genes: int) -> int:
    """Values in FedscGen's model state at its defaults (what one FedAvg round carries)."""
    from fedsc.methods.fedscgen import FedScGenConfig
    from fedsc.methods.vae import VAE, derive_generator

    model = VAE(genes, FedScGenConfig(), derive_generator(0, 0))
    return sum(int(v.numel()) for v in model.state_dict().values())


def aggregation(args: argparse.Namespace) -> None:
    import numpy as np

    import smpc

    n_values = state_size(args.genes)
    print(f"\nFedAvg of {n_values:,} values (FedscGen at {args.genes} genes) per round")
    head = (
        f"{'K':>5}{'plain s':>9}{'cpu':>6}{'crypten s':>11}{'cpu':>6}{'ratio':>7}{'cpu ratio':>10}"
    )
    head += f"{'MB/party':>10}"
    print(head + f"{'rounds':>8}{'argmax s':>10}{'argmax rnds':>12}{'load':>6}")
    rng = np.random.default_rng(0)
    with smpc.make_aggregator("crypten") as agg, smpc.make_aggregator("plaintext") as plain:
        for k in args.clients:
            models = [rng.standard_normal(n_values).astype(np.float32) for _ in range(k)]
            weights = rng.integers(100, 2000, k).astype(float).tolist()
            counts = [rng.integers(0, 500, args.types).astype(float) for _ in range(k)]
            agg.reserve(k, n_values)
            agg.weighted_mean(models, weights)  # warm-up (buffers for this K)
            pids = list(getattr(agg, "pids", []) or [])
            walls, cpus, plain_walls, plain_cpus, arg_walls = [], [], [], [], []
            for _ in range(args.reps):
                c0, t0 = _cpu(pids), time.perf_counter()
                agg.weighted_mean(models, weights)
                walls.append(time.perf_counter() - t0)
                cpus.append(_cpu(pids) - c0)
                entry = agg.ledger.entries[-1]
                c0, t0 = _cpu([]), time.perf_counter()
                plain.weighted_mean(models, weights)
                plain_walls.append(time.perf_counter() - t0)
                plain_cpus.append(_cpu([]) - c0)
                t0 = time.perf_counter()
                winners = agg.argmax(counts)
                arg_walls.append(time.perf_counter() - t0)
                arg_entry = agg.ledger.entries[-1]
            expected = np.argmax(np.stack(counts), axis=0)  # ties: lowest index, as numpy
            assert np.array_equal(np.asarray(winners), expected), "argmax differs from numpy"
            w, p = statistics.median(walls), statistics.median(plain_walls)
            wc, pc = statistics.median(cpus), statistics.median(plain_cpus)
            mb = max(entry.bytes_to_party) / 2**20 if entry.bytes_to_party else float("nan")
            print(
                f"{k:>5}{p:>9.3f}{pc:>6.2f}{w:>11.3f}{wc:>6.2f}{w / p:>7.1f}{wc / max(pc, 1e-3):>10.1f}"
                f"{mb:>10.1f}{entry.mpc_rounds:>8}{statistics.median(arg_walls):>10.3f}"
                f"{arg_entry.mpc_rounds:>12}{os.getloadavg()[0]:>6.1f}",
                flush=True,
            )
            del models


def fedscgen_child(args: argparse.Namespace) -> dict:
    """One FedscGen run with one client per donor, in this process."""
    import scanpy as sc
    import torch

    import smpc
    from fedsc import settings
    from fedsc.datasets import simulate
    from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen

    k = args.fedscgen_clients
    adata = simulate(args.cells, args.genes, 5, args.types, n_donors=k // 5, seed=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    settings.apply()
    torch.set_num_threads(args.threads)  # after scanpy
    cfg = FedScGenConfig(rounds=args.rounds, local_epochs=args.epochs)
    cpu0, t0 = _cpu([]), time.perf_counter()
    with smpc.make_aggregator(args.backend) as agg:
        res = run_fedscgen(
            adata, batch_key="donor", labels_key="cell_type", aggregator=agg, config=cfg, seed=0
        )
        pids = list(getattr(agg, "pids", []) or [])
        cpu = _cpu(pids) - cpu0
        agg_seconds = sum(float(e.seconds or 0.0) for e in agg.ledger.entries)
    return {
        "backend": args.backend,
        "clients": len(res.info["clients"]),
        "method_s": time.perf_counter() - t0,
        "training_s": res.info["seconds_training"],
        "aggregation_s": agg_seconds,
        "cpu_s": cpu,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def fedscgen(args: argparse.Namespace) -> None:
    k = args.fedscgen_clients
    print(
        f"\nFedscGen, {args.cells} cells x {args.genes} genes, {k} clients (one per donor), "
        f"{args.rounds} x {args.epochs}, {args.threads} threads"
    )
    env = {**os.environ, "FEDSC_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    env.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="0")  # before the child loads torch
    out = {}
    for backend in ("plaintext", "crypten"):
        cmd = [sys.executable, __file__, "--child", backend, "--cells", str(args.cells)]
        cmd += ["--genes", str(args.genes), "--fedscgen-clients", str(k), "--types"]
        cmd += [str(args.types), "--rounds", str(args.rounds), "--epochs", str(args.epochs)]
        cmd += ["--threads", str(args.threads)]
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"  {backend}: FAILED {proc.stderr.strip().splitlines()[-1:]}")
            return
        out[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {json.dumps(out[backend])}  load {load:.1f}->{os.getloadavg()[0]:.1f}")
    p, c = out["plaintext"], out["crypten"]
    print(
        f"  crypten / plaintext: method time {c['method_s'] / p['method_s']:.2f} (target <= 1.5), "
        f"CPU {c['cpu_s'] / p['cpu_s']:.2f}; secure aggregation {c['aggregation_s']:.1f} s of "
        f"{c['method_s']:.1f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["aggregation", "fedscgen"])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--fedscgen-clients", type=int, default=50)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--types", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=("plaintext", "crypten"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.backend = args.child
        print(json.dumps(fedscgen_child(args)))
        return
    if args.fedscgen_clients % 5:
        p.error("--fedscgen-clients must be a multiple of 5 (5 sites x donors per site)")
    print(f"bench_clients: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    if "aggregation" in args.parts:
        aggregation(args)
    if "fedscgen" in args.parts:
        fedscgen(args)


if __name__ == "__main__":
    main()
