"""Secure aggregation cost: crypten backend (3 local parties + dealer) vs plaintext.

Measures, on this machine: the one-off party start-up (first aggregator, which also starts
the fork server that pre-imports CrypTen, and a second one), FedAvg of a 3M-float model
from 5 clients (median seconds per round, ratio to plaintext; target <= 2 s on 2 cores),
argmax over 5 x 10 counts (median seconds; target <= 0.5 s) and bytes per party per round.

    .venv/bin/python benchmarks/bench_aggregation.py [--reps 5] [--values 3000000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import smpc
from smpc.crypten_backend import CryptenAggregator

CLIENTS = 5


def _median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--values", type=int, default=3_000_000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    models = [rng.normal(0, 1, size=args.values) for _ in range(CLIENTS)]
    weights = rng.integers(100, 5000, size=CLIENTS).astype(float).tolist()
    counts = [rng.integers(0, 500, size=10).astype(float) for _ in range(CLIENTS)]

    start = time.perf_counter()
    CryptenAggregator().close()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    agg = CryptenAggregator()
    warm = time.perf_counter() - start
    with agg, smpc.make_aggregator("plaintext") as plain:
        agg.weighted_mean(models, weights)  # warm-up: first touch of the parties' buffers
        fedavg = _median_seconds(lambda: agg.weighted_mean(models, weights), args.reps)
        entry = agg.ledger.entries[-1]
        plain_s = _median_seconds(lambda: plain.weighted_mean(models, weights), args.reps)
        agg.argmax(counts)
        argmax = _median_seconds(lambda: agg.argmax(counts), args.reps)
        arg_entry = agg.ledger.entries[-1]
        exact = plain.weighted_mean(models, weights)
        error = float(np.max(np.abs(agg.weighted_mean(models, weights) - exact)))

    def mb(values: list[int]) -> str:
        return " / ".join(f"{v / 1e6:.1f}" for v in values)

    rows = [
        ("party start-up, cold (fork server + 3 parties + dealer)", f"{cold:.2f} s"),
        ("party start-up, warm (fork server running)", f"{warm:.2f} s"),
        (f"FedAvg {args.values:,} floats x {CLIENTS} clients, crypten (median)", f"{fedavg:.2f} s"),
        ("FedAvg, plaintext (median)", f"{plain_s:.3f} s"),
        ("FedAvg crypten / plaintext", f"{fedavg / plain_s:.0f}x"),
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


if __name__ == "__main__":
    main()
