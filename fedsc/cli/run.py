"""``fedsc run``: one method on one dataset, evaluated, written to a run folder.

The registries it reads are light; what loads AnnData (the inclusion scenarios, the run
config, the runner) is imported when the flags are read or the command runs, so
``fedsc --help`` and the other commands start fast.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from fedsc.backend import backend_names
from fedsc.cli.args import Choices, add_labels_key, params, parse_value, seed_arg
from fedsc.deploy.drivers import TRANSPORTS
from fedsc.errors import FedscInputError
from fedsc.methods import REGISTRY, get_method
from fedsc.run.load import DEFAULT, check_dataset
from fedsc.run_privacy import parse_mechanism_arg
from fedsc.upstream import EMBEDDING_METHODS
from smpc.options import MODES

__all__ = ["add_parser", "backend_options", "command"]


def _inclusion_names() -> list[str]:
    from fedsc.data.inclusion import SCENARIOS  # fedsc.data loads AnnData: start-up time

    return list(SCENARIOS)


def _method_options() -> dict[str, list[str]]:
    """Config fields offered as ``fedsc run`` flags -> the methods that take them."""
    out: dict[str, list[str]] = {}
    for name, spec in REGISTRY.items():
        for option in spec.options:
            out.setdefault(option, []).append(name)
    return out


def _option_value(method: str, option: str, text: str) -> Any:
    """A flag's text as the type of the method's config field (``--mu 0`` -> ``0.0``)."""
    kinds = {f.name: f.type for f in fields(get_method(method).config_class)}
    kind = kinds.get(option)
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", "")
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise FedscInputError(
            f"--{option.replace('_', '-')} expects a number ({kind}), got {text!r}."
        ) from None
    return parse_value(text)


#: ``fedsc run`` flags every method shares; a method option of the same name is set with
#: ``--param NAME=VALUE`` instead.
_COMMON_DESTS = {
    "method", "input", "batch_key", "labels_key", "use_rep", "upstream", "backend", "mode",
    "backend_option", "mechanism", "deploy", "seed", "holdout", "inclusion", "panels", "param", "out", "command",
}  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedsc run`` to the subcommands (methods, backends, options from the registries)."""
    methods = "; ".join(f"{n}: {s.description}" for n, s in REGISTRY.items() if s.description)
    p = sub.add_parser(
        "run", help="run one method on one dataset and evaluate it", description=methods or None
    )
    p.add_argument("method", choices=REGISTRY.names())
    p.add_argument("--input", default=DEFAULT, help=f"an .h5ad path (default: bundled {DEFAULT})")
    p.add_argument("--batch-key", default="batch")
    add_labels_key(p)
    p.add_argument(
        "--use-rep", default=None, help="input embedding of embedding methods (obsm key or X)"
    )
    p.add_argument("--upstream", default="pca", choices=EMBEDDING_METHODS.names())
    p.add_argument(
        "--backend",
        default="plaintext",
        choices=Choices(backend_names),
        metavar="BACKEND",
        help="aggregation backend: %(choices)s (default: %(default)s)",
    )
    p.add_argument("--mode", default=None, choices=MODES, help="crypten mode")
    p.add_argument(
        "--backend-option",
        action="append",
        default=[],
        help="aggregation backend option KEY=VALUE (repeatable), e.g. parties=3",
    )
    p.add_argument(
        "--mechanism",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="privacy mechanism around the aggregator with its options (repeatable, applied "
        "in order; names registered in smpc.mechanisms), e.g. clip:max_norm=1.0 or "
        "quantize:step=0.001,stochastic=true",
    )
    p.add_argument(
        "--deploy",
        default=None,
        choices=TRANSPORTS,
        help="run as a Flower deployment on 127.0.0.1 (one SuperNode per batch) over this "
        "transport instead of in this process (fedscgen, scbatchprox)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="run seed, 0..2**32-1")
    for option, names in _method_options().items():
        if option in _COMMON_DESTS:  # clashes with a common flag: reachable through --param
            continue
        p.add_argument(
            f"--{option.replace('_', '-')}",
            dest=option,
            default=None,
            help=f"{', '.join(names)}: config field {option}",
        )
    p.add_argument("--holdout", action="append", default=[], help="held-out batch (repeatable)")
    p.add_argument(
        "--inclusion",
        default="all",
        choices=Choices(_inclusion_names),
        metavar="SCENARIO",
        help="cell-type inclusion scenario: %(choices)s (default: %(default)s)",
    )
    p.add_argument(
        "--panels",
        default=None,
        help="comma-separated metric panels, e.g. scib,downstream; '' or none: no evaluation",
    )
    p.add_argument(
        "--sensitivity",
        action="store_true",
        help="also report how far each discontinuous metric (clusterings, kNN votes) jumps "
        "under a 1e-6 perturbation of the embedding (about doubles the evaluation)",
    )
    p.add_argument("--param", action="append", default=[], help="method option KEY=VALUE")
    p.add_argument("--out", required=True, help="output directory (a new folder)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in --out (atomically)"
    )


def command(args: argparse.Namespace) -> int:
    """Check the output folder and input, run, write the run folder, print its metrics."""
    # AnnData, the methods and the panels: when the command runs (start-up time)
    from fedsc.run.config import RunConfig
    from fedsc.run.execute import execute_run
    from fedsc.run.record import check_output_dir, format_metrics, write_run

    check_output_dir(args.out, overwrite=args.overwrite)  # before any computation
    check_dataset(args.input, "--input")

    values = params(args.param)
    for option in _method_options():
        value = getattr(args, option, None) if option not in _COMMON_DESTS else None
        if value is not None:
            values[option] = _option_value(args.method, option, value)
    cfg = RunConfig(
        method=args.method,
        dataset=args.input,
        batch_key=args.batch_key,
        labels_key=args.labels_key,
        use_rep=args.use_rep,
        upstream=args.upstream,
        backend=args.backend,
        backend_options=backend_options(args),
        mechanisms=[parse_mechanism_arg(m) for m in args.mechanism],
        seed=args.seed,
        params=values,
        holdout=args.holdout,
        inclusion=args.inclusion,
        panels=None if args.panels is None else args.panels.split(","),
        deploy=args.deploy,
        sensitivity=args.sensitivity,
    )
    result = execute_run(cfg)
    out = write_run(result, args.out, overwrite=args.overwrite)
    if len(result.rows):
        print(format_metrics(result.rows, result.info))
    else:
        print("no metric panels: evaluation skipped")
    print(f"\nprivacy: {result.info['privacy']}")
    print(
        f"wall time: {result.info['wall_time_s']:.1f} s; wrote {out}/corrected.h5ad, metrics.csv, run.json"
    )
    return 0


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """``fedsc run``'s ``--backend-option KEY=VALUE`` pairs and ``--mode``."""
    options = params(args.backend_option, "--backend-option", "parties=3")
    if args.mode:
        options["mode"] = args.mode
    return options
