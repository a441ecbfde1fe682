"""``fedsc party``: serve one CrypTen computation party or the dealer (:mod:`smpc.party`).

Its flags are ``python -m smpc.party``'s, from the one parser
(:func:`smpc.party.cli.build_parser`).
"""

from __future__ import annotations

import argparse

from smpc.party import cli as party_cli

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
    party_cli.build_parser(p)


def command(args: argparse.Namespace) -> int:
    """Serve the party until the coordinator closes it."""
    party_cli.run(args)
    return 0
