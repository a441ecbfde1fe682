"""``fedsc deploy``: split data per site, run a site, or a whole deployment on this machine."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedsc.deploy.drivers import TRANSPORTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedsc deploy {split,site,local,evaluate}``."""
    p = sub.add_parser("deploy", help="run fedsc across sites on Flower (docs/deployment.md)")
    dsub = p.add_subparsers(dest="deploy_command", required=True)

    s = dsub.add_parser("split", help="write one h5ad per batch (one file per site)")
    s.add_argument("data", help="h5ad with every batch")
    s.add_argument("--batch-key", default="batch")
    s.add_argument("--out", required=True, help="folder for <batch>.h5ad files")

    t = dsub.add_parser(
        "site",
        help="serve one site: its worker and Flower's SuperNode, until interrupted",
    )
    t.add_argument("--data", required=True, help="this site's h5ad")
    t.add_argument("--superlink", required=True, help="SuperLink Fleet API HOST:PORT")
    t.add_argument("--site", default=None, help="site name (default: the file's batch)")
    t.add_argument("--out-dir", default=None, help="where corrected data are written")
    t.add_argument(
        "--root-certificates", default=None, help="CA certificate of the SuperLink (TLS)"
    )
    t.add_argument(
        "--auth-supernode-private-key", default=None, help="this site's key (node authentication)"
    )
    t.add_argument("--insecure", action="store_true", help="no TLS (tests on one machine only)")
    t.add_argument("--port", type=int, default=9094, help="the SuperNode's local runtime port")

    loc = dsub.add_parser(
        "local", help="a whole deployment on 127.0.0.1: split DATA by batch, run FedscGen"
    )
    loc.add_argument("data", help="h5ad with log-normalised expression and every batch")
    loc.add_argument("--batch-key", default="batch")
    loc.add_argument("--label-key", default="cell_type")
    loc.add_argument("--transport", choices=TRANSPORTS, default="plaintext")
    loc.add_argument("--rounds", type=int, default=8)
    loc.add_argument("--local-epochs", type=int, default=2)
    loc.add_argument("--seed", type=int, default=0)
    loc.add_argument("--out", required=True, help="run.json, ledger.json and the sites' outputs")

    e = dsub.add_parser(
        "evaluate",
        help="evaluate a finished deployment: gather the sites' outputs, write a run folder "
        "(and a sweep record for compare/report)",
    )
    e.add_argument("coordinator", help="the ServerApp's out-dir (run.json, ledger.json)")
    e.add_argument("outputs", nargs="+", help="every site's output <site>.h5ad")
    e.add_argument("--out", required=True, help="run folder: corrected.h5ad, metrics.csv, run.json")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    e.add_argument("--dataset", default="deployment", help="dataset label of the rows")
    e.add_argument("--study", default="adhoc", help="study label of the rows")
    e.add_argument("--variant", default="default", help="variant label of the rows")
    e.add_argument("--panels", default=None, help="comma-separated panels (default: the method's)")
    e.add_argument(
        "--store",
        default=None,
        help="also add the run to this sweep folder, beside simulated runs (fedsc compare/report)",
    )


def command(args: argparse.Namespace) -> int:
    """Run a ``fedsc deploy`` subcommand."""
    commands = {"split": _split, "site": _site, "local": _local, "evaluate": _evaluate}
    return commands[args.deploy_command](args)


def _split(args: argparse.Namespace) -> int:
    import anndata as ad

    from fedsc.deploy.local import split_by_batch

    paths = split_by_batch(ad.read_h5ad(args.data), args.batch_key, args.out)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def _site(args: argparse.Namespace) -> int:
    from fedsc.deploy.site_worker import new_key

    data = Path(args.data).resolve()
    if not data.is_file():
        raise FileNotFoundError(f"site data {data} does not exist.")
    if not args.insecure and not args.root_certificates:
        raise ValueError(
            "give --root-certificates (the SuperLink's CA) for TLS, or --insecure for a test "
            "on one machine."
        )
    run_dir = Path(tempfile.mkdtemp(prefix="fedsc-site-"))
    sock, key_file = run_dir / "worker.sock", run_dir / "worker.key"
    new_key(key_file)
    out_dir = Path(args.out_dir or data.parent).resolve()
    worker_cmd = [sys.executable, "-m", "fedsc.deploy.site_worker", "--data", str(data)]
    worker_cmd += ["--socket", str(sock), "--key-file", str(key_file), "--out-dir", str(out_dir)]
    node_config = (
        f'data-path="{data}" out-dir="{out_dir}" worker="{sock}" worker-key-file="{key_file}"'
    )
    if args.site:
        worker_cmd += ["--site", args.site]
        node_config += f' site="{args.site}"'
    node_cmd = [sys.executable, "-m", "fedsc.deploy.supernode", "--superlink", args.superlink]
    node_cmd += ["--node-config", node_config, "--port", str(args.port)]
    if args.insecure:
        node_cmd.append("--insecure")
    else:
        node_cmd += ["--root-certificates", args.root_certificates]
    if args.auth_supernode_private_key:
        node_cmd += ["--auth-supernode-private-key", args.auth_supernode_private_key]
    procs = [subprocess.Popen(worker_cmd), subprocess.Popen(node_cmd)]
    print(f"site serving {data} (worker {sock}); Ctrl-C stops it", file=sys.stderr)
    try:
        while all(p.poll() is None for p in procs):
            try:
                procs[1].wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
    return max(p.returncode or 0 for p in procs)


def _local(args: argparse.Namespace) -> int:
    import anndata as ad

    from fedsc.deploy.local import LocalDeployment, split_by_batch
    from fedsc.methods.fedscgen import FedScGenConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = split_by_batch(ad.read_h5ad(args.data), args.batch_key, out / "site-files")
    config = FedScGenConfig(rounds=args.rounds, local_epochs=args.local_epochs)
    params: dict[str, Any] = {
        "config": config.to_dict(),
        "seed": args.seed,
        "batch_key": args.batch_key,
        "label_key": args.label_key,
    }
    crypten = args.transport == "crypten"
    with LocalDeployment(paths, out / "deployment", parties=crypten) as dep:
        record = dep.run(
            {"params": json.dumps(params), "transport": args.transport}, out / "coordinator"
        )
        print(
            f"deployed FedscGen over {len(paths)} sites ({args.transport}) in "
            f"{record['seconds']:.1f} s; outputs at {dep.workdir / 'sites'}; "
            f"run.json at {out / 'coordinator'}"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fedsc.deploy.experiment import evaluate_deployment
    from fedsc.runner import check_output_dir, format_metrics, write_run
    from fedsc.sweep import RunStore
    from fedsc.sweep.executor import ok_record

    check_output_dir(args.out, overwrite=args.overwrite)
    result = evaluate_deployment(
        args.coordinator,
        args.outputs,
        dataset=args.dataset,
        study=args.study,
        variant=args.variant,
        panels=None if args.panels is None else args.panels.split(","),
    )
    out = write_run(result, args.out, overwrite=args.overwrite)
    if len(result.rows):
        print(format_metrics(result.rows, result.info))
    print(f"\nprivacy: {result.info['privacy']}")
    print(f"wrote {out}/corrected.h5ad, metrics.csv, run.json")
    if args.store:
        store = RunStore(args.store)
        with store.lock():
            store.write(ok_record(result))
            store.write_tables()
        print(f"added run {result.config.run_id} to the sweep folder {args.store}")
    return 0
