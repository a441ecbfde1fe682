"""Recorded runs to attack: scBatchProx on an embedding, with any backend and mechanisms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from fedsc.methods.scbatchprox import ScBatchProx, ScBatchProxConfig
from fedsc.methods.spec_scbatchprox import SPEC
from fedsc.privacy.views import RunRecord, recording_aggregator


def pancreas_embedding(n_comps: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The bundled pancreas data as the runner prepares it: HVG log-expression -> PCA.

    Parameters
    ----------
    n_comps
        PCA dimensions (40 as in the scBatchProx paper).
    seed
        PCA seed.

    Returns
    -------
    The embedding (cells x ``n_comps``, float64) and each cell's batch label.
    """
    from fedsc.datasets import pancreas
    from fedsc.preprocessing import fit_embedding, preprocess

    adata = preprocess(pancreas())
    fit_embedding(adata, method="pca", n_comps=n_comps, seed=seed)
    z = np.asarray(adata.obsm["X_pca"], dtype=np.float64)
    return z, adata.obs["batch"].astype(str).to_numpy()


def record_scbatchprox(
    z: np.ndarray,
    batch_labels: Sequence[str] | np.ndarray,
    backend: str = "plaintext",
    *,
    config: ScBatchProxConfig | None = None,
    seed: int = 0,
    mechanisms: Sequence[Any] | None = None,
    mechanism_seed: int | None = None,
    **options: Any,
) -> tuple[RunRecord, ScBatchProx]:
    """Fit scBatchProx through a recording aggregator; return the run's record and model.

    Parameters
    ----------
    z, batch_labels
        The embedding and batch labels (one client per batch, sorted by name).
    backend
        ``"plaintext"`` or ``"crypten"`` (parties record their shares).
    config, seed
        As for :meth:`ScBatchProx.fit`; recorded as public information.
    mechanisms, mechanism_seed
        Mechanisms applied before the recorder (e.g. ``[{"name": "clip", "max_norm": 1}]``).
    **options
        Backend options (e.g. ``parties=3``).
    """
    config = config or ScBatchProxConfig()
    agg, recorder = recording_aggregator(
        backend, mechanisms=mechanisms, mechanism_seed=mechanism_seed, **options
    )
    with agg:
        model = ScBatchProx.fit(
            z, list(np.asarray(batch_labels).astype(str)), agg, config=config, seed=seed
        )
        record = RunRecord.from_run(
            agg,
            recorder,
            public={
                "method": SPEC.name,
                "reveals": sorted(SPEC.reveals),
                "config": asdict(config),
                "seed": seed,
                "batches": list(model.adapter.batches),
            },
        )
    return record, model
