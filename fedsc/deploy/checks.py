"""What a deployment refuses of a deployable method's config, checked before it starts.

Torch- and Flower-free on purpose: :class:`fedsc.run.config.RunConfig` runs these when a
run config with ``deploy`` is built (:func:`fedsc.deploy.drivers.check_deployable`), and the
drivers run them again on the coordinator (their ``check_deployable``). One function per
method, ``check(config, transport=None)``, named in :data:`fedsc.deploy.drivers.CONFIG_CHECKS`.
"""

from __future__ import annotations

from fedsc.errors import FedscInputError
from fedsc.methods.configs import FedScGenConfig, ScBatchProxConfig

__all__ = ["fedscgen_deployable", "scbatchprox_deployable"]


def fedscgen_deployable(config: FedScGenConfig, transport: str | None = None) -> None:
    """Refuse settings the deployment does not support yet, naming the fix (any transport).

    Cell- and donor-level DP run deployed: DP-SGD inside each site's local training, with
    the site's own noise and accountant (donor level: each site counts its own training
    donors, its FedAvg weight). Client-level DP is refused (its noise is the coordinator's
    aggregator mechanism in simulation; deployed, the sites would have to add it as
    distributed noise, which is not built). ``keep_optimizer_state`` runs deployed: each
    site keeps its own Adam moments between rounds.
    """
    level = None if config.dp is None else str(config.dp.get("level", "client"))
    if level == "client":
        raise FedscInputError(
            "client-level DP cannot be deployed yet: in simulation its noise is added to the "
            "aggregate by the coordinator's aggregator (the gaussian mechanism); deployed, "
            "the sites would have to add it as distributed noise, which is not built. Use "
            "dp: {level: cell} or {level: donor} (DP-SGD at each site), or run client-level "
            "DP with `fedsc run`."
        )


def scbatchprox_deployable(config: ScBatchProxConfig, transport: str | None = None) -> None:
    """Refuse settings the deployment does not support, naming the fix.

    ``secure_rows`` runs over ``crypten`` (and ``plaintext``, not private); over
    ``secagg+`` it is refused: the coordinator is the party that unmasks SecAgg+'s sum,
    so it would see every row it sends a site.
    """
    if config.secure_rows and transport == "secagg+":
        raise FedscInputError(
            "secure_rows (owner-revealed means) cannot run over SecAgg+: the coordinator "
            "unmasks SecAgg+'s sum, so it would see every row it sends a site. Use the "
            "crypten transport, or secure_rows=False."
        )
