"""Donor-level (user-level) DP-SGD: per-donor sensitivity, noise, accountant, audit."""

from __future__ import annotations

import math

import pytest
import torch

from fedsc.errors import FedscInputError
from fedsc.methods import dp_sgd
from fedsc.methods.vae import INIT, VAE, VAEConfig, derive_generator
from fedsc.privacy.accounting import DONOR_RELATION, DPConfig

GENES = 12

# ~6 s on a quiet 2-core machine (Opacus' import, one PLD evaluation, a 300-canary audit)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.slow,
    pytest.mark.usefixtures("dp_one_thread"),
]


def _cfg() -> VAEConfig:
    # no dropout: every cell of the loud donor has (nearly) the same gradient direction
    return VAEConfig(hidden=(16,), latent=2, batch_size=8, dropout=0.0)


def _model() -> VAE:
    return dp_sgd.to_dp_variant(VAE(GENES, _cfg(), derive_generator(0, INIT)))


def _flat(model: VAE) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _summed_gradient(x, donors, dp, *, simulated=True):
    """The step's sum of clipped gradients (+ noise), read off one plain SGD step.

    q = 1 makes the one step of the epoch take every donor; with lr = 1 the weights move
    by exactly -(sum + noise) / (q · D · k) (Opacus' normalisation by the expected batch).
    """
    model = _model()
    before = _flat(model)
    dp_sgd.local_train(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        x,
        torch.arange(len(x)),
        seed=0,
        client=0,
        round_index=0,
        local_epochs=1,
        dp=dp,
        donors=donors,
    )
    n_donors = len(torch.unique(donors))
    if dp.level == "donor":
        expected = dp.donor_sampling_rate * n_donors * dp.cells_per_donor
    else:
        expected = _cfg().batch_size
    return (before - _flat(model)) * expected


def _loud(n: int) -> torch.Tensor:
    """n copies of one far-off cell: their gradients add up (the worst-case donor)."""
    return torch.full((n, GENES), 40.0)


def test_a_donor_moves_the_clipped_sum_by_at_most_c_whatever_its_cells():
    # one donor with 10x more cells than the cap k = 4 and the same donor with 1 cell:
    # each moves the step's sum of clipped gradients by <= C (the replace-one bound is 2C)
    clip, k = 0.5, 4
    dp = DPConfig(0.0, clip, 1e-3, level="donor", donor_sampling_rate=1.0, cells_per_donor=k)
    for cells in (40, 1):
        x = _loud(cells)
        moved = _summed_gradient(x, torch.zeros(cells, dtype=torch.long), dp).norm().item()
        assert moved <= clip * (1 + 1e-4), (cells, moved)
        if cells == 40:
            assert moved > 0.5 * clip  # k nearly aligned cells at C/k: near the bound
    # the cell-level bound (C per cell) lets the same donor move the sum by > 10 C: the
    # positive control that per-cell clipping does not protect a donor
    cell = DPConfig(0.0, clip, 1e-3, level="cell", simulated=True)
    x = _loud(40)
    model = _model()
    before = _flat(model)
    cfg = model.config
    module, opt = dp_sgd.make_private(
        model, torch.optim.SGD(model.parameters(), lr=1.0), cell, 40, torch.Generator()
    )
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    recon, mu, logvar = module(x, torch.Generator().manual_seed(0))
    terms = dp_sgd.per_cell_loss(recon, x, mu, logvar, cfg.kl_weight, cfg.batch_size)
    DPTensorFastGradientClipping(module, opt, terms, "mean").backward()
    opt.step()
    module.to_standard_module()
    assert ((before - _flat(model)) * 40).norm().item() > 10 * clip


def test_many_donors_each_bounded_and_noise_is_sigma_c():
    # 6 donors of 1..60 cells; sigma = 0 gives the clipped sum, sigma = 2 adds N(0, (2C)^2)
    # per value to it (Opacus sees sigma*k and C/k), whatever k is
    sizes = [1, 3, 5, 12, 30, 60]
    donors = torch.cat([torch.full((n,), d) for d, n in enumerate(sizes)])
    x = torch.randn(len(donors), GENES, generator=torch.Generator().manual_seed(3)) * 5
    clip = 0.3
    kw = {"level": "donor", "donor_sampling_rate": 1.0, "cells_per_donor": 8}
    base = DPConfig(0.0, clip, 1e-3, simulated=True, **kw)
    clean = _summed_gradient(x, donors, base)
    assert clean.norm().item() <= len(sizes) * clip * (1 + 1e-4)
    noisy = _summed_gradient(x, donors, DPConfig(2.0, clip, 1e-3, simulated=True, **kw))
    noise = noisy - clean
    assert noise.std().item() == pytest.approx(2.0 * clip, rel=0.1)
    assert abs(noise.mean().item()) < 0.2 * clip


def test_donor_steps_sample_donors_from_the_os_csprng(monkeypatch):
    from smpc.mechanisms import secure_random

    calls = {"random": [], "normal": 0}
    real_random = secure_random.SecureRandom.random
    real_normal = secure_random.SecureRandom.standard_normal_torch

    def spy_random(self, n):
        calls["random"].append(n)
        return real_random(self, n)

    def spy_normal(self, *a, **kw):
        calls["normal"] += 1
        return real_normal(self, *a, **kw)

    monkeypatch.setattr(secure_random.SecureRandom, "random", spy_random)
    monkeypatch.setattr(secure_random.SecureRandom, "standard_normal_torch", spy_normal)
    donors = torch.arange(50) % 5
    dp = DPConfig(1.0, 1.0, 1e-3, level="donor", donor_sampling_rate=0.25)
    model = _model()
    up = dp_sgd.local_train(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.randn(50, GENES),
        torch.arange(50),
        seed=0,
        client=0,
        round_index=1,
        local_epochs=2,
        dp=dp,
        donors=donors,
    )
    assert up.steps == 8 and up.total_steps == 16 and up.sampling_rate == 0.25
    assert calls["random"] == [5] * 8  # one draw over the 5 donors per step, never cells
    assert calls["normal"] == 8


def test_donor_epsilon_is_the_librarys_replace_one_pld():
    # known (sigma, q, steps): q = 0.5 -> 2 steps per epoch; 2 epochs x 2 rounds = 8 steps
    import dp_accounting
    from dp_accounting import pld

    dp = DPConfig(3.0, 1.0, 1e-3, level="donor", donor_sampling_rate=0.5)
    ours = dp_sgd.donor_level_epsilon(dp, local_epochs=2, rounds=2)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(3.0)), 8
    )
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    assert ours == pytest.approx(acc.compose(event).get_epsilon(1e-3), rel=1e-9)
    assert dp.relation == "replace_one" and dp.accountant == "pld"
    assert DONOR_RELATION.startswith("donor: replace-one with D public")
    # sigma meets a target for every client (one accountant call: the same steps and q
    # at every site); delta must be below 1/D for each client's D donors
    kw = {"level": "donor", "donor_sampling_rate": 0.5}
    meets = DPConfig(3.0, 1.0, 1e-3, target_epsilon=ours * 1.001, **kw)
    assert dp_sgd.resolve_for_donors(meets, [25, 40], local_epochs=2, rounds=2) == meets
    short = DPConfig(3.0, 1.0, 1e-3, target_epsilon=ours * 0.99, **kw)
    with pytest.raises(FedscInputError, match="above target_epsilon"):
        dp_sgd.resolve_for_donors(short, [25, 40], local_epochs=2, rounds=2)
    with pytest.raises(FedscInputError, match="not below 1/n"):
        dp_sgd.resolve_for_donors(meets, [25, 1000], local_epochs=2, rounds=2)


def test_donor_settings_are_checked():
    with pytest.raises(FedscInputError, match="level: donor"):
        DPConfig(1.0, 1.0, 1e-3, level="cell", cells_per_donor=4)
    with pytest.raises(FedscInputError, match="donor_sampling_rate must be in"):
        DPConfig(1.0, 1.0, 1e-3, level="donor", donor_sampling_rate=1.5)
    with pytest.raises(FedscInputError, match="cells_per_donor must be"):
        DPConfig(1.0, 1.0, 1e-3, level="donor", cells_per_donor=0)
    with pytest.raises(FedscInputError, match="accountant: pld"):
        DPConfig(1.0, 1.0, 1e-3, level="donor", accountant="rdp")
    dp = DPConfig(1.0, 1.0, 1e-3, level="donor")
    assert (dp.donor_sampling_rate, dp.cells_per_donor) == (0.2, 16)
    assert DPConfig.from_dict(dp.to_dict()) == dp
    with pytest.raises(FedscInputError, match="one donor id per cell"):
        dp_sgd.local_train(
            _model(),
            torch.optim.SGD(_model().parameters(), lr=0.1),
            torch.randn(10, GENES),
            torch.arange(10),
            seed=0,
            client=0,
            round_index=0,
            local_epochs=1,
            dp=dp,
        )
    assert math.isinf(dp_sgd.donor_level_epsilon(DPConfig(0.0, 1.0, 1e-3, level="donor"), 1, 1))


def test_donor_audit_bound_holds_and_catches_a_published_seed():
    # canary donors of 1, 4 and 40 cells through the real local_train(donors=); q = 1 so
    # every included canary is in every step: the most decisive audit for its claim
    import dataclasses

    from fedsc.privacy.audit import audit_donor_level

    dp = DPConfig(5.0, 0.1, 1e-5, level="donor", donor_sampling_rate=1.0, cells_per_donor=4)
    # 1000 canaries, 4 epochs: claim 3.39; noise / 10 in the donor step audits 4.6 (caught)
    fresh = audit_donor_level(dp, n_canaries=1000, local_epochs=4)
    assert fresh.claimed_epsilon == pytest.approx(dp_sgd.donor_level_epsilon(dp, 4, 1))
    assert fresh.consistent and fresh.audited_epsilon <= fresh.claimed_epsilon
    # the noise replayed from a published seed and subtracted: every guess right, the
    # audit certifies more than the claim (what missing noise would also show)
    seeded = audit_donor_level(
        dataclasses.replace(dp, simulated=True), n_canaries=1000, seed=0, local_epochs=4
    )
    assert seeded.correct == seeded.guesses
    assert seeded.audited_epsilon > seeded.claimed_epsilon


def test_sixty_donors_as_clients_epsilon_per_observer_from_the_ledger():
    # client-level DP-FedAvg with one client per donor: 60 clients, 3 rounds, plaintext
    import dp_accounting
    import numpy as np
    from dp_accounting import rdp

    import smpc
    from fedsc.privacy.accounting import client_level_from_ledger

    sigma, n = 2.0, 60
    agg = smpc.make_aggregator(
        "plaintext", mechanisms=[{"name": "gaussian", "noise_multiplier": sigma, "clip": 1.0}]
    )
    rows = [np.ones(5) * (i + 1) for i in range(n)]
    for r in range(3):
        with agg.ledger.scope(r, "fedavg"):
            agg.weighted_mean(rows, np.ones(n), reference=np.zeros(5))

    def by_hand(s: float, releases: int = 3) -> float:
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(s), releases)
        return float(acc.get_epsilon(1e-3))

    want = {
        "output": by_hand(sigma),
        "coordinator": by_hand(sigma / math.sqrt(n)),  # plaintext: each donor's noisy row
        "client": by_hand(sigma * math.sqrt((n - 1) / n)),  # less its own noise share
    }
    for observer, eps in want.items():
        got = client_level_from_ledger(agg.ledger, 1e-3, observer=observer)
        assert got.epsilon == pytest.approx(eps, rel=1e-6), observer
    agg.close()


def test_run_configs_name_the_donor_key_and_donors_become_clients():
    import anndata as ad
    import numpy as np
    import pandas as pd

    from fedsc.methods import get_method
    from fedsc.privacy.run_dp import resolve_run_dp
    from fedsc.run.config import RunConfig

    base = {"method": "fedscgen", "params": {"rounds": 2}}
    donor = {"level": "donor", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-3}
    with pytest.raises(FedscInputError, match="donor_key"):
        RunConfig(**base, dp=donor)
    with pytest.raises(FedscInputError, match="use level: client"):
        RunConfig(**base, donor_key="donor", dp={**donor, "clients": "donor"})
    with pytest.raises(FedscInputError, match="cells_per_donor must be a whole number"):
        RunConfig(**base, donor_key="donor", dp={**donor, "cells_per_donor": 2.5})
    # one client per donor: the method splits by donor_key (60 clients), the run's
    # batch_key stays for evaluation; delta is checked against the 60 clients
    obs = pd.DataFrame(
        {
            "batch": np.repeat(["a", "b"], 60),
            "donor": [f"d{i // 2}" for i in range(120)],
            "cell_type": "t",
        },
        index=[f"c{i}" for i in range(120)],
    )
    adata = ad.AnnData(np.ones((120, 3), dtype=np.float32), obs=obs)
    client = {"level": "client", "clients": "donor", "noise_multiplier": 1.0, "clip": 1.0}
    cfg = RunConfig(**base, donor_key="donor", dp={**client, "delta": 1e-3})
    dp, mechanism, method_cfg = resolve_run_dp(cfg, adata, get_method("fedscgen"))
    assert method_cfg.batch_key == "donor" and cfg.batch_key == "batch"
    assert dp is not None and dp.level == "client" and mechanism["name"] == "gaussian"
    with pytest.raises(FedscInputError, match="n=60 clients"):
        resolve_run_dp(
            RunConfig(**base, donor_key="donor", dp={**client, "delta": 0.02}),
            adata,
            get_method("fedscgen"),
        )
