"""Command line: ``fedsc run | demo | party | sweep | compare | report``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
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


def _params(pairs: Sequence[str], flag: str = "--param", example: str = "mu=0") -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed by :func:`_parse_value`) as a dict."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise FedscInputError(
                f"{flag} expects KEY=VALUE, got {pair!r} (e.g. {flag} {example})."
            )
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


class _Choices:
    """argparse choices read from a registry when first needed (parsing ``run`` or help).

    Reading ``smpc.BACKENDS`` imports torch; the other subcommands should not pay for it.
    """

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names = names

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def _backend_names() -> list[str]:
    from fedsc.backend import backend_names

    return backend_names()


def _inclusion_names() -> list[str]:
    from fedsc.data.inclusion import SCENARIOS

    return list(SCENARIOS)


def _method_options() -> dict[str, list[str]]:
    """Config fields offered as ``fedsc run`` flags -> the methods that take them."""
    from fedsc.methods import REGISTRY

    out: dict[str, list[str]] = {}
    for name, spec in REGISTRY.items():
        for option in spec.options:
            out.setdefault(option, []).append(name)
    return out


def _option_value(method: str, option: str, text: str) -> Any:
    """A flag's text as the type of the method's config field (``--mu 0`` -> ``0.0``)."""
    from dataclasses import fields

    from fedsc.methods import get_method

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
    return _parse_value(text)


#: ``fedsc run`` flags every method shares; a method option of the same name is set with
#: ``--param NAME=VALUE`` instead.
_COMMON_DESTS = {
    "method", "input", "batch_key", "label_key", "use_rep", "upstream", "backend", "mode",
    "backend_option", "mechanism", "deploy", "seed", "holdout", "inclusion", "panels", "param", "out", "command",
}  # fmt: skip


def _add_run(sub: argparse._SubParsersAction) -> None:
    from fedsc.deploy.drivers import TRANSPORTS
    from fedsc.methods import REGISTRY
    from fedsc.upstream import EMBEDDING_METHODS

    methods = "; ".join(f"{n}: {s.description}" for n, s in REGISTRY.items() if s.description)
    p = sub.add_parser(
        "run", help="run one method on one dataset and evaluate it", description=methods or None
    )
    p.add_argument("method", choices=REGISTRY.names())
    p.add_argument("--input", default="pancreas", help="an .h5ad path (default: bundled pancreas)")
    p.add_argument("--batch-key", default="batch")
    p.add_argument("--label-key", default="cell_type")
    p.add_argument(
        "--use-rep", default=None, help="input embedding of embedding methods (obsm key or X)"
    )
    p.add_argument("--upstream", default="pca", choices=EMBEDDING_METHODS.names())
    p.add_argument(
        "--backend",
        default="plaintext",
        choices=_Choices(_backend_names),
        metavar="BACKEND",
        help="aggregation backend: %(choices)s (default: %(default)s)",
    )
    p.add_argument("--mode", default=None, choices=["secure", "debug"], help="crypten mode")
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
    p.add_argument("--seed", type=_seed_arg, default=0, help="run seed, 0..2**32-1")
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
        choices=_Choices(_inclusion_names),
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


def _seed_arg(text: str) -> int:
    """``--seed``: an integer in the range every seeded library accepts."""
    from fedsc.run_config import check_seed

    value: Any = text.strip()
    if value.isdigit():
        value = int(value)
    else:
        try:
            value = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            pass
    try:
        return check_seed(value, "--seed")
    except FedscInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--seed ")) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from fedsc.run_config import RunConfig
    from fedsc.run_privacy import parse_mechanism_arg
    from fedsc.runner import check_output_dir, execute_run, format_metrics, write_run

    check_output_dir(args.out, overwrite=args.overwrite)  # before any computation
    _check_input(args.input)

    params = _params(args.param)
    for option in _method_options():
        value = getattr(args, option, None) if option not in _COMMON_DESTS else None
        if value is not None:
            params[option] = _option_value(args.method, option, value)
    cfg = RunConfig(
        method=args.method,
        dataset=args.input,
        batch_key=args.batch_key,
        label_key=args.label_key,
        use_rep=args.use_rep,
        upstream=args.upstream,
        backend=args.backend,
        backend_options=_backend_options(args),
        mechanisms=[parse_mechanism_arg(m) for m in args.mechanism],
        seed=args.seed,
        params=params,
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


def _check_input(name: str) -> None:
    """``--input`` that is a path: an existing ``.h5ad`` file (before anything loads)."""
    if name in ("pancreas", "cellbench_3cl") or name.startswith("shared:"):
        return
    path = Path(name)
    if path.is_dir():
        raise FedscInputError(f"--input {name} is a folder; pass an .h5ad file.")
    if not path.is_file():
        raise FedscInputError(
            f"--input {name} not found; pass an .h5ad file or a bundled dataset "
            "(pancreas, cellbench_3cl)."
        )
    with path.open("rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise FedscInputError(
            f"--input {name} is not an .h5ad (HDF5) file; convert it with anndata "
            "(adata.write_h5ad) first."
        )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the privacy-utility study on the bundled data: sweep (with attacks and DP), "
        "compare (crypten vs plaintext; DP vs no DP), report (frontier, leakage table)",
    )
    p.add_argument("--out", default="results/demo")
    p.add_argument("--study", default=None, help="default: experiments/privacy_utility.yaml")
    p.add_argument("--workers", type=_positive, default=1)


def _default_study() -> Path:
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        path = root / "experiments" / "privacy_utility.yaml"
        if path.is_file():
            return path
    raise FedscInputError(
        "experiments/privacy_utility.yaml not found; run from the repository or pass --study."
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedsc.comparison import load_results, report_sweep
    from fedsc.report import comparison_table
    from fedsc.stats import compare
    from fedsc.sweep import run_sweep

    start = time.perf_counter()
    study = Path(args.study) if args.study else _default_study()
    res = run_sweep(study, args.out, workers=args.workers, show_progress=True)
    print(
        f"sweep {study.name}: {res.executed} run(s) executed, {res.skipped} already done, "
        f"{res.failed} failed"
    )
    results = comparison_table(load_results(args.out))
    variants = set(results["variant"])
    # crypten vs plaintext without DP: by variant name when the study has DP variants too
    a, b = (
        ({"variant": "crypten"}, {"variant": "plaintext"})
        if {"crypten", "plaintext"} <= variants
        else ({"backend": "crypten"}, {"backend": "plaintext"})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report notes unreachable significance
        table = compare(results, a, b)
    table.to_csv(Path(args.out) / "comparison.csv", index=False)
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
    p.add_argument(
        "--rendezvous",
        required=True,
        help="tcp://HOST:PORT shared by all ranks; rank 0 listens there (HOST must be its "
        "address); every rank needs $SMPC_AUTHKEY",
    )
    p.add_argument(
        "--listen",
        default=None,
        help="HOST:PORT the coordinator connects to (parties only); use this host's address "
        "on the private network (0.0.0.0 listens on every interface and warns)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=None,
        help="seconds for every rank to join the authenticated rendezvous handshake "
        "(default 120); a world-size, rank or settings mismatch fails every rank at once",
    )
    p.add_argument(
        "--gloo-interface",
        default=None,
        help="network interface gloo binds (GLOO_SOCKET_IFNAME); default: the interface "
        "that reaches the rendezvous host",
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
    if args.startup_timeout is not None:
        argv += ["--startup-timeout", str(args.startup_timeout)]
    if args.gloo_interface:
        argv += ["--gloo-interface", args.gloo_interface]
    party_main(argv)
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a study (datasets x methods x variants x seeds)")
    p.add_argument("study", help="study YAML (see experiments/)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=_positive, default=1, help="local worker processes")
    p.add_argument("--scheduler", default=None, help="Dask scheduler tcp://HOST:PORT")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


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


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    from fedsc.deploy.cli import add_parser

    add_parser(sub)


def _cmd_deploy(args: argparse.Namespace) -> int:
    from fedsc.deploy.cli import command

    return command(args)


COMMANDS = {
    "run": _cmd_run,
    "demo": _cmd_demo,
    "party": _cmd_party,
    "sweep": _cmd_sweep,
    "compare": _cmd_compare,
    "report": _cmd_report,
    "deploy": _cmd_deploy,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``fedsc`` argument parser (subcommands from the registries)."""

    def threads(text: str) -> int | str:
        if text.strip().lower() == "auto":
            return "auto"
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(
                f"expected a positive integer or 'auto', got {text!r} (more than the CPUs "
                "available is capped at them)"
            )
        return int(text)

    def add_global_options(p: argparse.ArgumentParser, default: Any) -> None:
        p.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=0 if default is None else default,
            help="log INFO messages (-vv: DEBUG); default: warnings and progress lines",
        )
        p.add_argument(
            "--debug",
            action="store_true",
            default=False if default is None else default,
            help="show the full traceback of an error",
        )
        p.add_argument(
            "--threads",
            type=threads,
            default=default,
            help="threads for torch/BLAS/OpenMP (default: $FEDSC_THREADS, else the CPUs "
            "available to this process; 'auto')",
        )
        p.add_argument(
            "--reproducible",
            choices=("fast", "portable"),
            default=default,
            help="'portable': the same bits on every x86-64-v3 CPU (pinned kernels, one "
            "thread; docs/reproducibility.md); default: $FEDSC_REPRODUCIBLE, else 'fast'",
        )
        p.add_argument(
            "--force",
            action="store_true",
            default=False if default is None else default,
            help="run past the model-size and study-size limits (FEDSC_MAX_MODEL_PARAMS, "
            "FEDSC_MAX_STUDY_RUNS; fedsc.resources)",
        )

    parser = argparse.ArgumentParser(
        prog="fedsc", description="Privacy-preserving federated batch correction."
    )
    add_global_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_demo(sub)
    _add_party(sub)
    _add_sweep(sub)
    _add_compare(sub)
    _add_report(sub)
    _add_deploy(sub)
    for p in sub.choices.values():  # also accepted after the subcommand
        add_global_options(p, argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedsc`` command line; return the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    from fedsc import settings

    try:  # a bad FEDSC_* variable: one message naming it, exit 2
        settings.check_environment()
    except FedscInputError as exc:
        if args.debug:
            raise
        print(f"fedsc: error: {exc}", file=sys.stderr)
        return 2
    settings.update(threads=args.threads, reproducible=args.reproducible)
    limits = {k: getattr(settings, k) for k in ("max_model_params", "max_study_runs")}
    if args.force:
        settings.update(max_model_params=0, max_study_runs=0)
    try:
        return _main(args, argv)
    finally:
        settings.update(**limits)  # --force holds for this command only


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from fedsc import settings

    if argv is None and settings.reproducible == "portable":
        _restart_portable()  # numpy is loaded: the pinned kernels need a fresh interpreter
    _prestart_backend(args)
    with settings.logging_to_stderr(min(args.verbose, 2) or None):
        try:
            settings.apply()  # threads, passive OpenMP waiting, compile caches, warnings
            return COMMANDS[args.command](args)
        except KeyboardInterrupt:
            if args.debug:
                raise
            print("fedsc: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if args.debug:
                raise
            print(f"fedsc: error: {_describe_error(exc)}", file=sys.stderr)
            return 2 if _is_user_error(exc) else 1


def _restart_portable() -> None:
    """Replace this process by the same command with the portable mode's variables set.

    numpy (loaded by this module) and torch read them only when they load. Once: the new
    process finds them set and goes on.
    """
    import os

    from fedsc import settings
    from fedsc.settings import _numerics

    env = dict(os.environ)
    settings.configure_environment(environ=env)
    if not _numerics.loaded_mismatches() and all(
        os.environ.get(k) == v for k, v in _numerics.portable_environment(env).items()
    ):
        return
    if os.environ.get("FEDSC_PORTABLE_RESTARTED"):  # the variables did not take effect
        return  # settings.apply() then names what did not
    env["FEDSC_PORTABLE_RESTARTED"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fedsc.cli", *sys.argv[1:]], env)


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """``fedsc run``'s ``--backend-option KEY=VALUE`` pairs and ``--mode``."""
    options = _params(args.backend_option, "--backend-option", "parties=3")
    if args.mode:
        options["mode"] = args.mode
    return options


def _prestart_backend(args: argparse.Namespace) -> None:
    """``fedsc run``: start the backend's slow parts before fedsc's own imports.

    CrypTen's fork server then imports torch and CrypTen (~2 CPU-s) beside them rather
    than during the run. Best effort: a bad option is reported by the run itself.
    """
    if args.command != "run" or args.deploy is not None:
        return
    import smpc
    from fedsc.methods import get_method

    with contextlib.suppress(Exception):
        if not get_method(args.method).federated:
            return
        smpc.prestart(args.backend, **_backend_options(args))


def _library_errors() -> tuple[type[BaseException], ...]:
    """Errors that report bad input, a bad environment or a failed party: exit code 2."""
    import yaml

    kinds: list[type[BaseException]] = [ValueError, OSError, yaml.YAMLError, TimeoutError]
    try:
        from smpc.party_pool import PartyError

        kinds.append(PartyError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, _library_errors())


def _describe_error(exc: BaseException) -> str:
    """One line (or a few) for the user; no traceback unless --debug."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, FedscInputError):
        return text
    name = type(exc).__name__
    if name == "PartyError":
        return f"a computation party failed: {text}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or text}: {exc.filename}"
    if _is_user_error(exc):
        return f"{text} ({name})"
    return f"{name}: {text} (an internal error; rerun with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
