"""The ``fedsc`` program: global options, one subcommand per module, errors as one line.

Each command is a module with ``add_parser(subparsers)`` and ``command(args) -> int``
(:data:`COMMANDS`; Flower's ``flwr/cli/<command>`` shape): :mod:`fedsc.cli.run`,
:mod:`~fedsc.cli.demo`, :mod:`~fedsc.cli.party`, :mod:`~fedsc.cli.sweep`,
:mod:`~fedsc.cli.compare`, :mod:`~fedsc.cli.report` and :mod:`fedsc.deploy.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import yaml

import smpc
from fedsc import settings
from fedsc.cli import compare, demo, party, report, run, sweep
from fedsc.deploy import cli as deploy
from fedsc.errors import FedscInputError
from fedsc.methods import get_method
from fedsc.registry import Registry
from fedsc.settings import _numerics

__all__ = ["COMMANDS", "build_parser", "main"]

#: Subcommand -> its module (``add_parser``, ``command``), in ``fedsc --help`` order.
COMMANDS: Registry[ModuleType] = Registry("command")
COMMANDS.register("run", run)
COMMANDS.register("demo", demo)
COMMANDS.register("party", party)
COMMANDS.register("sweep", sweep)
COMMANDS.register("compare", compare)
COMMANDS.register("report", report)
COMMANDS.register("deploy", deploy)


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
    for _, module in COMMANDS.items():
        module.add_parser(sub)
    for p in sub.choices.values():  # also accepted after the subcommand
        add_global_options(p, argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedsc`` command line; return the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)

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
    if argv is None and settings.reproducible == "portable":
        _restart_portable()  # numpy is loaded: the pinned kernels need a fresh interpreter
    _prestart_backend(args)
    with settings.logging_to_stderr(min(args.verbose, 2) or None):
        try:
            settings.apply()  # threads, passive OpenMP waiting, compile caches, warnings
            return int(COMMANDS[args.command].command(args))
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


def _prestart_backend(args: argparse.Namespace) -> None:
    """``fedsc run``: start the backend's slow parts before fedsc's own imports.

    CrypTen's fork server then imports torch and CrypTen (~2 CPU-s) beside them rather
    than during the run. Best effort: a bad option is reported by the run itself.
    """
    if args.command != "run" or args.deploy is not None:
        return
    with contextlib.suppress(Exception):
        if not get_method(args.method).federated:
            return
        smpc.prestart(args.backend, **run.backend_options(args))


def _library_errors() -> tuple[type[BaseException], ...]:
    """Errors that report bad input, a bad environment or a failed party: exit code 2."""
    kinds: list[type[BaseException]] = [ValueError, OSError, yaml.YAMLError, TimeoutError]
    try:  # only on an error: the party pool's module is not needed before
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
