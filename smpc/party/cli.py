"""The one command line of a party: ``python -m smpc.party`` and ``fedsc party``.

Light on purpose (argparse and :mod:`smpc.options` at import), so ``fedsc`` builds its
``party`` subcommand from it without importing the party itself. A party's CrypTen
settings are a :class:`~smpc.options.CryptenOptions` both ways: :func:`party_options`
reads them from the parsed flags (validated there, with the aggregator's rules), and
:func:`party_argv` writes the flags of one rank from the options a coordinator uses, read
back by this parser before a process is started.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from smpc.options import MODES, PROVIDERS, CryptenOptions

__all__ = [
    "PARTY_FIELDS",
    "build_parser",
    "main",
    "parse_address",
    "party_argv",
    "party_options",
    "run",
]

_DEFAULTS = CryptenOptions()

#: The options a party takes (the others are the coordinator's own).
PARTY_FIELDS = ("parties", "mode", "provider", "seed", "precision_bits", "startup_timeout")


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


def party_options(args: argparse.Namespace) -> CryptenOptions:
    """The CrypTen options a party's parsed flags describe (``ValueError`` if invalid).

    The world size is the number of computation parties (``$WORLD_SIZE`` when not given);
    a seed is refused in secure mode, as the aggregator refuses it.
    """
    world_size = args.world_size
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", _DEFAULTS.parties))
    return CryptenOptions(
        parties=world_size,
        mode=args.mode,
        provider=args.provider,
        seed=args.seed,
        precision_bits=args.precision_bits,
        startup_timeout=args.startup_timeout,
    )


def party_argv(
    rank: int,
    rendezvous: str,
    options: CryptenOptions | None = None,
    *,
    listen: tuple[str, int] | None = None,
    sites: Sequence[str] | None = None,
    identity: str | Path | None = None,
    roster: str | Path | None = None,
    gloo_interface: str | None = None,
) -> list[str]:
    """The arguments of ``python -m smpc.party`` for ``rank`` (``options.parties``: the dealer).

    Parameters
    ----------
    rank
        ``0 .. options.parties - 1`` for a computation party, ``options.parties`` for the
        trusted dealer.
    rendezvous
        ``tcp://HOST:PORT`` shared by every rank.
    options
        The coordinator's CrypTen options (default: the defaults): the world size, mode,
        provider, seed (debug mode), precision and start-up timeout the parties must share.
    listen, sites, identity, roster, gloo_interface
        As the flags of the same names (``listen`` for computation parties only).

    Returns
    -------
    The arguments, read back by :func:`build_parser` and :func:`party_options` to the same
    options (a flag the parser does not take, or a value it refuses, raises ``ValueError``).
    """
    opts = CryptenOptions() if options is None else options
    argv = ["--rank", str(rank), "--world-size", str(opts.parties), "--rendezvous", rendezvous]
    argv += ["--mode", opts.mode, "--provider", opts.provider]
    argv += ["--precision-bits", str(opts.precision_bits)]
    argv += ["--startup-timeout", repr(float(opts.startup_timeout))]
    if opts.seed is not None:
        argv += ["--seed", str(opts.seed)]
    if listen is not None:
        argv += ["--listen", f"{listen[0]}:{listen[1]}"]
    if sites is not None:
        argv += ["--sites", ",".join(sites)]
    for flag, value in (("--identity", identity), ("--roster", roster)):
        if value is not None:
            argv += [flag, str(value)]
    if gloo_interface is not None:
        argv += ["--gloo-interface", gloo_interface]
    parser = build_parser(argparse.ArgumentParser(prog="smpc.party", exit_on_error=False))
    try:
        parsed = parser.parse_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"party rank {rank}: {err}") from None
    back = party_options(parsed)
    lost = {f: getattr(opts, f) for f in PARTY_FIELDS if getattr(back, f) != getattr(opts, f)}
    if lost:
        raise ValueError(f"party rank {rank}: the flags do not carry the options {lost}.")
    return argv


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

    try:
        options = party_options(args)  # the aggregator's rules, before anything starts
    except ValueError as err:
        rank = args.rank if args.rank is not None else os.environ.get("RANK", "?")
        print(f"smpc.party: error: rank {rank}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
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
            provider=options.provider,
            mode=options.mode,
            seed=args.seed,
            precision_bits=options.precision_bits,
            startup_timeout=options.startup_timeout,
            gloo_interface=args.gloo_interface,
            agreed_clients=[c for c in args.sites.split(",") if c] if args.sites else None,
            identity=handshake.load_identity(args.identity) if args.identity else None,
            roster=handshake.load_roster(args.roster) if args.roster else None,
        )
    except (handshake.HandshakeError, ValueError) as err:
        rank = args.rank if args.rank is not None else os.environ.get("RANK", "?")
        print(f"smpc.party: error: rank {rank}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
