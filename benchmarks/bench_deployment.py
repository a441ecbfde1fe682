"""FedscGen deployed on Flower vs the same run in simulation: wall, CPU, bytes, and where
a deployed run's time goes.

Bundled pancreas (normalize_total + log1p), the three batches celseq, celseq2 and
smartseq2 as three sites (one SuperNode + worker each, on 127.0.0.1), FedscGen with
``--rounds`` rounds x 1 local epoch, one torch thread everywhere. Runs, in this script:

- simulation, plaintext aggregator (``run_fedscgen`` in this process): the baseline;
- deployment, plaintext transport; SecAgg+ (Flower's SecAggPlusWorkflow); CrypTen
  (three parties and the dealer as processes; ``--no-crypten`` skips it);
- with ``--cold``, also the plaintext deployment with Flower's own SuperExec (a fresh
  ``flwr-clientapp`` interpreter per message) instead of fedsc's warm one.

Both sides start warm: the simulation process imports ``torch._dynamo`` (which torch's
Adam imports on its first step) before it is timed, as each site worker does when it
starts (:mod:`fedsc.deploy.site_worker`). Deployment start-up (SuperLink, SuperNodes,
workers) and a first 1-round plaintext run, which finishes it (the fork servers' and the
sites' imports), are timed apart and not in a run's wall time.

Prints per variant: wall time, CPU time (simulation: this process; deployment: every
process of the deployment, ServerApp and forked ClientApps included, plus this one),
bytes the coordinator received per round, all as ratios to simulation; then, from the
run's trace (:mod:`fedsc.deploy.trace`), the number of exchanges by step and the time of
each leg of an exchange summed over the run. The machine's load counts: compare ratios
from one invocation, and read the CPU column beside the wall one.

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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SITES = ["celseq", "celseq2", "smartseq2"]


def _received_bytes(folder: Path) -> int:
    total = 0
    for npz in (folder / "messages").glob("*.npz"):
        with np.load(npz) as arrays:
            total += sum(arrays[k].nbytes for k in arrays.files)
    return total


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes and all their descendants, ended ones included."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                total += sum(proc.cpu_times()[:4])  # user, system, and reaped children's
        except psutil.NoSuchProcess:
            continue
    return total


def _kind(step: str) -> str:
    return step.split(" ")[0] if step.startswith("secagg+") else step


def main() -> None:
    """Run the variants and print the tables."""
    import importlib

    import torch

    torch.set_num_threads(1)
    importlib.import_module("torch._dynamo")  # as the site workers do at start
    import smpc
    from fedsc.datasets import pancreas

    try:  # the trace module (absent from fedsc before it: the table is then skipped)
        from fedsc.deploy import trace
    except ImportError:
        trace = None
    from fedsc.deploy.local import LocalDeployment, split_by_batch
    from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen
    from fedsc.preprocessing import preprocess

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also Flower's own SuperExec")
    parser.add_argument("--no-crypten", action="store_true", help="skip the CrypTen run")
    args = parser.parse_args()
    data = preprocess(pancreas(), n_top_genes=None)
    data = data[data.obs["batch"].isin(SITES)].copy()
    config = FedScGenConfig(rounds=args.rounds, local_epochs=1, num_threads=1)
    params = {"config": config.to_dict(), "seed": 0, "batch_key": "batch", "labels_key": "celltype"}
    rows: list[tuple[str, float, float, int]] = []
    breakdowns: dict[str, dict[str, Any]] = {}

    w0, c0 = time.perf_counter(), time.process_time()
    with smpc.make_aggregator("plaintext") as agg:
        run_fedscgen(
            data.copy(), batch_key="batch", labels_key="celltype", aggregator=agg, config=config
        )
        sim_bytes = int(agg.ledger.totals()["coordinator_bytes"])
    rows.append(
        ("simulation (plaintext)", time.perf_counter() - w0, time.process_time() - c0, sim_bytes)
    )

    transports = ("plaintext", "secagg+") + (() if args.no_crypten else ("crypten",))
    setups = [(True, transports)] + ([(False, ("plaintext",))] if args.cold else [])
    startup: dict[bool, float] = {}
    first_run: dict[bool, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        traces = Path(tmp) / "trace"
        traces.mkdir()
        if trace is not None:
            os.environ[trace.TRACE_ENV] = str(traces)  # LocalDeployment passes it on
        for warm, names in setups:
            label = "" if warm else ", Flower's SuperExec"
            paths = split_by_batch(data, "batch", Path(tmp) / "sites")
            t = time.perf_counter()
            with LocalDeployment(
                paths, Path(tmp) / f"work-{warm}", warm_clientapps=warm, parties=warm
            ) as dep:
                startup[warm] = time.perf_counter() - t
                # a first run finishes the start-up (the fork servers' imports, the sites'
                # data and torch imports) and is timed apart: the table is per run
                t = time.perf_counter()
                warmup = {**params, "config": {**params["config"], "rounds": 1}}
                dep.run(
                    {"params": json.dumps(warmup), "transport": "plaintext"},
                    Path(tmp) / f"warmup-{warm}",
                    timeout=1200,
                )
                first_run[warm] = time.perf_counter() - t
                for transport in names:
                    folder = Path(tmp) / f"{transport.replace('+', 'p')}-{warm}"
                    run_config = {
                        "params": json.dumps(params),
                        "transport": transport,
                        "log-messages": True,
                    }
                    for old in traces.glob("*.jsonl"):
                        old.unlink()
                    pids = [os.getpid(), *(p.pid for p in dep.processes.values())]
                    cpu0 = _cpu_seconds(pids)
                    w0 = time.perf_counter()
                    dep.run(run_config, folder, timeout=1200)
                    wall = time.perf_counter() - w0
                    pids = [os.getpid(), *(p.pid for p in dep.processes.values())]
                    cpu = _cpu_seconds(pids) - cpu0
                    name = f"deployment ({transport}{label})"
                    rows.append((name, wall, cpu, _received_bytes(folder)))
                    if trace is not None:
                        breakdowns[name] = trace.breakdown(trace.read(traces))

    base_wall, base_cpu, base_bytes = rows[0][1], rows[0][2], rows[0][3]
    print(
        f"FedscGen, 3 pancreas sites, {args.rounds} rounds x 1 epoch, 1 thread; "
        f"deployment start-up {startup[True]:.1f} s + a first 1-round run "
        f"{first_run[True]:.1f} s (not included); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"{'variant':44s} {'wall s':>8s} {'cpu s':>7s} {'x wall':>7s} {'x cpu':>6s} "
        f"{'bytes/round':>12s} {'x bytes':>8s}"
    )
    for name, wall, cpu, nbytes in rows:
        print(
            f"{name:44s} {wall:8.2f} {cpu:7.2f} {wall / base_wall:7.2f} {cpu / base_cpu:6.2f} "
            f"{nbytes / args.rounds:12.0f} {nbytes / max(base_bytes, 1):8.2f}"
        )
    for name, b in breakdowns.items():
        kinds = Counter()
        for step, count in b["per_step"].items():
            kinds[_kind(step)] += count
        print(
            f"\n{name}: {b['exchanges']} exchanges ({dict(kinds)}), first push to last reply {b['total']:.2f} s"
        )
        for leg, seconds in b["legs"].items():
            per = seconds / max(b["exchanges"], 1)
            print(f"  {leg:44s} {seconds:7.2f} s  ({per:.3f} s per exchange)")
        for label, seconds in b.get("around", {}).items():
            print(f"  {label:44s} {seconds:7.2f} s")


if __name__ == "__main__":
    main()
