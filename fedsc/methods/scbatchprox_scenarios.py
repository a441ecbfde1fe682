"""scBatchProx under dataset evolution: cumulative retraining and continual training.

Batches arrive in stages (e.g. inDrop -> CEL-Seq -> CEL-Seq2 -> Fluidigm C1 -> Smart-seq2).

- Cumulative retraining: at each stage, re-embed ALL cells seen so far with a freshly
  fitted upstream model and train the adapters from scratch.
- Continual training: the upstream model is fitted on the first stage only; later
  batches are projected with it; earlier cells keep their coordinates, earlier adapter
  rows stay frozen, and only the new batches' rows train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np

from fedsc.errors import FedscInputError
from fedsc.methods.scbatchprox import FiLMAdapter, ScBatchProx, ScBatchProxConfig
from fedsc.preprocessing import fit_embedding, preprocess
from smpc import Aggregator


@dataclass
class StageResult:
    """Embeddings of all cells seen up to one stage (in ``obs_names`` order)."""

    stage: int
    batches: list[str]
    obs_names: np.ndarray
    batch_labels: np.ndarray
    upstream: np.ndarray  # the embedding before refinement
    refined: np.ndarray  # after scBatchProx


def _check_stages(adata: ad.AnnData, batch_key: str, stages: Sequence[Sequence[str]]) -> None:
    present = set(adata.obs[batch_key].astype(str))
    flat = [str(b) for stage in stages for b in stage]
    unknown = sorted(set(flat) - present)
    if not stages or any(len(s) == 0 for s in stages):
        raise FedscInputError("stages must be a non-empty list of non-empty batch lists.")
    dup = sorted({b for b in flat if flat.count(b) > 1})
    if unknown or dup:
        raise FedscInputError(
            f"each batch must appear in exactly one stage and exist in adata.obs[{batch_key!r}]"
            f" (listed more than once: {dup}, unknown: {unknown}, listed: {flat}); list each "
            "batch in one stage only."
        )


def _cells(adata: ad.AnnData, batch_key: str, batches: Sequence[str]) -> ad.AnnData:
    return adata[adata.obs[batch_key].astype(str).isin([str(b) for b in batches])]


def cumulative_retraining(
    adata: ad.AnnData,
    stages: Sequence[Sequence[str]],
    aggregator: Aggregator,
    *,
    batch_key: str = "batch",
    upstream: str = "pca",
    n_comps: int = 40,
    n_top_genes: int = 2000,
    config: ScBatchProxConfig | None = None,
    seed: int = 0,
) -> list[StageResult]:
    """Re-embed everything seen so far and retrain the adapters at every stage.

    ``adata`` holds raw counts of all batches; one result per stage.
    """
    _check_stages(adata, batch_key, stages)
    out: list[StageResult] = []
    seen: list[str] = []
    for k, stage in enumerate(stages):
        seen = seen + [str(b) for b in stage]
        expr = preprocess(_cells(adata, batch_key, seen), n_top_genes=n_top_genes)
        model_up = fit_embedding(
            expr, method=upstream, n_comps=n_comps, seed=seed, batch_key=batch_key
        )
        z = expr.obsm[model_up.key]
        labels = expr.obs[batch_key].astype(str).to_numpy()
        if len(set(labels)) >= 2:
            model = ScBatchProx.fit(z, labels, aggregator, config=config, seed=seed)
            refined = model.transform(z, labels).astype(np.float32)
        else:  # a single batch has nothing to align with: the adapter stays the identity
            refined = z.copy()
        out.append(StageResult(k, list(seen), expr.obs_names.to_numpy(), labels, z, refined))
    return out


def continual_training(
    adata: ad.AnnData,
    stages: Sequence[Sequence[str]],
    aggregator: Aggregator,
    *,
    batch_key: str = "batch",
    upstream: str = "pca",
    n_comps: int = 40,
    n_top_genes: int = 2000,
    config: ScBatchProxConfig | None = None,
    seed: int = 0,
) -> list[StageResult]:
    """Fit upstream + adapters on stage 0, then add only new batches' rows per stage.

    Cells of earlier stages keep bit-identical refined coordinates.
    """
    _check_stages(adata, batch_key, stages)
    first = [str(b) for b in stages[0]]
    expr0 = preprocess(_cells(adata, batch_key, first), n_top_genes=n_top_genes)
    up = fit_embedding(expr0, method=upstream, n_comps=n_comps, seed=seed, batch_key=batch_key)
    z = expr0.obsm[up.key]
    labels = expr0.obs[batch_key].astype(str).to_numpy()
    names = expr0.obs_names.to_numpy()
    if len(first) >= 2:
        model = ScBatchProx.fit(z, labels, aggregator, config=config, seed=seed)
    else:  # one batch: nothing to align yet; its row stays the identity and is frozen later
        model = ScBatchProx(
            FiLMAdapter.identity(first, z.shape[1]), config or ScBatchProxConfig(), seed
        )
    refined = model.transform(z, labels).astype(np.float32)
    out = [StageResult(0, list(first), names, labels, z, refined)]
    seen = list(first)
    for k, stage in enumerate(stages[1:], start=1):
        new = _cells(adata, batch_key, stage)
        z_new = up.transform(new)  # projected with the first stage's model
        lab_new = new.obs[batch_key].astype(str).to_numpy()
        model.extend(z_new, lab_new, aggregator)
        seen += [str(b) for b in stage]
        z = np.vstack([z, z_new])
        labels = np.concatenate([labels, lab_new])
        names = np.concatenate([names, new.obs_names.to_numpy()])
        refined = np.vstack([refined, model.transform(z_new, lab_new).astype(np.float32)])
        out.append(StageResult(k, list(seen), names, labels, z, refined))
    return out
