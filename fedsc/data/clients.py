"""Split an AnnData into federated clients: one per batch (study, lab, technology)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np

from fedsc.data.access import obs_column
from fedsc.errors import FedscInputError


@dataclass(frozen=True)
class Client:
    """One federated participant: the cells of one batch.

    Attributes
    ----------
    name
        The batch value (e.g. ``"celseq2"``).
    index
        Position in the federation, 0..K-1 (training clients first, then held-out ones).
    adata
        A view of the cells of this batch (not a copy).
    obs_indices
        Integer positions of these cells in the full AnnData.
    held_out
        True for a batch that does not train but joins post-training steps.
    """

    name: str
    index: int
    adata: ad.AnnData
    obs_indices: np.ndarray
    held_out: bool = False

    @property
    def n_obs(self) -> int:
        """Number of cells of this client."""
        return int(self.adata.n_obs)


def split_clients(
    adata: ad.AnnData,
    batch_key: str,
    *,
    holdout: Sequence[str] = (),
    order: Sequence[str] | None = None,
) -> tuple[list[Client], list[Client]]:
    """Split cells into clients, one per batch.

    Parameters
    ----------
    adata
        Cells of all batches.
    batch_key
        Column of ``adata.obs`` holding the batch.
    holdout
        Batches that do not train (they join only post-training steps).
    order
        Order of the clients; defaults to the categorical order (sorted values).

    Returns
    -------
    (training clients, held-out clients). Indices run 0..K-1 over both lists.
    """
    values = obs_column(adata, batch_key, "batch_key").astype(str).to_numpy()
    present = list(dict.fromkeys(sorted(set(values))))
    if order is None:
        order = present
    else:
        order = [str(o) for o in order]
        missing = sorted(set(present) - set(order))
        unknown = sorted(set(order) - set(present))
        if missing or unknown:
            raise FedscInputError(
                f"client order must list every batch exactly once: missing {missing}, "
                f"unknown {unknown}."
            )
    holdout = [str(h) for h in holdout]
    unknown = sorted(set(holdout) - set(present))
    if unknown:
        raise FedscInputError(
            f"held-out batch(es) {unknown} not found in adata.obs[{batch_key!r}]; "
            f"available batches: {present}."
        )
    train_names = [b for b in order if b not in holdout]
    if not train_names:
        raise FedscInputError("every batch is held out: at least one batch must train.")
    held_names = [b for b in order if b in holdout]
    clients = []
    for i, name in enumerate(train_names + held_names):
        idx = np.flatnonzero(values == name)
        clients.append(Client(name, i, adata[idx], idx, held_out=name in holdout))
    return clients[: len(train_names)], clients[len(train_names) :]
