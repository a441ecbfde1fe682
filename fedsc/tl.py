"""Scanpy-style public API: ``fedsc.tl.<method>(adata, ...)`` writes into ``adata.obsm``.

Each function runs one federated method with an aggregation backend chosen by name
(``"plaintext"`` or ``"crypten"``) or passed as an :class:`smpc.Aggregator`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import anndata as ad
import numpy as np

import smpc
from fedsc.data.validate import validate_adata
from fedsc.errors import FedscInputError
from fedsc.methods.scbatchprox import ScBatchProx, ScBatchProxConfig
from fedsc.uns import uns_safe


@contextmanager
def aggregator_for(
    backend: str | smpc.Aggregator, backend_options: dict[str, Any] | None = None
) -> Iterator[smpc.Aggregator]:
    """Yield an aggregator: the one given (left open), or a new one by name (closed after)."""
    if isinstance(backend, smpc.Aggregator):
        if backend_options:
            raise FedscInputError(
                "backend_options are only used when backend is a name; configure the "
                "aggregator you passed when you create it."
            )
        yield backend
        return
    with smpc.make_aggregator(backend, **(backend_options or {})) as agg:
        yield agg


def config_from_kwargs(config_cls: type, config: Any, kwargs: dict[str, Any]) -> Any:
    """Build a config dataclass from an instance and/or keyword overrides."""
    names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise FedscInputError(
            f"unknown {config_cls.__name__} option(s) {unknown}; valid options: {sorted(names)}."
        )
    base = {} if config is None else {f.name: getattr(config, f.name) for f in fields(config)}
    return config_cls(**{**base, **kwargs})


def scbatchprox(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    use_rep: str = "X_pca",
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: ScBatchProxConfig | None = None,
    key_added: str = "X_scbatchprox",
    show_progress: bool | None = None,
    **params: Any,
) -> ScBatchProx:
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
    validate_adata(adata, batch_key=batch_key, use_rep=use_rep)
    cfg = config_from_kwargs(ScBatchProxConfig, config, params)
    z = adata.X if use_rep == "X" else adata.obsm[use_rep]
    z = np.asarray(z.toarray() if hasattr(z, "toarray") else z)
    labels = adata.obs[batch_key].astype(str).to_numpy()
    with aggregator_for(backend, backend_options) as agg:
        model = ScBatchProx.fit(z, labels, agg, config=cfg, seed=seed, show_progress=show_progress)
    adata.obsm[key_added] = model.transform(z, labels).astype(z.dtype, copy=False)
    adata.uns[key_added.removeprefix("X_")] = uns_safe(
        {
            "params": {**cfg.to_dict(), "use_rep": use_rep, "batch_key": batch_key, "seed": seed},
            "privacy": agg.privacy_note,
        }
    )
    return model


def fedscgen(
    adata: ad.AnnData,
    *,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    backend: str | smpc.Aggregator = "plaintext",
    backend_options: dict[str, Any] | None = None,
    seed: int = 0,
    config: Any = None,
    holdout: list[str] | tuple[str, ...] = (),
    inclusion: str = "all",
    layer: str | None = None,
    snapshot_every_round: bool = False,
    show_progress: bool | None = None,
    **params: Any,
) -> Any:
    """Federated scGen training + the FedscGen correction workflow.

    Writes ``adata.obsm["X_fedscgen"]`` (shifted latent) and ``adata.layers["fedscgen"]``
    (corrected expression). ``adata.X`` must hold log-normalised expression.

    Parameters
    ----------
    backend, backend_options
        Aggregation backend name (or an :class:`smpc.Aggregator`) and its options.
    config, **params
        :class:`~fedsc.methods.fedscgen.FedScGenConfig` and/or overrides
        (``rounds=8, local_epochs=2, hidden=(800, 800)``...).
    holdout
        Batches that do not train but are corrected.
    inclusion
        ``"all"``, ``"combined"`` or ``"dropped"`` (minority cell types).

    Returns
    -------
    :class:`~fedsc.methods.fedscgen.FedScGenResult` (model, federation result, info).
    """
    from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen

    validate_adata(adata, batch_key=batch_key, label_key=label_key, layer=layer)
    cfg = config_from_kwargs(FedScGenConfig, config, params)
    with aggregator_for(backend, backend_options) as agg:
        return run_fedscgen(
            adata,
            batch_key=batch_key,
            label_key=label_key,
            aggregator=agg,
            config=cfg,
            seed=seed,
            holdout=list(holdout),
            inclusion=inclusion,
            layer=layer,
            snapshot_every_round=snapshot_every_round,
            show_progress=show_progress,
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
    """
    from fedsc.methods.scgen import ScGenConfig, run_scgen

    validate_adata(adata, batch_key=batch_key, label_key=label_key, layer=layer)
    cfg = config_from_kwargs(ScGenConfig, config, params)
    model, _ = run_scgen(
        adata,
        batch_key=batch_key,
        label_key=label_key,
        layer=layer,
        config=cfg,
        seed=seed,
        inclusion=inclusion,
        show_progress=show_progress,
    )
    return model
