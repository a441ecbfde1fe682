"""Clients' contributions for the aggregator tests: uniform values in [-100, 100)."""

from __future__ import annotations

import numpy as np


def client_vectors(k: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` clients' float64 vectors of ``size`` values, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-100, 100, size=size) for _ in range(k)]
