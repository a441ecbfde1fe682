"""Which methods can be deployed, over which transports: the deployment's registries.

Light on purpose (no Flower, torch or AnnData import): :class:`fedsc.run_config.RunConfig`
checks ``deploy`` against these names when a study is expanded. A deployable method is one
module plus one line in :data:`DEPLOYED`; the module defines

* ``run(hello, aggregator, apply, params, *, strategy, on_round_end, live) -> record``:
  the coordinator's driver (:func:`fedsc.deploy.fedscgen.run`);
* ``run_params(inputs: RunInputs, config) -> params``: the driver's ``params`` for a run
  config (the same seed, keys and method config as the in-process run);
* ``check_deployable(config, transport=None)``: refuse settings the deployment (or that
  transport) does not support;
* ``config_of(params) -> config``: the method config back from the driver's ``params``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fedsc.errors import FedscInputError
from fedsc.registry import Registry

#: How a deployment's aggregations travel (``fedsc deploy local --transport``).
TRANSPORTS = ("plaintext", "secagg+", "crypten")

#: Deployable method -> the module holding its site steps and coordinator driver.
DEPLOYED: Registry[str] = Registry("deployable method")
DEPLOYED.register("fedscgen", "fedsc.deploy.fedscgen")
DEPLOYED.register("scbatchprox", "fedsc.deploy.scbatchprox")


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
