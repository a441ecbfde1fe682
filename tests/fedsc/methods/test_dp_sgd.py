"""Cell-level DP-SGD (Opacus) for FedscGen's local training, on a tiny VAE."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from fedsc.errors import FedscInputError
from fedsc.federation import LocalResult
from fedsc.methods import dp_sgd
from fedsc.methods.fedscgen import FedScGenConfig, FedScGenMethod
from fedsc.methods.vae import INIT, VAE, VAEConfig, derive_generator, make_optimizer
from fedsc.privacy.accounting import DPConfig, epsilon

pytestmark = pytest.mark.usefixtures("dp_one_thread")

GENES = 12


def _data(n: int = 480, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    w = torch.randn(3, GENES, generator=g)
    return (z @ w + 0.1 * torch.randn(n, GENES, generator=g)).float()


def _cfg(**kw) -> VAEConfig:
    return VAEConfig(**{"hidden": (32,), "latent": 3, "batch_size": 32, "lr": 1e-2, **kw})


def _dp_model(cfg: VAEConfig) -> VAE:
    return dp_sgd.to_dp_variant(VAE(GENES, cfg, derive_generator(0, INIT)))


def test_dp_variant_replaces_batch_norm_by_group_norm():
    model = _dp_model(_cfg())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 2 and all(m.num_groups == 2 for m in norms)  # 32 units: 2 x 16
    assert dp_sgd._groups(800) == 32  # what ModuleValidator.fix picks for the real VAE
    assert dp_sgd._groups(10) == 1
    assert "running_mean" not in " ".join(model.state_dict())
    assert dp_sgd.NORMALISATION == "GroupNorm (DP variant)"
    with pytest.raises(FedscInputError, match="DP variant"):
        dp_sgd.local_train(
            VAE(GENES, _cfg(), derive_generator(0, INIT)),
            torch.optim.Adam([nn.Parameter(torch.zeros(1))]),
            _data(),
            torch.arange(100),
            seed=0,
            client=0,
            round_index=0,
            local_epochs=1,
            dp=DPConfig(1.0, 1.0, 1e-4, level="cell"),
        )


def test_trains_and_reports_the_accountants_epsilon():
    x = _data()
    cfg = _cfg()
    model = _dp_model(cfg)
    opt = make_optimizer(model)
    train = torch.arange(400)
    dp = DPConfig(noise_multiplier=0.8, clip=1.0, delta=1e-4, level="cell")
    losses = []
    for r in range(3):
        up = dp_sgd.local_train(
            model, opt, x, train, seed=0, client=2, round_index=r, local_epochs=2, dp=dp
        )
        losses += up.losses
    print("DP-SGD epoch losses:", [round(v, 3) for v in losses], "epsilon:", up.epsilon)
    assert losses[-1] < 0.6 * losses[0]
    # 400 cells, batch 32: 12 steps per epoch at q = 32/400; 3 rounds x 2 epochs
    assert up.steps == 24 and up.sampling_rate == pytest.approx(0.08)
    # replace-one with n public (the weight reveals n): PLD, the only accountant for it
    assert dp.accountant == "pld" and dp.relation == "replace_one"
    want = epsilon(0.8, 3 * 24, 0.08, 1e-4, accountant="pld", relation="replace_one")
    assert up.epsilon == want == dp.epsilon(72, 0.08)
    assert up.epsilon == dp_sgd.cell_level_epsilon(dp, 400, 32, local_epochs=2, rounds=3)
    assert set(up.state) == set(model.state_dict())

    def train_all(conf: DPConfig) -> dict:
        m = _dp_model(cfg)
        o = make_optimizer(m)
        for r in range(3):
            u = dp_sgd.local_train(
                m, o, x, train, seed=0, client=2, round_index=r, local_epochs=2, dp=conf
            )
        return u.state

    # fresh noise and batches by default: the same (published) seed does not give the
    # same state, so nobody can regenerate the noise from it
    again = train_all(dp)
    assert not any(torch.equal(up.state[k], again[k]) for k in up.state if "weight" in k)
    # the simulated mode is reproducible (debugging and tests only)
    sim = dataclasses.replace(dp, simulated=True)
    a, b = train_all(sim), train_all(sim)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_per_cell_gradients_are_clipped():
    cfg = _cfg()
    model = _dp_model(cfg)
    clip = 0.05
    dp = DPConfig(noise_multiplier=1.0, clip=clip, delta=1e-4, level="cell")
    module, dp_opt = dp_sgd.make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        dp,
        8,
        torch.Generator(),
        clipping="per_sample",
    )
    xb = _data()[:8]
    recon, mu, logvar = module(xb, torch.Generator().manual_seed(1))
    dp_sgd.dp_vae_loss(recon, xb, mu, logvar, cfg.kl_weight, 8).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    per_cell = torch.cat([p.grad_sample.reshape(8, -1) for p in params], dim=1)
    norms = per_cell.norm(dim=1)
    assert (norms > clip).all()  # every raw per-cell gradient exceeds the bound
    dp_opt.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.reshape(-1) for p in params])
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = per_cell * factor[:, None]
    assert torch.allclose(summed, clipped.sum(0), atol=1e-6)
    assert (clipped.norm(dim=1) <= clip * (1 + 1e-5)).all()
    assert dp_opt.noise_multiplier == 1.0 and dp_opt.max_grad_norm == clip
    module.to_standard_module()
    # ghost clipping computes the same per-cell norms without materialising gradients,
    # and its second backward pass yields the same sum of clipped gradients
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    ghost, ghost_opt = dp_sgd.make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), dp, 8, torch.Generator()
    )
    recon, mu, logvar = ghost(xb, torch.Generator().manual_seed(1))
    terms = dp_sgd.per_cell_loss(recon, xb, mu, logvar, cfg.kl_weight, 8)
    DPTensorFastGradientClipping(ghost, ghost_opt, terms, "mean").backward()
    assert torch.allclose(ghost.per_sample_gradient_norms, norms, rtol=1e-4)
    ghost_sum = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(ghost_sum, clipped.sum(0), atol=1e-6)
    ghost.to_standard_module()


def test_ghost_and_per_sample_clipping_train_alike():
    x = _data()
    # the same noise and batches for both (simulated: seeded from the run seed)
    dp = DPConfig(noise_multiplier=0.8, clip=1.0, delta=1e-4, level="cell", simulated=True)
    states = []
    for clipping in ("ghost", "per_sample"):
        model = _dp_model(_cfg())
        up = dp_sgd.local_train(
            model,
            make_optimizer(model),
            x,
            torch.arange(400),
            seed=0,
            client=0,
            round_index=0,
            local_epochs=1,
            dp=dp,
            clipping=clipping,
        )
        states.append(up.state)
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], atol=1e-4), k


def test_empty_poisson_batches_still_step():
    x = _data(40)
    cfg = _cfg(batch_size=2)
    model = _dp_model(cfg)
    up = dp_sgd.local_train(
        model,
        make_optimizer(model),
        x,
        torch.arange(40),
        seed=1,
        client=0,
        round_index=0,
        local_epochs=3,
        dp=DPConfig(1.0, 1.0, 1e-3, level="cell"),
    )
    assert up.steps == 60 and up.sampling_rate == pytest.approx(0.05)


def test_dp_off_is_fedscgens_non_dp_local_update():
    x = _data(200)
    cfg = FedScGenConfig(hidden=(16,), latent=3, batch_size=16, local_epochs=2, rounds=2)
    method = FedScGenMethod({0: x}, cfg, seed=5)
    state0 = method.initial_state()
    want = method.local_update(0, state0, 1, torch.Generator())
    model = VAE(GENES, cfg, derive_generator(5, INIT))
    model.load_state_dict(state0)
    train_idx = method.splits[0][0]
    got = dp_sgd.local_train(
        model,
        make_optimizer(model),
        x,
        train_idx,
        seed=5,
        client=0,
        round_index=1,
        local_epochs=2,
        dp=None,
    )
    assert got.epsilon == float("inf") and got.sampling_rate is None
    assert set(got.state) == set(want.state)
    assert all(torch.equal(got.state[k], want.state[k]) for k in want.state)
    assert got.losses[-1] == want.metrics["train_loss"]


class _DPFedScGen(FedScGenMethod):
    """How FedscGen's local update calls the DP trainer (the wiring the runner needs)."""

    def __init__(self, data, config, seed, dp):
        super().__init__(data, config, seed)
        self.dp = dp
        self.model = dp_sgd.to_dp_variant(self.model)  # same linear init, GroupNorm
        self._initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.dp_steps: dict[int, tuple[int, float]] = {}

    def local_update(self, client, global_state, round_index, generator):
        self.model.load_state_dict(global_state)
        up = dp_sgd.local_train(
            self.model,
            make_optimizer(self.model),
            self.data[client],
            self.splits[client][0],
            seed=self.seed,
            client=client,
            round_index=round_index,
            local_epochs=self.config.local_epochs,
            dp=self.dp,
        )
        self.dp_steps[client] = (up.total_steps, up.sampling_rate)
        # no metrics under DP: the losses are un-noised functions of the cells
        return LocalResult(up.state, float(self.n_train(client)), {})


def test_fedscgen_federation_with_cell_level_dp():
    import smpc
    from fedsc.federation import run_federation

    data = {0: _data(300, seed=1), 1: _data(200, seed=2)}
    cfg = FedScGenConfig(hidden=(32,), latent=3, batch_size=20, lr=1e-2, rounds=2, local_epochs=1)
    dp = DPConfig(2.0, 1.0, 1e-4, level="cell")  # sigma 2: the PLD accountant is fast there
    for x in data.values():
        dp.validate_for(len(x))
    method = _DPFedScGen(data, cfg, seed=0, dp=dp)
    with smpc.make_aggregator("plaintext") as agg:
        result = run_federation(method, [0, 1], agg, rounds=cfg.rounds, seed=0)
    assert result.history == [{"round": 0}, {"round": 1}]
    want = max(
        dp_sgd.cell_level_epsilon(dp, method.n_train(c), 20, cfg.local_epochs, cfg.rounds)
        for c in data
    )
    assert max(method.epsilon.values()) == want
    model = dp_sgd.dp_model_from_state(result.state, GENES, cfg)
    assert torch.isfinite(model.encode(data[0])[0]).all()


def test_resolve_for_clients_meets_the_target_for_every_client():
    dp = DPConfig(noise_multiplier=None, clip=1.0, delta=1e-4, target_epsilon=3.0, level="cell")
    sizes = [400, 900]
    fixed = dp_sgd.resolve_for_clients(dp, sizes, 32, local_epochs=2, rounds=3)
    eps = [dp_sgd.cell_level_epsilon(fixed, n, 32, 2, 3) for n in sizes]
    assert max(eps) == pytest.approx(3.0, rel=1e-2) and max(eps) <= 3.0 + 1e-3
    with pytest.raises(FedscInputError, match="not below 1/n"):
        dp_sgd.resolve_for_clients(DPConfig(1.0, 1.0, 1e-2, level="cell"), [400], 32, 1, 1)


@pytest.mark.parametrize("clipping", ["ghost", "per_sample"])
def test_noise_and_sampling_come_from_the_os_csprng(monkeypatch, clipping):
    # not simulated: no seeded generator draws the noise or the minibatches; Opacus'
    # torch.normal path is never taken, and every step draws its noise and its Poisson
    # sample from SecureRandom
    import opacus.optimizers.optimizer as opacus_optimizer
    import opacus.optimizers.optimizer_fast_gradient_clipping as opacus_ghost

    from smpc.mechanisms.secure_random import SecureRandom

    def seeded_noise(*args, **kwargs):
        raise AssertionError("Opacus drew the noise from a (seeded) torch generator")

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", seeded_noise)
    monkeypatch.setattr(opacus_ghost, "_generate_noise", seeded_noise)
    keys = []
    real_derive = dp_sgd.derive_generator

    def derive(seed, *key):
        keys.append(key)
        return real_derive(seed, *key)

    monkeypatch.setattr(dp_sgd, "derive_generator", derive)
    draws = []
    real_random, real_normal = SecureRandom.random, SecureRandom.standard_normal_torch
    monkeypatch.setattr(
        SecureRandom,
        "random",
        lambda self, size=None: draws.append(("sample", size)) or real_random(self, size),
    )
    monkeypatch.setattr(
        SecureRandom,
        "standard_normal_torch",
        lambda self, shape, **kw: (
            draws.append(("noise", tuple(shape))) or real_normal(self, shape, **kw)
        ),
    )
    cfg = _cfg()
    model = _dp_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    dp = DPConfig(noise_multiplier=2.0, clip=1.0, delta=1e-4, level="cell")
    up = dp_sgd.local_train(
        model,
        make_optimizer(model),
        _data(),
        torch.arange(160),
        seed=0,
        client=0,
        round_index=0,
        local_epochs=1,
        dp=dp,
        clipping=clipping,
    )
    assert up.steps == 5  # 160 cells, batch 32
    assert draws == [("sample", 160), ("noise", (n_params,))] * 5
    assert all(dp_sgd.DP_NOISE not in key for key in keys)  # no seeded noise generator
    assert any(not torch.equal(before[k], up.state[k]) for k in before)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_sigma_zero_keeps_opacus_clipping_without_noise():
    # the cell-level control: per-cell clipping as under DP, the noise exactly 0, eps = inf
    from smpc.mechanisms.secure_random import SecureRandom

    cfg = _cfg()
    xb = _data()[:8]
    grads = {}
    for sigma in (0.0, 1.0):
        model = _dp_model(cfg)
        dp = DPConfig(noise_multiplier=sigma, clip=0.05, delta=1e-4, level="cell")
        module, dp_opt = dp_sgd.make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            dp,
            8,
            SecureRandom(),
            clipping="per_sample",
        )
        assert isinstance(dp_opt, dp_sgd.SecureDPOptimizer)
        recon, mu, logvar = module(xb, torch.Generator().manual_seed(1))
        dp_sgd.dp_vae_loss(recon, xb, mu, logvar, cfg.kl_weight, 8).backward()
        dp_opt.clip_and_accumulate()
        params = [p for p in model.parameters() if p.requires_grad]
        summed = torch.cat([p.summed_grad.reshape(-1) for p in params])
        per_cell = torch.cat([p.grad_sample.reshape(8, -1) for p in params], dim=1)
        assert (per_cell.norm(dim=1) > 0.05).all()  # every cell's gradient is clipped
        dp_opt.add_noise()
        grads[sigma] = torch.cat([p.grad.reshape(-1) for p in params]) - summed
        module.to_standard_module()
    assert torch.equal(grads[0.0], torch.zeros_like(grads[0.0]))  # no noise at all
    assert grads[1.0].std().item() == pytest.approx(0.05, rel=0.1)  # N(0, (sigma C)^2)
    zero = DPConfig(noise_multiplier=0.0, clip=1.0, delta=1e-4, level="cell")
    assert dp_sgd.cell_level_epsilon(zero, 400, 32, 2, 3) == float("inf")


def test_cell_level_epsilon_is_replace_one_with_n_public():
    # n = 90 training cells, B = 30: 3 steps per epoch, q = 1/3; n is revealed as the
    # FedAvg weight, so the neighbours are the datasets of 90 cells with one replaced
    import dp_accounting
    from dp_accounting import pld

    dp = DPConfig(noise_multiplier=3.0, clip=1.0, delta=1e-3, level="cell")
    ours = dp_sgd.cell_level_epsilon(dp, 90, 30, local_epochs=2, rounds=4)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(1 / 3, dp_accounting.GaussianDpEvent(3.0)), 24
    )
    replace = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    add_remove = pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    want = replace.compose(event).get_epsilon(1e-3)
    assert ours == pytest.approx(want, rel=1e-9)
    assert ours > 1.2 * add_remove.compose(event).get_epsilon(1e-3)
    assert dp_sgd.RELATION.startswith("cell: replace-one with n public")
    # dp_accounting's RDP accountant cannot account replace-one for the subsampled
    # Gaussian: refused rather than silently reported add-or-remove
    with pytest.raises(FedscInputError, match="accountant: pld"):
        DPConfig(1.0, 1.0, 1e-3, level="cell", accountant="rdp")
    with pytest.raises(FedscInputError, match="accountant='pld'"):
        epsilon(2.0, 24, 1 / 3, 1e-3, accountant="rdp", relation="replace_one")
