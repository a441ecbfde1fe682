"""``python -m fedsc.deploy.supernode [--idle-poll S] [--cold] <flower-supernode args>``.

Flower's own SuperNode (``flower-supernode``, same arguments), with two changes:

* when it finds no message it asks again after a wait that starts at 2 ms after a
  message came or a reply left and doubles up to ``--idle-poll`` seconds (default 0.05;
  0.5 s after 10 s without messages), instead of the 3 s Flower 1.41 hard-codes in its
  main loop; it waits for its ClientApp's reply the same way, not in 0.5 s steps
  (:mod:`fedsc.deploy.polling`);
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
from typing import Any

from fedsc.deploy.polling import IDLE_CAP, Backoff, BackoffTime

#: Default longest poll interval while a run is active (seconds).
IDLE_POLL = 0.05


class _WarmSuperExec:
    """The ``subprocess`` module, starting :mod:`fedsc.deploy.superexec` for SuperExec."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_subprocess, name)

    def Popen(self, args: Any, *rest: Any, **kwargs: Any) -> Any:
        if isinstance(args, list) and args and args[0] == "flower-superexec":
            args = [sys.executable, "-m", "fedsc.deploy.superexec", *args[1:]]
        return _subprocess.Popen(args, *rest, **kwargs)


def _poll_with(loop: Any, backoff: Backoff) -> None:
    """Make the SuperNode loop's waits follow ``backoff``, reset by every message.

    Flower's loop sleeps 3 s after an empty pull and 0.5 s steps while its ClientApp
    works; with the backoff both start short after a message arrived or a reply left.
    Also traces both events (:mod:`fedsc.deploy.trace`).
    """
    from fedsc.deploy import trace

    pull, push = loop._pull_and_store_message, loop._push_messages

    def pulled(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            backoff.reset()
            trace.event("supernode", "node_received", node=kwargs["state"].get_node_id())
        return run_id

    def pushed(*args: Any, **kwargs: Any) -> Any:
        backoff.reset()
        out = push(*args, **kwargs)
        backoff.reset()
        trace.event("supernode", "node_sent", node=kwargs["state"].get_node_id())
        return out

    loop.time = BackoffTime(backoff)
    loop._pull_and_store_message = pulled
    loop._push_messages = pushed


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
    hooks = ("time", "subprocess", "_pull_and_store_message", "_push_messages")
    if not all(hasattr(loop, name) for name in hooks):
        raise RuntimeError(
            "this Flower version's SuperNode loop has changed; use flower-supernode."
        )
    _poll_with(loop, Backoff(cap=cap, idle_cap=max(cap, IDLE_CAP)))
    if warm:
        loop.subprocess = _WarmSuperExec()  # type: ignore[assignment]
    sys.argv = ["flower-supernode", *args]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
