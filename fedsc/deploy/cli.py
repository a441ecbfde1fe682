"""``fedsc deploy``: split data per site, run a site, or a whole deployment on this machine.

Each subcommand imports AnnData, Flower, torch or the runner when it runs (start-up time
of ``fedsc``, whose parser this module joins: :data:`fedsc.cli.app.COMMANDS`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedsc.cli.args import add_labels_key, seed_arg
from fedsc.deploy.drivers import TRANSPORTS
from fedsc.errors import FedscInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedsc deploy {split,site,local,evaluate}``."""
    p = sub.add_parser("deploy", help="run fedsc across sites on Flower (docs/deployment.md)")
    dsub = p.add_subparsers(dest="deploy_command", required=True)

    s = dsub.add_parser("split", help="write one h5ad per batch (one file per site)")
    s.add_argument("data", help="h5ad with every batch")
    s.add_argument("--batch-key", default="batch")
    s.add_argument("--out", required=True, help="folder for <batch>.h5ad files")
    s.add_argument("--overwrite", action="store_true", help="replace <batch>.h5ad files in --out")

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
    t.add_argument(
        "--port", type=_port, default=9094, help="the SuperNode's local runtime port (free)"
    )

    loc = dsub.add_parser(
        "local", help="a whole deployment on 127.0.0.1: split DATA by batch, run FedscGen"
    )
    loc.add_argument("data", help="h5ad with log-normalised expression and every batch")
    loc.add_argument("--batch-key", default="batch")
    add_labels_key(loc)
    loc.add_argument("--transport", choices=TRANSPORTS, default="plaintext")
    loc.add_argument("--rounds", type=int, default=8)
    loc.add_argument("--local-epochs", type=int, default=2)
    loc.add_argument("--batch-size", type=int, default=None, help="minibatch (default 50)")
    loc.add_argument("--seed", type=_seed, default=0, help="run seed, 0..2**32-1")
    loc.add_argument(
        "--out", required=True, help="a new folder: run.json, ledger.json, the sites' outputs"
    )
    loc.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier deployment in --out (kept until the new one has finished)",
    )

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


def _seed(text: str) -> int:
    return seed_arg(text)


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in 1..65535, got {text!r}")
    return int(text)


def command(args: argparse.Namespace) -> int:
    """Run a ``fedsc deploy`` subcommand."""
    commands = {"split": _split, "site": _site, "local": _local, "evaluate": _evaluate}
    return commands[args.deploy_command](args)


def _split(args: argparse.Namespace) -> int:
    import anndata as ad

    from fedsc.deploy.local import split_by_batch

    adata = ad.read_h5ad(_h5ad(args.data, "data"))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FedscInputError(f"--out {out} exists and is not a folder; name a folder.")
    if args.batch_key in adata.obs and not args.overwrite:
        names = sorted(set(adata.obs[args.batch_key].astype(str)))
        taken = [f"{n}.h5ad" for n in names if (out / f"{n}.h5ad").exists()]
        if taken:
            raise FedscInputError(
                f"--out {out} already holds {', '.join(taken[:5])}; pass --overwrite to "
                "replace them, or choose another folder."
            )
    paths = split_by_batch(adata, args.batch_key, out)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def _h5ad(name: str, what: str) -> Path:
    """``name`` as an existing .h5ad (HDF5) file, or an error naming ``what`` and the fix."""
    path = Path(name)
    if path.is_dir():
        raise FedscInputError(f"{what} {name} is a folder; pass an .h5ad file.")
    if not path.is_file():
        raise FedscInputError(f"{what} {name} does not exist; pass an .h5ad file.")
    with path.open("rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise FedscInputError(
            f"{what} {name} is not an .h5ad (HDF5) file; write it with anndata "
            "(adata.write_h5ad) first."
        )
    return path


def _writable_dir(path: Path, flag: str) -> None:
    """``path`` can be created and written (a probe file in its nearest existing ancestor)."""
    probe_dir = path.absolute()
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise FedscInputError(f"{flag} {path}: {probe_dir} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".fedsc-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FedscInputError(
            f"{flag} {path}: cannot write in {probe_dir} ({exc.strerror or exc}); choose a "
            "writable location."
        ) from None


def _check_port_free(port: int) -> None:
    """The SuperNode's runtime port must be free before anything starts."""
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError as exc:
            raise FedscInputError(
                f"--port {port} is in use ({exc.strerror or exc}; another SuperNode or "
                "service?); choose a free port with --port."
            ) from None


def _check_address(address: str, flag: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise FedscInputError(
            f"{flag} {address!r} is not HOST:PORT (e.g. {flag} superlink.example.org:9092)."
        )


def _site(args: argparse.Namespace) -> int:
    from fedsc.deploy.local import write_toml
    from fedsc.deploy.site_worker import new_key

    data = _h5ad(args.data, "--data").resolve()
    if not args.insecure and not args.root_certificates:
        raise FedscInputError(
            "give --root-certificates (the SuperLink's CA) for TLS, or --insecure for a test "
            "on one machine."
        )
    _check_address(args.superlink, "--superlink")
    for flag, value in (
        ("--root-certificates", args.root_certificates),
        ("--auth-supernode-private-key", args.auth_supernode_private_key),
    ):
        if value and not Path(value).is_file():
            raise FedscInputError(f"{flag} {value} does not exist; give the file's path.")
    if args.site is not None and (not args.site or "/" in args.site or args.site in (".", "..")):
        raise FedscInputError(
            f"--site {args.site!r} cannot name a site (its output is <site>.h5ad): no '/', "
            "not empty."
        )
    out_dir = Path(args.out_dir or data.parent).resolve()
    _writable_dir(out_dir, "--out-dir")
    _check_port_free(args.port)
    run_dir = Path(tempfile.mkdtemp(prefix="fedsc-site-"))  # the worker's socket and key
    procs: list[subprocess.Popen] = []
    try:
        sock, key_file = run_dir / "worker.sock", run_dir / "worker.key"
        new_key(key_file)
        worker_cmd = [sys.executable, "-m", "fedsc.deploy.site_worker", "--data", str(data)]
        worker_cmd += ["--socket", str(sock), "--key-file", str(key_file)]
        worker_cmd += ["--out-dir", str(out_dir)]
        node_config: dict[str, Any] = {
            "data-path": data,
            "out-dir": out_dir,
            "worker": sock,
            "worker-key-file": key_file,
        }
        if args.site:
            worker_cmd += ["--site", args.site]
            node_config["site"] = args.site
        node_file = write_toml(run_dir / "node.toml", node_config)  # any path, quoted
        node_cmd = [sys.executable, "-m", "fedsc.deploy.supernode", "--superlink", args.superlink]
        node_cmd += ["--node-config", str(node_file), "--port", str(args.port)]
        if args.insecure:
            node_cmd.append("--insecure")
        else:
            node_cmd += ["--root-certificates", args.root_certificates]
        if args.auth_supernode_private_key:
            node_cmd += ["--auth-supernode-private-key", args.auth_supernode_private_key]
        procs = [subprocess.Popen(worker_cmd), subprocess.Popen(node_cmd)]
        print(f"site serving {data} (worker {sock}); Ctrl-C stops it", file=sys.stderr)
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
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)  # the worker's key leaves with it
    return max(p.returncode or 0 for p in procs)


#: What ``fedsc deploy local`` writes into ``--out``.
LOCAL_PARTS = ("site-files", "deployment", "coordinator")


def _check_local_out(out: Path, overwrite: bool) -> None:
    """``fedsc deploy local --out``: a new or empty folder, or an earlier deployment.

    An earlier deployment is replaced only with ``--overwrite`` (as ``fedsc run --out``).
    """
    if str(out) in ("", "."):
        raise FedscInputError("--out names no folder; give a new folder for the deployment.")
    if out.exists() and not out.is_dir():
        raise FedscInputError(f"--out {out} exists and is not a folder; name a new folder.")
    if out.is_dir():
        contents = sorted(p.name for p in out.iterdir())
        earlier = [n for n in contents if n in LOCAL_PARTS]
        others = [n for n in contents if n not in LOCAL_PARTS]
        if others:
            raise FedscInputError(
                f"--out {out} is a folder holding other files ({', '.join(others[:5])}); a "
                "deployment writes into its own folder: choose a new or empty one."
            )
        if earlier and not overwrite:
            raise FedscInputError(
                f"--out {out} holds an earlier deployment ({', '.join(earlier)}); pass "
                "--overwrite to replace it (kept until the new one has finished), or choose "
                "another folder."
            )
    _writable_dir(out, "--out")


def _local(args: argparse.Namespace) -> int:
    import anndata as ad

    from fedsc.data.input_kind import check_input_kind
    from fedsc.data.validate import validate_adata
    from fedsc.deploy.checks import fedscgen_deployable
    from fedsc.deploy.fedscgen import training_cells
    from fedsc.deploy.local import LocalDeployment, check_batch_names, split_by_batch
    from fedsc.methods.configs import FedScGenConfig
    from fedsc.resources import check_parameters, vae_parameters

    # every check before anything is written or started (as fedsc run)
    out = Path(args.out)
    _check_local_out(out, args.overwrite)
    data = _h5ad(args.data, "DATA")
    sizes = {} if args.batch_size is None else {"batch_size": args.batch_size}
    config = FedScGenConfig(rounds=args.rounds, local_epochs=args.local_epochs, **sizes)
    fedscgen_deployable(config)
    adata = ad.read_h5ad(data)
    validate_adata(adata, batch_key=args.batch_key, labels_key=args.labels_key)
    check_batch_names(set(adata.obs[args.batch_key].astype(str)), args.batch_key)
    check_input_kind(adata.X, "expression", where=f"{data} (X)", method="FedscGen", adata=adata)
    check_parameters(
        vae_parameters(adata.n_vars, config.hidden, config.latent),
        f"FedscGen on {adata.n_vars} genes",
    )
    sites = sorted(set(adata.obs[args.batch_key].astype(str)))
    counts = adata.obs[args.batch_key].astype(str).value_counts()
    training_cells({s: int(counts[s]) for s in sites}, sites, sites, config, args.seed)
    params: dict[str, Any] = {
        "config": config.to_dict(),
        "seed": args.seed,
        "batch_key": args.batch_key,
        "labels_key": args.labels_key,
    }
    earlier = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.is_dir() and any(out.iterdir()):
        out.rename(earlier)  # restored if the new deployment fails
    try:
        paths = split_by_batch(adata, args.batch_key, out / "site-files")
        crypten = args.transport == "crypten"
        with LocalDeployment(paths, out / "deployment", parties=crypten) as dep:
            record = dep.run(
                {"params": json.dumps(params), "transport": args.transport}, out / "coordinator"
            )
    except BaseException:
        if earlier.exists():
            shutil.rmtree(out, ignore_errors=True)
            earlier.rename(out)
        raise
    shutil.rmtree(earlier, ignore_errors=True)
    print(
        f"deployed FedscGen over {len(paths)} sites ({args.transport}) in "
        f"{record['seconds']:.1f} s; outputs at {out / 'deployment' / 'sites'}; "
        f"run.json at {out / 'coordinator'}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fedsc.deploy.experiment import evaluate_deployment
    from fedsc.run.record import check_output_dir, format_metrics, write_run
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
    store = None
    if args.store:
        store = RunStore(args.store, create=False)  # checked before anything is written
        _check_store(store, result)
    out = write_run(result, args.out, overwrite=args.overwrite)
    if len(result.rows):
        print(format_metrics(result.rows, result.info))
    print(f"\nprivacy: {result.info['privacy']}")
    print(f"wrote {out}/corrected.h5ad, metrics.csv, run.json")
    if store is not None:
        store = RunStore(args.store)
        with store.lock():
            _check_store(store, result)
            store.write(ok_record(result))
            store.write_tables()
        print(f"added run {result.config.run_id} to the sweep folder {args.store}")
    return 0


def _check_store(store: Any, result: Any) -> None:
    """A sweep folder may hold this run id only from the same deployment (its run token).

    Two deployments of one run config share a run id; the second would silently replace
    the first's record.
    """
    path = store.path(result.config.run_id)
    if not path.is_file():
        return
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # a corrupt record: the store moves it aside
    token = ((held.get("info") or {}).get("deployment") or {}).get("run_token")
    mine = (result.info.get("deployment") or {}).get("run_token")
    if token != mine:
        raise FedscInputError(
            f"the sweep folder {store.root} already holds run {result.config.run_id} from "
            f"another deployment (run token {token}, this one {mine}); give this deployment "
            "its own --variant label, or use another --store folder."
        )
