"""Centralized scGen: early stopping, batch removal rule, determinism, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsc.errors import FedscInputError
from fedsc.methods import vae as vae_mod
from fedsc.methods.scgen import ScGenConfig, batch_removal, run_scgen, train_scgen
from fedsc.methods.vae import as_tensor, encode_mean

TINY = {"hidden": (64, 64), "batch_size": 30, "num_threads": 1}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(panc):
    return train_scgen(panc, config=ScGenConfig(**TINY, epochs=3), seed=0)


def test_defaults():
    cfg = ScGenConfig()
    assert (cfg.epochs, cfg.patience, cfg.early_stopping) == (100, 20, True)
    assert cfg.hidden == (800, 800) and cfg.kl_weight == 1e-6
    with pytest.raises(FedscInputError, match="patience"):
        ScGenConfig(patience=0)


def test_early_stopping_restores_a_real_copy_of_the_best_state(panc, monkeypatch):
    losses = iter([5.0, 3.0, 4.0, 4.0, 4.0, 4.0])
    monkeypatch.setattr(vae_mod, "validation_loss", lambda model, x: next(losses))
    states = []

    def record(epoch, m):
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})

    cfg = ScGenConfig(**TINY, epochs=10, patience=2)
    m = train_scgen(panc, config=cfg, seed=0, on_epoch_end=record)
    assert len(m.history) == 4 and len(states) == 4  # best at 1, two epochs without gain
    assert m.best_epoch == 1
    final = m.state_dict()
    assert all(torch.equal(final[k], states[1][k]) for k in final)
    assert not torch.equal(final["mu.weight"], states[3]["mu.weight"])


def test_without_early_stopping_every_epoch_runs(panc, monkeypatch):
    losses = iter([1.0] + [2.0] * 9)
    monkeypatch.setattr(vae_mod, "validation_loss", lambda model, x: next(losses))
    m = train_scgen(panc, config=ScGenConfig(**TINY, epochs=4, early_stopping=False), seed=0)
    assert len(m.history) == 4


def _group_means(z, batches, labels):
    return {
        (b, t): z[(batches == b) & (labels == t)].mean(axis=0)
        for b in np.unique(batches)
        for t in np.unique(labels)
        if np.any((batches == b) & (labels == t))
    }


def test_batch_removal_moves_each_shared_type_onto_the_dominant_batch(panc, model):
    # make endothelial standalone: keep its cells only in celseq
    keep = ~((panc.obs["cell_type"] == "endothelial") & (panc.obs["batch"] != "celseq"))
    a = panc[keep.to_numpy()].copy()
    batches = a.obs["batch"].astype(str).to_numpy()
    labels = a.obs["cell_type"].astype(str).to_numpy()
    latent, corrected = batch_removal(model, a, "batch", "cell_type")
    z = encode_mean(model, as_tensor(a.X)).double().numpy()
    before = _group_means(z, batches, labels)
    after = _group_means(latent.astype(np.float64), batches, labels)
    table = a.obs.groupby(["batch", "cell_type"], observed=False).size().unstack()
    for t in table.columns:
        present = table.index[table[t] > 0]
        rows = labels == t
        if len(present) < 2:
            np.testing.assert_allclose(latent[rows], z[rows], atol=1e-6)  # unshifted
            continue
        dominant = table[t].idxmax()  # first maximum in sorted batch order
        for b in present:
            np.testing.assert_allclose(after[b, t], before[dominant, t], atol=1e-5)
        # within-group offsets are kept
        r = rows & (batches == present[0])
        np.testing.assert_allclose(latent[r] - latent[r].mean(0), z[r] - z[r].mean(0), atol=1e-5)
    assert corrected.shape == a.shape and corrected.dtype == np.float32
    expected = vae_mod.decode(model, torch.from_numpy(latent)).numpy()
    np.testing.assert_array_equal(corrected, expected)


def test_batch_removal_ties_go_to_the_first_batch_in_order(model):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    batch = ["b0"] * 4 + ["b1"] * 4
    label = ["A"] * 4 + ["A"] * 4
    a = ad.AnnData(
        rng.random((8, model.n_genes)).astype(np.float32),
        obs=pd.DataFrame({"batch": batch, "cell_type": label}, index=[str(i) for i in range(8)]),
    )
    z = encode_mean(model, as_tensor(a.X)).double().numpy()
    for order, dom in ((["b0", "b1"], slice(0, 4)), (["b1", "b0"], slice(4, 8))):
        latent, _ = batch_removal(model, a, "batch", "cell_type", order=order)
        np.testing.assert_allclose(latent[:4].mean(0), z[dom].mean(0), atol=1e-6)
        np.testing.assert_allclose(latent[4:].mean(0), z[dom].mean(0), atol=1e-6)


def test_run_scgen_writes_outputs_and_is_deterministic(panc):
    cfg = ScGenConfig(**TINY, epochs=2)
    a, b, c = panc.copy(), panc.copy(), panc.copy()
    _, info = run_scgen(a, batch_key="batch", labels_key="cell_type", config=cfg, seed=7)
    run_scgen(b, batch_key="batch", labels_key="cell_type", config=cfg, seed=7)
    run_scgen(c, batch_key="batch", labels_key="cell_type", config=cfg, seed=8)
    assert a.obsm["X_scgen"].shape == (500, 10) and a.layers["scgen"].shape == (500, 2000)
    np.testing.assert_array_equal(a.obsm["X_scgen"], b.obsm["X_scgen"])
    np.testing.assert_array_equal(a.layers["scgen"], b.layers["scgen"])
    assert not np.allclose(a.obsm["X_scgen"], c.obsm["X_scgen"])
    assert info["epochs_trained"] == 2 and a.uns["scgen"]["params"]["seed"] == 7


def test_run_scgen_dropped_scenario_leaves_nan_rows(panc):
    a = panc.copy()
    _, info = run_scgen(
        a,
        batch_key="batch",
        labels_key="cell_type",
        config=ScGenConfig(**TINY, epochs=1),
        seed=0,
        inclusion="dropped",
    )
    dropped = (a.obs["cell_type"] == "endothelial").to_numpy()
    assert info["inclusion"]["minority_types"] == ["endothelial"]
    assert np.isnan(a.obsm["X_scgen"][dropped]).all()
    assert np.isfinite(a.obsm["X_scgen"][~dropped]).all()
    with pytest.raises(FedscInputError, match="scenario"):
        run_scgen(a, batch_key="batch", labels_key="cell_type", inclusion="some")
