"""A computation party (or the trusted dealer): its start-up, command loop and comparison protocol.

One party per rank. Ranks ``0 .. world_size - 1`` are computation parties; rank
``world_size`` is the trusted dealer (CrypTen's ``TTPServer``), which only hands out
correlated randomness (Beaver triples, ...) for comparisons and never sees a share.

A party talks to two kinds of peers:

* the other parties and the dealer, through ``torch.distributed`` (gloo), set up by
  ``crypten.init()`` from the ``RENDEZVOUS``/``WORLD_SIZE``/``RANK`` environment (only
  ``argmax`` needs them: sums are local additions of shares);
* the coordinator, through a :class:`~smpc.channel.Channel` carrying the typed messages
  of :mod:`smpc.messages` (a pipe to a local party process, optionally with shares in a
  :class:`~smpc.shared_buffer.SharedBuffer`; an authenticated TCP connection to a remote
  party; or an in-process channel to a party thread in tests).

:class:`PartyLoop` is the same in all cases; :func:`serve` runs it in a party process,
:func:`serve_in_thread` in a thread (additions only, no CrypTen). A local party process
answers ``Ready`` and serves sums while it joins the process group in a background thread
(:class:`LazyCrypten`); ``argmax`` waits for the join.

CrypTen's own ``run_multiprocess`` is not used: it starts processes per call, hangs when a
function returns a large object, and cannot reuse parties across rounds.

One module each: :mod:`~smpc.party.process` (a party process's start-up, :func:`serve`),
:mod:`~smpc.party.join` (joining the MPC, now or in the background),
:mod:`~smpc.party.loop` (:class:`PartyLoop`), :mod:`~smpc.party.comparison` (the
secret-shared argmax) and :mod:`~smpc.party.cli` (the one command line, which
``python -m smpc.party`` runs). Names load on first use, so ``fedsc`` reads the command
line without importing the party.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smpc.party.cli import build_parser, main, parse_address, run
    from smpc.party.comparison import distinct_argmax, recording_openings, secure_argmax
    from smpc.party.join import JOIN_FAILED_EXIT_CODE, LazyCrypten, debug_seeds
    from smpc.party.loop import RECORD_MAX_VALUES, PartyLoop
    from smpc.party.process import AUTHKEY_ENV, serve, serve_in_thread

#: Public name -> the module that defines it.
_EXPORTS = {
    "AUTHKEY_ENV": "smpc.party.process",
    "serve": "smpc.party.process",
    "serve_in_thread": "smpc.party.process",
    "JOIN_FAILED_EXIT_CODE": "smpc.party.join",
    "LazyCrypten": "smpc.party.join",
    "debug_seeds": "smpc.party.join",
    "PartyLoop": "smpc.party.loop",
    "RECORD_MAX_VALUES": "smpc.party.loop",
    "distinct_argmax": "smpc.party.comparison",
    "recording_openings": "smpc.party.comparison",
    "secure_argmax": "smpc.party.comparison",
    "build_parser": "smpc.party.cli",
    "main": "smpc.party.cli",
    "run": "smpc.party.cli",
    "parse_address": "smpc.party.cli",
}

__all__ = [
    "AUTHKEY_ENV",
    "JOIN_FAILED_EXIT_CODE",
    "RECORD_MAX_VALUES",
    "LazyCrypten",
    "PartyLoop",
    "build_parser",
    "debug_seeds",
    "distinct_argmax",
    "main",
    "parse_address",
    "recording_openings",
    "run",
    "secure_argmax",
    "serve",
    "serve_in_thread",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
