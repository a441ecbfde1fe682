"""``fedsc compare``: Mann-Whitney U + BH between two variants of a sweep, across seeds."""

from __future__ import annotations

import argparse

from fedsc.cli.args import selector

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedsc compare`` to the subcommands."""
    p = sub.add_parser("compare", help="Mann-Whitney U + BH between two variants across seeds")
    p.add_argument("dir", help="sweep output directory (with results.parquet)")
    p.add_argument("--a", action="append", default=[], help="side A selector KEY=VALUE")
    p.add_argument("--b", action="append", default=[], help="side B selector KEY=VALUE")
    p.add_argument("--family", action="append", default=None, help="BH family column(s)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", default=None, help="CSV path (default DIR/comparison.csv)")


def command(args: argparse.Namespace) -> int:
    """Compare two sides of a sweep; print the table (written to ``--out``)."""
    from fedsc.comparison import compare_sweep  # pandas, statsmodels: when it runs

    table = compare_sweep(
        args.dir,
        selector(args.a, "--a"),
        selector(args.b, "--b"),
        family=args.family,
        alpha=args.alpha,
        out=args.out,
    )
    cols = ["dataset", "method", "metric", "n_a", "n_b", "delta_mean", "p", "q", "significant"]
    print(table[[c for c in cols if c in table.columns]].to_string(index=False))
    return 0
