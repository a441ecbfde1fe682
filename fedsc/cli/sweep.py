"""``fedsc sweep``: run a study (datasets x methods x variants x seeds) into a store."""

from __future__ import annotations

import argparse

from fedsc.cli.args import positive

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedsc sweep`` to the subcommands."""
    p = sub.add_parser("sweep", help="run a study (datasets x methods x variants x seeds)")
    p.add_argument("study", help="study YAML (see experiments/)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=positive, default=1, help="local worker processes")
    p.add_argument("--scheduler", default=None, help="Dask scheduler tcp://HOST:PORT")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")


def command(args: argparse.Namespace) -> int:
    """Run the study; 1 if a run failed."""
    from fedsc.sweep import run_sweep  # the runner and the methods: when it runs

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
