"""``fedsc demo``: the privacy-utility study on the bundled data, compared and reported.

The analysis is :func:`fedsc.comparison.demo_comparison`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from fedsc.cli.args import positive
from fedsc.errors import FedscInputError

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedsc demo`` to the subcommands."""
    p = sub.add_parser(
        "demo",
        help="the privacy-utility study on the bundled data: sweep (with attacks and DP), "
        "compare (crypten vs plaintext; DP vs no DP), report (frontier, leakage table)",
    )
    p.add_argument("--out", default="results/demo")
    p.add_argument("--study", default=None, help="default: experiments/privacy_utility.yaml")
    p.add_argument("--workers", type=positive, default=1)


def _default_study() -> Path:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = root / "experiments" / "privacy_utility.yaml"
        if path.is_file():
            return path
    raise FedscInputError(
        "experiments/privacy_utility.yaml not found; run from the repository or pass --study."
    )


def command(args: argparse.Namespace) -> int:
    """Run the demo study, compare and report it; 1 if a run failed."""
    from fedsc.comparison import demo_comparison  # the panels and scanpy: when it runs
    from fedsc.sweep import Study, run_sweep

    start = time.perf_counter()
    study = Path(args.study) if args.study else _default_study()
    run_ids = [cfg.run_id for cfg in Study.from_yaml(study).expand(check_size=False)]
    _check_no_foreign_runs(Path(args.out), run_ids)
    res = run_sweep(study, args.out, workers=args.workers, show_progress=True)
    print(
        f"sweep {study.name}: {res.executed} run(s) executed, {res.skipped} already done, "
        f"{res.failed} failed"
    )
    table, report = demo_comparison(args.out, run_ids)
    keys = ["dataset", "method", "metric", *(["observer"] if "observer" in table else [])]
    cols = [*keys, "n_a", "n_b", "mean_a", "mean_b", "delta_mean", "p", "q"]
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        print("\ncrypten (A) vs plaintext (B), Mann-Whitney U over seeds, BH over the table:")
        print(table[cols].to_string(index=False))
    print(f"\nwrote {args.out}/comparison.csv, {report} and {args.out}/figures/")
    print(f"demo wall time: {time.perf_counter() - start:.1f} s")
    return 1 if res.failed else 0


def _check_no_foreign_runs(out: Path, run_ids: list[str]) -> None:
    """Refuse an --out that holds runs of another study (e.g. an earlier fedsc's demo).

    The report compares every run of the folder: an earlier version's runs of the same
    variants and seeds would pair twice. Nothing is deleted: the message names the fix.
    """
    from fedsc.errors import FedscInputError
    from fedsc.sweep import RunStore

    if not (out / "runs").is_dir():
        return
    foreign = sorted(RunStore(out, create=False).finished() - set(run_ids))
    if foreign:
        raise FedscInputError(
            f"{out} holds {len(foreign)} run(s) that are not part of this demo study (from "
            f"an earlier version of fedsc or of the study, e.g. {foreign[0]}); their seeds "
            f"would be compared twice. Remove the folder (rm -r {out}) or pass another --out."
        )
