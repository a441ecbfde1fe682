"""The scGen/FedscGen VAE: architecture, loss, seeding, minibatching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsc.errors import FedscInputError
from fedsc.methods.vae import (
    VAE,
    VAEConfig,
    decode,
    derive_generator,
    encode_mean,
    make_optimizer,
    split_train_validation,
    train_epoch,
    vae_loss,
    validation_loss,
)

CFG = VAEConfig(hidden=(16, 12), latent=3, batch_size=8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 40, genes: int = 7, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.gamma(2.0, 1.0, size=(n, genes)).astype(np.float32))


def _model(genes: int = 7, seed: int = 0, cfg: VAEConfig = CFG) -> VAE:
    return VAE(genes, cfg, derive_generator(seed, 1))


def test_defaults_follow_fedscgen_table():
    cfg = VAEConfig()
    assert cfg.hidden == (800, 800) and cfg.latent == 10
    assert cfg.negative_slope == 0.3 and cfg.dropout == 0.05
    assert cfg.kl_weight == 1e-6 and cfg.lr == 1e-3 and cfg.batch_size == 50
    assert cfg.validation_fraction == 0.1 and cfg.batch_norm
    assert VAEConfig(hidden=[4, 5]).to_dict()["hidden"] == [4, 5]


def test_architecture_first_layer_has_batch_norm_and_mirror_decoder():
    m = _model()
    assert [b["linear"].out_features for b in m.encoder] == [16, 12]
    assert all("norm" in b for b in m.encoder)  # the first layer too (no scArches quirk)
    assert [b["linear"].in_features for b in m.decoder] == [3, 12]
    assert [b["linear"].out_features for b in m.decoder] == [12, 16]
    assert m.mu.out_features == 3 and m.logvar.out_features == 3
    assert (m.out.in_features, m.out.out_features) == (16, 7)
    assert "norm.running_mean" in "".join(m.state_dict())
    assert any(k.endswith("num_batches_tracked") for k in m.state_dict())
    no_bn = _model(cfg=VAEConfig(hidden=(4,), latent=2, batch_norm=False))
    assert not any("norm" in k for k in no_bn.state_dict())


def test_init_from_generator_only_and_global_rng_untouched():
    before = torch.random.get_rng_state()
    a, b, c = _model(seed=1), _model(seed=1), _model(seed=2)
    x = _data()
    opt = make_optimizer(a)
    train_epoch(a, opt, x, derive_generator(0, 5))
    validation_loss(a, x)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in b.state_dict().items())
    sb, sc = b.state_dict(), c.state_dict()
    assert not torch.equal(sb["mu.weight"], sc["mu.weight"])
    # nn.Linear's default scheme: |w| <= 1/sqrt(fan_in)
    assert b.mu.weight.abs().max() <= 1 / math.sqrt(12)


def test_loss_is_mean_mse_plus_alpha_summed_kl():
    g = torch.Generator().manual_seed(0)
    x, recon = torch.rand(5, 4, generator=g), torch.rand(5, 4, generator=g)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    mse = ((recon - x) ** 2).mean()
    kl = sum(
        -0.5 * (1 + logvar[i, j] - mu[i, j] ** 2 - math.exp(logvar[i, j]))
        for i in range(5)
        for j in range(3)
    )
    got = vae_loss(recon, x, mu, logvar, kl_weight=0.25)
    assert got.item() == pytest.approx((mse + 0.25 * kl).item(), rel=1e-6)


def test_split_is_fixed_ninety_ten():
    tr, va = split_train_validation(95, 0.1, derive_generator(3, 2))
    assert len(tr) == 86 and len(va) == 9  # ceil(0.9 * 95)
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(95))
    tr2, _ = split_train_validation(95, 0.1, derive_generator(3, 2))
    tr3, _ = split_train_validation(95, 0.1, derive_generator(4, 2))
    assert torch.equal(tr, tr2) and not torch.equal(tr, tr3)


def test_epoch_drops_last_batch_reshuffles_and_uses_only_given_rows():
    x = _data(n=60)
    idx = torch.arange(0, 60, 2)  # 30 training rows -> 3 full batches of 8
    x_nan = x.clone()
    x_nan[1::2] = float("nan")  # rows outside `indices` must never be touched
    m = _model()
    opt = make_optimizer(m)
    steps = []
    orig = opt.step
    opt.step = lambda *a, **k: (steps.append(1), orig(*a, **k))[1]
    loss = train_epoch(m, opt, x_nan, derive_generator(0, 9), idx)
    assert len(steps) == 3 and math.isfinite(loss)
    assert all(torch.isfinite(v).all() for v in m.state_dict().values())

    def one_epoch(gen_seed: int) -> dict[str, torch.Tensor]:
        mm = _model()
        train_epoch(mm, make_optimizer(mm), x, derive_generator(gen_seed, 9), idx)
        return mm.state_dict()

    s1, s2, s3 = one_epoch(0), one_epoch(0), one_epoch(1)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["mu.weight"], s3["mu.weight"])


def test_too_few_cells_for_a_minibatch_is_an_error():
    m = _model()
    with pytest.raises(FedscInputError, match="batch_size"):
        train_epoch(m, make_optimizer(m), _data(n=5), derive_generator(0, 1))


def test_training_forward_needs_a_generator():
    m = _model()
    m.train()
    with pytest.raises(ValueError, match="Generator"):
        m(_data(n=8))


def test_encode_decode_validation_are_deterministic_eval_passes():
    m = _model()
    x = _data()
    z = encode_mean(m, x)
    assert not m.training
    assert torch.equal(z, m.encode(x)[0])
    assert torch.equal(encode_mean(m, x), z)
    assert decode(m, z).shape == x.shape
    recon, mu, logvar = m(x)
    expected = ((recon - x) ** 2).mean() + CFG.kl_weight * (
        -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp())
    ) * (CFG.batch_size / x.shape[0])
    assert validation_loss(m, x) == pytest.approx(expected.item(), rel=1e-5)
    assert math.isnan(validation_loss(m, x[:0]))
    with pytest.raises(FedscInputError, match="genes"):
        encode_mean(m, x[:, :3])


@pytest.mark.parametrize(
    "bad", [{"hidden": ()}, {"dropout": 1.0}, {"batch_size": 1}, {"lr": 0}, {"latent": 0}]
)
def test_invalid_config_is_named(bad):
    with pytest.raises(FedscInputError, match=next(iter(bad))):
        VAEConfig(**bad)
