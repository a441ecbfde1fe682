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

    Every DP level runs deployed: cell and donor level as DP-SGD inside each site's local
    training, with the site's own noise and accountant (donor level: each site counts its
    own training donors, its FedAvg weight); client level as the ``gaussian`` mechanism
    with each site clipping and noising its own update (:mod:`fedsc.deploy.site_mechanisms`).
    ``keep_optimizer_state`` runs deployed: each site keeps its own Adam moments between
    rounds. Nothing is refused today; the function stays the place for what a later
    setting cannot do deployed.
    """
    del config, transport


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
