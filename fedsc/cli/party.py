"""``fedsc party``: serve one CrypTen computation party or the dealer (:mod:`smpc.party`).

Its flags are ``python -m smpc.party``'s, from the one parser
(:func:`smpc.party_cli.build_parser`).
"""

from __future__ import annotations

import argparse

from smpc.party_cli import build_parser

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
    build_parser(p)


def command(args: argparse.Namespace) -> int:
    """Serve the party until the coordinator closes it."""
    from smpc import party  # numpy, the handshake's cryptography: only when it runs

    party.run(args)
    return 0
