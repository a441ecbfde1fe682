"""FedscGen wall time and memory: plaintext vs CrypTen aggregation vs centralized scGen.

Synthetic 15 000 cells x 2 000 genes (``fedsc.datasets.simulate``, then normalize_total +
log1p), 5 batches, 6 cell types, FedscGen's table (hidden 800-800, latent 10, batch 50),
8 rounds x 2 local epochs. Each variant runs in its own fresh process (so peak memory is
its own) and is timed from the data in memory to the corrected outputs (training +
correction):

- centralized scGen, 16 epochs (= 8 x 2), no early stopping, + batch removal;
- FedscGen, plaintext aggregator;
- FedscGen, CrypTen aggregator (3 parties; party start-up included), if available.

Targets: FedscGen plaintext <= 1.25 x centralized scGen; FedscGen CrypTen <= 1.15 x
FedscGen plaintext.

``--case pancreas`` instead times the bundled pancreas data at the defaults (FedscGen,
8 rounds x 2 local epochs, hidden 800-800, seed 42, ``fedsc.tl.fedscgen`` on
``fedsc.datasets.pancreas()`` preprocessed as the runner does) in one process: plaintext,
crypten with fresh parties (as ``fedsc.tl`` starts them), and crypten as a sweep worker
runs it (parties kept warm across runs: the second run borrows them). Then
``--runner-repeats`` alternating plaintext/crypten pairs of ``execute_run`` as a sweep
worker runs them (parties kept warm; ``method_seconds``: loading the data to the corrected
cells), and as many pairs of the ``fedsc run`` command itself, each a fresh process with
fresh parties (``method_seconds`` from its run.json, and the whole process).
Target: crypten / plaintext method time <= 1.5. ``--rounds``/``--epochs`` shrink it for a
quick look.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fedscgen.py [--cells 15000] [--threads 2]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_fedscgen.py --case pancreas [--rounds 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

VARIANTS = ("scgen", "fedscgen-plaintext", "fedscgen-crypten")


def _data(args: argparse.Namespace):
    import scanpy as sc

    from fedsc.datasets import simulate

    adata = simulate(args.cells, args.genes, args.batches, args.types, seed=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (CrypTen parties), all threads."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """Run one variant in this process; return its timings and peak memory."""
    import torch

    import smpc
    from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen
    from fedsc.methods.scgen import ScGenConfig, batch_removal, train_scgen
    from fedsc.methods.vae import VAE, VAEConfig, derive_generator, make_optimizer

    adata = _data(args)
    torch.set_num_threads(args.threads)  # after scanpy, which resets it
    make_optimizer(VAE(4, VAEConfig(hidden=(4,), latent=2), derive_generator(0, 0)))  # warm-up
    keys = {"batch_key": "batch", "labels_key": "cell_type"}
    tracemalloc.start()
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    if name == "scgen":
        cfg = ScGenConfig(epochs=args.rounds * args.epochs, early_stopping=False)
        model = train_scgen(adata, config=cfg, seed=0)
        trained = time.perf_counter()
        batch_removal(model, adata, "batch", "cell_type")
    else:
        cfg = FedScGenConfig(rounds=args.rounds, local_epochs=args.epochs)
        backend = name.split("-")[1]
        with smpc.make_aggregator(backend) as agg:
            res = run_fedscgen(adata, **keys, aggregator=agg, config=cfg, seed=0)
            trained = start + res.info["seconds_training"]
            ledger_bytes = sum(
                int(getattr(e, "coordinator_bytes", 0) or 0) for e in agg.ledger.entries
            )
    total = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0
    _, traced_peak = tracemalloc.get_traced_memory()
    out = {
        "variant": name,
        "seconds": total,
        "seconds_training": trained - start,
        "cpu_seconds": cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "tracemalloc_peak_mib": traced_peak / 2**20,
    }
    if name != "scgen":
        out["coordinator_bytes"] = ledger_bytes
    return out


def _pin_threads(threads: int) -> None:
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def _process_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by the live processes ``pids`` (from /proc)."""
    import os

    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def _forkserver_pids() -> list[int]:
    """The multiprocessing fork server of this process (parties are forked from it), if any."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return [pid] if pid else []


def run_pancreas(args: argparse.Namespace) -> None:
    """Bundled pancreas at FedscGen's defaults: method time, crypten vs plaintext."""
    import torch

    import fedsc.tl
    from fedsc import datasets
    from fedsc.run.config import RunConfig
    from fedsc.run.prepare import prepare_expression
    from smpc.party_pool import warm_parties

    cfg = RunConfig(method="fedscgen", dataset="pancreas", seed=42)
    data = prepare_expression(datasets.pancreas(), cfg)
    torch.set_num_threads(args.threads)  # after scanpy, which resets it
    params = {"rounds": args.rounds, "local_epochs": args.epochs}
    print(
        f"FedscGen on bundled pancreas ({data.n_obs} cells x {data.n_vars} genes), "
        f"{args.rounds} rounds x {args.epochs} local epochs, hidden 800-800, seed 42, "
        f"{args.threads} torch threads"
    )

    import smpc
    from smpc.crypten_backend import CryptenAggregator

    overheads: dict[str, float] = {}

    def timed(backend: str, **options: bool) -> tuple[float, float]:
        """Wall and CPU seconds (this process + the parties) of one run, start-up included.

        Also records the run's secure-aggregation overhead: the time the caller waited
        for the parties (they start in the background) plus the aggregators' own seconds
        (ledger), which the machine's other load disturbs less than the training around
        them. CPU includes the fork server's (torch and CrypTen imports) on a fresh start.
        """
        adata = data.copy()
        server_cpu = _process_cpu(_forkserver_pids())  # 0 before the first crypten run
        cpu, start = time.process_time(), time.perf_counter()
        if backend == "plaintext":
            with smpc.make_aggregator("plaintext") as agg:
                fedsc.tl.fedscgen(adata, backend=agg, seed=42, show_progress=False, **params)
            party_cpu, startup, waited = 0.0, 0.0, 0.0
        else:
            agg = CryptenAggregator(**options)  # fedsc.tl's for backend="crypten"
            constructed = time.perf_counter() - start
            with agg:
                # Fresh parties start in the background: read their pids only at the end.
                borrowed = getattr(agg, "borrowed", agg.startup_seconds < 0.1)  # older smpc
                before = _process_cpu(agg.pids) if borrowed else 0.0
                fedsc.tl.fedscgen(adata, backend=agg, seed=42, show_progress=False, **params)
                pool = getattr(agg, "_party_pool", agg._pool)
                startup = 0.0 if borrowed or pool is None else pool.startup_seconds
                waited = agg.startup_seconds
                # Parties, and the fork server's CPU since this run began (its imports).
                party_cpu = _process_cpu(agg.pids) - before
                party_cpu += _process_cpu(_forkserver_pids()) - server_cpu
        totals = agg.ledger.totals()
        # A background start is waited for inside the first aggregation (in the ledger's
        # seconds); a blocking one (older smpc) in the constructor.
        overheads[backend] = (constructed if backend != "plaintext" else 0.0) + totals["seconds"]
        prepared = getattr(agg, "prepared_operations", 0)
        print(
            f"    ({backend}: party start-up {startup:.2f} s, caller waited {waited:.2f} s; "
            f"{totals['operations']} aggregations {totals['seconds']:.2f} s, "
            f"{prepared} with masks prepared ahead)"
        )
        return time.perf_counter() - start, time.process_time() - cpu + party_cpu

    timed("plaintext")  # warm-up (allocator, torch kernels)
    rows = {"plaintext": timed("plaintext")}
    plain_aggregation = overheads["plaintext"]
    extra = {"plaintext": 0.0}
    rows["crypten (fresh parties)"] = timed("crypten")
    extra["crypten (fresh parties)"] = overheads["crypten"] - plain_aggregation
    with warm_parties():  # what a sweep worker does
        timed("crypten")  # first run of the worker starts the parties
        rows["crypten (sweep worker, warm)"] = timed("crypten")
        extra["crypten (sweep worker, warm)"] = overheads["crypten"] - plain_aggregation
        # masks expanded while the clients train (off by default without spare CPUs)
        rows["crypten (warm, prepare_masks)"] = timed("crypten", prepare_masks=True)
        extra["crypten (warm, prepare_masks)"] = overheads["crypten"] - plain_aggregation
    base, base_cpu = rows["plaintext"]
    for name, (wall, cpu) in rows.items():
        print(
            f"  {name:30s} {wall:7.1f} s wall ({wall / base:5.2f} x plaintext)  "
            f"{cpu:7.1f} s CPU incl. parties ({cpu / base_cpu:5.2f} x plaintext)  "
            f"aggregation overhead {extra[name]:5.2f} s -> "
            f"{(base + extra[name]) / base:5.2f} x plaintext"
        )
    wall, cpu = rows["crypten (fresh parties)"]
    print(
        f"  fresh parties / plaintext: {wall / base:.2f} x wall, {cpu / base_cpu:.2f} x CPU "
        f"(target <= 1.5). Walls swing with the machine's other load; the last column adds "
        "the measured crypten-only seconds (the caller's wait for the parties + aggregations "
        "minus plaintext's) to the plaintext method time."
    )
    if args.runner_repeats:
        run_sweep_worker_pairs(args)
        run_runner_pairs(args)


def run_sweep_worker_pairs(args: argparse.Namespace) -> None:
    """``method_seconds`` of ``execute_run`` as a sweep worker runs it: parties kept warm.

    One warm-up crypten run starts the parties; then ``--runner-repeats`` alternating
    plaintext/crypten pairs, in this process (as a worker runs the runs of a sweep).
    """
    from fedsc.run.config import RunConfig
    from fedsc.run.execute import execute_run
    from smpc.party_pool import warm_parties

    def method_seconds(backend: str) -> tuple[float, float]:
        params = {"rounds": args.rounds, "local_epochs": args.epochs}
        cfg = RunConfig(
            method="fedscgen",
            dataset="pancreas",
            backend=backend,
            seed=42,
            panels=[],
            params=params,
        )
        info = execute_run(cfg, show_progress=False).info
        return info["method_seconds"], info["ledger"]["totals"]["seconds"]

    print(
        f"  sweep worker (execute_run, parties kept warm), method_seconds, "
        f"{args.runner_repeats} alternating pairs:"
    )
    ratios = []
    with warm_parties():
        method_seconds("crypten")  # the worker's first run starts the parties
        for i in range(args.runner_repeats):
            (plain, plain_agg), (crypten, crypten_agg) = (
                method_seconds("plaintext"),
                method_seconds("crypten"),
            )
            ratios.append(crypten / plain)
            print(
                f"    pair {i + 1}: plaintext {plain:5.2f} s, crypten {crypten:5.2f} s "
                f"(aggregations {plain_agg:.2f} / {crypten_agg:.2f} s): {ratios[-1]:.2f} x"
            )
    _print_ratios("sweep worker, crypten / plaintext method_seconds", ratios)


def _print_ratios(label: str, ratios: list[float]) -> None:
    print(
        f"  {label}: median {statistics.median(ratios):.2f} x "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}; target <= 1.5)"
    )


def _fedsc_run(backend: str, args: argparse.Namespace, out: str) -> dict:
    """One ``fedsc run`` (``python -m fedsc.cli``, a fresh process); its run.json figures."""
    cmd = [
        sys.executable,
        "-m",
        "fedsc.cli",
        "run",
        "fedscgen",
        "--input=pancreas",
        f"--backend={backend}",
        "--seed=42",
        "--panels=none",
        f"--rounds={args.rounds}",
        f"--local-epochs={args.epochs}",
        f"--threads={args.threads}",
        f"--out={out}",
        "--overwrite",
    ]
    begin = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - begin
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    with open(os.path.join(out, "run.json")) as fh:
        info = json.load(fh)
    return {
        "method_seconds": info["method_seconds"],
        "aggregation_seconds": info["ledger"]["totals"]["seconds"],
        "process_seconds": wall,
    }


def run_runner_pairs(args: argparse.Namespace) -> None:
    """``method_seconds`` of ``fedsc run``, each run a fresh process with fresh parties.

    ``method_seconds`` runs from loading the data to the corrected cells; the parties'
    fork server starts when the command starts (``smpc.prestart``), so its imports overlap
    fedsc's own. Plaintext and crypten alternate, ``--runner-repeats`` pairs; the whole
    process's wall time is printed beside (imports, settings, writing the outputs).
    """
    print(
        f"  fedsc run (a fresh process per run, fresh parties), {args.runner_repeats} "
        "alternating pairs:"
    )
    ratios, process_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runner_repeats):
            got = {}
            for backend in ("plaintext", "crypten"):
                try:
                    got[backend] = _fedsc_run(backend, args, os.path.join(tmp, backend))
                except RuntimeError as err:
                    print(f"    {backend}: FAILED\n{err}")
                    return
            plain, crypten = got["plaintext"], got["crypten"]
            ratios.append(crypten["method_seconds"] / plain["method_seconds"])
            process_ratios.append(crypten["process_seconds"] / plain["process_seconds"])
            print(
                f"    pair {i + 1}: method_seconds plaintext {plain['method_seconds']:5.2f} s, "
                f"crypten {crypten['method_seconds']:5.2f} s (aggregations "
                f"{plain['aggregation_seconds']:.2f} / {crypten['aggregation_seconds']:.2f} s):"
                f" {ratios[-1]:.2f} x; whole process {plain['process_seconds']:5.2f} / "
                f"{crypten['process_seconds']:5.2f} s: {process_ratios[-1]:.2f} x"
            )
    _print_ratios("fedsc run, crypten / plaintext method_seconds", ratios)
    _print_ratios("fedsc run, crypten / plaintext whole process", process_ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="synthetic", choices=["synthetic", "pancreas"])
    p.add_argument("--cells", type=int, default=15_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--types", type=int, default=6)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads (2 cores here)")
    p.add_argument(
        "--runner-repeats",
        type=int,
        default=3,
        help="pancreas: alternating plaintext/crypten pairs of fresh `fedsc run` processes",
    )
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    _pin_threads(args.threads)
    if args.case == "pancreas":
        run_pancreas(args)
        return
    if args.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(run_variant(args.variant, args)))
        return

    print(
        f"FedscGen benchmark: {args.cells} cells x {args.genes} genes, {args.batches} batches, "
        f"{args.rounds} rounds x {args.epochs} local epochs, {args.threads} torch threads"
    )
    results = {}
    for name in VARIANTS:
        if name == "fedscgen-crypten" and importlib.util.find_spec("crypten") is None:
            print("  fedscgen-crypten: skipped (crypten is not installed)")
            continue
        if name == "fedscgen-crypten" and importlib.util.find_spec("smpc.crypten_backend") is None:
            print("  fedscgen-crypten: skipped (smpc.crypten_backend is missing)")
            continue
        cmd = [sys.executable, __file__, "--variant", name] + [
            f"--{k}={getattr(args, k)}"
            for k in ("cells", "genes", "batches", "types", "rounds", "epochs", "threads")
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"  {name}: FAILED\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = r
        extra = (
            f", parties' peak RSS {r['children_peak_rss_mib']:.0f} MiB"
            if name == "fedscgen-crypten"
            else ""
        )
        print(
            f"  {name:20s} {r['seconds']:8.1f} s total ({r['seconds_training']:.1f} s training,"
            f" {r['cpu_seconds']:.1f} s CPU)"
            f"   peak RSS {r['peak_rss_mib']:.0f} MiB, tracemalloc peak "
            f"{r['tracemalloc_peak_mib']:.0f} MiB{extra}"
        )
    for num, den, label, target in (
        ("fedscgen-plaintext", "scgen", "FedscGen plaintext / centralized scGen", 1.25),
        ("fedscgen-crypten", "fedscgen-plaintext", "FedscGen crypten / plaintext", 1.15),
    ):
        if num in results and den in results:
            wall = results[num]["seconds"] / results[den]["seconds"]
            cpu = results[num]["cpu_seconds"] / results[den]["cpu_seconds"]
            print(f"  {label:40s} wall {wall:5.2f} x, CPU {cpu:5.2f} x   (target <= {target})")
    print(
        "  (CPU time of parties is counted once they exit; on a shared machine the CPU ratio"
        " is the steadier one)"
    )


if __name__ == "__main__":
    main()
