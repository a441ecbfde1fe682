"""FedscGen on a busy machine: slowdown beside one CPU-bound process, fedsc settings vs defaults.

On a 2-core machine FedscGen took 141 s alone and 2002 s (bit-identical output) while one
other job ran: torch's OpenMP threads spin-wait for a core held by the other job. This
script runs ``fedsc.tl.fedscgen`` (plaintext) on simulated data (normalize_total + log1p)
four times, each in a fresh subprocess so that environment settings apply:

- ``fedsc``: ``fedsc.settings.apply()`` before torch loads (passive OpenMP waiting,
  threads = CPUs available to the process), alone and beside one busy process;
- ``defaults``: torch's defaults (spinning OpenMP threads, threads = ``os.cpu_count()``),
  alone and beside one busy process (the baseline; ~14x before).

It prints wall and CPU time (all threads of the run) and the slowdown ratio
busy / alone per mode. Target for ``fedsc``: <= 2.5x.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_threads.py [--cells 10000] [--genes 2000]
        [--hidden 256 256] [--rounds 3] [--epochs 1] [--busy 1] [--skip-defaults]

Run it on an otherwise quiet machine: any other load counts as "busy" in the "alone" runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time

MODES = ("fedsc", "defaults")
_ENV_KEYS = (
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "FEDSC_THREADS",
    "FEDSC_PASSIVE_WAIT",
)


def _burn() -> None:  # pragma: no cover - runs in the competing process
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def run_child(mode: str, args: argparse.Namespace) -> dict:
    """One FedscGen run in this (fresh) process; returns wall/CPU seconds and threads."""
    if mode == "fedsc":
        import fedsc.settings

        fedsc.settings.apply()  # before torch loads: passive waiting, available CPUs
    import scanpy as sc
    import torch

    import fedsc.tl
    from fedsc.datasets import simulate

    if mode == "defaults":
        torch.set_num_threads(os.cpu_count() or 1)
    adata = simulate(args.cells, args.genes, args.batches, args.types, seed=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    if mode == "fedsc":
        fedsc.settings.apply()  # scanpy's imports may have changed thread counts
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    cpu0, start = _cpu_seconds(), time.perf_counter()
    fedsc.tl.fedscgen(
        adata,
        hidden=tuple(args.hidden),
        rounds=args.rounds,
        local_epochs=args.epochs,
        seed=0,
        show_progress=False,
    )
    wall = time.perf_counter() - start
    out = adata.layers["fedscgen"]
    return {
        "mode": mode,
        "seconds": wall,
        "cpu_seconds": _cpu_seconds() - cpu0,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "checksum": float(abs(out).sum(dtype="float64")),
    }


def _spawn(mode: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode]
    for k in ("cells", "genes", "batches", "types", "rounds", "epochs"):
        cmd.append(f"--{k}={getattr(args, k)}")
    cmd += ["--hidden", *map(str, args.hidden)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(mode: str, args: argparse.Namespace, busy: int) -> dict:
    burners = [mp.get_context("spawn").Process(target=_burn, daemon=True) for _ in range(busy)]
    for b in burners:
        b.start()
    try:
        load = os.getloadavg()[0]
        out = _spawn(mode, args)
        out["load_before"] = load
        return out
    finally:
        for b in burners:
            b.terminate()
            b.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=10_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--types", type=int, default=6)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--busy", type=int, default=1, help="competing CPU-bound processes")
    p.add_argument("--skip-defaults", action="store_true", help="only the fedsc settings")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return

    from fedsc.settings import available_cpus

    print(
        f"FedscGen threads benchmark: {args.cells} cells x {args.genes} genes, hidden "
        f"{args.hidden}, {args.rounds} rounds x {args.epochs} local epochs; "
        f"os.cpu_count()={os.cpu_count()}, available CPUs={available_cpus()}, "
        f"competing processes={args.busy}"
    )
    modes = MODES[:1] if args.skip_defaults else MODES
    ratios: dict[str, tuple[float, float]] = {}
    checksums: dict[str, tuple[float, int]] = {}
    # The first child of a fresh machine pays one-off costs (page cache, compile caches):
    # run it once and discard it, so no mode is measured cold.
    warm = _measure(modes[0], args, 0)
    print(f"  warm-up run (discarded): {warm['seconds']:.1f} s wall")
    for mode in modes:
        alone = _measure(mode, args, 0)
        busy = _measure(mode, args, args.busy)
        for label, r in (("alone", alone), ("busy", busy)):
            print(
                f"  {mode:9s} {label:6s} {r['seconds']:8.1f} s wall {r['cpu_seconds']:8.1f} s CPU"
                f"   ({r['torch_threads']} torch threads, OMP_WAIT_POLICY={r['omp_wait_policy']};"
                f" load average before {r['load_before']:.1f})"
            )
        if alone["checksum"] != busy["checksum"]:
            print(f"  WARNING: {mode} outputs differ between the two runs")
        checksums[mode] = (alone["checksum"], alone["torch_threads"])
        ratios[mode] = (
            busy["seconds"] / alone["seconds"],
            busy["cpu_seconds"] / alone["cpu_seconds"],
        )
    for mode, (wall, cpu) in ratios.items():
        target = "   (target <= 2.5)" if mode == "fedsc" else "   (baseline)"
        print(f"  slowdown busy / alone, {mode:9s} wall {wall:5.2f} x, CPU {cpu:5.2f} x{target}")
    if len(checksums) == 2 and len({t for _, t in checksums.values()}) == 1:
        same = len({c for c, _ in checksums.values()}) == 1
        print(f"  same thread count in both modes; outputs identical: {same}")
    print("  (a load average above ~0.5 before an 'alone' run means the machine was not quiet)")


if __name__ == "__main__":
    main()
