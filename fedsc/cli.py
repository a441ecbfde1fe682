"""Command line: ``fedsc run | demo | party | sweep | compare | report``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedsc.errors import FedscInputError


def _parse_value(text: str) -> Any:
    """``1e-3`` -> float, ``8`` -> int, ``true`` -> bool, JSON lists, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _params(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise FedscInputError(f"--param expects KEY=VALUE, got {pair!r} (e.g. --param mu=0).")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one method on one dataset and evaluate it")
    p.add_argument("method", choices=["scbatchprox", "fedscgen", "scgen"])
    p.add_argument("--input", default="pancreas", help="an .h5ad path (default: bundled pancreas)")
    p.add_argument("--batch-key", default="batch")
    p.add_argument("--label-key", default="cell_type")
    p.add_argument("--use-rep", default=None, help="scBatchProx input embedding (obsm key or X)")
    p.add_argument("--upstream", default="pca", choices=["pca", "ica", "fa"])
    p.add_argument("--backend", default="plaintext", choices=["plaintext", "crypten"])
    p.add_argument("--mode", default=None, choices=["secure", "debug"], help="crypten mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mu", type=float, default=None, help="scBatchProx proximal weight")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--holdout", action="append", default=[], help="held-out batch (repeatable)")
    p.add_argument("--inclusion", default="all", choices=["all", "combined", "dropped"])
    p.add_argument("--panels", default=None, help="comma-separated: scib,fedscgen,downstream")
    p.add_argument("--param", action="append", default=[], help="method option KEY=VALUE")
    p.add_argument("--out", required=True, help="output directory")


def _cmd_run(args: argparse.Namespace) -> int:
    from fedsc.run_config import RunConfig
    from fedsc.runner import execute_run, write_run

    params = _params(args.param)
    for name in ("mu", "rounds", "local_epochs"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    cfg = RunConfig(
        method=args.method,
        dataset=args.input,
        batch_key=args.batch_key,
        label_key=args.label_key,
        use_rep=args.use_rep,
        upstream=args.upstream,
        backend=args.backend,
        backend_options={"mode": args.mode} if args.mode else {},
        seed=args.seed,
        params=params,
        holdout=args.holdout,
        inclusion=args.inclusion,
        panels=args.panels.split(",") if args.panels else None,
    )
    result = execute_run(cfg)
    out = write_run(result, args.out)
    _print_panel(result.rows)
    print(f"\nprivacy: {result.info['privacy']}")
    print(
        f"wall time: {result.info['wall_time_s']:.1f} s; wrote {out}/corrected.h5ad, metrics.csv, run.json"
    )
    return 0


def _print_panel(rows) -> None:
    table = rows.pivot_table(index="metric", columns="method", values="value", sort=False)
    print(table.round(4).to_string())


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the privacy ablation on the bundled data: sweep, compare (crypten vs plaintext), report",
    )
    p.add_argument("--out", default="results/demo")
    p.add_argument("--study", default=None, help="default: experiments/privacy_ablation.yaml")
    p.add_argument("--workers", type=int, default=1)


def _default_study() -> Path:
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        path = root / "experiments" / "privacy_ablation.yaml"
        if path.is_file():
            return path
    raise FedscInputError(
        "experiments/privacy_ablation.yaml not found; run from the repository or pass --study."
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedsc.comparison import compare_sweep, report_sweep
    from fedsc.sweep import run_sweep

    start = time.perf_counter()
    study = Path(args.study) if args.study else _default_study()
    res = run_sweep(study, args.out, workers=args.workers, show_progress=True)
    print(
        f"sweep {study.name}: {res.executed} run(s) executed, {res.skipped} already done, "
        f"{res.failed} failed"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report notes unreachable significance
        table = compare_sweep(args.out, {"backend": "crypten"}, {"backend": "plaintext"})
    report = report_sweep(args.out)
    cols = ["dataset", "method", "metric", "n_a", "n_b", "mean_a", "mean_b", "delta_mean", "p", "q"]
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        print("\ncrypten (A) vs plaintext (B), Mann-Whitney U over seeds, BH over the table:")
        print(table[cols].to_string(index=False))
    print(f"\nwrote {args.out}/comparison.csv, {report} and {args.out}/figures/")
    print(f"demo wall time: {time.perf_counter() - start:.1f} s")
    return 1 if res.failed else 0


def _add_party(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "party",
        help="serve one CrypTen computation party (rank < world size) or the trusted dealer "
        "(rank == world size) for a coordinator on another machine",
        description="--mode, --provider and --precision-bits must match the coordinator's "
        "aggregator settings; a mismatch is reported when the coordinator connects.",
    )
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world-size", type=int, default=3)
    p.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT shared by all ranks")
    p.add_argument(
        "--listen", default=None, help="HOST:PORT the coordinator connects to (parties only)"
    )
    p.add_argument("--mode", default="secure", choices=["secure", "debug"])
    p.add_argument(
        "--provider",
        default="TTP",
        choices=["TTP", "TFP"],
        help="CrypTen randomness: TTP (trusted dealer, required in secure mode) or TFP (debug)",
    )
    p.add_argument(
        "--precision-bits",
        type=int,
        default=16,
        help="fixed-point bits of argmax comparisons (the aggregator's precision_bits)",
    )
    p.add_argument("--seed", type=int, default=None, help="debug mode only")


def _cmd_party(args: argparse.Namespace) -> int:
    from smpc.party import main as party_main

    argv = ["--rank", str(args.rank), "--world-size", str(args.world_size)]
    argv += ["--rendezvous", args.rendezvous, "--mode", args.mode]
    argv += ["--provider", args.provider, "--precision-bits", str(args.precision_bits)]
    if args.listen:
        argv += ["--listen", args.listen]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    party_main(argv)
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a study (datasets x methods x variants x seeds)")
    p.add_argument("study", help="study YAML (see experiments/)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--scheduler", default=None, help="Dask scheduler tcp://HOST:PORT")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fedsc.sweep import run_sweep

    res = run_sweep(
        args.study,
        args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        retry_failed=args.retry_failed,
    )
    print(
        f"sweep: {res.executed} run(s) executed, {res.skipped} already done, "
        f"{res.failed} failed, in {res.seconds:.1f} s; results in {res.out}/results.parquet"
    )
    return 1 if res.failed else 0


def _selector(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    if not pairs:
        raise FedscInputError(f"{flag} needs at least one KEY=VALUE (e.g. {flag} backend=crypten).")
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise FedscInputError(f"{flag} expects KEY=VALUE, got {pair!r}.")
        key, value = pair.split("=", 1)
        out[key] = value
    return out


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="Mann-Whitney U + BH between two variants across seeds")
    p.add_argument("dir", help="sweep output directory (with results.parquet)")
    p.add_argument("--a", action="append", default=[], help="side A selector KEY=VALUE")
    p.add_argument("--b", action="append", default=[], help="side B selector KEY=VALUE")
    p.add_argument("--family", action="append", default=None, help="BH family column(s)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", default=None, help="CSV path (default DIR/comparison.csv)")


def _cmd_compare(args: argparse.Namespace) -> int:
    from fedsc.comparison import compare_sweep

    table = compare_sweep(
        args.dir,
        _selector(args.a, "--a"),
        _selector(args.b, "--b"),
        family=args.family,
        alpha=args.alpha,
        out=args.out,
    )
    cols = ["dataset", "method", "metric", "n_a", "n_b", "delta_mean", "p", "q", "significant"]
    print(table[[c for c in cols if c in table.columns]].to_string(index=False))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="report.md and figures/ from a sweep directory")
    p.add_argument("dir")


def _cmd_report(args: argparse.Namespace) -> int:
    from fedsc.comparison import report_sweep

    path = report_sweep(args.dir)
    print(f"wrote {path}")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "demo": _cmd_demo,
    "party": _cmd_party,
    "sweep": _cmd_sweep,
    "compare": _cmd_compare,
    "report": _cmd_report,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsc", description="Privacy-preserving federated batch correction."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_demo(sub)
    _add_party(sub)
    _add_sweep(sub)
    _add_compare(sub)
    _add_report(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FedscInputError as exc:
        print(f"fedsc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
