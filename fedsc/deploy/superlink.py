"""``python -m fedsc.deploy.superlink [--cold] <flower-superlink args>``.

Flower's own SuperLink (``flower-superlink``, same arguments), with one change: the
SuperExec it starts for ServerApp runs is :mod:`fedsc.deploy.superexec`, which forks each
run's ServerApp from a process that has imported Flower, torch and fedsc's drivers once,
instead of a fresh ``flwr-serverapp`` interpreter per run. ``--cold`` keeps Flower's.
Used by :class:`fedsc.deploy.local.LocalDeployment`; a production coordinator may run
``flower-superlink`` itself.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from fedsc.deploy.superexec import SERVER_PRELOAD


def main(argv: list[str] | None = None) -> int:
    """Start Flower's SuperLink with a warm SuperExec."""
    # the module (flwr.superlink.cli exports a function of the same name)
    link = importlib.import_module("flwr.superlink.cli.flower_superlink")

    args = list(sys.argv[1:] if argv is None else argv)
    warm = "--cold" not in args
    args = [a for a in args if a != "--cold"]
    if warm:
        if not hasattr(link, "_get_superexec_command"):
            raise RuntimeError("this Flower version's SuperLink has changed; use flower-superlink.")
        flower_command = link._get_superexec_command

        def command(*a: Any, **kw: Any) -> list[str]:
            flower = flower_command(*a, **kw)
            if flower[:1] != ["flower-superexec"]:
                return list(flower)
            preload = ["--preload", ",".join(SERVER_PRELOAD)]
            return [sys.executable, "-m", "fedsc.deploy.superexec", *preload, *flower[1:]]

        link._get_superexec_command = command  # type: ignore[attr-defined]
    sys.argv = ["flower-superlink", *args]
    link.flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
