"""``fedsc party``: serve one CrypTen computation party or the dealer (:mod:`smpc.party`).

The flags are forwarded to :func:`smpc.party.main` as its own command line.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedsc party`` to the subcommands."""
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
    p.add_argument(
        "--sites",
        default=None,
        help="the agreed sites (comma-separated) every sealed operation must list "
        "(default $SMPC_AGREED_CLIENTS; docs/deployment.md, threat model)",
    )
    p.add_argument(
        "--identity",
        default=None,
        help="this rank's own private key file (python -m smpc.handshake keygen FILE; "
        "default $SMPC_IDENTITY): with --roster, the shared key alone takes no rank",
    )
    p.add_argument(
        "--roster",
        default=None,
        help="JSON file of every rank's public key, the same on every rank (default $SMPC_ROSTER)",
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


def command(args: argparse.Namespace) -> int:
    """Serve the party until the coordinator closes it."""
    from smpc.party import main as party_main  # torch and CrypTen: when it runs

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
    for flag in ("sites", "identity", "roster"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    party_main(argv)
    return 0
