"""FedscGen: FedAvg weighting, seeding, federated correction == centralized batch removal."""

from __future__ import annotations

import importlib.util
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import smpc
from fedsc.data import cell_type_presence, split_clients
from fedsc.errors import FedscInputError
from fedsc.federation import run_federation
from fedsc.methods.fedscgen import (
    FedScGenConfig,
    FedScGenMethod,
    correct,
    run_fedscgen,
)
from fedsc.methods.scgen import ScGenConfig, batch_removal, train_vae
from fedsc.methods.vae import VAE, VAEConfig, as_tensor, derive_generator, encode_mean
from smpc.plaintext import PlaintextAggregator

TINY = {"hidden": (64, 64), "batch_size": 30, "num_threads": 1}
KEYS = {"batch_key": "batch", "labels_key": "cell_type"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(panc):
    """A FedscGen run on all 5 pancreas batches (plaintext)."""
    a = panc.copy()
    res = run_fedscgen(
        a,
        **KEYS,
        aggregator="plaintext",
        config=FedScGenConfig(**TINY, rounds=2, local_epochs=1),
        seed=0,
        snapshot_every_round=True,
    )
    return a, res


class SpyAggregator(PlaintextAggregator):
    """Plaintext aggregation that records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list, list | None]] = []

    def weighted_mean(self, contributions, weights, **kwargs):
        self.calls.append(("weighted_mean", list(contributions), list(weights)))
        return super().weighted_mean(contributions, weights, **kwargs)

    def sum(self, contributions, **kwargs):
        self.calls.append(("sum", list(contributions), None))
        return super().sum(contributions, **kwargs)

    def argmax(self, columns):
        self.calls.append(("argmax", list(columns), None))
        return super().argmax(columns)


def test_defaults():
    cfg = FedScGenConfig()
    assert (cfg.rounds, cfg.local_epochs, cfg.keep_optimizer_state) == (8, 2, False)
    assert cfg.hidden == (800, 800) and cfg.batch_size == 50
    with pytest.raises(FedscInputError, match="rounds"):
        FedScGenConfig(rounds=0)


# ----------------------------------------------------------------- correction
def _check_equal_to_centralized(panc, model, aggregator, atol):
    a = panc.copy()
    train, _ = split_clients(a, "batch")
    fed = correct(model, train, aggregator, "cell_type")
    latent, expression = batch_removal(model, a, "batch", "cell_type")
    np.testing.assert_allclose(fed.latent, latent, atol=atol, rtol=0)
    np.testing.assert_allclose(fed.expression, expression, atol=atol, rtol=0)
    return fed


def test_federated_correction_equals_centralized_batch_removal(panc, trained):
    _, res = trained
    with smpc.make_aggregator("plaintext") as agg:
        fed = _check_equal_to_centralized(panc, res.model, agg, atol=1e-5)
        tags = {e.tag for e in agg.ledger.entries}
    assert tags == {"correction/presence", "correction/dominant", "correction/mean_latent"}
    assert fed.shared_types == sorted(panc.obs["cell_type"].unique())
    # the cells really moved
    z = encode_mean(res.model, as_tensor(panc.X)).numpy()
    assert np.abs(fed.latent - z).max() > 1e-2


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("smpc.crypten_backend") is None,
    reason="smpc.crypten_backend is not written yet",
)
def test_federated_correction_with_crypten_equals_centralized(panc, trained):
    _, res = trained
    with smpc.make_aggregator("crypten") as agg:
        assert agg.private
        _check_equal_to_centralized(panc, res.model, agg, atol=1e-4)


def test_dominant_client_matches_plaintext_rule_on_real_counts(trained, panc):
    a, res = trained
    table = cell_type_presence(panc, "batch", "cell_type")  # batches sorted = client order
    expected = {t: table[t].idxmax() for t in table.columns if (table[t] > 0).sum() >= 2}
    corr = res.info["correction"]
    assert corr["dominant"] == expected
    assert corr["n_clients_per_type"] == {t: int((table[t] > 0).sum()) for t in table.columns}
    assert a.uns["fedscgen"]["dominant"] == expected


def _crafted() -> ad.AnnData:
    # counts:        A  B  C  D
    counts = {"b0": [5, 3, 4, 0], "b1": [5, 7, 0, 2], "b2": [2, 7, 4, 0]}
    batch, label = [], []
    for b, row in counts.items():
        for t, n in zip("ABCD", row, strict=True):
            batch += [b] * n
            label += [t] * n
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 1.0, size=(len(batch), 6)).astype(np.float32)
    obs = pd.DataFrame({"batch": batch, "cell_type": label}, index=[f"c{i}" for i in range(len(x))])
    return ad.AnnData(x, obs=obs)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (["b0", "b1", "b2"], {"A": "b0", "B": "b1", "C": "b0"}),
        (["b2", "b1", "b0"], {"A": "b1", "B": "b2", "C": "b2"}),
    ],
)
def test_dominant_ties_and_standalone_type(order, expected):
    a = _crafted()
    model = VAE(6, VAEConfig(hidden=(8,), latent=2), derive_generator(0, 1))
    clients, _ = split_clients(a, "batch", order=order)
    agg = SpyAggregator()
    res = correct(model, clients, agg, "cell_type")
    assert res.dominant == expected
    assert res.shared_types == ["A", "B", "C"] and res.standalone_types == ["D"]
    assert res.n_clients_per_type == {"A": 3, "B": 3, "C": 2, "D": 1}
    # what crossed: presence indicators, counts of shared types only, dominant-only sums
    (op0, presence, _), (op1, cols, _), (op2, sums, _) = agg.calls
    assert (op0, op1, op2) == ("sum", "argmax", "sum")
    assert all(set(np.unique(p)) <= {0.0, 1.0} for p in presence)
    assert all(len(c) == 3 for c in cols)  # D (standalone) is not compared
    for pos, client in enumerate(clients):
        mine = [i for i, t in enumerate("ABC") if expected[t] == client.name]
        others = [i for i in range(3) if i not in mine]
        assert np.all(sums[pos]["count"][others] == 0)
        assert np.all(sums[pos]["latent_sum"][others] == 0)
    # standalone D unshifted; shared types land on the dominant client's mean
    z = encode_mean(model, as_tensor(a.X)).double().numpy()
    labels, batches = a.obs["cell_type"].to_numpy(), a.obs["batch"].to_numpy()
    d = labels == "D"
    np.testing.assert_allclose(res.latent[d], z[d], atol=1e-6)
    for t, dom in expected.items():
        target = z[(labels == t) & (batches == dom)].mean(0)
        for b in np.unique(batches[labels == t]):
            rows = (labels == t) & (batches == b)
            np.testing.assert_allclose(res.latent[rows].mean(0), target, atol=1e-5)
    # equals the centralized rule with the same tie order
    latent, expression = batch_removal(model, a, "batch", "cell_type", order=order)
    np.testing.assert_allclose(res.latent, latent, atol=1e-6)
    np.testing.assert_allclose(res.expression, expression, atol=1e-5)


def test_vocabulary_option(panc, trained):
    _, res = trained
    clients, _ = split_clients(panc, "batch")
    vocab = [*sorted(panc.obs["cell_type"].unique()), "unseen"]
    out = correct(
        res.model, clients, smpc.make_aggregator("plaintext"), "cell_type", vocabulary=vocab
    )
    assert out.vocabulary == vocab and out.n_clients_per_type["unseen"] == 0
    with pytest.raises(FedscInputError, match="vocabulary"):
        correct(
            res.model, clients, smpc.make_aggregator("plaintext"), "cell_type", vocabulary=["alpha"]
        )


# ----------------------------------------------------------------- training
def test_fedavg_weights_by_training_cell_count(panc):
    # unequal clients: keep only 60 of celseq's 100 cells
    keep = np.ones(panc.n_obs, bool)
    keep[np.flatnonzero(panc.obs["batch"] == "celseq")[60:]] = False
    a = panc[keep].copy()
    agg = SpyAggregator()
    res = run_fedscgen(
        a, **KEYS, aggregator=agg, config=FedScGenConfig(**TINY, rounds=1, local_epochs=1), seed=0
    )
    (op, states, weights), *_ = agg.calls
    assert op == "weighted_mean"
    assert weights == [54.0, 90.0, 90.0, 90.0, 90.0]  # ceil(0.9 N): the training cells
    assert [c["n_train"] for c in res.info["clients"]] == [54, 90, 90, 90, 90]
    w = torch.tensor(weights, dtype=torch.float64)
    got = res.federation_result.state
    assert set(got) == set(states[0])
    assert any(k.endswith("running_var") for k in got)
    for k in got:
        stacked = torch.stack([s[k].double() for s in states])
        expected = torch.tensordot(w, stacked, dims=1) / w.sum()
        if got[k].is_floating_point():
            torch.testing.assert_close(got[k].double(), expected, atol=1e-6, rtol=1e-6)
        else:  # num_batches_tracked
            assert torch.equal(got[k], torch.round(expected).to(got[k].dtype))
    # unweighted (1/K) averaging would differ
    uniform = torch.stack([s["mu.weight"].double() for s in states]).mean(0)
    assert not torch.allclose(got["mu.weight"].double(), uniform, atol=1e-6)


def test_without_dp_opacus_is_never_imported(panc, monkeypatch):
    # DP-SGD (Opacus, ~1.7 s to import) is loaded only for runs that ask for DP: with its
    # module unimportable, a run without DP still trains and corrects.
    import fedsc.methods

    monkeypatch.setitem(sys.modules, "fedsc.methods.dp_sgd", None)
    monkeypatch.delattr(fedsc.methods, "dp_sgd", raising=False)  # imported by other tests
    res = run_fedscgen(
        panc.copy(),
        **KEYS,
        aggregator="plaintext",
        config=FedScGenConfig(**TINY, rounds=1, local_epochs=1),
        seed=0,
    )
    assert len(res.federation_result.history) == 1
    with pytest.raises(ImportError):  # the block works: DP needs the module
        run_fedscgen(
            panc.copy(),
            **KEYS,
            aggregator="plaintext",
            config=FedScGenConfig(
                **TINY, rounds=1, local_epochs=1, dp={"level": "cell", "noise_multiplier": 1.0}
            ),
            seed=0,
        )


def test_one_client_federation_replays_centralized_training(panc):
    x = as_tensor(panc.X)
    rounds, epochs = 3, 2
    central = train_vae(
        x, ScGenConfig(**TINY, epochs=rounds * epochs, early_stopping=False), seed=5
    )
    cs = central.state_dict()
    results = {}
    for keep in (True, False):
        cfg = FedScGenConfig(**TINY, rounds=rounds, local_epochs=epochs, keep_optimizer_state=keep)
        method = FedScGenMethod({0: x}, cfg, seed=5)
        fed = run_federation(method, [0], smpc.make_aggregator("plaintext"), rounds=rounds, seed=5)
        results[keep] = fed.state
    # same generators and a persistent Adam: the identical run
    assert all(torch.equal(results[True][k], cs[k]) for k in cs)
    # a fresh Adam each round (FedscGen's default) only restarts the moments
    for k in ("mu.weight", "out.weight"):
        rel = (results[False][k] - cs[k]).norm() / cs[k].norm()
        assert 0 < rel < 0.5


def test_held_out_batch_is_corrected_but_never_trained(panc, monkeypatch):
    seen = []
    original = FedScGenMethod.local_update

    def spy(self, client, *args, **kwargs):
        seen.append(client)
        assert set(self.data) == {0, 1, 2, 3}
        return original(self, client, *args, **kwargs)

    monkeypatch.setattr(FedScGenMethod, "local_update", spy)
    cfg = FedScGenConfig(**TINY, rounds=2, local_epochs=1)
    a = panc.copy()
    res = run_fedscgen(a, **KEYS, aggregator="plaintext", config=cfg, seed=0, holdout=["celseq2"])
    assert sorted(set(seen)) == [0, 1, 2, 3] and len(seen) == 8
    held = [c for c in res.info["clients"] if c["held_out"]]
    assert held == [{"name": "celseq2", "index": 4, "held_out": True, "n_cells": 100, "n_train": 0}]
    # the trained model is the one trained without celseq2 at all
    without = panc[(panc.obs["batch"] != "celseq2").to_numpy()].copy()
    res2 = run_fedscgen(without, **KEYS, aggregator="plaintext", config=cfg, seed=0)
    s1, s2 = res.federation_result.state, res2.federation_result.state
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # celseq2's cells are shifted onto the dominant clients' means
    rows = (a.obs["batch"] == "celseq2").to_numpy()
    z = encode_mean(res.model, as_tensor(a.X)).double().numpy()
    assert np.abs(a.obsm["X_fedscgen"][rows] - z[rows]).max() > 1e-2
    labels, batches = a.obs["cell_type"].astype(str).to_numpy(), a.obs["batch"].to_numpy()
    for t, dom in res.info["correction"]["dominant"].items():
        target = z[(labels == t) & (batches == dom)].mean(0)
        sel = rows & (labels == t)
        np.testing.assert_allclose(a.obsm["X_fedscgen"][sel].mean(0), target, atol=1e-5)
    assert np.isfinite(a.layers["fedscgen"]).all()


def test_same_seed_identical_different_seed_differs(panc, trained):
    a0, _ = trained
    cfg = FedScGenConfig(**TINY, rounds=2, local_epochs=1)
    b, c = panc.copy(), panc.copy()
    run_fedscgen(b, **KEYS, aggregator="plaintext", config=cfg, seed=0)
    run_fedscgen(c, **KEYS, aggregator="plaintext", config=cfg, seed=1)
    np.testing.assert_array_equal(a0.obsm["X_fedscgen"], b.obsm["X_fedscgen"])
    np.testing.assert_array_equal(a0.layers["fedscgen"], b.layers["fedscgen"])
    assert not np.allclose(a0.obsm["X_fedscgen"], c.obsm["X_fedscgen"])
    assert a0.obsm["X_fedscgen"].shape == (500, 10)
    assert a0.layers["fedscgen"].shape == (500, 2000)


def test_snapshots_and_history(trained):
    _, res = trained
    snaps = res.federation_result.snapshots
    assert len(snaps) == 2
    final = res.model.state_dict()
    assert all(torch.equal(snaps[-1][k], final[k]) for k in final)
    first = res.model_at(0).state_dict()
    assert not torch.equal(first["mu.weight"], final["mu.weight"])
    assert len(res.model.history) == 2 and "val_loss" in res.model.history[0]
    assert not any(k.startswith("client") for h in res.model.history for k in h)
    assert res.info["backend"] == "plaintext" and res.info["private"] is False


@pytest.mark.parametrize("scenario", ["combined", "dropped"])
def test_inclusion_scenarios(panc, scenario, tmp_path):
    a = panc.copy()
    res = run_fedscgen(
        a,
        **KEYS,
        aggregator="plaintext",
        config=FedScGenConfig(**TINY, rounds=1, local_epochs=1),
        seed=0,
        inclusion=scenario,
    )
    endo = (a.obs["cell_type"] == "endothelial").to_numpy()
    shared = res.info["correction"]["shared_types"]
    assert "endothelial" not in shared
    if scenario == "combined":
        assert "others" in shared and np.isfinite(a.obsm["X_fedscgen"]).all()
    else:
        assert np.isnan(a.obsm["X_fedscgen"][endo]).all()
        assert np.isfinite(a.obsm["X_fedscgen"][~endo]).all()
    assert a.uns["fedscgen"]["inclusion"]["scenario"] == scenario
    a.write_h5ad(tmp_path / "out.h5ad")  # outputs and uns are storable
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm["X_fedscgen"], a.obsm["X_fedscgen"])


def test_errors_name_the_fix(panc):
    with pytest.raises(FedscInputError, match="batch_size"):
        run_fedscgen(
            panc.copy(),
            **KEYS,
            aggregator="plaintext",
            config=FedScGenConfig(hidden=(8,), batch_size=200, rounds=1, local_epochs=1),
        )
    with pytest.raises(FedscInputError, match="labels_key"):
        run_fedscgen(panc.copy(), batch_key="batch", labels_key="nope", aggregator="plaintext")
