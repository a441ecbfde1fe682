"""Empirical privacy audit (fedsc.privacy.audit): the one-run bound and the canary audits.

The bound (Steinke, Nasr & Jagielski, NeurIPS 2023) is checked against hand-computed
values and its known behaviour; the audits run canaries through the real mechanisms
(the ``gaussian`` aggregator mechanism, DP-SGD's ``local_train``) and must find
audited ≤ claimed for correct mechanisms and audited > claimed for broken ones (noise
scaled down 10×, noise from a published seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest

from fedsc.errors import FedscInputError
from fedsc.privacy import audit
from fedsc.privacy.accounting import DPConfig

# --------------------------------------------------------------------------- the bound


def _binom_sf(v: int, r: int, p: float) -> float:
    """P[Binomial(r, p) >= v] from the definition (no scipy)."""
    return sum(math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(v, r + 1))


def test_p_value_matches_hand_computation():
    # δ = 0: the Binomial(r, e^ε/(1+e^ε)) tail; 4 of 4 right at ε = 1: p^4
    p = math.exp(1) / (1 + math.exp(1))
    assert audit.one_run_p_value(4, 4, 10, 1.0, 0.0) == pytest.approx(p**4, rel=1e-12)
    # with δ (Theorem 3 / Algorithm 2): tail + 2 m δ max_i P[v-i <= B < v] / i
    m, r, v, eps, delta = 5, 3, 2, 0.5, 0.01
    p = math.exp(eps) / (1 + math.exp(eps))
    tail = _binom_sf(v, r, p)
    alpha = max((_binom_sf(v - i, r, p) - tail) / i for i in range(1, v + 1))
    expected = tail + 2 * m * delta * alpha
    assert audit.one_run_p_value(v, r, m, eps, delta) == pytest.approx(expected, rel=1e-12)


def test_all_correct_guesses_cap_epsilon_at_a_finite_value():
    # r of r right, δ = 0: p^r = β at the bound, so ε = logit(β^(1/r))
    for r in (10, 100, 1000):
        q = 0.05 ** (1 / r)
        cap = math.log(q / (1 - q))
        got = audit.one_run_epsilon_lower_bound(r, r, r, 0.0, 0.05)
        assert got == pytest.approx(cap, abs=1e-6)
    assert audit.one_run_epsilon_lower_bound(10, 10, 10, 0.0, 0.05) == pytest.approx(
        1.0519, abs=1e-4
    )
    # δ only loosens (lowers) the bound
    with_delta = audit.one_run_epsilon_lower_bound(100, 100, 100, 1e-3, 0.05)
    assert 0 < with_delta < audit.one_run_epsilon_lower_bound(100, 100, 100, 0.0, 0.05)


def test_chance_level_guesses_give_about_zero():
    assert audit.one_run_epsilon_lower_bound(500, 1000, 1000, 1e-5, 0.05) == 0.0
    assert audit.one_run_epsilon_lower_bound(0, 0, 10, 1e-5, 0.05) == 0.0
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    found = audit.epsilon_from_scores(rng.normal(size=1000), included, 1e-5)
    assert found.epsilon < 0.2  # random scores: about 0
    # perfectly separated scores: every rule right, the best is the all-guess threshold
    found = audit.epsilon_from_scores(included + 0.1 * rng.random(1000), included, 1e-5)
    assert found.correct == found.guesses == 1000 and found.epsilon > 5


def test_best_rule_pays_for_the_choice():
    # the best of the rules is tested at beta / (number of rules) (Bonferroni)
    rng = np.random.default_rng(1)
    included = rng.random(400) < 0.5
    scores = rng.normal(size=400) + 2.0 * included
    found = audit.epsilon_from_scores(scores, included, 1e-5, 0.05)
    assert len(found.rules) == 5 and found.rule in found.rules
    level = 0.05 / len(found.rules)
    assert found.epsilon == pytest.approx(
        audit.one_run_epsilon_lower_bound(found.correct, found.guesses, 400, 1e-5, level)
    )
    assert found.epsilon < audit.one_run_epsilon_lower_bound(
        found.correct, found.guesses, 400, 1e-5, 0.05
    )


def test_guess_rules():
    scores = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 9.0])
    included = np.array([False, False, True, True, True, True])
    assert audit.guesses_from_scores(scores, included, 2) == (2, 2)
    assert audit.guesses_from_scores(scores, included, 6) == (6, 5)
    assert 0.2 < audit.largest_gap_threshold(scores) < 5.0
    assert 0.2 < audit.two_means_threshold([0.0, 0.1, 0.2, 5.0, 5.1, 5.2]) < 5.0


def test_bad_inputs_are_refused():
    with pytest.raises(FedscInputError, match="guesses_correct"):
        audit.one_run_epsilon_lower_bound(5, 4, 10, 1e-5)
    with pytest.raises(FedscInputError, match="beta"):
        audit.one_run_epsilon_lower_bound(1, 2, 10, 1e-5, beta=1.0)
    with pytest.raises(FedscInputError, match="same length"):
        audit.epsilon_from_scores([1.0, 2.0], [True], 1e-5)
    with pytest.raises(FedscInputError, match="client-level"):
        audit.audit_client_level(DPConfig(level="cell"), rounds=1, n_canaries=10)
    with pytest.raises(FedscInputError, match="cell-level"):
        audit.audit_cell_level(DPConfig(), n_canaries=10)


# --------------------------------------------------------------------------- client level


def _tenfold_less_noise(dp: DPConfig) -> Any:
    """The ``gaussian`` mechanism adding σ/10 while its ledger record (the claim) says σ."""
    from smpc.mechanisms.gaussian import GaussianDP

    class TenfoldLessNoise(GaussianDP):
        def transform_contribution(self, row, ctx):
            claimed = self.noise_multiplier
            self.noise_multiplier = claimed / 10
            try:
                return super().transform_contribution(row, ctx)
            finally:
                self.noise_multiplier = claimed

    spec = {k: v for k, v in dp.mechanism_spec().items() if k != "name"}
    return TenfoldLessNoise(**spec)


def _client_dp(eps: float, rounds: int = 3) -> DPConfig:
    return DPConfig(noise_multiplier=None, target_epsilon=eps, clip=1.0, delta=1e-5).resolve(rounds)


@pytest.mark.parametrize("eps", [2.0, 4.0])
def test_client_level_correct_mechanism_stays_below_its_claim(eps):
    # 500 canary clients + 4 ordinary ones, 3 rounds, fresh OS-entropy noise (as runs)
    result = audit.audit_client_level(_client_dp(eps), rounds=3, n_canaries=500, seed=1)
    assert result.claimed_epsilon == pytest.approx(eps, rel=1e-3)
    assert result.noise == audit.NOISE_FRESH
    assert 0 <= result.audited_epsilon <= result.claimed_epsilon
    assert result.consistent
    record = json.loads(json.dumps(result.to_dict()))
    assert record["claimed_epsilon"] == result.claimed_epsilon
    assert record["consistent"] is True and record["steps"] == 3


def test_client_level_tenfold_less_noise_is_caught():
    dp = _client_dp(2.0)
    result = audit.audit_client_level(
        dp, rounds=3, n_canaries=500, seed=1, mechanism=_tenfold_less_noise(dp)
    )
    assert result.claimed_epsilon == pytest.approx(2.0, rel=1e-3)  # the ledger says σ
    assert result.audited_epsilon > result.claimed_epsilon + 1.0
    assert not result.consistent


def test_client_level_published_seed_is_caught():
    result = audit.audit_client_level(
        _client_dp(2.0), rounds=3, n_canaries=500, seed=1, noise_seed=20231
    )
    assert result.noise == audit.NOISE_PUBLISHED
    assert result.correct == result.guesses == 500  # the replayed noise is subtracted
    assert result.audited_epsilon > result.claimed_epsilon + 2.0


def test_client_level_plaintext_coordinator_sees_more_than_the_output_claim():
    dp = _client_dp(2.0)
    coordinator = audit.audit_client_level(
        dp, rounds=3, n_canaries=500, seed=1, observer="coordinator"
    )
    # each row carries σ/√K of noise: its claim is far larger, and the canaries show
    # that it spends more than the output's claim of 2
    assert coordinator.claimed_epsilon > 50
    assert 2.0 + 1.0 < coordinator.audited_epsilon <= coordinator.claimed_epsilon


# --------------------------------------------------------------------------- cell level
#: σ of ε ≈ 2 and ≈ 4 (replace-one, PLD, δ = 1e-5) for 8 steps at q = 0.5, and of ε ≈ 2 for
#: 4 full-batch steps: the schedules below (1000 canary slots + 200 cells).
SIGMA_EPS2_Q05, SIGMA_EPS4_Q05, SIGMA_EPS2_FULL = 5.617, 3.018, 7.975


def _cell_dp(sigma: float, *, simulated: bool = False) -> DPConfig:
    return DPConfig(noise_multiplier=sigma, clip=0.1, delta=1e-5, level="cell", simulated=simulated)


@pytest.mark.parametrize("sigma", [SIGMA_EPS2_Q05, SIGMA_EPS4_Q05], ids=["eps~2", "eps~4"])
def test_cell_level_correct_dp_sgd_stays_below_its_claim(sigma):
    # Poisson sampling at q = 0.5, 8 steps, fresh noise (as runs)
    result = audit.audit_cell_level(
        _cell_dp(sigma), n_canaries=1000, batch_size=600, local_epochs=4, seed=1
    )
    assert result.sampling_rate < 1 and result.steps >= 4
    assert math.isfinite(result.claimed_epsilon)
    assert 0 <= result.audited_epsilon <= result.claimed_epsilon
    assert result.noise == audit.NOISE_FRESH


def test_cell_level_tenfold_less_noise_is_caught(monkeypatch):
    from fedsc.methods import dp_sgd

    real = dp_sgd.make_private

    def tenfold_less_noise(model, optimizer, dp, *args, **kwargs):
        # Opacus' optimiser built with σ/10; local_train's claim still uses σ
        weak = dataclasses.replace(dp, noise_multiplier=dp.noise_multiplier / 10)
        return real(model, optimizer, weak, *args, **kwargs)

    monkeypatch.setattr(dp_sgd, "make_private", tenfold_less_noise)
    result = audit.audit_cell_level(_cell_dp(SIGMA_EPS2_FULL), n_canaries=1000, seed=1)
    assert result.sampling_rate == 1.0
    assert result.audited_epsilon > result.claimed_epsilon + 0.5
    assert not result.consistent


def test_cell_level_published_seed_is_caught():
    # simulated DP: the noise comes from the run seed, which runs publish
    result = audit.audit_cell_level(
        _cell_dp(SIGMA_EPS2_FULL, simulated=True), n_canaries=1000, seed=1
    )
    assert result.noise == audit.NOISE_PUBLISHED
    assert result.correct == result.guesses == 1000
    assert result.audited_epsilon > result.claimed_epsilon + 2.0
