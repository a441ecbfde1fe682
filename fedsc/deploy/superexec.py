"""``python -m fedsc.deploy.superexec [--preload MOD,...] <flower-superexec args>``.

Flower 1.41's SuperExec starts a fresh process for every task: a ``flwr-clientapp``
interpreter for every message a SuperNode receives (importing Flower and the app, about
1.4 s of CPU per message and site before the ClientApp does any work) and a
``flwr-serverapp`` interpreter per run at the SuperLink (importing torch and fedsc's
drivers, seconds more). A federated run is a long chain of short exchanges (SecAgg+
needs four per aggregation), so on a small machine those start-ups are much of a
deployment's wall time.

This is Flower's own SuperExec (``flower-superexec``, same arguments, same task loop)
with its task poll following :class:`fedsc.deploy.polling.Backoff` (short after each
launch, Flower's interval when idle) and one executor swapped: each ClientApp or ServerApp task runs Flower's own entry
point (``flwr-clientapp`` / ``flwr-serverapp``, with the arguments Flower's subprocess
executor would pass) in a process forked from a fork server that has imported Flower and
fedsc's app modules (``--preload``) once. The task process is as isolated as before (its
own process, its own exit); only the interpreter start and the imports are saved. Other
task types keep Flower's subprocess executor.

:mod:`fedsc.deploy.supernode` and :mod:`fedsc.deploy.superlink` start this instead of
``flower-superexec``. Hand-written because Flower has no pre-forked executor for local
processes (its warm pools are Kubernetes pods).
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

from fedsc.deploy.polling import Backoff, BackoffTime

#: Preloads: what the fork server imports once, so every task process starts with it.
#: Beyond the entry points and fedsc's apps: what each task imported after the fork
#: (measured, ``sys.modules`` before and after a task): httpx's transport (httpcore, h11),
#: the app module's other imports, zipfile's codec (the FAB).
_TASK_IMPORTS = ("httpcore", "h11", "encodings.cp437")
CLIENT_PRELOAD = (
    "flwr.supernode.cli",
    "fedsc.deploy.client_app",
    "fedsc.deploy.server_app",
    "fedsc.deploy.site_worker",
    *_TASK_IMPORTS,
)
SERVER_PRELOAD = (
    "flwr.superlink.cli",
    "fedsc.deploy.server_app",
    "fedsc.deploy.client_app",
    "fedsc.deploy.fleet",
    "fedsc.deploy.aggregators",
    "fedsc.deploy.secagg",
    "fedsc.deploy.crypten",
    "fedsc.deploy.fedscgen",
    "fedsc.deploy.scbatchprox",
    "smpc.plaintext",
    "multiprocessing.synchronize",
    *_TASK_IMPORTS,
)

#: Task commands run warm: Flower's entry point of each, by command name.
WARM_ENTRIES = {
    "flwr-clientapp": "flwr.supernode.cli:flwr_clientapp",
    "flwr-serverapp": "flwr.superlink.cli:flwr_serverapp",
}


def _run_task(argv: list[str]) -> None:
    """One task, as its Flower command (``argv[0]``) runs it, in this forked process."""
    import importlib

    from fedsc.deploy import trace

    trace.event("clientapp", "task_start")
    module, _, function = WARM_ENTRIES[argv[0]].partition(":")
    sys.argv = list(argv)
    getattr(importlib.import_module(module), function)()


def task_argv(spec: Any) -> list[str]:
    """The command line Flower's subprocess executor would run for ``spec``."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND

    argv = [
        TASK_TYPE_TO_COMMAND[spec.task_type],
        TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
        spec.runtime_api_address,
        "--token",
        spec.token,
    ]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    return argv


class WarmExecutor:
    """Flower's executor protocol: ClientApp/ServerApp tasks forked warm, others as Flower."""

    def __init__(
        self,
        fallback: Any,
        preload: tuple[str, ...] | list[str] = CLIENT_PRELOAD,
        backoff: Backoff | None = None,
    ) -> None:
        self.fallback = fallback
        self.backoff = backoff
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(preload))

    def get_eligible_capacity(self, supported_task_types: Any, **kwargs: Any) -> Any:
        """Every supported task type can launch at once (as the subprocess executor)."""
        return self.fallback.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, *args: Any, **kwargs: Any) -> None:
        """No capacity gate."""
        self.fallback.wait_for_capacity(*args, **kwargs)

    def launch(self, spec: Any) -> Any:
        """Start the task: forked warm if Flower's command for it is known, else Flower's."""
        from flwr.supercore.superexec.executor.types import LaunchResult

        from fedsc.deploy import trace

        argv = task_argv(spec)
        trace.event("superexec", "launch", task=argv[0])
        if self.backoff is not None:  # the next task follows this one's reply: poll fast
            self.backoff.reset()
        if argv[0] not in WARM_ENTRIES or spec.runtime_dependency_install:
            return self.fallback.launch(spec)
        process = self.context.Process(
            target=_run_task, args=(argv,), name=f"{argv[0]}-{spec.task_id}"
        )
        try:
            process.start()
        except OSError as exc:
            return LaunchResult.failed(f"could not fork {argv[0]}: {exc}")
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished task processes (no zombies accumulate over a long run)."""
        multiprocessing.active_children()
        self.fallback.reconcile()

    def close(self) -> None:
        """Release the fallback's resources (task processes finish on their own)."""
        self.fallback.close()


def main(argv: list[str] | None = None) -> int:
    """``[--preload MOD,MOD] <flower-superexec args>``: Flower's SuperExec, tasks forked warm."""
    import flwr.supercore.superexec.run_superexec as loop
    from flwr.supercore.cli.flower_superexec import flower_superexec

    args = list(sys.argv[1:] if argv is None else argv)
    preload: tuple[str, ...] = CLIENT_PRELOAD
    if "--preload" in args:
        i = args.index("--preload")
        preload = tuple(m for m in args[i + 1].split(",") if m)
        del args[i : i + 2]
    if not hasattr(loop, "get_executor") or not hasattr(loop, "time"):
        raise RuntimeError("this Flower version's SuperExec has changed; use flower-superexec.")
    flower_get_executor = loop.get_executor
    backoff = Backoff()

    def get_executor(*a: Any, **kw: Any) -> Any:
        executor = WarmExecutor(flower_get_executor(*a, **kw), preload, backoff)
        # start the fork server (and its imports) now, not inside the run's first exchange
        from multiprocessing import forkserver

        forkserver.ensure_running()
        return executor

    loop.get_executor = get_executor
    # the task poll (FLWR_SUPEREXEC_TASK_POLL_INTERVAL, Flower's default 1 s) becomes the
    # longest of a backoff that restarts at every launch (fedsc.deploy.polling)
    loop.time = BackoffTime(backoff)  # type: ignore[assignment]
    sys.argv = ["flower-superexec", *args]
    flower_superexec()
    return 0


if __name__ == "__main__":
    sys.exit(main())
