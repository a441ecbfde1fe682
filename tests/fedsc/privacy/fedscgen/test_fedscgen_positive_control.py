"""Positive control of the FedscGen attacks: σ·C → 0 reproduces the non-DP values.

Two recorded runs of the GroupNorm variant (client-level DP's model) on a tiny pancreas
subset: one with the gaussian mechanism at σ·C = 1e-9 (a clip that never binds), one
without noise. The attacks read the observer views, so they must agree. Reading the raw
shared values (the clients' rows divided by their weight 20, the aggregate before the
W/K rescale) gave, on this set, an update relative error of 0.95 (= 1 − 1/20), a pooled
LiRA AUC of 0.55 instead of 0.70 (two shadows) and a revealed-profile correlation of 0.09
instead of 0.75.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from _helpers.adata import lognormalize, pancreas_subset

from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen
from fedsc.privacy import RunRecord, Truth, observer_view, recording_aggregator, update_recovery
from fedsc.privacy.fedscgen_runs import fedscgen_truth
from fedsc.privacy.membership import fedscgen_membership
from fedsc.privacy.revealed_values import fedscgen_revealed_values

#: One round of 20 local epochs on 20 training cells per client (overfits: LiRA ~0.7).
PARAMS = {
    "rounds": 1,
    "local_epochs": 20,
    "hidden": (128, 128),
    "batch_size": 10,
    "validation_fraction": 0.5,
    "num_threads": 1,
}
#: The GroupNorm DP variant, without DP-SGD (client-level DP's model).
CONFIG = FedScGenConfig(**PARAMS, dp={"level": "client", "clip": 1e6, "delta": 1e-3})
NO_NOISE = {"name": "gaussian", "noise_multiplier": 0.0, "clip": 1e6}
TINY_NOISE = {"name": "gaussian", "noise_multiplier": 1e-15, "clip": 1e6}


def _record(adata, mechanisms) -> RunRecord:
    agg, rec = recording_aggregator("plaintext", mechanisms=mechanisms, mechanism_seed=0)
    with agg:
        run_fedscgen(
            adata.copy(),
            batch_key="batch",
            labels_key="cell_type",
            aggregator=agg,
            config=CONFIG,
            seed=0,
            show_progress=False,
        )
        return RunRecord.from_run(agg, rec)


@pytest.fixture(scope="module")
def runs():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adata = lognormalize(pancreas_subset(40, 300))
        fed = fedscgen_truth(
            adata, batch_key="batch", labels_key="cell_type", config=CONFIG, seed=0
        )
        return {
            name: Truth(_record(adata, mechs), fedscgen=fed)
            # "plain": the same DP pipeline at sigma = 0 (a client-level dp config needs
            # the gaussian mechanism: without it run_fedscgen refuses)
            for name, mechs in (("plain", [NO_NOISE]), ("dp", [TINY_NOISE]))
        }
    finally:
        torch.set_num_threads(n)


def _values(truth: Truth, observer: str, attack) -> pd.Series:
    rows = attack(observer_view(truth.record, observer), truth)
    return rows.groupby(["target_client", "metric"])["value"].median()


def test_sigma_to_zero_update_recovery_and_revealed_values_equal_non_dp(runs):
    for observer in ("coordinator", "client"):
        plain = _values(runs["plain"], observer, update_recovery)
        dp = _values(runs["dp"], observer, update_recovery)
        pd.testing.assert_series_equal(dp, plain, atol=1e-6, rtol=0)
        plain = _values(runs["plain"], observer, fedscgen_revealed_values)
        dp = _values(runs["dp"], observer, fedscgen_revealed_values)
        assert len(plain) > 0
        pd.testing.assert_series_equal(dp, plain, atol=1e-4, rtol=0)
    err = _values(runs["dp"], "coordinator", update_recovery).xs("update_relative_error", level=1)
    assert err.max() < 1e-6  # the raw shared rows gave 0.95 (1 - 1/20)


def test_sigma_to_zero_membership_equals_non_dp_and_the_attacker_is_adaptive(runs, monkeypatch):
    import fedsc.privacy.membership as membership

    monkeypatch.setattr(membership, "N_SHADOWS", 2)  # half the cost; still 0.70 vs 0.55 (raw)
    plain = _values(runs["plain"], "coordinator", fedscgen_membership).xs(-1)
    dp = _values(runs["dp"], "coordinator", fedscgen_membership).xs(-1)
    assert "update_lira_adaptive_auc_pooled" in dp and "update_lira_auc_pooled" not in dp
    dp = dp.rename(lambda m: m.replace("lira_adaptive", "lira"))
    # "plain" is the sigma = 0 control (the same pipeline: its LiRA is adaptive too)
    plain = plain.rename(lambda m: m.replace("lira_adaptive", "lira"))
    pd.testing.assert_series_equal(dp, plain, atol=0.01, rtol=0)
    assert plain["update_lira_auc_pooled"] > 0.65  # decisive: the raw rows gave 0.55


def test_offline_capture_holds_the_clients_models_and_lira_adapts(runs):
    """The offline capture (``capture_fedscgen_views``) records through the same recorder:
    its coordinator holds the same clients' models; at σ·C → 0 the adaptive LiRA scores
    equal the non-adaptive ones."""
    import numpy as np

    from fedsc.privacy.fedscgen_runs import capture_fedscgen_views, clear_row, state_ops
    from fedsc.privacy.membership import membership_scores, shadow_dp

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        views = capture_fedscgen_views(
            lognormalize(pancreas_subset(40, 300)),
            batch_key="batch",
            labels_key="cell_type",
            config=CONFIG,
            seed=0,
            mechanisms=[TINY_NOISE],
            mechanism_seed=0,
        )
        view = views.view("coordinator")
        last = max(state_ops(view), key=lambda o: o.index)
        plain = runs["plain"].record
        for pos in range(last.n_clients):
            got = clear_row(last, pos)
            np.testing.assert_allclose(got, plain.local_contributions(last.index)[pos], atol=1e-6)
        assert shadow_dp(view, views.fedscgen).clip == 1e6
        common = {"scorers": ("lira",), "n_shadows": 2, "targets": views.fedscgen.training[:1]}
        adaptive = membership_scores(view, views.truth, **common)
        fixed = membership_scores(view, views.truth, adaptive=False, **common)
    finally:
        torch.set_num_threads(n)
    assert set(adaptive["scorer"]) == {"update_lira_adaptive"}
    assert set(fixed["scorer"]) == {"update_lira"}
    np.testing.assert_allclose(adaptive["score"], fixed["score"], atol=1e-4)
