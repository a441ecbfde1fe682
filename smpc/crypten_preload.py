"""Imported by the parties' fork server (only there): CrypTen loaded once, no main module.

* ``smpc.crypten_compat`` alone defines :func:`~smpc.crypten_compat.import_crypten`
  without calling it, so preloading it left every party (and the dealer) importing CrypTen
  itself after the fork: ~0.6 s each, four at once on the coordinator's cores. Importing
  this module in the fork server makes each party a fork with torch and CrypTen loaded.
* A forkserver child re-imports the coordinator's main module (``__main__.__file__`` or
  ``python -m`` name) before it unpickles its target. Parties never need it (their target
  is :func:`smpc.party.process.serve`), and a script that imports ``fedsc.tl`` or scanpy at top
  level made each of the four processes import them again (seconds of CPU each).
  :func:`_prepare_without_main` drops the main module from the start-up data of processes
  named :data:`PARTY_PROCESS_PREFIXES`; other children of the same fork server (a
  caller's own forkserver processes) are prepared as before.
"""

from __future__ import annotations

import multiprocessing.spawn
import sys
from collections.abc import Mapping
from typing import Any

from smpc.crypten_compat import import_crypten

#: Names of the processes :mod:`smpc.party_pool` starts (parties, then the dealer).
PARTY_PROCESS_PREFIXES = ("crypten-party-", "crypten-dealer")
_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")

_original_prepare = multiprocessing.spawn.prepare


def _prepare_without_main(data: Mapping[str, Any]) -> None:
    """``multiprocessing.spawn.prepare`` that skips the main module for party processes."""
    if str(data.get("name", "")).startswith(PARTY_PROCESS_PREFIXES):
        data = {k: v for k, v in data.items() if k not in _MAIN_KEYS}
    _original_prepare(data)


def install() -> None:
    """Load CrypTen and make party children skip the main module (idempotent)."""
    import_crypten()
    multiprocessing.spawn.prepare = _prepare_without_main
    guard = sys.modules.get("smpc.forkserver_guard")  # imported by the fork server only
    if guard is not None:
        guard.release()  # no thread left running when the server forks


install()
