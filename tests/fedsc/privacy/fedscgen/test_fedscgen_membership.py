"""Membership inference against FedscGen: recorded views, metrics, scores, seed intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from fedsc.methods.vae import encode_mean
from fedsc.privacy import COLUMNS
from fedsc.privacy.fedscgen_runs import clear_row, revealed_from_view, state_ops
from fedsc.privacy.membership import (
    cell_losses,
    membership_metrics,
    membership_scores,
    scores_to_metrics,
    summarize_over_seeds,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_views_are_what_fedscgen_used(views):
    """The coordinator's clear client models average (by N_c) to the final global state;
    the splits and the revealed mean latents are FedscGen's."""
    fed = views.fedscgen
    info = {c["name"]: c for c in views.result.info["clients"]}
    last = max(state_ops(views.view("coordinator")), key=lambda o: o.index)
    spec = fed.spec()
    weights, states = [], []
    for pos, c in enumerate(fed.training):
        train, val = fed.splits[c]
        assert len(train) == info[fed.names[c]]["n_train"] == 90 and len(val) == 10
        assert not set(train) & set(val)
        weights.append(len(train))
        states.append(spec.unflatten(clear_row(last, pos)))
    final = views.result.federation_result.state
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    for key, value in final.items():
        if value.dtype.is_floating_point:
            mean = sum(
                wi * torch.as_tensor(s[key]).double() for wi, s in zip(w, states, strict=True)
            )
            torch.testing.assert_close(mean.to(value.dtype), value, rtol=1e-5, atol=1e-6)
    # the local state differs from the global one (the client's own update)
    assert not np.allclose(states[0]["out.bias"], final["out.bias"].numpy())
    # revealed mean latents: the dominant client's posterior means averaged
    revealed = revealed_from_view(views.view("coordinator"), fed)
    for t, owner in revealed["dominant"].items():
        x = fed.data[owner][torch.from_numpy(fed.labels[owner] == t)]
        z = encode_mean(views.result.model, x)
        np.testing.assert_allclose(revealed["mean_latent"][t], z.mean(0), atol=1e-5)


def test_membership_metrics_and_small_n():
    y = np.r_[np.ones(200, bool), np.zeros(100, bool)]
    rows = membership_metrics(np.where(y, 1.0, 0.0), y)
    assert rows["auc"] == (1.0, 0.5)
    assert rows["tpr@0.01fpr"] == (1.0, 0.01)
    assert np.isnan(rows["tpr@0.001fpr"][0])  # 100 non-members cannot resolve 0.1 %
    rng = np.random.default_rng(0)
    assert 0.4 < membership_metrics(rng.normal(size=300), y)["auc"][0] < 0.6
    assert np.isnan(membership_metrics(np.ones(3), np.ones(3, bool))["auc"][0])


def test_scores_of_a_local_update_give_tidy_rows(views):
    """Every scorer on one client's local update: the one row schema, AUC in [0, 1]."""
    fed = views.fedscgen
    c = fed.training[0]
    scores = membership_scores(views.view("coordinator"), views.truth, targets=[c], n_shadows=2)
    assert set(scores["scorer"]) == {"update_loss", "update_reference", "update_lira"}
    assert (scores["target_client"] == c).all() and scores["member"].sum() == 3 * 90
    rows = scores_to_metrics(scores, per_client=True, pooled=False)
    assert list(rows.columns) == COLUMNS
    for scorer in ("update_loss", "update_reference", "update_lira"):
        r = rows[rows["metric"].str.startswith(scorer)].set_index("metric")["value"]
        assert list(r.index) == [f"{scorer}_{m}" for m in ("auc", "tpr@0.01fpr", "tpr@0.001fpr")]
        assert 0.0 <= r.iloc[0] <= 1.0
        assert r.iloc[1:].isna().all()  # 10 non-members: no FPR below 10 %
    assert cell_losses(views.result.model, fed.data[c], kl=True).shape == (100,)


@pytest.mark.slow
def test_membership_on_local_update_beats_chance_over_seeds(pancreas_log, capture, views):
    """Pooled over the 5 clients, 3 seeds: the one-sided 95 % t bound of the LiRA AUC lies
    above 0.5 (per seed 0.560, 0.621, 0.563: bound 0.52; the two-sided interval's lower
    end, 0.496, moves by the shadows' draws: 0.501 with the earlier offline draws)."""
    runs = [views, capture(pancreas_log, seed=1), capture(pancreas_log, seed=2)]
    scores = [membership_scores(v.view("coordinator"), v.truth, scorers=("lira",)) for v in runs]
    assert all(s["member"].sum() == 450 and (~s["member"].astype(bool)).sum() == 50 for s in scores)
    rows = pd.concat(
        [scores_to_metrics(s, per_client=False).assign(seed=k) for k, s in enumerate(scores)]
    )
    pooled = rows[rows["metric"] == "update_lira_auc_pooled"]
    (rec,) = summarize_over_seeds(pooled, level=0.90).to_dict("records")  # low: one-sided 95 %
    assert rec["n_seeds"] == 3
    assert rec["low"] > 0.5, rec


def test_scores_pool_over_seeds_to_resolve_low_fprs(views):
    """Client 0 attacks the global model of the 4 others (400 cells, 40 non-members): three
    seeds' scores in one ROC resolve an FPR of 1 %."""
    scores = membership_scores(views.view("client"), views.truth, scorers=("loss",))
    assert len(scores) == 400 and scores["member"].sum() == 360
    three = pd.concat([scores] * 3)
    rows = scores_to_metrics(three, per_client=False).set_index("metric")["value"]
    assert not np.isnan(rows["global_loss_tpr@0.01fpr_pooled"])  # 120 non-members
    assert np.isnan(rows["global_loss_tpr@0.001fpr_pooled"])


def test_summarize_over_seeds_t_interval():
    v = np.array([0.6, 0.7, 0.65, 0.62])
    rows = pd.DataFrame(
        {"attack": "a", "observer": "o", "target_client": -1, "metric": "auc", "value": v}
        | {"chance": 0.5, "seed": range(4)}
    )
    (rec,) = summarize_over_seeds(rows).to_dict("records")
    half = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert rec["mean"] == pytest.approx(v.mean())
    assert rec["high"] - rec["mean"] == pytest.approx(half)
    assert rec["n_seeds"] == 4
    # two clients per seed: averaged within the seed first
    two = pd.concat([rows, rows.assign(value=v + 0.1)])
    (rec,) = summarize_over_seeds(two, by=("attack", "observer", "metric")).to_dict("records")
    assert rec["n_seeds"] == 4 and rec["mean"] == pytest.approx(v.mean() + 0.05)
    assert rec["high"] - rec["mean"] == pytest.approx(half)
