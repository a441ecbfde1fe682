"""A party joining the MPC (``crypten.init()``), now or in a background thread."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import numpy as np

__all__ = ["JOIN_FAILED_EXIT_CODE", "LazyCrypten", "debug_seeds"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging

#: Exit code of a rank that could not join the MPC (``crypten.init()``): usually because
#: another rank died first, which the coordinator then names instead.
JOIN_FAILED_EXIT_CODE = 3


def debug_seeds(seed: int, rank: int) -> tuple[int, int, int]:
    """(next, local, global) CrypTen seeds of ``rank`` in debug mode, as signed int64."""
    state = np.random.SeedSequence([seed, rank]).generate_state(2, np.uint64)
    global_state = np.random.SeedSequence([seed, 2**32]).generate_state(1, np.uint64)
    as_signed = [int(v) - 2**63 for v in (*state, *global_state)]
    return as_signed[0], as_signed[1], as_signed[2]


class LazyCrypten:
    """``crypten.init()`` (and the debug seeds) of one party, now or in a background thread.

    :meth:`get` returns the initialised CrypTen module, waiting for the background
    initialisation. A failed background initialisation prints the reason and exits the
    party with code 3, so the coordinator's next operation raises ``PartyError`` naming
    it; :meth:`get` raises ``RuntimeError`` naming the party should it still be asked.
    """

    def __init__(self, crypten: Any, rank: int, mode: str, seed: int | None) -> None:
        self.crypten = crypten
        self.rank = rank
        self.mode = mode
        self.seed = seed
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def initialise(self) -> None:
        """Join the process group with the other ranks and the dealer (blocking)."""
        start = time.perf_counter()
        try:
            self.crypten.init()
            if self.mode == "debug":
                self.crypten.manual_seed(
                    *debug_seeds(0 if self.seed is None else self.seed, self.rank)
                )
        except BaseException as err:
            self.error = err
            log.exception("party %d: CrypTen initialisation failed", self.rank)
            raise
        finally:
            self.seconds = time.perf_counter() - start
            self._done.set()
        log.info("party %d joined the MPC in %.2f s", self.rank, self.seconds)

    def start(self) -> None:
        """Initialise in a daemon thread."""

        def run() -> None:
            try:
                self.initialise()
            except BaseException as err:
                # Fail fast, as an eager start-up failure would: the coordinator names
                # this party (exit code 3) in its next operation, not a silent peer.
                print(
                    f"smpc.party: error: rank {self.rank}: CrypTen initialisation failed: {err!r}",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(JOIN_FAILED_EXIT_CODE)

        self._thread = threading.Thread(
            target=run, name=f"smpc-crypten-init-{self.rank}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` s for a background initialisation to end."""
        self._done.wait(timeout)

    def get(self) -> Any:
        """The initialised CrypTen module (waits for the background initialisation)."""
        self._done.wait()
        if self.error is not None:
            raise RuntimeError(
                f"party {self.rank}: CrypTen initialisation (joining the other parties and the "
                f"dealer) failed: {self.error!r}"
            ) from self.error
        return self.crypten
