"""``fedsc report``: ``report.md`` and ``figures/`` from a sweep directory."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedsc report`` to the subcommands."""
    p = sub.add_parser("report", help="report.md and figures/ from a sweep directory")
    p.add_argument("dir")


def command(args: argparse.Namespace) -> int:
    """Write the sweep's report."""
    from fedsc.comparison import report_sweep  # matplotlib: when it runs

    path = report_sweep(args.dir)
    print(f"wrote {path}")
    return 0
