"""Donor-level (user-level) DP-SGD: per-donor sensitivity, noise, accountant, audit."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from fedsc.errors import FedscInputError
from fedsc.methods import dp_sgd
from fedsc.methods.vae import INIT, VAE, VAEConfig, derive_generator, torch_threads
from fedsc.privacy.accounting import DONOR_RELATION, DPConfig

GENES = 12

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture(autouse=True)
def _one_thread():
    logging.getLogger("absl").setLevel(logging.ERROR)
    with torch_threads(1):
        yield


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
    # known (sigma, q, steps): q = 0.2 -> 5 steps per epoch; 2 epochs x 4 rounds = 40 steps
    import dp_accounting
    from dp_accounting import pld

    dp = DPConfig(noise_multiplier=1.5, clip=1.0, delta=1e-3, level="donor")
    ours = dp_sgd.donor_level_epsilon(dp, local_epochs=2, rounds=4)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.5)), 40
    )
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    assert ours == pytest.approx(acc.compose(event).get_epsilon(1e-3), rel=1e-9)
    assert dp.relation == "replace_one" and dp.accountant == "pld"
    assert DONOR_RELATION.startswith("donor: replace-one with D public")
    # sigma meets a target for every client (one accountant call: the same steps and q
    # at every site); delta must be below 1/D for each client's D donors
    meets = DPConfig(1.5, 1.0, 1e-3, target_epsilon=ours * 1.001, level="donor")
    assert dp_sgd.resolve_for_donors(meets, [25, 40], local_epochs=2, rounds=4) == meets
    short = DPConfig(1.5, 1.0, 1e-3, target_epsilon=ours * 0.99, level="donor")
    with pytest.raises(FedscInputError, match="above target_epsilon"):
        dp_sgd.resolve_for_donors(short, [25, 40], local_epochs=2, rounds=4)
    with pytest.raises(FedscInputError, match="not below 1/n"):
        dp_sgd.resolve_for_donors(meets, [25, 1000], local_epochs=2, rounds=4)


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
