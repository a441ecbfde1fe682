"""Fixtures of the privacy tests: the pancreas PCA embedding, computed once per session."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def panc_pca() -> tuple[np.ndarray, np.ndarray]:
    """Pancreas as the runner prepares it (HVG, log1p, PCA 40): embedding and batches."""
    from fedsc.privacy.runs import pancreas_embedding

    return pancreas_embedding(n_comps=40, seed=0)
