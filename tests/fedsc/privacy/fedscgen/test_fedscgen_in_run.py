"""FedscGen attacks inside runs: registered, their rows, and DP moving them toward chance."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch
from _helpers.adata import pancreas_subset

from fedsc.privacy import IN_RUN_ATTACKS
from fedsc.results import TIDY_COLUMNS
from fedsc.run.config import RunConfig
from fedsc.run.execute import execute_run

FEDSCGEN_ATTACKS = ["fedscgen_membership", "fedscgen_property", "fedscgen_revealed_values"]
#: Tiny and overfitting: one round of 20 local epochs on 20 training cells per client, half
#: of each client's cells held out (balanced members / non-members).
PARAMS = {
    "rounds": 1,
    "local_epochs": 20,
    "hidden": [128, 128],
    "batch_size": 10,
    "validation_fraction": 0.5,
    "num_threads": 1,
}
#: Heavy DP-SGD noise (sigma 10 per minibatch gradient).
# simulated: the noise seeded from the run seed, so the statistical check is deterministic
HEAVY_DP_SGD = {
    "level": "cell",
    "noise_multiplier": 10.0,
    "clip": 1.0,
    "delta": 0.01,
    "simulated": True,
}


def _run(adata, attacks, seed=0, dp=None):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # Opacus' RDP warnings at sigma = 10
    try:
        cfg = RunConfig(
            "fedscgen",
            panels=[],
            attacks=attacks,
            params=PARAMS,
            seed=seed,
            n_top_genes=300,
            dp=dp,
        )
        return execute_run(cfg, adata=adata)
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return pancreas_subset(40, 300)


@pytest.fixture(scope="module")
def plain(tiny):
    return _run(tiny, FEDSCGEN_ATTACKS)


def _attack(rows: pd.DataFrame, metric: str, observer: str = "coordinator") -> float:
    att = rows[(rows["panel"] == "attack") & (rows["observer"] == observer)]
    hit = att[att["metric"] == metric]
    assert len(hit) == 1, (metric, observer, sorted(att["metric"]))
    return float(hit["value"].iloc[0])


def test_fedscgen_attacks_are_registered():
    for name in FEDSCGEN_ATTACKS:
        assert name in IN_RUN_ATTACKS and callable(IN_RUN_ATTACKS[name])


def test_fedscgen_attack_rows_have_the_schema(plain):
    rows = plain.rows
    assert list(rows.columns) == TIDY_COLUMNS
    att = rows[rows["panel"] == "attack"]
    assert att["metric"].str.startswith("attack:").all()
    assert att["chance"].notna().sum() > 0 and att["value"].notna().all()
    assert (att["method"] == "fedscgen").all() and (att["run_id"] == plain.info["run_id"]).all()
    names = set(att["metric"].str.split(":").str[1])
    assert names >= set(FEDSCGEN_ATTACKS)
    # plaintext coordinator: each client's local update; every client: the global model
    for prefix, observer in (("update", "coordinator"), ("global", "client")):
        for attack in ("loss", "reference", "lira"):
            auc = _attack(
                rows, f"attack:fedscgen_membership:{prefix}_{attack}_auc_pooled", observer
            )
            assert 0.0 <= auc <= 1.0
    # the revealed counts are read back exactly from the recorded aggregates
    for observer in ("coordinator", "client"):
        assert _attack(rows, "attack:fedscgen_revealed_values:count_abs_error", observer) == 0
        assert -1 <= _attack(rows, "attack:fedscgen_revealed_values:pearson", observer) <= 1
        acc = _attack(rows, "attack:fedscgen_property:revealed_presence_accuracy", observer)
        assert 0 <= acc <= 1
    # batch-norm model in plaintext: the update attack on the running mean applies
    assert 0 <= _attack(rows, "attack:fedscgen_property:update_majority_accuracy") <= 1
    assert [a["attack"] for a in plain.info["attacks"]]


def test_heavy_dp_sgd_moves_update_membership_toward_chance(tiny, plain, monkeypatch):
    """Offline LiRA on a client's local update: clearly above chance without DP (AUC
    0.76-0.80 over seeds 0-2 on this tiny set), near chance under sigma = 10 DP-SGD
    (0.46-0.56). Under DP the attacker is adaptive by default (shadows trained with the
    run's DP-SGD, two here: Opacus steps cost 5x plain ones): its metric says so."""
    import fedsc.privacy.membership as membership

    monkeypatch.setattr(membership, "N_SHADOWS", 2)
    metric = "attack:fedscgen_membership:update_lira_auc_pooled"
    dp = _run(tiny, ["fedscgen_membership"], dp=HEAVY_DP_SGD)
    assert dp.info["dp"]["dp_mechanism"].startswith("dp_sgd")
    adaptive = "attack:fedscgen_membership:update_lira_adaptive_auc_pooled"
    clear, noised = _attack(plain.rows, metric), _attack(dp.rows, adaptive)
    assert clear > 0.65
    assert abs(noised - 0.5) < abs(clear - 0.5) - 0.1


def test_frontier_shows_fedscgen_attack_advantage(plain):
    from fedsc.plots import attack_advantage, privacy_utility_frontier

    adv = attack_advantage(plain.rows)
    lira = adv[adv["metric"] == "attack:fedscgen_membership:update_lira_auc_pooled"]
    value = _attack(plain.rows, "attack:fedscgen_membership:update_lira_auc_pooled")
    assert len(lira) == 1 and float(lira["advantage"].iloc[0]) == pytest.approx(value - 0.5)
    mae = adv[adv["metric"] == "attack:fedscgen_property:revealed_proportion_mae"]
    row = plain.rows[plain.rows["metric"] == "attack:fedscgen_property:revealed_proportion_mae"]
    row = row[row["observer"] == "coordinator"]
    expected = float(row["chance"].iloc[0]) - float(row["value"].iloc[0])  # errors: flipped
    assert float(mae["advantage"].iloc[0]) == pytest.approx(expected)
    fig = privacy_utility_frontier(plain.rows)
    assert len(fig.axes) == 3  # utility, update cosine, advantage over chance
