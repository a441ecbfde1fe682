"""Polling that is fast while a run exchanges messages and cheap while nothing happens.

Flower 1.41 moves every message by polling: the SuperNode asks the SuperLink for a
message every 3 s (hard-coded) and waits for its ClientApp's reply in 0.5 s steps, the
SuperExec asks for a task every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (1 s), the
ServerApp asks for replies. A constant short interval makes each exchange fast but
costs CPU all the time (each poll is an HTTP request served by another Python
process: ~3 ms of CPU per poll on both sides; three idle sites at 10-20 polls/s took
0.4 of a core in our measurement). :class:`Backoff` polls after ``fast`` seconds when
something just happened, doubles the wait after every empty poll up to ``cap``, and
after ``idle_after`` seconds without activity up to ``idle_cap``: a run's next message
is usually close behind the last one, and a deployment between runs costs little.
Hand-written because Flower's loops take a fixed interval.
"""

from __future__ import annotations

import time as _time
from typing import Any

#: Defaults (seconds): first wait after activity, cap while active, idle cap.
FAST = 0.002
CAP = 0.1
IDLE_AFTER = 10.0
IDLE_CAP = 0.5


class Backoff:
    """Waits that start at ``fast`` after :meth:`reset` and double up to a cap.

    Parameters
    ----------
    fast
        First wait after activity.
    cap
        Longest wait within ``idle_after`` seconds of the last activity.
    idle_after
        Seconds without activity after which waits grow to ``idle_cap``.
    idle_cap
        Longest wait when idle.
    """

    def __init__(
        self,
        fast: float = FAST,
        cap: float = CAP,
        idle_after: float = IDLE_AFTER,
        idle_cap: float = IDLE_CAP,
    ) -> None:
        if not 0 < fast <= cap <= idle_cap:
            raise ValueError(f"need 0 < fast <= cap <= idle_cap, got {fast}, {cap}, {idle_cap}.")
        self.fast, self.cap = float(fast), float(cap)
        self.idle_after, self.idle_cap = float(idle_after), float(idle_cap)
        self.reset()

    def reset(self) -> None:
        """Something happened: the next wait is ``fast`` again."""
        self._next = self.fast
        self._active = _time.monotonic()

    def next_wait(self) -> float:
        """The next wait (seconds); each call doubles the one after it, up to the cap."""
        idle = _time.monotonic() - self._active > self.idle_after
        cap = self.idle_cap if idle else self.cap
        wait = min(self._next, cap)
        self._next = min(self._next * 2, cap)
        return wait

    def sleep(self, requested: float | None = None) -> None:
        """Sleep the next wait, never longer than ``requested``."""
        wait = self.next_wait()
        _time.sleep(wait if requested is None else min(float(requested), wait))


class BackoffTime:
    """The ``time`` module with ``sleep`` replaced by a :class:`Backoff`'s.

    Assigned to a Flower module's ``time`` global so its polling loop's fixed sleeps
    follow the backoff (``module.time = BackoffTime(backoff)``).
    """

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        """One backoff wait (at most ``seconds``)."""
        self.backoff.sleep(seconds)
