"""scBatchProx's registration: federated FiLM adapters refining an upstream embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedsc.methods.spec import MethodSpec, RunInputs

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["SPEC", "run", "run_continual", "run_cumulative"]


def run(adata: ad.AnnData, inputs: RunInputs, config: Any) -> Any:
    """Refine ``obsm[inputs.use_rep]``; writes ``obsm["X_scbatchprox"]``, returns the model."""
    from fedsc.data import obs_column, representation, validate_adata
    from fedsc.methods.scbatchprox import ScBatchProx
    from fedsc.uns import uns_safe

    use_rep = inputs.use_rep or "X_pca"
    # key_added names the output (obsm["X_<name>"], uns["<name>"]), as for every method
    key = "X_" + (inputs.key_added or "scbatchprox").removeprefix("X_")
    validate_adata(adata, batch_key=inputs.batch_key, use_rep=use_rep)
    z = representation(adata, use_rep, "use_rep")
    labels = obs_column(adata, inputs.batch_key, "batch_key").astype(str).to_numpy()
    agg = inputs.federated_aggregator("scBatchProx")
    model = ScBatchProx.fit(
        z, labels, agg, config=config, seed=inputs.seed, show_progress=inputs.show_progress
    )
    adata.obsm[key] = model.transform(z, labels).astype(z.dtype, copy=False)
    adata.uns[key.removeprefix("X_")] = uns_safe(
        {
            "params": {
                **config.to_dict(),
                "use_rep": use_rep,
                "batch_key": inputs.batch_key,
                "seed": inputs.seed,
            },
            "privacy": agg.privacy_note,
            "reveals": model.reveals,
        }
    )
    return model


def _last_stage(adata: ad.AnnData, inputs: RunInputs, config: Any, scenario: Any) -> ad.AnnData:
    """The last stage's cells with the upstream and refined embeddings."""
    last = scenario(
        adata,
        [list(s) for s in inputs.stages or []],
        inputs.aggregator,
        batch_key=inputs.batch_key,
        upstream=inputs.upstream,
        n_comps=inputs.n_comps,
        n_top_genes=inputs.n_top_genes,
        config=config,
        seed=inputs.seed,
    )[-1]
    work = adata[last.obs_names].copy()
    work.obsm[f"X_{inputs.upstream}"] = last.upstream
    work.obsm["X_scbatchprox"] = last.refined
    return work


def run_cumulative(adata: ad.AnnData, inputs: RunInputs, config: Any) -> ad.AnnData:
    """Cumulative retraining over ``inputs.stages`` (re-embed and retrain at every stage)."""
    from fedsc.methods.scbatchprox_scenarios import cumulative_retraining

    return _last_stage(adata, inputs, config, cumulative_retraining)


def run_continual(adata: ad.AnnData, inputs: RunInputs, config: Any) -> ad.AnnData:
    """Continual training over ``inputs.stages`` (earlier cells and adapter rows frozen)."""
    from fedsc.methods.scbatchprox_scenarios import continual_training

    return _last_stage(adata, inputs, config, continual_training)


SPEC = MethodSpec(
    name="scbatchprox",
    config="fedsc.methods.configs:ScBatchProxConfig",
    input="embedding",
    run=run,
    federated=True,
    outputs=("X_scbatchprox",),
    panels=("scib",),
    scenarios={"cumulative": run_cumulative, "continual": run_continual},
    options=("mu", "rounds", "local_epochs"),
    description="federated per-batch FiLM adapters on an upstream embedding",
    reveals=frozenset({"film_rows"}),
)
