"""fedsc.evaluation._silhouette equals scib-metrics' silhouettes (run in float64)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fedsc.evaluation import _silhouette
from fedsc.evaluation._scib import scib_metrics


@pytest.fixture(scope="module")
def case():
    """264 cells x 5 dims: labels a-d (60 cells each, 3 batches), a singleton label, a label
    in one batch, a 4-cell label of two duplicated cells (where |x|^2 + |y|^2 - 2 x.y loses
    precision). The labels the batch silhouette uses have one size: JAX compiles once."""
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c", "d"] * 60 + ["singleton"] + ["one_batch"] * 19 + ["dup"] * 4)
    batch = rng.choice(np.array(["x", "y", "z"]), len(labels))
    batch[240:] = "x"
    centres = rng.normal(0, 3, size=(len(labels), 5))
    X = rng.normal(size=(len(labels), 5)) + centres[np.unique(labels, return_inverse=True)[1]]
    X[261], X[263] = X[260], X[262]
    with jax.enable_x64(True):
        sil = np.asarray(scib_metrics.utils.silhouette_samples(X, labels))
        sil_b = float(scib_metrics.silhouette_batch(X, labels, batch))
    return X, labels, batch, sil, sil_b


@pytest.mark.parametrize("tile", [64, _silhouette.TILE])
def test_silhouettes_equal_scib_metrics_in_float64(case, monkeypatch, tile):
    # tile=64: 5 x 5 tiles, the last row and column partial (264 = 4 * 64 + 8)
    monkeypatch.setattr(_silhouette, "TILE", tile)
    X, labels, batch, sil, sil_b = case
    ours = _silhouette.silhouette_samples(X, labels)
    assert ours[240] == 0.0  # the singleton
    np.testing.assert_allclose(ours, sil, rtol=1e-9, atol=1e-12)
    assert _silhouette.silhouette_batch(X, labels, batch) == pytest.approx(sil_b, rel=1e-9)


def test_silhouette_batch_nan_when_no_label_spans_two_batches():
    X = np.arange(8.0).reshape(4, 2)
    assert np.isnan(_silhouette.silhouette_batch(X, np.array([0, 0, 1, 1]), np.zeros(4)))
