"""The prepare stage: a method's input from the loaded cells, by the input kind it reads.

:data:`INPUT_PREPARATION` maps each input kind (``MethodSpec.input``) to how the run
prepares it; :func:`run_inputs` is the common arguments a method's run function receives.
The in-process runner and a deployed run (:mod:`fedsc.deploy.experiment`) both use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anndata as ad

from fedsc import settings
from fedsc.data.input_kind import check_input_kind, detect_input_kind
from fedsc.methods.spec import RunInputs
from fedsc.preprocessing import fit_embedding, preprocess
from fedsc.registry import Registry
from fedsc.run.outcome import Prepared
from fedsc.upstream.cache import UpstreamCache

if TYPE_CHECKING:
    from fedsc.run.config import RunConfig
    from smpc import Aggregator

__all__ = ["INPUT_PREPARATION", "looks_like_counts", "prepare_expression", "run_inputs"]


def looks_like_counts(x: Any) -> bool:
    """Raw counts: non-negative and above log1p(1e4) (``fedsc.data.input_kind``)."""
    return detect_input_kind(x).kind == "counts"


def prepare_expression(adata: ad.AnnData, cfg: RunConfig) -> ad.AnnData:
    """Log-normalised HVG expression: from counts if X holds counts, else as given.

    ``X`` must be raw counts (normalised, log1p'd and reduced to HVGs here) or
    log-normalised expression (used as given); anything else (counts with negative
    entries, an embedding or scaled data) is refused with a message naming what was found.
    """
    found = check_input_kind(
        adata.X, "expression_or_counts", method=f"method {cfg.method!r}", adata=adata
    )
    if found.kind == "counts":
        return preprocess(adata, n_top_genes=cfg.n_top_genes)
    return adata.copy()


def _prepare_embedding(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    """``use_rep`` if given (the method validates it), else the upstream embedding."""
    if cfg.use_rep is not None:
        base = cfg.use_rep.removeprefix("X_").lower()
        return Prepared(adata, cfg.use_rep, base, use_rep=cfg.use_rep)
    expr = prepare_expression(adata, cfg)
    cache = None if settings.upstream_cache is None else UpstreamCache(settings.upstream_cache)
    cache_key = None
    if cache is not None:  # a sweep's variants that share this upstream fit it once
        cache_key = cache.key(
            expr,
            method=cfg.upstream,
            n_comps=cfg.n_comps,
            seed=cfg.seed,
            batch_key=cfg.batch_key,
            labels_key=cfg.labels_key,
            params=cfg.upstream_params,
        )
        hit = cache.load(cache_key, expr.n_obs)
        if hit is not None:
            embedding, entry = hit
            key = str(entry["obsm_key"])
            expr.obsm[key] = embedding
            expr.uns.setdefault("fedsc_embedding", {})[key] = dict(entry["uns"])
            record = {**entry["uns"], "seconds": entry["seconds"], "cached": True}
            info = {"upstream": {**record, "cache_key": cache_key}}
            return Prepared(expr, key, cfg.upstream, use_rep=key, info=info)
    start = time.perf_counter()
    model = fit_embedding(
        expr,
        method=cfg.upstream,
        n_comps=cfg.n_comps,
        seed=cfg.seed,
        batch_key=cfg.batch_key,
        labels_key=cfg.labels_key,
        params=cfg.upstream_params,
    )
    # run.json: what the upstream was, where it was computed (centrally), whether it read
    # the labels, and its fit time
    seconds = time.perf_counter() - start
    described = dict(expr.uns["fedsc_embedding"][model.key])
    record = {**described, "seconds": seconds}
    if cache is not None and cache_key is not None:
        entry = {"obsm_key": model.key, "uns": described, "seconds": seconds}
        cache.store(cache_key, expr.obsm[model.key], entry)
        record.update(cached=False, cache_key=cache_key)
    return Prepared(expr, model.key, cfg.upstream, use_rep=model.key, info={"upstream": record})


def _prepare_expression(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    return Prepared(prepare_expression(adata, cfg), "X", "uncorrected")


def _prepare_counts(adata: ad.AnnData, cfg: RunConfig) -> Prepared:
    check_input_kind(adata.X, "counts", method=f"method {cfg.method!r}", adata=adata)
    return Prepared(adata.copy(), "X", "uncorrected")


#: How the runner prepares each input kind (``MethodSpec.input``).
INPUT_PREPARATION: Registry[Callable[[ad.AnnData, RunConfig], Prepared]] = Registry("input kind")
INPUT_PREPARATION.register("embedding", _prepare_embedding)
INPUT_PREPARATION.register("expression", _prepare_expression)
INPUT_PREPARATION.register("counts", _prepare_counts)


def run_inputs(
    cfg: RunConfig, agg: Aggregator | None, use_rep: str | None, show_progress: bool | None
) -> RunInputs:
    """The common arguments a method's run function receives, from the run config."""
    return RunInputs(
        batch_key=cfg.batch_key,
        labels_key=cfg.labels_key,
        aggregator=agg,
        seed=cfg.seed,
        use_rep=use_rep,
        holdout=tuple(cfg.holdout),
        inclusion=cfg.inclusion,
        stages=None if cfg.stages is None else tuple(tuple(s) for s in cfg.stages),
        upstream=cfg.upstream,
        n_comps=cfg.n_comps,
        n_top_genes=cfg.n_top_genes,
        show_progress=show_progress,
    )
