"""FedscGen's registration: federated scGen VAE + secure correction workflow."""

from __future__ import annotations

from fedsc.methods.spec import MethodSpec

__all__ = ["SPEC"]


SPEC = MethodSpec(
    name="fedscgen",
    config="fedsc.methods.configs:FedScGenConfig",
    input="expression",
    run="fedsc.methods.fedscgen:run_spec",  # imported on first use (torch)
    federated=True,
    outputs=("X_fedscgen", "layers/fedscgen"),
    evaluate="layers/fedscgen",
    panels=("fedscgen",),
    holdout=True,
    inclusion=True,
    options=("rounds", "local_epochs"),
    description="federated scGen with secure dominant-batch correction",
    reveals=frozenset({"vae_state", "correction_values"}),
    dp_levels=frozenset({"client", "cell", "donor"}),
)
