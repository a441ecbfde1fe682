"""``python -m fedsc.deploy.supernode [--idle-poll S] [--cold] <flower-supernode args>``.

Flower's own SuperNode (``flower-supernode``, same arguments), with two changes:

* when it finds no message it waits ``--idle-poll`` seconds (default 0.1) before asking
  again, instead of the 3 s Flower 1.41 hard-codes in its main loop;
* it starts :mod:`fedsc.deploy.superexec` (Flower's SuperExec whose ClientApp processes
  are forked warm) instead of ``flower-superexec`` (a fresh interpreter per message);
  ``--cold`` keeps Flower's.

A federated run is a long chain of short exchanges (a FedscGen round trains, then
aggregates the metrics; SecAgg+ needs four exchanges per aggregation), so both waits
dominate a small run's wall time. Nothing else differs; production sites may run
``flower-supernode`` itself.
"""

from __future__ import annotations

import subprocess as _subprocess
import sys
import time as _time
from typing import Any

#: Default idle poll interval (seconds).
IDLE_POLL = 0.1


class _ShortSleeps:
    """The ``time`` module, with sleeps capped at the idle poll interval."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(float(seconds), self.cap))


class _WarmSuperExec:
    """The ``subprocess`` module, starting :mod:`fedsc.deploy.superexec` for SuperExec."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_subprocess, name)

    def Popen(self, args: Any, *rest: Any, **kwargs: Any) -> Any:
        if isinstance(args, list) and args and args[0] == "flower-superexec":
            args = [sys.executable, "-m", "fedsc.deploy.superexec", *args[1:]]
        return _subprocess.Popen(args, *rest, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Start Flower's SuperNode with a short idle poll."""
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    args = list(sys.argv[1:] if argv is None else argv)
    cap = IDLE_POLL
    if "--idle-poll" in args:
        i = args.index("--idle-poll")
        cap = float(args[i + 1])
        del args[i : i + 2]
    warm = "--cold" not in args
    args = [a for a in args if a != "--cold"]
    if not hasattr(loop, "time") or not hasattr(loop, "subprocess"):
        raise RuntimeError(
            "this Flower version's SuperNode loop has changed; use flower-supernode."
        )
    loop.time = _ShortSleeps(cap)  # type: ignore[assignment]
    if warm:
        loop.subprocess = _WarmSuperExec()  # type: ignore[assignment]
    sys.argv = ["flower-supernode", *args]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
