"""Scanpy-style public API: ``fedsc.tl.<method>(adata, ...)`` writes into ``adata.obsm``.

Every registered method (``fedsc.methods.REGISTRY``) is callable here by name: the three
built-in ones have documented signatures below, any other registered method is served by
:func:`apply` through ``fedsc.tl.<name>``. A federated method runs with an aggregation
backend chosen by name (``smpc.BACKENDS``: ``"plaintext"``, ``"crypten"``) or passed as
an :class:`smpc.Aggregator`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anndata as ad

import smpc
from fedsc.backend import aggregator_for
from fedsc.errors import FedscInputError
from fedsc.methods import RunInputs, get_method

__all__ = ["apply", "fedscgen", "scbatchprox", "scgen"]


def apply(
    method: str,
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    use_rep: str | None = None,
    layer: str | None = None,
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: Any = None,
    holdout: str | Sequence[str] = (),
    inclusion: str = "all",
    key_added: str | None = None,
    show_progress: bool | None = None,
    extra: dict[str, Any] | None = None,
    **params: Any,
) -> Any:
    """Run the registered ``method`` on ``adata`` (its outputs are written into ``adata``).

    Parameters
    ----------
    method
        A name in ``fedsc.methods.REGISTRY``.
    adata
        Prepared cells: an embedding in ``obsm[use_rep]`` or expression in ``X``, as the
        method's ``input`` kind says.
    batch_key, label_key
        ``adata.obs`` columns with each cell's batch (client) and cell type.
    use_rep, layer
        Embedding (``obsm`` key or ``"X"``) / layer the method reads.
    backend, backend_options
        Aggregation backend name (or an open :class:`smpc.Aggregator`) and its options;
        ignored by centralized methods.
    seed
        Run seed.
    config, **params
        The method's config dataclass and/or overrides of its fields.
    holdout, inclusion
        Held-out batches and inclusion scenario (methods that support them).
    key_added
        Output name instead of the method's default.
    extra
        Method-specific run options that are not config fields.

    Returns
    -------
    Whatever the method's run function returns (usually the fitted model).
    """
    spec = get_method(method)
    cfg = spec.make_config(params, config)
    for arg, value in (("use_rep", use_rep), ("layer", layer), ("batch_key", batch_key),
                       ("label_key", label_key)):  # fmt: skip
        if value is not None and not isinstance(value, str):
            raise FedscInputError(
                f"{arg} must be one name (a string), got {type(value).__name__} {value!r}; "
                f"pass e.g. {arg}={_first(value)!r}."
            )
    holdout = _names(holdout, "holdout")
    inputs: dict[str, Any] = dict(
        batch_key=batch_key,
        label_key=label_key,
        seed=seed,
        use_rep=use_rep,
        layer=layer,
        holdout=holdout,
        inclusion=inclusion,
        key_added=key_added,
        show_progress=show_progress,
        extra=dict(extra or {}),
    )
    if not spec.federated:
        return spec.fit(adata, RunInputs(**inputs), cfg)
    with aggregator_for(backend, backend_options) as agg:
        return spec.fit(adata, RunInputs(aggregator=agg, **inputs), cfg)


def _first(value: Any) -> Any:
    try:
        return next(iter(value))
    except (TypeError, StopIteration):
        return "X_pca"


def _names(value: str | Sequence[str], arg: str) -> tuple[str, ...]:
    """A batch name or a list of them as a tuple; duplicates are an error.

    A single string is one name: ``holdout="celseq"`` holds out the batch ``celseq``, not
    the batches ``c``, ``e``, ``l``...
    """
    names = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FedscInputError(f"{arg} lists {dup} more than once; list each batch once.")
    return names


def scbatchprox(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    use_rep: str = "X_pca",
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: Any = None,
    key_added: str = "X_scbatchprox",
    show_progress: bool | None = None,
    **params: Any,
) -> Any:
    """Refine ``adata.obsm[use_rep]`` with federated per-batch FiLM adapters.

    Parameters
    ----------
    adata
        Cells of all batches; each batch is a client.
    batch_key
        ``adata.obs`` column naming each cell's batch.
    use_rep
        The fixed upstream embedding (e.g. ``"X_pca"``, ``"X_scVI"``).
    backend
        ``"plaintext"``, ``"crypten"`` or an :class:`smpc.Aggregator`.
    backend_options
        Options for :func:`smpc.make_aggregator` (e.g. ``{"mode": "secure"}``).
    seed
        Run seed (training split, minibatch order).
    config, **params
        :class:`~fedsc.methods.scbatchprox.ScBatchProxConfig` and/or overrides such as
        ``mu=0`` or ``rounds=10``.
    key_added
        Where the refined embedding is written in ``adata.obsm``.

    Returns
    -------
    The fitted :class:`~fedsc.methods.scbatchprox.ScBatchProx` model.
    """
    return apply(
        "scbatchprox",
        adata,
        batch_key=batch_key,
        use_rep=use_rep,
        backend=backend,
        backend_options=backend_options,
        seed=seed,
        config=config,
        key_added=key_added,
        show_progress=show_progress,
        **params,
    )


def fedscgen(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: Any = None,
    holdout: str | list[str] | tuple[str, ...] = (),
    inclusion: str = "all",
    layer: str | None = None,
    snapshot_every_round: bool = False,
    show_progress: bool | None = None,
    **params: Any,
) -> Any:
    """Federated scGen training + the FedscGen correction workflow.

    Writes ``adata.obsm["X_fedscgen"]`` (shifted latent) and ``adata.layers["fedscgen"]``
    (corrected expression). ``adata.X`` must hold log-normalised expression
    (log1p of CP10k); raw counts, an embedding or scaled data are refused with a message
    saying what was found (:mod:`fedsc.data.input_kind`). A diverging training run raises
    :class:`~fedsc.methods.health.TrainingDivergedError` naming ``lr`` and writes nothing.

    Parameters
    ----------
    backend, backend_options
        Aggregation backend name (or an :class:`smpc.Aggregator`) and its options.
    config, **params
        :class:`~fedsc.methods.fedscgen.FedScGenConfig` and/or overrides
        (``rounds=8, local_epochs=2, hidden=(800, 800)``...).
    holdout
        Batches that do not train but are corrected: one name (``"celseq"``) or a list.
    inclusion
        ``"all"``, ``"combined"`` or ``"dropped"`` (minority cell types).

    Returns
    -------
    :class:`~fedsc.methods.fedscgen.FedScGenResult` (model, federation result, info).
    """
    return apply(
        "fedscgen",
        adata,
        batch_key=batch_key,
        label_key=label_key,
        layer=layer,
        backend=backend,
        backend_options=backend_options,
        seed=seed,
        config=config,
        holdout=holdout,
        inclusion=inclusion,
        show_progress=show_progress,
        extra={"snapshot_every_round": snapshot_every_round},
        **params,
    )


def scgen(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    seed: int = 0,
    config: Any = None,
    inclusion: str = "all",
    layer: str | None = None,
    show_progress: bool | None = None,
    **params: Any,
) -> Any:
    """Centralized scGen (the baseline): train, then ``batch_removal``.

    Writes ``adata.obsm["X_scgen"]`` and ``adata.layers["scgen"]``; returns the model.
    ``adata.X`` (or ``layers[layer]``) must hold log-normalised expression: raw counts or
    PCs are refused with a message naming what was found (:mod:`fedsc.data.input_kind`).
    """
    return apply(
        "scgen",
        adata,
        batch_key=batch_key,
        label_key=label_key,
        layer=layer,
        seed=seed,
        config=config,
        inclusion=inclusion,
        show_progress=show_progress,
        **params,
    )


def __getattr__(name: str) -> Callable[..., Any]:
    """``fedsc.tl.<name>`` for any other registered method: :func:`apply` bound to it."""
    from fedsc.methods import REGISTRY

    if name in REGISTRY:
        return partial(apply, name)
    raise AttributeError(f"module 'fedsc.tl' has no attribute {name!r}")
