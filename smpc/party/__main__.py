"""``python -m smpc.party``: serve one party or the dealer (:func:`smpc.party.cli.main`)."""

import sys

from smpc.party.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in tests
    main(sys.argv[1:])
