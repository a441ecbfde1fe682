"""Secure aggregation cost: crypten backend (3 local parties + dealer) vs plaintext.

Measures, on this machine: the one-off party start-up (first aggregator, which also starts
the fork server that pre-imports CrypTen; a second one; one borrowed from the warm pool),
FedAvg of a 3M-value model from 5 clients (median seconds per round, wall and CPU, ratio to
plaintext; target <= 0.2 s on 2 cores), argmax over 5 x 10 counts and bytes per party per
round. ``--profile`` adds where a crypten round spends its time (coordinator phases and a
cProfile of the coordinator).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_aggregation.py [--reps 5] [--values 3000000]
        [--dtype float32] [--transport shm|pipe] [--profile]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # pin BLAS threads before numpy loads

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import smpc  # noqa: E402
from smpc import party_pool  # noqa: E402
from smpc.crypten_backend import CryptenAggregator  # noqa: E402

CLIENTS = 5


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of this process (all threads) plus the live processes ``pids``."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def _median(fn, reps: int, pids: list[int]) -> tuple[float, float, float]:
    """Median wall, best wall and median CPU seconds (coordinator + parties) of ``fn()``.

    On a machine shared with other jobs the best wall and the CPU seconds are the steadier.
    """
    walls, cpus = [], []
    for _ in range(reps):
        cpu = _cpu_seconds(pids)
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds(pids) - cpu)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--values", type=int, default=3_000_000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--transport", default="shm", choices=["shm", "pipe"])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    models = [rng.normal(0, 1, size=args.values).astype(args.dtype) for _ in range(CLIENTS)]
    weights = rng.integers(100, 5000, size=CLIENTS).astype(float).tolist()
    counts = [rng.integers(0, 500, size=10).astype(float) for _ in range(CLIENTS)]

    start = time.perf_counter()
    CryptenAggregator(transport=args.transport).close()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    CryptenAggregator(transport=args.transport).close()
    second = time.perf_counter() - start
    with party_pool.warm_parties():
        CryptenAggregator(transport=args.transport).close()
        start = time.perf_counter()
        CryptenAggregator(transport=args.transport).close()
        borrowed = time.perf_counter() - start
    agg = CryptenAggregator(transport=args.transport)
    with agg, smpc.make_aggregator("plaintext") as plain:
        pids = agg.pids
        agg.weighted_mean(models, weights)  # warm-up: first touch of the parties' buffers
        plain.weighted_mean(models, weights)
        fedavg, fedavg_best, fedavg_cpu = _median(
            lambda: agg.weighted_mean(models, weights), args.reps, pids
        )
        phases = dict(agg.last_timing)
        entry = agg.ledger.entries[-1]
        plain_s, plain_best, plain_cpu = _median(
            lambda: plain.weighted_mean(models, weights), args.reps, []
        )
        agg.argmax(counts)
        argmax, _, _ = _median(lambda: agg.argmax(counts), args.reps, pids)
        arg_entry = agg.ledger.entries[-1]
        exact = plain.weighted_mean(models, weights)
        error = float(np.max(np.abs(agg.weighted_mean(models, weights) - exact)))
        profile = None
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            agg.weighted_mean(models, weights)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            profile = out.getvalue()

    def mb(values: list[int]) -> str:
        return " / ".join(f"{v / 1e6:.1f}" for v in values)

    label = f"FedAvg {args.values:,} {args.dtype} x {CLIENTS} clients"
    rows = [
        ("party start-up, cold (fork server + 3 parties + dealer)", f"{cold:.2f} s"),
        ("party start-up, second (fork server running)", f"{second:.2f} s"),
        ("party start-up, borrowed from the warm pool", f"{borrowed:.3f} s"),
        (f"{label}, crypten/{args.transport} (median wall)", f"{fedavg:.3f} s"),
        ("  best wall", f"{fedavg_best:.3f} s"),
        ("  CPU seconds (coordinator + parties)", f"{fedavg_cpu:.3f} s"),
        ("  phases: " + ", ".join(phases), " / ".join(f"{v:.3f}" for v in phases.values())),
        ("FedAvg, plaintext (median wall)", f"{plain_s:.3f} s"),
        ("  best wall", f"{plain_best:.3f} s"),
        ("  CPU seconds", f"{plain_cpu:.3f} s"),
        ("FedAvg crypten / plaintext (median wall)", f"{fedavg / plain_s:.2f}x"),
        ("FedAvg crypten / plaintext (best wall)", f"{fedavg_best / plain_best:.2f}x"),
        ("FedAvg crypten / plaintext (CPU)", f"{fedavg_cpu / plain_cpu:.2f}x"),
        ("FedAvg max |crypten - plaintext|", f"{error:.1e}"),
        ("FedAvg MB from clients per party (0/1/2)", mb(entry.bytes_to_party)),
        ("FedAvg MB between parties per party (0/1/2)", mb(entry.bytes_between_parties)),
        (f"argmax {CLIENTS} x 10 counts, crypten (median)", f"{argmax:.3f} s"),
        ("argmax MB between parties per party (0/1/2)", mb(arg_entry.bytes_between_parties)),
        ("argmax MPC rounds", str(arg_entry.mpc_rounds)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    print("-" * (width + 12))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if profile:
        print("\ncoordinator profile of one crypten round:\n" + profile)


if __name__ == "__main__":
    main()
