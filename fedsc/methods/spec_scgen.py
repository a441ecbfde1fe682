"""scGen's registration: the centralized baseline (train, then batch removal)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedsc.methods.spec import MethodSpec, RunInputs

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["SPEC", "run"]


def run(adata: ad.AnnData, inputs: RunInputs, config: Any) -> Any:
    """Train on all cells and remove batch effects; writes ``obsm``/``layers["scgen"]``."""
    from fedsc.data.validate import validate_expression_input
    from fedsc.methods.scgen import run_scgen

    validate_expression_input(
        adata,
        batch_key=inputs.batch_key,
        labels_key=inputs.labels_key,
        layer=inputs.layer,
        method="scGen",
    )
    model, _ = run_scgen(
        adata,
        batch_key=inputs.batch_key,
        labels_key=inputs.labels_key,
        layer=inputs.layer,
        config=config,
        seed=inputs.seed,
        inclusion=inputs.inclusion,
        show_progress=inputs.show_progress,
        key_added=inputs.key_added or "scgen",
        **dict(inputs.extra),
    )
    return model


SPEC = MethodSpec(
    name="scgen",
    config="fedsc.methods.configs:ScGenConfig",
    input="expression",
    run=run,
    federated=False,
    outputs=("X_scgen", "layers/scgen"),
    evaluate="layers/scgen",
    panels=("fedscgen",),
    inclusion=True,
    description="centralized scGen (baseline)",
)
