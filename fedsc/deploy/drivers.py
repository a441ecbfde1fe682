"""Which methods can be deployed, over which transports: the deployment's registries.

Light on purpose (no Flower, torch or AnnData import): :class:`fedsc.run.config.RunConfig`
checks ``deploy`` against these names when a study is expanded. A deployable method is one
module plus one line in :data:`DEPLOYED`; the module defines

* ``run(hello, aggregator, apply, params, *, strategy, on_round_end, live) -> record``:
  the deployed run (:func:`fedsc.deploy.fedscgen.run` builds the deployed sites and calls
  FedscGen's one coordinator driver, :func:`fedsc.methods.fedscgen_driver.drive`);
* ``run_params(inputs: RunInputs, config) -> params``: the driver's ``params`` for a run
  config (the same seed, keys and method config as the in-process run);
* ``check_deployable(config, transport=None)``: refuse settings the deployment (or that
  transport) does not support (a method may also name a torch-free copy of it in
  :data:`CONFIG_CHECKS`, so building a run config with ``deploy`` imports no torch);
* ``config_of(params) -> config``: the method config back from the driver's ``params``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol

from fedsc.errors import FedscInputError
from fedsc.registry import Registry, resolve

#: How a deployment's aggregations travel (``fedsc deploy local --transport``).
TRANSPORTS = ("plaintext", "secagg+", "crypten")

#: Deployable method -> the module holding its site steps and coordinator driver.
DEPLOYED: Registry[str] = Registry("deployable method")
DEPLOYED.register("fedscgen", "fedsc.deploy.fedscgen")
DEPLOYED.register("scbatchprox", "fedsc.deploy.scbatchprox")


class ConfigCheck(Protocol):
    """Refuses (:class:`~fedsc.errors.FedscInputError`) what a deployment cannot run."""

    def __call__(self, config: Any, transport: str | None = None) -> None:
        """Check the method's ``config`` for a deployment over ``transport``."""
        ...


#: Deployable method -> its config check, torch-free (optional: without an entry, the
#: driver module's ``check_deployable`` runs, importing the driver).
CONFIG_CHECKS: Registry[ConfigCheck | str] = Registry("deployment config check")
CONFIG_CHECKS.register("fedscgen", "fedsc.deploy.checks:fedscgen_deployable")
CONFIG_CHECKS.register("scbatchprox", "fedsc.deploy.checks:scbatchprox_deployable")


def check_transport(transport: str) -> str:
    """``transport`` if it is one of :data:`TRANSPORTS`; else a clear error."""
    if transport not in TRANSPORTS:
        raise FedscInputError(
            f"unknown deployment transport {transport!r}; choose one of {list(TRANSPORTS)}."
        )
    return transport


def check_deployed_method(method: str) -> str:
    """``method`` if it can be deployed; else an error naming those that can."""
    if method not in DEPLOYED:
        raise FedscInputError(
            f"method {method!r} cannot be deployed yet; deployable: {sorted(DEPLOYED)}."
        )
    return method


def driver_module(method: str) -> ModuleType:
    """The module of a deployable method (imports Flower-free method code and torch)."""
    return importlib.import_module(DEPLOYED[check_deployed_method(method)])


def check_deployable(method: str, config: Any, transport: str | None = None) -> None:
    """Refuse what deploying ``method`` with ``config`` over ``transport`` cannot do.

    Through the method's :data:`CONFIG_CHECKS` entry when it has one (no torch or Flower
    import), else its driver module's ``check_deployable``.
    """
    method = check_deployed_method(method)
    check: ConfigCheck = (
        resolve(CONFIG_CHECKS.get(method))
        if method in CONFIG_CHECKS
        else driver_module(method).check_deployable
    )
    check(config, transport)
