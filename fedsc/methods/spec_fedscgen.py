"""FedscGen's registration: federated scGen VAE + secure correction workflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedsc.methods.spec import MethodSpec, RunInputs

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["SPEC", "run"]


def run(adata: ad.AnnData, inputs: RunInputs, config: Any) -> Any:
    """Train federated and correct; writes ``obsm["X_fedscgen"]`` and ``layers["fedscgen"]``.

    ``inputs.extra`` passes keyword arguments of :func:`~fedsc.methods.fedscgen.run_fedscgen`
    that are not config fields (``snapshot_every_round``, ``label_vocabulary``...).
    """
    from fedsc.data import get_representation, validate_adata
    from fedsc.data.input_kind import check_input_kind
    from fedsc.methods.fedscgen import run_fedscgen

    validate_adata(
        adata, batch_key=inputs.batch_key, label_key=inputs.label_key, layer=inputs.layer
    )
    check_input_kind(
        get_representation(adata, None, inputs.layer, what="layer"),
        "expression",
        where="adata.X" if inputs.layer is None else f"adata.layers[{inputs.layer!r}]",
        method="FedscGen",
        adata=adata,
    )
    return run_fedscgen(
        adata,
        batch_key=inputs.batch_key,
        label_key=inputs.label_key,
        aggregator=inputs.aggregator,
        config=config,
        seed=inputs.seed,
        holdout=list(inputs.holdout),
        inclusion=inputs.inclusion,
        layer=inputs.layer,
        show_progress=inputs.show_progress,
        key_added=inputs.key_added or "fedscgen",
        **dict(inputs.extra),
    )


SPEC = MethodSpec(
    name="fedscgen",
    config="fedsc.methods.fedscgen:FedScGenConfig",
    input="expression",
    run=run,
    federated=True,
    outputs=("X_fedscgen", "layers/fedscgen"),
    evaluate="layers/fedscgen",
    panels=("fedscgen",),
    holdout=True,
    inclusion=True,
    options=("rounds", "local_epochs"),
    description="federated scGen with secure dominant-batch correction",
    reveals=frozenset({"vae_state", "correction_values"}),
    dp_levels=frozenset({"client", "cell"}),
)
