"""Privacy-utility study: attacks and DP inside runs, honest labels, sweep -> report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsc.comparison import load_results, report_sweep
from fedsc.datasets import simulate
from fedsc.errors import FedscInputError
from fedsc.methods import get_method
from fedsc.privacy import in_run
from fedsc.privacy.accounting import client_level_epsilon
from fedsc.results import TIDY_COLUMNS
from fedsc.run.config import RunConfig
from fedsc.run.execute import execute_run
from fedsc.sweep import Study, run_sweep

COMMON = {"n_comps": 10, "n_top_genes": 200, "params": {"rounds": 2}}
DP = {"level": "client", "target_epsilon": 4.0, "clip": 0.01, "delta": 0.1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple:
    adata = simulate(240, 300, n_batches=3, n_cell_types=3, seed=0)
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    adata.write_h5ad(path)
    return adata, path


@pytest.fixture(scope="module")
def attacked_runs(tiny):
    adata, path = tiny
    attacks = ["scbatchprox_rows", "update_recovery"]
    plain = execute_run(RunConfig("scbatchprox", dataset=str(path), **COMMON), adata=adata)
    recorded = execute_run(
        RunConfig("scbatchprox", dataset=str(path), attacks=attacks, **COMMON), adata=adata
    )
    noised = execute_run(
        RunConfig("scbatchprox", dataset=str(path), attacks=attacks, dp=DP, **COMMON),
        adata=adata,
    )
    return plain, recorded, noised


def test_rows_carry_dp_columns_and_attack_rows(attacked_runs):
    plain, recorded, noised = attacked_runs
    for res in attacked_runs:
        assert list(res.rows.columns) == TIDY_COLUMNS
    util = plain.rows[plain.rows["method"] == "scbatchprox"]
    assert util["dp_epsilon"].isna().all() and util["dp_delta"].isna().all()
    att = recorded.rows[recorded.rows["panel"] == "attack"]
    assert len(att) and att["metric"].str.startswith("attack:").all()
    assert set(att["observer"]) >= {"coordinator", "client"} and att["chance"].notna().all()
    exact = att[
        (att["observer"] == "coordinator")
        & (att["metric"] == "attack:scbatchprox_rows:update_relative_error")
    ]
    assert float(exact["value"].iloc[0]) < 1e-6  # plaintext coordinator: rows exactly
    assert "coordinator: leaks (scbatchprox_rows:" in recorded.info["privacy"]
    assert recorded.rows.loc[recorded.rows["method"] == "scbatchprox", "private"].eq(False).all()
    # client-level DP: eps/delta in every utility row of the method (the strongest
    # observer's) and in run.json; attack rows carry their own observer's
    mine = noised.rows[noised.rows["method"] == "scbatchprox"]
    dp = noised.info["dp"]
    assert np.allclose(mine.loc[mine["panel"] != "attack", "dp_epsilon"], dp["dp_epsilon"])
    coord = mine[(mine["panel"] == "attack") & (mine["observer"] == "coordinator")]
    assert np.allclose(coord["dp_epsilon"], dp["epsilon_by_observer"]["coordinator"])
    # calibrated for the aggregate; the plaintext coordinator sees each of the 3 clients'
    # updates with sigma/sqrt(3): its epsilon is the one in the column
    by = dp["dp_epsilon_by_observer"]
    assert 0 < by["output"] <= 4.0 + 1e-6 and dp["dp_observer"] == "coordinator"
    sigma, rounds = dp["dp_noise_multiplier"], dp["dp_steps"]
    expected = client_level_epsilon(sigma / np.sqrt(3), rounds, 0.1)
    assert dp["dp_epsilon"] == by["coordinator"] == pytest.approx(expected)
    assert (mine["dp_delta"] == 0.1).all() and noised.info["dp"]["dp_mechanism"] == "gaussian"
    err = mine[
        (mine["observer"] == "coordinator")
        & (mine["metric"] == "attack:scbatchprox_rows:update_relative_error")
    ]
    assert float(err["value"].iloc[0]) > 0.5  # the noise hides the updates


def test_dp_off_and_recording_reproduce_the_plain_run_exactly(attacked_runs):
    plain, recorded, _ = attacked_runs
    a = plain.rows[plain.rows["panel"] != "attack"].reset_index(drop=True)
    b = recorded.rows[recorded.rows["panel"] != "attack"].reset_index(drop=True)
    assert a["value"].tolist() == b["value"].tolist()
    assert np.array_equal(plain.adata.obsm["X_scbatchprox"], recorded.adata.obsm["X_scbatchprox"])


def test_baseline_rows_are_not_labelled_private(attacked_runs):
    plain, recorded, _ = attacked_runs
    for res in (plain, recorded):
        base = res.rows[res.rows["method"] == "pca"]
        assert base["private"].isna().all()
        assert (base["privacy"] == in_run.NOT_FEDERATED).all()
    # no attacks: the label comes from the ledger; contributions in the clear are a leak
    assert "in the clear" in plain.info["privacy"] and plain.info["private"] is False
    assert plain.rows.loc[plain.rows["method"] == "scbatchprox", "private"].eq(False).all()


def test_centralized_label_is_not_a_federation_claim(tiny):
    adata, path = tiny
    cfg = RunConfig("scgen", dataset=str(path))
    priv = in_run.start(cfg, adata, get_method("scgen"))
    rows = pd.DataFrame(
        {"method": ["uncorrected", "scgen"], "metric": ["ari", "ari"], "value": [0.1, 0.2]}
    )
    out, info = priv.annotate(rows, {"privacy": "not private: plaintext", "ledger": None})
    assert info["privacy"] == in_run.CENTRALIZED == "centralized: all cells are pooled in one place"
    assert out["private"].isna().all() and info["private"] is None
    assert "coordinator" not in info["privacy"]


@pytest.mark.parametrize(
    ("dp", "match"),
    [
        ({"level": "client", "noise_multiplier": -1.0}, "noise_multiplier must be >= 0"),
        ({"level": "client", "noise_multiplier": 1.0, "clip": 0.0}, "clip must be > 0"),
        ({"level": "cell", "noise_multiplier": 1.0}, "fedscgen only"),
    ],
)
def test_nonsense_dp_is_refused_at_config_time(dp, match):
    with pytest.raises(FedscInputError, match=match):
        RunConfig("scbatchprox", dp=dp)


@pytest.mark.parametrize("entry", ["gaussian", {"gaussian": {"noise_multiplier": 1.0}}])
def test_gaussian_noise_without_its_dp_pipeline_is_refused(entry):
    # it added noise that no epsilon described (dp_epsilon NaN) and kept batch norm
    with pytest.raises(FedscInputError, match="without its accounting"):
        RunConfig("scbatchprox", mechanisms=[entry])
    RunConfig("scbatchprox", mechanisms=[{"clip": {"max_norm": 1.0}}])  # others stay available


def test_delta_above_one_over_n_is_refused_once_n_is_known(tiny):
    adata, path = tiny
    cfg = RunConfig("scbatchprox", dataset=str(path), dp={**DP, "delta": 0.5}, **COMMON)
    with pytest.raises(FedscInputError, match="not below 1/n"):
        in_run.start(cfg, adata, get_method("scbatchprox"))
    with pytest.raises(FedscInputError, match="unknown attack"):
        RunConfig("scbatchprox", attacks=["no_such_attack"])
    with pytest.raises(FedscInputError, match="centralized"):
        RunConfig("scgen", attacks=["update_recovery"])


def test_run_id_unchanged_without_privacy_settings():
    assert RunConfig("scbatchprox").run_id == RunConfig("scbatchprox", attacks=[], dp=None).run_id


def test_tiny_privacy_utility_study_sweep_to_report(tiny, tmp_path):
    _, path = tiny
    study = Study.from_dict(
        {
            "study": "tiny_pu",
            "datasets": [str(path)],
            "seeds": [0, 1],
            # sensitivity: the jitter rows go through the sweep, compare and report too
            "defaults": {"n_comps": 10, "n_top_genes": 200, "sensitivity": True},
            "methods": {
                "scbatchprox": {
                    "settings": {
                        "params": {"rounds": 2},
                        "attacks": ["scbatchprox_rows", "update_recovery"],
                    },
                    "variants": {
                        "plaintext": {"backend": "plaintext"},
                        "plaintext+dp(eps=4)": {"backend": "plaintext", "dp": DP},
                    },
                }
            },
        }
    )
    res = run_sweep(study, tmp_path)
    assert res.failed == 0
    results = load_results(tmp_path)
    assert (results["panel"] == "attack").any()
    dp_rows = results[
        (results["variant"] == "plaintext+dp(eps=4)") & (results["method"] == "scbatchprox")
    ]
    assert results.loc[results["method"] == "pca", "dp_epsilon"].isna().all()
    assert dp_rows["dp_epsilon"].notna().all()
    report = report_sweep(tmp_path)
    text = report.read_text()
    assert (Path(tmp_path) / "figures" / "privacy_utility_frontier.png").is_file()
    assert "## Privacy–utility frontier" in text and "## Per-observer leakage" in text
    assert "## DP versus no DP" in text and "@coordinator" in text
    assert math.isfinite(float(dp_rows["dp_epsilon"].iloc[0]))
    assert results["metric"].str.endswith("_perturbation_delta").any()


@pytest.mark.parametrize(
    ("dp", "mechanism"),
    [
        ({"level": "client", "target_epsilon": 8.0, "clip": 1.0, "delta": 0.1}, "gaussian"),
        ({"level": "cell", "target_epsilon": 8.0, "clip": 1.0, "delta": 1e-3}, "dp_sgd (Opacus)"),
    ],
)
def test_fedscgen_dp_wiring_records_epsilon(tiny, dp, mechanism):
    adata, path = tiny
    params = {"rounds": 2, "local_epochs": 1, "hidden": [16], "latent": 4}
    cfg = RunConfig(
        "fedscgen",
        dataset=str(path),
        n_top_genes=200,
        panels=["fedscgen"],
        params=params,
        attacks=["update_recovery"],
        dp=dp,
    )
    res = execute_run(cfg, adata=adata)
    assert res.info["dp"]["dp_mechanism"] == mechanism
    eps = res.info["dp"]["dp_epsilon"]
    if mechanism == "gaussian":  # plaintext: the coordinator's epsilon (sigma/sqrt(3))
        assert 0 < res.info["dp"]["dp_epsilon_by_observer"]["output"] <= 8.0 + 1e-3 < eps
    else:
        assert 0 < eps <= 8.0 + 1e-3
    mine = res.rows[res.rows["method"] == "fedscgen"]
    assert np.allclose(mine.loc[mine["panel"] != "attack", "dp_epsilon"], eps)
    assert res.adata.uns["fedscgen"]["dp"]["normalisation"] == "GroupNorm (DP variant)"
    att = mine[mine["panel"] == "attack"]
    assert set(att["observer"]) >= {"coordinator"}
    # each attack row carries the epsilon against its own observer
    by_obs = res.info["dp"]["epsilon_by_observer"]
    for observer, part in att.groupby("observer"):
        key = "output" if observer == "output_reader" else str(observer)
        if key in by_obs:
            want = math.inf if by_obs[key] is None else by_obs[key]
            assert np.allclose(part["dp_epsilon"], want), observer
    if mechanism == "gaussian":
        coord = att.loc[att["observer"] == "coordinator", "dp_epsilon"]
        assert np.allclose(coord, eps)  # plaintext: the coordinator is the strongest


def test_dp_noise_is_fresh_unless_simulated_and_simulated_is_never_private(tiny):
    # the old runs seeded the noise with the run seed, which run.json publishes: anyone
    # could regenerate it and subtract it (the update came back to 4e-13)
    adata, path = tiny
    attacks = ["update_recovery"]

    def run(dp: dict):
        cfg = RunConfig("scbatchprox", dataset=str(path), attacks=attacks, dp=dp, **COMMON)
        res = execute_run(cfg, adata=adata)
        return res, res.adata.obsm["X_scbatchprox"]

    (a, za), (_, zb) = run(DP), run(DP)
    assert not np.array_equal(za, zb)  # same seed, other noise
    assert a.info["dp"]["dp_noise"].startswith("fresh OS entropy")
    (s1, z1), (_, z2) = run({**DP, "simulated": True}), run({**DP, "simulated": True})
    np.testing.assert_array_equal(z1, z2)  # seeded: reproducible, hence not private
    assert s1.info["dp"]["dp_noise"].startswith("simulated")
    mine = s1.rows[s1.rows["method"] == "scbatchprox"]
    assert mine["private"].eq(False).all() and s1.info["private"] is False
    assert s1.info["privacy"].startswith("simulated DP")
    with pytest.raises(FedscInputError, match="simulated must be true or false"):
        RunConfig("scbatchprox", dp={**DP, "simulated": "yes"})


def test_params_dp_takes_the_one_dp_path(tiny):
    """`--param dp=...` used to switch FedscGen to its DP variant with no noise, no ε and
    run.json `dp: null`; it is now the run's `dp` (noised and accounted) or refused."""
    adata, path = tiny
    dp = {"level": "client", "target_epsilon": 8.0, "clip": 1.0, "delta": 0.1}
    params = {"rounds": 1, "local_epochs": 1, "hidden": [16], "latent": 4, "dp": dp}
    cfg = RunConfig("fedscgen", dataset=str(path), n_top_genes=200, panels=[], params=params)
    assert cfg.dp is not None and cfg.dp["target_epsilon"] == 8.0 and "dp" not in cfg.params
    res = execute_run(cfg, adata=adata)
    assert res.info["dp"] is not None and 0 < res.info["dp"]["dp_epsilon"] < math.inf
    assert res.info["dp"]["dp_mechanism"] == "gaussian"
    with pytest.raises(FedscInputError, match="DP is given twice"):
        RunConfig("fedscgen", params={"dp": {"level": "cell"}}, dp=dp)
    with pytest.raises(FedscInputError, match=r"params\.dp must be a mapping"):
        RunConfig("fedscgen", params={"dp": "yes"})


def test_sigma_zero_is_the_dp_pipeline_control(tiny):
    """Issue 18, point 6: sigma = 0 runs the DP pipeline (clipping, uniform weighting) with no
    noise, is reported as epsilon = inf and is never private."""
    adata, path = tiny
    dp = {"level": "client", "noise_multiplier": 0.0, "clip": 1e-6, "delta": 0.01}
    cfg = RunConfig("scbatchprox", dataset=str(path), attacks=["update_recovery"], dp=dp, **COMMON)
    res = execute_run(cfg, adata=adata)
    mine = res.rows[res.rows["method"] == "scbatchprox"]
    assert np.isinf(mine["dp_epsilon"]).all() and res.info["dp"]["dp_epsilon"] is None
    assert res.info["private"] is False  # no noise: the coordinator recovers the updates
    plain = execute_run(
        RunConfig("scbatchprox", dataset=str(path), **COMMON), adata=adata
    ).adata.obsm["X_scbatchprox"]
    # the pipeline alone (clip 1e-6) changes the result: a control, not a no-DP rerun
    assert not np.allclose(res.adata.obsm["X_scbatchprox"], plain)
    with pytest.raises(FedscInputError, match="target_epsilon"):
        RunConfig("scbatchprox", dp={**dp, "target_epsilon": 4.0})


def test_every_dp_run_carries_its_audit_and_a_regenerable_noise_fails_it(tiny):
    """Issue 18, point 7: run.json and the rows carry the claimed epsilon beside the audited
    lower bound; noise from the published seed (simulated DP) is caught by the audit."""
    adata, path = tiny
    dp = {"level": "client", "target_epsilon": 1.0, "clip": 0.01, "delta": 0.01}

    def run(extra: dict):
        cfg = RunConfig("scbatchprox", dataset=str(path), dp={**dp, **extra}, **COMMON)
        return execute_run(cfg, adata=adata)

    fresh, simulated = run({}), run({"simulated": True})
    audits = {a["observer"]: a for a in fresh.info["dp"]["audit"]}
    assert set(audits) == {"output", "coordinator"}  # plaintext: the coordinator too
    for a in audits.values():
        assert a["consistent"] and a["audited_epsilon"] <= a["claimed_epsilon"]
        assert a["n_canaries"] == 1000 and a["noise"].startswith("fresh")
    rows = fresh.rows[fresh.rows["metric"] == "attack:dp_audit:audited_epsilon"]
    assert set(rows["observer"]) == {"output_reader", "coordinator"}
    replayed = {a["observer"]: a for a in simulated.info["dp"]["audit"]}["output"]
    assert replayed["noise"].startswith("seeded") and not replayed["consistent"]
    assert replayed["audited_epsilon"] > replayed["claimed_epsilon"]
