"""Run a blocking call in a thread and keep its outcome (rendezvous and handshake tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[threading.Thread, list]:
    """Start ``fn(*args, **kwargs)`` in a daemon thread; the list gets ``"ok"`` or the error."""
    outcome: list = []

    def run() -> None:
        try:
            fn(*args, **kwargs)
            outcome.append("ok")
        except Exception as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome
