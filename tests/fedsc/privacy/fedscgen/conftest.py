"""Shared FedscGen runs for the privacy-attack tests (small, a few seconds each)."""

from __future__ import annotations

import pytest
import torch
from _helpers.adata import lognormalized_pancreas

from fedsc.methods.fedscgen import FedScGenConfig
from fedsc.privacy.fedscgen_runs import capture_fedscgen_views

#: Small and quick to overfit: 2 rounds x 10 local epochs, hidden (64, 64).
OVERFIT = {"hidden": (64, 64), "batch_size": 30, "num_threads": 1, "rounds": 2, "local_epochs": 10}
KEYS = {"batch_key": "batch", "labels_key": "cell_type"}


@pytest.fixture(scope="session")
def capture():
    """``capture(adata, seed, **config)``: one recorded FedscGen run, with one torch thread."""

    def run(adata, seed=0, **config):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            cfg = FedScGenConfig(**{**OVERFIT, **config})
            return capture_fedscgen_views(adata, **KEYS, config=cfg, seed=seed)
        finally:
            torch.set_num_threads(n)

    return run


@pytest.fixture(scope="session")
def pancreas_log():
    """The bundled pancreas data, normalised to 1e4 and log1p (for session fixtures)."""
    return lognormalized_pancreas()


@pytest.fixture(scope="session")
def views(pancreas_log, capture):
    """FedscGen on the 5 pancreas batches (plaintext), seed 0, overfitting settings."""
    return capture(pancreas_log, seed=0)
