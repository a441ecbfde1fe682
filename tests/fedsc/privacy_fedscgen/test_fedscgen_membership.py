"""Membership inference against FedscGen: views, metrics, attacks, seed intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import smpc
from fedsc.methods.vae import encode_mean
from fedsc.privacy.membership import (
    COLUMNS,
    ViewRecorder,
    cell_losses,
    fedscgen_membership,
    fedscgen_membership_scores,
    lira_offline_attack,
    loss_threshold_attack,
    membership_metrics,
    reference_attack,
    scores_to_metrics,
    summarize_over_seeds,
    train_shadow_models,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_views_are_what_fedscgen_used(views):
    """Recorded local states average (by N_c) to the final global state; splits match."""
    info = {c["name"]: c for c in views.result.info["clients"]}
    weights, states = [], []
    for c in views.clients:
        train, val = views.splits[c.index]
        assert len(train) == info[c.name]["n_train"] == 90 and len(val) == 10
        assert not set(train) & set(val)
        weights.append(len(train))
        states.append(views.local_states[c.index])
    final = views.result.federation_result.state
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    for key, value in final.items():
        if value.dtype.is_floating_point:
            mean = sum(wi * s[key].to(torch.float64) for wi, s in zip(w, states, strict=True))
            torch.testing.assert_close(mean.to(value.dtype), value, rtol=1e-5, atol=1e-6)
    # the local state differs from the global one (the client's own update)
    assert not torch.equal(states[0]["out.bias"], final["out.bias"])
    # revealed mean latents: the dominant client's posterior means averaged
    for t, owner in views.revealed["dominant"].items():
        z = encode_mean(views.global_model, views.data[owner][views.labels[owner] == t])
        np.testing.assert_allclose(views.revealed["mean_latent"][t], z.mean(0), atol=1e-5)


def test_membership_metrics_and_small_n():
    y = np.r_[np.ones(200, bool), np.zeros(100, bool)]
    rows = {r["metric"]: r for r in membership_metrics(np.where(y, 1.0, 0.0), y, attack="x")}
    assert rows["auc"]["value"] == 1.0 and rows["auc"]["chance"] == 0.5
    assert rows["tpr@0.01fpr"]["value"] == 1.0 and rows["tpr@0.01fpr"]["chance"] == 0.01
    assert np.isnan(rows["tpr@0.001fpr"]["value"])  # 100 non-members cannot resolve 0.1 %
    assert "need 1000" in rows["tpr@0.001fpr"]["note"]
    rng = np.random.default_rng(0)
    auc = membership_metrics(rng.normal(size=300), y)[0]["value"]
    assert 0.4 < auc < 0.6


def test_attacks_on_local_update_have_tidy_rows(views):
    c = views.clients[0]
    x, (train, _) = views.data[c.index], views.splits[c.index]
    local = views.local_model(c.index)
    common = {"observer": "coordinator", "target_client": c.name, "seed": 0}
    ref = views.model(views.broadcast_state)
    shadows = train_shadow_models(
        views.broadcast_state,
        torch.cat([views.data[o.index] for o in views.clients[1:]]),
        views.config,
        n_shadows=2,
        n_cells=90,
        epochs=2,
        seed=0,
    )
    for df in (
        loss_threshold_attack(local, x, train, **common),
        reference_attack(local, ref, x, train, **common),
        lira_offline_attack(local, shadows, x, train, **common),
    ):
        assert list(df.columns) == COLUMNS
        assert df["metric"].tolist() == ["auc", "tpr@0.01fpr", "tpr@0.001fpr"]
        assert (df["n_members"] == 90).all() and (df["n_nonmembers"] == 10).all()
        assert 0.0 <= df["value"].iloc[0] <= 1.0
        assert df["value"].iloc[1:].isna().all()  # 10 non-members: no FPR below 10 %
    assert cell_losses(local, x, kl=True).shape == (100,)


@pytest.mark.slow
def test_membership_on_local_update_beats_chance_over_seeds(pancreas_log, capture, views):
    """Pooled over the 5 clients, 3 seeds: the t interval of the AUC lies above 0.5."""
    runs = [views, capture(pancreas_log, seed=1), capture(pancreas_log, seed=2)]
    frames = [
        fedscgen_membership(v, observers=("coordinator",), attacks=("lira_offline",)) for v in runs
    ]
    rows = pd.concat(frames, ignore_index=True)
    pooled = rows[(rows["target_client"] == "all") & (rows["metric"] == "auc")]
    summary = summarize_over_seeds(pooled)
    (rec,) = summary.to_dict("records")
    assert rec["n_seeds"] == 3 and rec["n_members"] == 3 * 450 and rec["n_nonmembers"] == 150
    assert rec["low"] > 0.5, rec


def test_scores_pool_over_seeds_to_resolve_low_fprs(views):
    scores = fedscgen_membership_scores(views, observers=("client",), attacks=("loss_threshold",))
    assert len(scores) == 500 and scores["member"].sum() == 450
    three = pd.concat([scores.assign(seed=s) for s in range(3)]).assign(seed="pooled")
    rows = scores_to_metrics(three, per_client=False).set_index("metric")
    assert rows.loc["auc", "n_nonmembers"] == 150
    assert not np.isnan(rows.loc["tpr@0.01fpr", "value"])  # 150 non-members resolve 1 %
    assert np.isnan(rows.loc["tpr@0.001fpr", "value"])


def test_summarize_over_seeds_t_interval():
    v = np.array([0.6, 0.7, 0.65, 0.62])
    rows = pd.DataFrame(
        {"attack": "a", "observer": "o", "target_client": "all", "metric": "auc", "value": v}
        | {"chance": 0.5, "n_members": 10, "n_nonmembers": 5, "seed": range(4)}
    )
    (rec,) = summarize_over_seeds(rows).to_dict("records")
    half = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert rec["mean"] == pytest.approx(v.mean())
    assert rec["high"] - rec["mean"] == pytest.approx(half)
    assert rec["n_members"] == 40 and rec["n_seeds"] == 4
    # two clients per seed: averaged within the seed first
    two = pd.concat([rows, rows.assign(value=v + 0.1)])
    (rec,) = summarize_over_seeds(two, by=("attack", "observer", "metric")).to_dict("records")
    assert rec["n_seeds"] == 4 and rec["mean"] == pytest.approx(v.mean() + 0.05)
    assert rec["high"] - rec["mean"] == pytest.approx(half)


def test_view_recorder_sees_contributions_and_results():
    rec = ViewRecorder(keep=lambda r, tag: r == 1)
    with smpc.make_aggregator("plaintext", mechanisms=[rec]) as agg:
        for r in (0, 1):
            with agg.ledger.scope(r, "fedavg"):
                out = agg.weighted_mean([np.array([1.0, 2.0]), np.array([3.0, 6.0])], [1, 3])
        with agg.ledger.scope(None, "correction/presence"):
            agg.sum([np.array([1.0]), np.array([0.0])])
    np.testing.assert_allclose(out, [2.5, 5.0])
    assert list(rec.contributions) == [(1, "fedavg", "weighted_mean")]
    seen = rec.contributions[(1, "fedavg", "weighted_mean")]
    np.testing.assert_allclose(seen[1][0], [3.0, 6.0])
    assert seen[1][1] == 3.0  # the public weight
    assert set(rec.results) == {
        (1, "fedavg", "weighted_mean"),
        (None, "correction/presence", "sum"),
    }
