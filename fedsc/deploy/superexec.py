"""``python -m fedsc.deploy.superexec <flower-superexec args>``: a SuperExec with warm ClientApps.

Flower 1.41's SuperExec starts a fresh ``flwr-clientapp`` process for every message a
SuperNode receives: a new Python interpreter that imports Flower and the app, about
1.4 s of CPU per message and site, before the ClientApp does any work. A federated run is
a long chain of short exchanges (SecAgg+ needs four per aggregation), so on a small
machine that start-up is most of a deployment's wall time.

This is Flower's own SuperExec (``flower-superexec``, same arguments, same task loop)
with one executor swapped: each ClientApp task runs Flower's own
:func:`flwr.supernode.runtime.run_clientapp` in a process forked from a warm fork
server that has Flower and fedsc's ClientApp imported already. The task process is as
isolated as before (its own process, its own exit); only the interpreter start and the
imports are saved. Other task types keep Flower's subprocess executor.

:mod:`fedsc.deploy.supernode` makes the SuperNode start this instead of
``flower-superexec``. Hand-written because Flower has no in-process or pre-forked
executor for local SuperNodes (its warm pools are Kubernetes pods).
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

#: Modules the fork server imports once, so that every task process starts with them.
PRELOAD = ["flwr.supernode.runtime.run_clientapp", "fedsc.deploy.client_app"]


def _run_task(
    address: str,
    token: str,
    insecure: bool,
    certificates_path: str | None,
    parent_pid: int | None,
    install: bool,
) -> None:
    """One ClientApp task, as ``flwr-clientapp --clientappio-api-address ... --token`` runs it."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    certificates = None
    if certificates_path is not None:
        with open(certificates_path, "rb") as fh:
            certificates = fh.read()
    run_clientapp(
        runtime_api_address=address,
        token=token,
        insecure=insecure,
        certificates=certificates,
        parent_pid=parent_pid,
        runtime_dependency_install=install,
    )


class WarmClientAppExecutor:
    """Flower's executor protocol: ClientApp tasks forked warm, other tasks as Flower does."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)

    def get_eligible_capacity(self, supported_task_types: Any, **kwargs: Any) -> Any:
        """Every supported task type can launch at once (as the subprocess executor)."""
        return self.fallback.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, *args: Any, **kwargs: Any) -> None:
        """No capacity gate."""
        self.fallback.wait_for_capacity(*args, **kwargs)

    def launch(self, spec: Any) -> Any:
        """Start the task: a forked ClientApp, or Flower's subprocess for other types."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP or spec.runtime_dependency_install:
            return self.fallback.launch(spec)
        process = self.context.Process(
            target=_run_task,
            args=(
                spec.runtime_api_address,
                spec.token,
                spec.insecure,
                spec.root_certificates_path,
                spec.parent_pid,
                spec.runtime_dependency_install,
            ),
            name=f"flwr-clientapp-{spec.task_id}",
        )
        try:
            process.start()
        except OSError as exc:
            return LaunchResult.failed(f"could not fork the ClientApp: {exc}")
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished task processes (no zombies accumulate over a long run)."""
        multiprocessing.active_children()
        self.fallback.reconcile()

    def close(self) -> None:
        """Release the fallback's resources (task processes finish on their own)."""
        self.fallback.close()


def main(argv: list[str] | None = None) -> int:
    """Run Flower's SuperExec with :class:`WarmClientAppExecutor`."""
    import flwr.supercore.superexec.run_superexec as loop
    from flwr.supercore.cli.flower_superexec import flower_superexec

    if not hasattr(loop, "get_executor"):
        raise RuntimeError("this Flower version's SuperExec has changed; use flower-superexec.")
    flower_get_executor = loop.get_executor

    def get_executor(*args: Any, **kwargs: Any) -> Any:
        return WarmClientAppExecutor(flower_get_executor(*args, **kwargs))

    loop.get_executor = get_executor
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()
    return 0


if __name__ == "__main__":
    sys.exit(main())
