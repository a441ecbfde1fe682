"""The DP accountant: ε from dp_accounting, checked against Opacus and analytic bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedsc.errors import FedscInputError
from fedsc.privacy.accounting import (
    DPConfig,
    client_level_epsilon,
    client_level_from_ledger,
    dp_record,
    epsilon,
    noise_multiplier_for,
)


def _analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of one Gaussian release, sensitivity 1 (Balle & Wang, ICML 2018, Thm 8)."""

    def gap(eps: float) -> float:
        return (
            norm.cdf(0.5 / sigma - eps * sigma)
            - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)
            - delta
        )

    return brentq(gap, 1e-9, 100.0)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
def test_one_full_batch_step_matches_the_analytic_gaussian_mechanism(sigma):
    exact = _analytic_gaussian_epsilon(sigma, 1e-5)
    # PLD is tight for one Gaussian release; RDP is an upper bound, within ~10 %
    assert epsilon(sigma, 1, 1.0, 1e-5, accountant="pld") == pytest.approx(exact, rel=1e-4)
    rdp = epsilon(sigma, 1, 1.0, 1e-5)
    assert exact <= rdp <= 1.12 * exact


def test_hand_checked_values():
    # sigma=1, delta=1e-5, one release: the analytic Gaussian mechanism gives 4.3772
    assert epsilon(1.0, 1, 1.0, 1e-5, accountant="pld") == pytest.approx(4.3772, abs=1e-3)
    # the classical bound sigma = sqrt(2 ln(1.25/delta)) / eps (Dwork & Roth, Thm A.1) is
    # sufficient for eps < 1, so the exact epsilon at that sigma is at most eps
    sigma = math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5
    assert epsilon(sigma, 1, 1.0, 1e-5, accountant="pld") <= 0.5


def test_rdp_matches_opacus_rdp_accountant():
    from opacus.accountants import RDPAccountant

    sigma, q, steps, delta = 1.1, 0.01, 1000, 1e-5
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]  # what `steps` calls of acc.step(...) record
    ours = epsilon(sigma, steps, q, delta)
    assert ours == pytest.approx(acc.get_epsilon(delta), rel=1e-3)
    assert ours == pytest.approx(1.7118, abs=1e-3)  # recorded value (both libraries)
    # PLD is tighter than RDP on the same event
    assert epsilon(sigma, steps, q, delta, accountant="pld") < ours


def test_edges_and_composition():
    assert epsilon(0.0, 5, 1.0, 1e-5) == math.inf
    assert epsilon(1.0, 0, 1.0, 1e-5) == 0.0
    e1, e4 = epsilon(2.0, 1, 1.0, 1e-5), epsilon(2.0, 4, 1.0, 1e-5)
    assert e1 < e4 < 4 * e1  # composition, sublinear under RDP
    # R rounds of DP-FedAvg = R releases; noised metrics double them
    assert client_level_epsilon(2.0, 4, 1e-5) == e4
    assert client_level_epsilon(2.0, 2, 1e-5, releases_per_round=2) == e4
    with pytest.raises(FedscInputError, match="sampling_rate"):
        epsilon(1.0, 1, 0.0, 1e-5)


def test_calibration_inverts_the_accountant():
    sigma = noise_multiplier_for(2.0, 50, 0.05, 1e-5)
    eps = epsilon(sigma, 50, 0.05, 1e-5)
    assert eps <= 2.0 + 1e-3 and eps == pytest.approx(2.0, rel=1e-2)
    sigma1 = noise_multiplier_for(3.0, 8, 1.0, 1e-4)
    assert epsilon(sigma1, 8, 1.0, 1e-4) == pytest.approx(3.0, rel=1e-2)


def test_config_validation_names_the_value_and_the_fix():
    with pytest.raises(FedscInputError, match=r"noise_multiplier must be >= 0, got -1.*dp: null"):
        DPConfig(noise_multiplier=-1.0)
    with pytest.raises(FedscInputError, match=r"noise_multiplier=0 .*target_epsilon"):
        DPConfig(noise_multiplier=0.0, target_epsilon=1.0)  # sigma = 0 is the control
    with pytest.raises(FedscInputError, match=r"clip must be > 0, got 0"):
        DPConfig(clip=0.0)
    with pytest.raises(FedscInputError, match=r"delta must be in \(0, 1\), got 0"):
        DPConfig(delta=0.0)
    with pytest.raises(FedscInputError, match="target_epsilon"):
        DPConfig(noise_multiplier=None)
    cfg = DPConfig(noise_multiplier=1.0, delta=0.01)
    with pytest.raises(FedscInputError, match=r"delta=0\.01 is not below 1/n.*n=100 clients"):
        cfg.validate_for(100)
    cfg.validate_for(99)
    cell = DPConfig(1.0, 1.0, 1e-4, level="cell")
    with pytest.raises(FedscInputError, match=r"n=20000 cells.*delta=1e-06"):
        cell.validate_for(20000)
    with pytest.raises(FedscInputError, match="unknown key"):
        DPConfig.from_dict({"sigma": 1.0})
    assert DPConfig.from_dict(None) is None


def test_resolve_and_record():
    cfg = DPConfig(noise_multiplier=None, clip=0.5, delta=1e-5, target_epsilon=4.0)
    fixed = cfg.resolve(steps=10)
    assert fixed.noise_multiplier is not None
    assert fixed.epsilon(10) == pytest.approx(4.0, rel=1e-2)
    with pytest.raises(FedscInputError, match="above target_epsilon"):
        DPConfig(noise_multiplier=0.5, target_epsilon=1.0).resolve(steps=10)
    rec = dp_record(fixed.epsilon(10), fixed, steps=10, sampling_rate=1.0, mechanism="gaussian")
    assert rec["dp_delta"] == 1e-5 and rec["dp_epsilon"] == pytest.approx(4.0, rel=1e-2)
    assert (
        dp_record(math.inf, fixed, steps=1, sampling_rate=1.0, mechanism="x")["dp_epsilon"] is None
    )
    assert np.isfinite(rec["dp_noise_multiplier"])
    spec = fixed.mechanism_spec(min_honest=2)
    assert spec == {
        "name": "gaussian",
        "noise_multiplier": fixed.noise_multiplier,
        "clip": 0.5,
        "min_honest": 2,
    }
    with pytest.raises(FedscInputError, match="DP-SGD"):
        DPConfig(level="cell").mechanism_spec()


def test_scbatchprox_with_client_level_dp_end_to_end():
    """DP-FedAvg on scBatchProx's adapter tables through the mechanism seam."""
    import smpc
    from fedsc.methods.scbatchprox import ScBatchProx, ScBatchProxConfig

    rng = np.random.default_rng(0)
    n, d, k = 450, 8, 3
    labels = np.repeat([f"b{i}" for i in range(k)], n // k)
    z = rng.normal(size=(n, d)) + np.repeat(rng.normal(scale=2.0, size=(k, d)), n // k, axis=0)
    cfg = ScBatchProxConfig(rounds=3, lr=1e-2)
    delta = 1e-3  # below 1/K for K = 3 clients
    DPConfig(1.0, 0.01, delta).validate_for(k)

    def fit(mechanisms):
        agg = smpc.make_aggregator("plaintext", mechanisms=mechanisms, mechanism_seed=0)
        model = ScBatchProx.fit(z, labels, agg, config=cfg, seed=0)
        return model, model.transform(z, labels)

    _, z_plain = fit(None)
    rows = []
    for sigma in (0.0, 0.5, 2.0, 8.0):
        model, z_dp = fit([{"name": "gaussian", "noise_multiplier": sigma, "clip": 0.01}])
        eps = client_level_epsilon(sigma, cfg.rounds, delta)
        to_plain = float(np.linalg.norm(z_dp - z_plain) / np.sqrt(n))
        to_raw = float(np.linalg.norm(z_dp - z) / np.sqrt(n))
        rows.append((sigma, eps, to_plain, to_raw))
        entry = next(e for e in model.ledger["entries"] if e["tag"] == "fedavg")
        if sigma == 0:  # the control: clipped, uniformly weighted, no noise (eps = inf)
            assert entry["mechanisms"][0]["noise_multiplier"] == 0.0 and math.isinf(eps)
            assert client_level_from_ledger(model.ledger, delta).epsilon == math.inf
        else:
            assert entry["mechanisms"][0]["noise_multiplier"] == sigma
            from_ledger = client_level_from_ledger(model.ledger, delta)
            # only the weights (cell counts) pass un-noised, public under the relation
            assert from_ledger.epsilon == eps and from_ledger.uncovered == {
                "weighted_mean:fedavg:weights": cfg.rounds,
                "weighted_mean:metrics:weights": cfg.rounds,
            }
            assert all(h["recon_loss"] == 0.0 for h in model.history)  # metrics suppressed
    print("\nsigma  epsilon  RMS(refined_dp - refined)  RMS(refined_dp - uncorrected)")
    print(
        f"  --   non-DP   0                          {np.linalg.norm(z_plain - z) / np.sqrt(n):.4f}"
    )
    # sigma = 0 differs from the non-DP run by the pipeline (clipping, uniform weights)
    for sigma, eps, to_plain, to_raw in rows:
        print(f"{sigma:5.1f}  {eps:7.3f}  {to_plain:.4f}                     {to_raw:.4f}")
    eps_list = [r[1] for r in rows[1:]]
    cost = [r[2] for r in rows]
    assert eps_list == sorted(eps_list, reverse=True)
    assert cost == sorted(cost) and cost[-1] > 10 * cost[1] > 0


def test_epsilon_read_off_the_ledger():
    import smpc

    rng = np.random.default_rng(0)
    ref = rng.normal(size=20)
    xs = [ref + rng.normal(size=20) for _ in range(3)]
    mech = {"name": "gaussian", "noise_multiplier": 2.0, "clip": 1.0}
    agg = smpc.make_aggregator(
        "plaintext",
        mechanisms=[{**mech, "metrics": "noise", "metrics_clip": 1.0}],
        mechanism_seed=0,
    )
    for r in range(3):
        with agg.ledger.scope(r, "fedavg"):
            agg.weighted_mean(xs, [1, 2, 3], reference=ref)
        with agg.ledger.scope(r, "metrics"):
            agg.weighted_mean([{"loss": 1.0}] * 3, [1, 2, 3])
    with agg.ledger.scope(None, "correction/presence"):
        agg.sum(xs)
    agg.argmax([np.array([1.0, 2.0])] * 3)
    acc = client_level_from_ledger(agg.ledger, 1e-3)
    assert acc.releases == {2.0: 6}  # 3 states + 3 noised metrics
    assert acc.epsilon == client_level_epsilon(2.0, 3, 1e-3, releases_per_round=2)
    assert acc.uncovered == {
        "weighted_mean:fedavg:weights": 3,
        "weighted_mean:metrics:weights": 3,
        "sum:correction/presence": 1,
        "argmax:None": 1,
    }
    # the JSON form gives the same; metrics suppressed (default) are not releases
    assert client_level_from_ledger(agg.ledger.to_dict(), 1e-3) == acc
    agg2 = smpc.make_aggregator("plaintext", mechanisms=[mech], mechanism_seed=0)
    with agg2.ledger.scope(0, "metrics"):
        agg2.weighted_mean([{"loss": 1.0}] * 3, [1, 2, 3])
    suppressed = client_level_from_ledger(agg2.ledger, 1e-3)  # only the weights passed
    assert suppressed.epsilon == 0.0 and suppressed.uncovered == {
        "weighted_mean:metrics:weights": 1
    }
    # aggregates revealed without noise: no finite guarantee, never 0
    agg3 = smpc.make_aggregator("plaintext", mechanisms=[mech], mechanism_seed=0)
    with agg3.ledger.scope(None, "correction/presence"):
        agg3.sum(xs)
    unnoised = client_level_from_ledger(agg3.ledger, 1e-3)
    assert unnoised.releases == {} and unnoised.epsilon == math.inf
    zero = {"name": "gaussian", "noise_multiplier": 0.0, "clip": 1.0}
    entry = {"op": "weighted_mean", "tag": "fedavg", "mechanisms": [zero]}
    assert client_level_from_ledger({"entries": [entry]}, 1e-3).epsilon == math.inf


@pytest.mark.parametrize("min_honest", [None, 2])
def test_a_plaintext_coordinator_is_accounted_at_sigma_over_sqrt_k(min_honest):
    # each client adds N(0, s^2 C^2 / m): a coordinator that sees every client's noised
    # update (plaintext) faces multiplier s / sqrt(m), not s (the old report's error)
    import smpc

    sigma, rounds, delta, k = 2.0, 2, 0.01, 5
    mech = {"name": "gaussian", "noise_multiplier": sigma, "clip": 1.0}
    if min_honest is not None:
        mech["min_honest"] = min_honest
    xs = [np.full(4, 0.1 * i) for i in range(k)]
    ledgers = {}
    for backend, private in (("plaintext", False), ("aggregate-only", True)):
        agg = smpc.make_aggregator("plaintext", mechanisms=[mech], mechanism_seed=0)
        for r in range(rounds):
            with agg.ledger.scope(r, "fedavg"):
                agg.weighted_mean(xs, [1] * k, reference=np.zeros(4))
        d = agg.ledger.to_dict()
        for e in d["entries"]:
            e["private"] = private  # as a secure backend records it
        ledgers[backend] = d
    m = k if min_honest is None else min_honest
    seen = client_level_from_ledger(ledgers["plaintext"], delta, observer="coordinator")
    assert seen.epsilon == pytest.approx(client_level_epsilon(sigma / np.sqrt(m), rounds, delta))
    assert seen.epsilon > 1.5 * client_level_epsilon(sigma, rounds, delta)
    # the output's reader, and a coordinator that sees only aggregates: the sum of the k
    # noise shares, multiplier sigma * sqrt(k / m) (sigma without min_honest)
    for ledger, observer in (
        (ledgers["plaintext"], "output"),
        (ledgers["aggregate-only"], "coordinator"),
    ):
        acc = client_level_from_ledger(ledger, delta, observer=observer)
        on_sum = client_level_epsilon(sigma * np.sqrt(k / m), rounds, delta)
        assert acc.epsilon == pytest.approx(on_sum)
    with pytest.raises(ValueError, match="observer must be one of"):
        client_level_from_ledger(ledgers["plaintext"], delta, observer="dealer")


def test_calibration_failures_explain_which_way_the_target_is_off():
    """epsilon = 1e9 used to say 'raise the target epsilon' (accountant jargon, wrong way)."""
    from fedsc.privacy.accounting import noise_multiplier_for

    with pytest.raises(FedscInputError, match=r"larger than what even sigma = 0\.001") as err:
        noise_multiplier_for(1e9, 10, 1.0, 1e-5)
    assert "raise" not in str(err.value) and "smaller target_epsilon" in str(err.value)
