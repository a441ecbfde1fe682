"""Training health: stop a diverging run with a message naming its cause, measure movement.

A non-finite loss (NaN or Inf) during training almost always means the optimiser stepped
too far: :func:`check_loss` raises :class:`TrainingDivergedError` naming the method, the
round/epoch, the client and the learning rate, before any NaN state is aggregated or any
all-NaN output is written. :func:`relative_movement` tells how far a method moved the
cells (``||Z' - Z||_F / ||Z||_F``); below :data:`MOVEMENT_WARN` the run summary says that
the method left its input practically unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from fedsc.errors import FedscInputError

__all__ = [
    "MOVEMENT_WARN",
    "TrainingDivergedError",
    "check_loss",
    "movement_note",
    "relative_movement",
]

logger = logging.getLogger(__name__)

#: Relative movement below which a method is reported as leaving its input unchanged.
MOVEMENT_WARN: float = 1e-3


class TrainingDivergedError(FedscInputError):
    """Training produced a non-finite loss; the configuration (usually ``lr``) must change.

    A subclass of :class:`~fedsc.errors.FedscInputError` (a configuration that cannot be
    used), so the CLI reports it as a clean error (exit code 2), not a traceback.
    """


def check_loss(
    loss: float,
    *,
    method: str,
    lr: float,
    default_lr: float,
    where: str,
    client: str | None = None,
    detail: str | None = None,
) -> None:
    """Raise :class:`TrainingDivergedError` unless ``loss`` is finite.

    Parameters
    ----------
    loss
        The loss just computed.
    method
        Method name for the message (``"FedscGen"``).
    lr, default_lr
        The learning rate used and the method's default (suggested as the fix).
    where
        ``"round 2"``, ``"epoch 5"``...
    client
        The client's name, for federated methods.
    detail
        What was seen instead of ``loss is nan`` (e.g. a loss far above its scale).
    """
    if math.isfinite(loss):
        return
    who = f", client {client!r}" if client is not None else ""
    suggest = default_lr if lr > default_lr else lr / 10
    raise TrainingDivergedError(
        f"{method} training diverged at {where}{who}: {detail or f'loss is {loss}'}; the learning rate "
        f"lr={lr:g} is likely too large; try lr={suggest:g} (the default is {default_lr:g}). "
        "No output was written."
    )


def relative_movement(before: Any, after: Any, *, chunk: int = 4096) -> float | None:
    """``||after - before||_F / ||before||_F`` over the rows finite in both; ``None`` if unlike.

    ``None`` when the shapes differ (e.g. a latent space vs genes) or nothing is finite.
    Dense or sparse inputs are read ``chunk`` rows at a time in float64, so the memory it
    needs does not grow with the cells (whole float64 copies of both took 48 bytes per
    value: 9.6 GB at 10^5 cells x 2,000 genes).
    """
    if before.shape != after.shape or len(before.shape) != 2:
        return None
    base = moved = 0.0
    any_rows = False
    for start in range(0, before.shape[0], chunk):
        a = _dense64(before[start : start + chunk])
        b = _dense64(after[start : start + chunk])
        rows = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
        if not rows.any():
            continue
        any_rows = True
        a, b = a[rows], b[rows]
        base += float(np.einsum("ij,ij->", a, a))
        b -= a
        moved += float(np.einsum("ij,ij->", b, b))
    if not any_rows or base == 0.0:
        return None
    return float(np.sqrt(moved) / np.sqrt(base))


def _dense64(block: Any) -> np.ndarray:
    return np.asarray(block.toarray() if hasattr(block, "toarray") else block, dtype=np.float64)


def movement_note(
    method: str, movement: float | None, threshold: float = MOVEMENT_WARN
) -> str | None:
    """A warning (also logged) when ``method`` moved the cells by less than ``threshold``."""
    if movement is None or movement >= threshold:
        return None
    note = (
        f"{method} left its input practically unchanged: relative movement "
        f"||Z' - Z||_F / ||Z||_F = {movement:.2g} < {threshold:g}; metric differences to the "
        "uncorrected input are then noise. Train longer or with a larger learning rate "
        "(e.g. more rounds/local_epochs, lr), or check that the method read the intended input."
    )
    logger.warning(note)
    return note
