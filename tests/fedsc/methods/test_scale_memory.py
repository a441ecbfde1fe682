"""Memory at scale (issue 20): checks whose memory used to grow with whole dense copies."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from fedsc.methods.health import relative_movement


def _reference(a: np.ndarray, b: np.ndarray) -> float:
    rows = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    return float(np.linalg.norm(b[rows] - a[rows]) / np.linalg.norm(a[rows]))


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_relative_movement_in_blocks_equals_the_whole_formula(chunk):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 20))
    b = a + 0.1 * rng.standard_normal(a.shape)
    b[3, 4] = np.nan  # a row not finite in one input is left out of both norms
    a[10, 0] = np.inf
    assert relative_movement(a, b, chunk=chunk) == pytest.approx(_reference(a, b), rel=1e-12)
    s = np.where(a > 1, a, 0.0)
    s[~np.isfinite(s)] = 0.0
    expected = _reference(s, s + 1.0)
    assert relative_movement(sp.csr_matrix(s), s + 1.0, chunk=chunk) == pytest.approx(expected)
    assert relative_movement(np.zeros((4, 3)), np.ones((4, 3)), chunk=chunk) is None
    assert relative_movement(np.full((2, 2), np.nan), np.ones((2, 2)), chunk=chunk) is None


def test_relative_movement_memory_does_not_grow_with_cells():
    # 40,000 x 200: one dense float64 copy is 64 MB; blocks of 4,096 rows need ~7 MB each
    rng = np.random.default_rng(1)
    after = rng.random((40_000, 200), dtype=np.float32)
    before = sp.csr_matrix(np.where(after > 0.7, after, np.float32(0)))
    tracemalloc.start()
    try:
        relative_movement(before, after)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20  # whole float64 copies of both took > 128 MB
