"""A new aggregation backend is one module plus one ``smpc.BACKENDS`` line; every method,
``fedsc.tl`` and ``RunConfig`` then take it by name, and the ledger records it."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import numpy as np
import pytest

import smpc

#: The whole new backend. Nothing else in the code base is edited.
TOY_MODULE = '''
"""Toy backend: every client masks its row with a share of zero (the masks of all clients
add up to 0), so the coordinator's sum is exact up to float rounding; argmax in the clear."""

import numpy as np

from smpc.aggregator import Aggregator, lowest_index_argmax
from smpc.ledger import Traffic


class ZeroSumMasks(Aggregator):
    name = "zero_sum_masks"

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)
        self.rng = np.random.default_rng()

    @property
    def private(self) -> bool:
        return False  # a toy: the masks are drawn by the coordinator's process

    def _masked(self, matrix):
        masks = self.rng.normal(0.0, self.scale, size=matrix.shape)
        masks -= masks.mean(axis=0)
        return matrix + masks

    def _weighted_sum(self, matrix, weights):
        rows = self._masked(weights[:, None] * matrix)
        return rows.sum(axis=0), float(weights.sum()), Traffic(coordinator_bytes=rows.nbytes)

    def _sum(self, matrix):
        rows = self._masked(matrix)
        return rows.sum(axis=0), Traffic(coordinator_bytes=rows.nbytes)

    def _argmax(self, matrix):
        return lowest_index_argmax(matrix), Traffic(coordinator_bytes=matrix.nbytes)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    path = tmp_path / "toy_backend.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_backend", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_backend", module)
    spec.loader.exec_module(module)
    smpc.BACKENDS.register("zero_sum_masks", module.ZeroSumMasks)  # the one line
    yield module
    smpc.BACKENDS.unregister("zero_sum_masks")


def test_a_taken_backend_name_is_refused_and_an_unknown_one_named(toy):
    with pytest.raises(ValueError, match="'zero_sum_masks' is already registered"):
        smpc.BACKENDS.register("zero_sum_masks", toy.ZeroSumMasks)
    with pytest.raises(ValueError, match=r"unknown aggregation backend 'nope'.*zero_sum_masks"):
        smpc.make_aggregator("nope")


def test_a_new_backend_runs_a_method_by_name(toy):
    from fedsc.datasets import pancreas
    from fedsc.methods.scbatchprox import ScBatchProx, ScBatchProxConfig
    from fedsc.run.config import RunConfig

    a = pancreas()
    z = np.asarray(a.obsm["X_pca"], dtype=np.float64)
    labels = a.obs["batch"].astype(str).to_numpy()
    cfg = ScBatchProxConfig(rounds=2)
    fits = {}
    for name in ("plaintext", "zero_sum_masks"):
        with smpc.make_aggregator(name) as agg:
            fits[name] = ScBatchProx.fit(z, labels, agg, config=cfg, seed=0, show_progress=False)
            ops = {e.op for e in agg.ledger.entries}
    assert ops == {"weighted_mean"}  # recorded by the base class, whatever the backend
    want, got = (fits[n].transform(z, labels) for n in ("plaintext", "zero_sum_masks"))
    np.testing.assert_allclose(got, want, atol=1e-6)  # the masks cancel
    assert not np.array_equal(got, want)  # and they were there
    assert RunConfig(method="scbatchprox", backend="zero_sum_masks").backend == "zero_sum_masks"
