"""The one command line of a party: ``python -m smpc.party`` and ``fedsc party``.

Light on purpose (argparse and :mod:`smpc.options` at import), so ``fedsc`` builds its
``party`` subcommand from it without importing the party itself.
"""

from __future__ import annotations

import argparse
import os
import sys

from smpc.options import MODES, PROVIDERS, CryptenOptions

__all__ = ["build_parser", "main", "parse_address", "run"]

_DEFAULTS = CryptenOptions()


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as ``(host, port)``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The party's arguments, added to ``parser`` (``fedsc party``) or to a new one.

    Parameters
    ----------
    parser
        A parser to add them to; default: ``python -m smpc.party``'s own.

    Returns
    -------
    The parser; :func:`smpc.party.run` serves the party its ``parse_args()`` describes.
    """
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="smpc.party",
            description="Run one CrypTen computation party (rank < world size) or the trusted "
            "dealer (rank == world size) for a remote coordinator. --mode, --provider and "
            "--precision-bits must match the coordinator's aggregator settings; a mismatch "
            "is reported when the coordinator connects.",
        )
    parser.add_argument("--rank", type=int, default=None, help="default: $RANK")
    parser.add_argument("--world-size", type=int, default=None, help="default: $WORLD_SIZE or 3")
    parser.add_argument(
        "--rendezvous",
        default=None,
        help="tcp://HOST:PORT shared by all ranks; rank 0 listens there (HOST must be its "
        "address); every rank needs $SMPC_AUTHKEY (default: $RENDEZVOUS)",
    )
    parser.add_argument(
        "--listen",
        type=parse_address,
        default=None,
        help="HOST:PORT where the coordinator connects (parties only; key in $SMPC_AUTHKEY); "
        "use this host's address on the private network (0.0.0.0 listens on every "
        "interface and warns)",
    )
    parser.add_argument(
        "--provider",
        default=_DEFAULTS.provider,
        choices=PROVIDERS,
        help="CrypTen randomness: TTP (trusted dealer, required in secure mode) or TFP (debug)",
    )
    parser.add_argument("--mode", default=_DEFAULTS.mode, choices=MODES)
    parser.add_argument("--seed", type=int, default=None, help="debug mode only")
    parser.add_argument(
        "--precision-bits",
        type=int,
        default=_DEFAULTS.precision_bits,
        help="fixed-point bits of argmax comparisons (the aggregator's precision_bits)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=_DEFAULTS.startup_timeout,
        help="seconds for every rank to join the authenticated rendezvous handshake "
        f"(default {_DEFAULTS.startup_timeout:g}); a world-size, rank or settings mismatch "
        "fails every rank at once",
    )
    parser.add_argument(
        "--sites",
        default=None,
        help="the agreed sites (comma-separated) every sealed operation must list "
        "(default: $SMPC_AGREED_CLIENTS, else per phase the first operation's sites; "
        "docs/deployment.md, threat model)",
    )
    parser.add_argument(
        "--identity",
        default=None,
        help="file with this rank's Ed25519 private key (hex; python -m smpc.handshake "
        "keygen FILE; default $SMPC_IDENTITY): with --roster, the shared key alone takes "
        "no rank",
    )
    parser.add_argument(
        "--roster",
        default=None,
        help="JSON file {rank: public key hex} of every rank, the same on every rank "
        "(default $SMPC_ROSTER)",
    )
    parser.add_argument(
        "--gloo-interface",
        default=None,
        help="network interface for gloo (GLOO_SOCKET_IFNAME); default: the one that "
        "reaches the rendezvous host",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m smpc.party --rank R --world-size 3 --rendezvous ...``."""
    run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Serve the party that :func:`build_parser`'s ``args`` describe.

    A bad setting exits with code 2 and one line naming the rank and the problem.
    """
    # Imported here, when a party runs: ``fedsc`` builds its ``party`` subcommand from
    # this module at every start, without the party's own imports.
    from smpc import handshake
    from smpc.party import process

    if args.listen is not None and args.listen[0] in ("0.0.0.0", "::", ""):
        print(
            f"smpc.party: warning: --listen {args.listen[0]} accepts the coordinator on every "
            "interface; prefer this host's address on the private network",
            file=sys.stderr,
        )
    try:
        process.serve(
            args.rank,
            args.world_size,
            args.rendezvous,
            listen=args.listen,
            provider=args.provider,
            mode=args.mode,
            seed=args.seed,
            precision_bits=args.precision_bits,
            startup_timeout=args.startup_timeout,
            gloo_interface=args.gloo_interface,
            agreed_clients=[c for c in args.sites.split(",") if c] if args.sites else None,
            identity=handshake.load_identity(args.identity) if args.identity else None,
            roster=handshake.load_roster(args.roster) if args.roster else None,
        )
    except (handshake.HandshakeError, ValueError) as err:
        rank = args.rank if args.rank is not None else os.environ.get("RANK", "?")
        print(f"smpc.party: error: rank {rank}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
