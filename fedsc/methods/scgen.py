"""scGen, the centralized baseline: train the VAE on all cells, then shift latents per type.

Batch removal (as FedscGen's correction, computed on pooled data): for every *shared* cell
type t (present in at least two batches) the *dominant* batch is the one with the most
cells of t (ties: the lowest batch in client order); with M_t the mean latent of the
dominant batch's cells of t, every cell of type t in batch b moves to
``z' = z - mean_b(t) + M_t``. Cells of standalone types (one batch) are not shifted. All
cells are then decoded. Latents are posterior means μ (docs/algorithms.md#correction-workflow).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from fedsc._deprecation import renamed_arguments
from fedsc.data.inclusion import DEFAULT_MIN_CELLS, SCENARIOS, apply_inclusion
from fedsc.data.validate import get_representation, obs_column
from fedsc.errors import FedscInputError
from fedsc.methods import vae as vae_mod
from fedsc.methods.configs import ScGenConfig
from fedsc.methods.health import TrainingDivergedError, check_loss
from fedsc.methods.vae import (
    EPOCH,
    INIT,
    SPLIT,
    VAE,
    as_tensor,
    decode,
    derive_generator,
    encode_mean,
    make_optimizer,
    place,
    split_train_validation,
    torch_threads,
    train_epoch,
)
from fedsc.progress import progress

__all__ = ["ScGenConfig", "batch_removal", "run_scgen", "train_scgen", "train_vae"]

logger = logging.getLogger(__name__)


def train_vae(
    x: torch.Tensor,
    config: ScGenConfig,
    seed: int,
    *,
    show_progress: bool | None = None,
    on_epoch_end: Callable[[int, VAE], None] | None = None,
) -> VAE:
    """Train a VAE on all rows of ``x`` with a fixed 90/10 split and early stopping.

    Randomness follows the scheme of :mod:`fedsc.methods.vae` with stream 0: weights
    from ``(seed, INIT)``, split from ``(seed, SPLIT, 0)``, epoch ``e`` from
    ``(seed, EPOCH, 0, e)``. With ``early_stopping`` the state of the epoch with the
    lowest validation loss (the training loss when there is no validation cell) is
    restored from a deep copy; ``model.history`` records every epoch.
    """
    model = place(VAE(x.shape[1], config, derive_generator(seed, INIT)))  # settings.device
    train_idx, val_idx = split_train_validation(
        x.shape[0], config.validation_fraction, derive_generator(seed, SPLIT, 0)
    )
    x_val = x[val_idx]
    optimizer = make_optimizer(model)
    logger.info(
        "scGen: training on %d cells x %d genes (%d validation), up to %d epochs, %d torch threads",
        x.shape[0],
        x.shape[1],
        int(val_idx.shape[0]),
        config.epochs,
        torch.get_num_threads(),
    )
    start = time.perf_counter()
    best, best_state, best_epoch, waited = float("inf"), None, -1, 0
    for epoch in progress(range(config.epochs), desc="scGen epochs", enable=show_progress):
        loss = train_epoch(model, optimizer, x, derive_generator(seed, EPOCH, 0, epoch), train_idx)
        check_loss(
            loss,
            method="scGen",
            lr=config.lr,
            default_lr=ScGenConfig.lr,
            where=f"epoch {epoch + 1}/{config.epochs}",
        )
        val = vae_mod.validation_loss(model, x_val)
        model.history.append({"epoch": epoch, "train_loss": loss, "val_loss": val})
        logger.debug("scGen epoch %d: train loss %.6g, validation loss %.6g", epoch, loss, val)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        score = loss if np.isnan(val) else val
        if score < best:
            best, best_epoch, waited = score, epoch, 0
            if config.early_stopping:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if config.early_stopping and waited >= config.patience:
                logger.info(
                    "scGen: early stop after epoch %d (no improvement for %d epochs)",
                    epoch,
                    waited,
                )
                break
    if config.early_stopping and best_state is not None:
        model.load_state_dict(best_state)
    model.best_epoch = best_epoch if config.early_stopping else None
    model.eval()
    logger.info(
        "scGen: trained %d epochs in %.1f s%s",
        len(model.history),
        time.perf_counter() - start,
        f", kept epoch {best_epoch}" if config.early_stopping else "",
    )
    return model


def train_scgen(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    config: ScGenConfig | None = None,
    seed: int = 0,
    show_progress: bool | None = None,
    on_epoch_end: Callable[[int, VAE], None] | None = None,
) -> VAE:
    """Train scGen's VAE on the log-normalised expression of all cells.

    Parameters
    ----------
    adata
        Cells x genes; ``adata.X`` (or ``layers[layer]``) holds log-normalised expression.
    layer
        Layer to read instead of ``adata.X``.
    config
        :class:`ScGenConfig` (defaults from FedscGen's table).
    seed
        Run seed (weights, split, minibatch order, dropout, sampling).
    show_progress
        Progress bar over epochs; ``None`` shows it only on a terminal.
    on_epoch_end
        Called with ``(epoch, model)`` after every epoch (e.g. to record snapshots).
    """
    config = ScGenConfig() if config is None else config
    x = as_tensor(get_representation(adata, layer=layer))
    with torch_threads(config.num_threads):
        return train_vae(x, config, seed, show_progress=show_progress, on_epoch_end=on_epoch_end)


@renamed_arguments(label_key="labels_key")
def batch_removal(
    model: VAE,
    adata: ad.AnnData,
    batch_key: str,
    labels_key: str,
    *,
    layer: str | None = None,
    order: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Shift latents of shared cell types onto the dominant batch and decode.

    Parameters
    ----------
    model
        A trained VAE.
    adata
        Cells to correct (log-normalised expression in ``X`` or ``layers[layer]``).
    batch_key, labels_key
        ``adata.obs`` columns with the batch and the cell type.
    layer
        Layer to read instead of ``adata.X``.
    order
        Batch order for breaking ties of the dominant batch (lowest first); default sorted
        batch names, the client order of :func:`fedsc.data.split_clients`.

    Returns
    -------
    (shifted latent, cells x latent; corrected expression, cells x genes), float32.
    """
    batches = obs_column(adata, batch_key, "batch_key").astype(str).to_numpy()
    labels = obs_column(adata, labels_key, "labels_key").astype(str).to_numpy()
    order = sorted(set(batches)) if order is None else [str(b) for b in order]
    missing = sorted(set(batches) - set(order))
    if missing:
        raise FedscInputError(f"order lacks batches {missing}; list every batch once.")
    x = as_tensor(get_representation(adata, layer=layer))
    z = encode_mean(model, x).to(torch.float64).numpy()
    shifted = z.copy()
    for t in sorted(set(labels)):
        is_t = labels == t
        present = [b for b in order if np.any(is_t & (batches == b))]
        if len(present) < 2:
            continue  # standalone type: unshifted
        counts = [int(np.sum(is_t & (batches == b))) for b in present]
        dominant = present[int(np.argmax(counts))]  # first maximum: lowest in order
        target = z[is_t & (batches == dominant)].mean(axis=0)
        for b in present:
            rows = is_t & (batches == b)
            shifted[rows] = z[rows] - z[rows].mean(axis=0) + target
    latent = shifted.astype(np.float32)
    corrected = decode(model, torch.from_numpy(latent)).numpy()
    return latent, corrected


@renamed_arguments(label_key="labels_key")
def run_scgen(
    adata: ad.AnnData,
    *,
    batch_key: str,
    labels_key: str,
    layer: str | None = None,
    config: ScGenConfig | None = None,
    seed: int = 0,
    inclusion: str = "all",
    min_cells: int = DEFAULT_MIN_CELLS,
    show_progress: bool | None = None,
    key_added: str = "scgen",
) -> tuple[VAE, dict[str, Any]]:
    """Centralized scGen: train on all cells, batch removal, write results into ``adata``.

    Writes ``adata.obsm["X_" + key_added]`` (shifted latent) and ``adata.layers[key_added]``
    (corrected expression), and the run parameters to ``adata.uns[key_added]``. Under the
    ``"dropped"`` inclusion scenario the removed cells get NaN rows.

    Returns
    -------
    (trained VAE, info dict with the training history, inclusion summary and timings).
    """
    config = ScGenConfig() if config is None else config
    start = time.perf_counter()
    used, rows = prepare_inclusion(adata, batch_key, labels_key, inclusion, min_cells)
    model = train_scgen(used, layer=layer, config=config, seed=seed, show_progress=show_progress)
    with torch_threads(config.num_threads):
        latent, corrected = batch_removal(model, used, batch_key, labels_key, layer=layer)
    if not (np.isfinite(latent).all() and np.isfinite(corrected).all()):
        raise TrainingDivergedError(
            "scGen produced non-finite corrected values although every training loss was "
            f"finite; the learning rate lr={config.lr:g} is likely too large; try "
            f"lr={min(config.lr / 10, ScGenConfig.lr):g}. No output was written."
        )
    write_outputs(adata, rows, key_added, latent, corrected)
    info = {
        "params": {
            **config.to_dict(),
            "batch_key": batch_key,
            "labels_key": labels_key,
            "layer": layer,
            "seed": seed,
            "inclusion": inclusion,
            "min_cells": min_cells,
        },
        "inclusion": dict(used.uns.get("inclusion", {"scenario": "all"})),
        "best_epoch": model.best_epoch,
        "epochs_trained": len(model.history),
        "history": list(model.history),
        "seconds": time.perf_counter() - start,
    }
    adata.uns[key_added] = {"params": info["params"], "inclusion": info["inclusion"]}
    return model, info


# ----------------------------------------------------------------- shared helpers
def prepare_inclusion(
    adata: ad.AnnData, batch_key: str, labels_key: str, inclusion: str, min_cells: int
) -> tuple[ad.AnnData, np.ndarray]:
    """Apply an inclusion scenario; return (cells used, their row positions in ``adata``).

    ``"all"`` uses ``adata`` itself (no copy).
    """
    scenario = str(inclusion).lower()
    if scenario not in SCENARIOS:
        raise FedscInputError(
            f"unknown inclusion scenario {inclusion!r}; choose one of {list(SCENARIOS)}."
        )
    obs_column(adata, batch_key, "batch_key")
    labels = obs_column(adata, labels_key, "labels_key").astype(str).to_numpy()
    if scenario == "all":
        return adata, np.arange(adata.n_obs)
    used = apply_inclusion(
        adata, batch_key=batch_key, labels_key=labels_key, scenario=scenario, min_cells=min_cells
    )
    if scenario == "dropped":
        minority = set(used.uns["inclusion"]["minority_types"])
        rows = np.flatnonzero(~pd.Series(labels).isin(minority).to_numpy())
    else:
        rows = np.arange(adata.n_obs)
    if len(rows) != used.n_obs:  # pragma: no cover - guards a change in apply_inclusion
        raise RuntimeError("inclusion scenario returned an unexpected number of cells.")
    return used, rows


def write_outputs(
    adata: ad.AnnData, rows: np.ndarray, key: str, latent: np.ndarray, corrected: np.ndarray
) -> None:
    """Write ``obsm["X_<key>"]`` and ``layers[key]``; rows not in ``rows`` get NaN."""
    if len(rows) == adata.n_obs:
        adata.obsm[f"X_{key}"] = latent
        adata.layers[key] = corrected
        return
    full_latent = np.full((adata.n_obs, latent.shape[1]), np.nan, dtype=np.float32)
    full_expr = np.full((adata.n_obs, corrected.shape[1]), np.nan, dtype=np.float32)
    full_latent[rows] = latent
    full_expr[rows] = corrected
    adata.obsm[f"X_{key}"] = full_latent
    adata.layers[key] = full_expr
