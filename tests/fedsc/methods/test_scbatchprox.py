"""scBatchProx: values against hand cases and the slow autograd reference."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pytest

import fedsc.tl
import smpc
from fedsc.errors import FedscInputError
from fedsc.federation import FedAvg, run_federation
from fedsc.methods.scbatchprox import (
    FiLMAdapter,
    ScBatchProx,
    ScBatchProxConfig,
    ScBatchProxFederation,
    epoch_batches,
    training_split,
)
from fedsc.methods.scbatchprox_reference import ReferenceScBatchProxFederation


def make_embedding(n=600, d=8, batches=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([f"b{i}" for i in rng.integers(0, batches, n)])
    shift = {f"b{i}": rng.normal(scale=2.0, size=d) for i in range(batches)}
    z = rng.normal(size=(n, d)) + np.stack([shift[b] for b in labels])
    return z.astype(np.float32), labels


def fit(z, labels, seed=0, **kw):
    with smpc.make_aggregator("plaintext") as agg:
        return ScBatchProx.fit(z, labels, agg, config=ScBatchProxConfig(**kw), seed=seed)


def test_identity_adapter_leaves_embedding_unchanged():
    z, labels = make_embedding()
    adapter = FiLMAdapter.identity(sorted(set(labels)), z.shape[1])
    np.testing.assert_array_equal(adapter.transform(z, labels), z.astype(np.float64))


def test_training_split_fixed_and_ninety_percent():
    a = training_split(101, 0.9, seed=3, client=1)
    assert len(a) == 91 and len(np.unique(a)) == 91
    np.testing.assert_array_equal(a, training_split(101, 0.9, seed=3, client=1))
    assert not np.array_equal(a, training_split(101, 0.9, seed=4, client=1))


def test_epoch_batches_cover_every_cell_each_epoch():
    import torch

    g = torch.Generator().manual_seed(0)
    batches = epoch_batches(600, 256, 2, g)
    assert [len(b) for b in batches] == [256, 256, 88, 256, 256, 88]
    for e in range(2):
        np.testing.assert_array_equal(
            np.sort(np.concatenate(batches[3 * e : 3 * e + 3])), np.arange(600)
        )


@pytest.mark.parametrize("mu", [0.0, 1e-3, 0.5])
def test_vectorised_update_equals_autograd_reference(mu):
    z, labels = make_embedding(n=700, d=6)
    batches = sorted(set(labels))
    cells = [np.flatnonzero(labels == b) for b in batches]
    init = (np.ones((3, 6)), np.zeros((3, 6)))
    cfg = ScBatchProxConfig(rounds=3, mu=mu, lr=1e-2, batch_size=64)
    states = []
    for cls in (ScBatchProxFederation, ReferenceScBatchProxFederation):
        method = cls(z, range(3), cells, init, cfg, seed=1)
        with smpc.make_aggregator("plaintext") as agg:
            states.append(run_federation(method, range(3), agg, rounds=3, seed=1).state)
    for key in ("gamma", "beta"):
        np.testing.assert_allclose(states[0][key].numpy(), states[1][key].numpy(), atol=1e-10)
    assert not np.allclose(states[0]["gamma"].numpy(), 1.0)  # it did train


def test_fedavg_of_whole_tables_weighted_by_cell_count():
    # Two clients of unequal size, one round: row b of the global table is
    # (n_b * trained_row_b + n_other * initial_row_b) / (n_b + n_other).
    z, labels = make_embedding(n=400, d=4, batches=2)
    labels = np.where(np.arange(400) < 100, "small", "large")
    cells = [np.flatnonzero(labels == b) for b in ("large", "small")]
    init = (np.ones((2, 4)), np.zeros((2, 4)))
    cfg = ScBatchProxConfig(rounds=1, lr=1e-2)
    method = ScBatchProxFederation(z, [0, 1], cells, init, cfg, seed=0)
    local = method.local_updates([0, 1], method.initial_state(), 0, _gens(0, 0, [0, 1]))
    n = np.array([r.weight for r in local])
    assert n.tolist() == [270.0, 90.0]  # 90 % training splits of 300 and 100 cells
    with smpc.make_aggregator("plaintext") as agg:
        state = run_federation(method, [0, 1], agg, rounds=1, seed=0).state
    expected_row0 = (n[0] * local[0].state["gamma"][0].numpy() + n[1] * 1.0) / n.sum()
    expected_row1 = (n[0] * 1.0 + n[1] * local[1].state["gamma"][1].numpy()) / n.sum()
    np.testing.assert_allclose(state["gamma"][0].numpy(), expected_row0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(state["gamma"][1].numpy(), expected_row1, rtol=0, atol=1e-15)


def _gens(seed, rnd, clients):
    from fedsc.federation import client_generators

    return client_generators(seed, rnd, clients)


def test_very_large_mu_keeps_rows_at_global_value():
    # The identity is a stationary point of the reconstruction term, so the L2 term
    # (lam) is what moves the rows; a huge proximal weight must hold them in place.
    z, labels = make_embedding()
    kw = dict(lr=1e-2, lam=0.1, batch_size=16)
    free = fit(z, labels, mu=0.0, **kw)
    pinned = fit(z, labels, mu=1e8, **kw)
    drift_free = np.abs(free.adapter.gamma - 1).max()
    drift_pinned = np.abs(pinned.adapter.gamma - 1).max()
    assert drift_free > 1e-2
    # Adam's first step of each round moves ~lr whatever the gradient scale; after it the
    # proximal pull dominates, so the pinned rows stay an order of magnitude closer.
    assert drift_pinned < 0.1 * drift_free


def test_mu_zero_differs_from_default():
    z, labels = make_embedding()
    a = fit(z, labels, mu=0.0)
    b = fit(z, labels, mu=1e-3)
    assert not np.array_equal(a.adapter.gamma, b.adapter.gamma)


def test_same_seed_bit_identical_different_seed_differs():
    z, labels = make_embedding()
    a, b, c = fit(z, labels, seed=3), fit(z, labels, seed=3), fit(z, labels, seed=4)
    np.testing.assert_array_equal(a.transform(z, labels), b.transform(z, labels))
    assert not np.array_equal(a.transform(z, labels), c.transform(z, labels))


def test_strategy_option_fedavg_is_the_default_and_history_is_aggregated():
    z, labels = make_embedding()
    default = fit(z, labels, rounds=3)
    with smpc.make_aggregator("plaintext") as agg:
        explicit = ScBatchProx.fit(
            z, labels, agg, config=ScBatchProxConfig(rounds=3), strategy=FedAvg()
        )
    np.testing.assert_array_equal(default.adapter.gamma, explicit.adapter.gamma)
    np.testing.assert_array_equal(default.adapter.beta, explicit.adapter.beta)
    assert [sorted(h) for h in default.history] == [["recon_loss", "round"]] * 3
    assert [e.tag for e in agg.ledger.entries] == ["fedavg", "metrics"] * 3
    with smpc.make_aggregator("plaintext") as agg:
        m = ScBatchProx.fit(z, labels, agg, config=ScBatchProxConfig(rounds=3), strategy="fedavgm")
    assert {e.tag for e in agg.ledger.entries} == {"fedavgm", "metrics"}
    assert not np.allclose(m.adapter.gamma, default.adapter.gamma)


def test_continual_training_freezes_old_cells_bit_identical():
    z, labels = make_embedding(n=900, batches=5)
    old = np.isin(labels, ["b0", "b1", "b2"])
    with smpc.make_aggregator("plaintext") as agg:
        model = ScBatchProx.fit(z[old], labels[old], agg, seed=0)
        before = model.transform(z[old], labels[old])
        gamma_old = model.adapter.gamma.copy()
        model.extend(z[~old], labels[~old], agg)
    assert model.adapter.batches == ["b0", "b1", "b2", "b3", "b4"]
    np.testing.assert_array_equal(model.transform(z[old], labels[old]), before)
    np.testing.assert_array_equal(model.adapter.gamma[:3], gamma_old)
    assert not np.allclose(model.adapter.gamma[3:], 1.0)  # new rows trained
    # only new rows travel in the continual stage: 2 rows x d per table
    fedavg = [e for e in agg.ledger.entries if e.tag == "fedavg"]
    assert fedavg[-1].n_values == 2 * 2 * z.shape[1]
    with pytest.raises(FedscInputError, match="already have adapter rows"):
        model.extend(z[old], labels[old], smpc.make_aggregator("plaintext"))


def test_tl_api_writes_obsm_and_matches_model():
    z, labels = make_embedding()
    adata = ad.AnnData(np.zeros((len(z), 2), dtype=np.float32))
    adata.obs["batch"] = labels
    adata.obsm["X_pca"] = z
    model = fedsc.tl.scbatchprox(
        adata, batch_key="batch", use_rep="X_pca", seed=0, mu=0.0, return_model=True
    )
    assert adata.obsm["X_scbatchprox"].shape == z.shape
    assert adata.obsm["X_scbatchprox"].dtype == np.float32
    np.testing.assert_allclose(adata.obsm["X_scbatchprox"], model.transform(z, labels), rtol=1e-6)
    assert adata.uns["scbatchprox"]["params"]["mu"] == 0.0
    assert "not private" in adata.uns["scbatchprox"]["privacy"]
    with pytest.raises(FedscInputError, match="unknown ScBatchProxConfig option"):
        fedsc.tl.scbatchprox(adata, use_rep="X_pca", mu_typo=1)


def test_bad_inputs():
    z, labels = make_embedding()
    with pytest.raises(FedscInputError, match="NaN or Inf"):
        fit(np.where(np.arange(z.size).reshape(z.shape) == 5, np.nan, z), labels)
    with pytest.raises(FedscInputError, match="at least 2"):
        fit(z, np.full(len(z), "only"))
    with pytest.raises(FedscInputError, match="fewer than 2 cells"):
        fit(z, np.r_[labels[:-1], ["lonely"]])
    with pytest.raises(FedscInputError, match="invalid scBatchProx setting"):
        ScBatchProxConfig(rounds=0)


def test_scenarios_on_bundled_pancreas_arrival_order():
    from fedsc.datasets import pancreas
    from fedsc.methods.scbatchprox_scenarios import continual_training, cumulative_retraining

    adata = pancreas()
    stages = [["indrop", "celseq"], ["celseq2"], ["fluidigmc1", "smartseq2"]]
    cfg = ScBatchProxConfig(rounds=2)
    with smpc.make_aggregator("plaintext") as agg:
        cont = continual_training(adata, stages, agg, n_comps=10, config=cfg)
        cum = cumulative_retraining(adata, stages, agg, n_comps=10, config=cfg)
    assert [len(r.obs_names) for r in cont] == [200, 300, 500]
    assert [len(r.obs_names) for r in cum] == [200, 300, 500]
    # continual: cells of earlier stages keep bit-identical coordinates
    for prev, nxt in itertools.pairwise(cont):
        n = len(prev.obs_names)
        np.testing.assert_array_equal(nxt.obs_names[:n], prev.obs_names)
        np.testing.assert_array_equal(nxt.refined[:n], prev.refined)
        np.testing.assert_array_equal(nxt.upstream[:n], prev.upstream)
    # cumulative: re-embedding all seen data changes earlier cells' coordinates
    first = set(cum[0].obs_names)
    mask = np.isin(cum[1].obs_names, list(first))
    assert not np.allclose(np.abs(cum[1].upstream[mask]), np.abs(cum[0].upstream))
    with pytest.raises(FedscInputError, match="exactly one stage"):
        with smpc.make_aggregator("plaintext") as agg:
            continual_training(adata, [["indrop"], ["indrop"]], agg)
