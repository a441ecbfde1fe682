"""The ``gaussian`` mechanism: client-level DP-FedAvg with distributed Gaussian noise."""

from __future__ import annotations

import numpy as np
import pytest

import smpc
from smpc.mechanisms.base import ClientContext
from smpc.mechanisms.gaussian import GaussianDP

D = 4000  # values per contribution: enough for empirical noise std within a few percent


def _setup(k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=D)
    # updates of norm 10 (clipped to C) and 0.5 (kept)
    ups = []
    for i in range(k):
        u = rng.normal(size=D)
        ups.append(u / np.linalg.norm(u) * (10.0 if i % 2 == 0 else 0.5))
    return ref, ups


def _clipped(u: np.ndarray, c: float) -> np.ndarray:
    n = np.linalg.norm(u)
    return u if n <= c else u * (c / n)


def _agg(**opts):
    return smpc.make_aggregator(
        "plaintext", mechanisms=[{"name": "gaussian", **opts}], mechanism_seed=1
    )


def test_sigma_zero_is_the_dp_pipeline_without_noise():
    # the control of a DP-vs-no-DP comparison: clipping, uniform weighting, suppressed
    # metrics and the ledger record as under DP; only the noise is 0 (epsilon = inf)
    ref, ups = _setup()  # updates of norm 10 (clipped to C = 1) and 0.5 (kept)
    xs = [ref + u for u in ups]
    agg = _agg(noise_multiplier=0.0, clip=1.0)
    with agg.ledger.scope(0, "fedavg"):
        got = agg.weighted_mean(xs, [3.0, 1.0, 7.0, 2.0], reference=ref)
        got_sum = agg.sum(xs, reference=ref)
    clipped = [_clipped(u, 1.0) for u in ups]
    # the unweighted mean of the clipped updates, exactly: no noise, weights ignored
    np.testing.assert_allclose(got, ref + np.mean(clipped, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_sum, 4 * ref + np.sum(clipped, axis=0), rtol=0, atol=1e-12)
    entry = agg.ledger.entries[0]
    assert entry.mechanisms[0]["name"] == "gaussian"
    assert entry.mechanisms[0]["noise_multiplier"] == 0.0  # read as epsilon = inf
    # an update of norm 10 C arrives with norm C
    with agg.ledger.scope(1, "fedavg"):
        alone = agg.sum([ref + ups[0]], reference=ref) - ref
    assert np.linalg.norm(alone) == pytest.approx(1.0, rel=1e-12)
    with agg.ledger.scope(1, "metrics"):
        assert agg.weighted_mean([{"loss": 1.0}, {"loss": 3.0}], [1, 3])["loss"] == 0.0
    with agg.ledger.scope(1, "median"), pytest.raises(ValueError, match="gather"):
        agg.gather(xs)
    # it differs from the run without DP by the pipeline only: with updates inside the
    # bound and equal weights, the two agree
    inside = [ref + _clipped(u, 0.5) for u in ups]
    bare = smpc.make_aggregator("plaintext")
    with bare.ledger.scope(0, "fedavg"):
        want = bare.weighted_mean(inside, [1.0] * 4, reference=ref)
    with agg.ledger.scope(2, "fedavg"):
        same = agg.weighted_mean(inside, [1.0] * 4, reference=ref)
    np.testing.assert_allclose(same, want, rtol=0, atol=1e-12)


def test_noise_without_a_seed_comes_from_the_os_csprng(monkeypatch):
    # mechanism_seed=None: no seeded numpy generator is ever built for the noise
    from smpc.mechanisms.secure_random import SecureRandom

    sigma, c, k = 2.0, 1.0, 4
    ref, ups = _setup(k)
    agg = smpc.make_aggregator(
        "plaintext", mechanisms=[{"name": "gaussian", "noise_multiplier": sigma, "clip": c}]
    )
    assert agg.seed is None  # nothing to record
    sources = []
    real = GaussianDP.transform_contribution

    def spy(self, row, ctx):
        sources.append(ctx.generator)
        return real(self, row, ctx)

    def seeded(*args, **kwargs):
        raise AssertionError("a seeded numpy generator was built for the DP noise")

    monkeypatch.setattr(GaussianDP, "transform_contribution", spy)
    monkeypatch.setattr(np.random, "default_rng", seeded)
    monkeypatch.setattr(np.random, "SeedSequence", seeded)
    outs = []
    for r in range(2):
        with agg.ledger.scope(r, "fedavg"):
            outs.append(agg.weighted_mean([ref + u for u in ups], [1.0] * k, reference=ref))
    assert len(sources) == 2 * k and all(isinstance(g, SecureRandom) for g in sources)
    expected = ref + np.mean([_clipped(u, c) for u in ups], axis=0)
    for out in outs:
        assert np.std(out - expected) == pytest.approx(sigma * c / k, rel=0.05)
    assert not np.array_equal(outs[0], outs[1])  # fresh noise each operation


def test_uniform_weighted_mean_is_clipped_mean_plus_calibrated_noise():
    sigma, c, k = 2.0, 1.0, 4
    ref, ups = _setup(k)
    agg = _agg(noise_multiplier=sigma, clip=c)
    with agg.ledger.scope(0, "fedavg"):
        got = agg.weighted_mean([ref + u for u in ups], [1.0, 5.0, 10.0, 100.0], reference=ref)
    # uniform weighting: the weights are ignored; mean of clipped updates over K clients
    expected = ref + np.mean([_clipped(u, c) for u in ups], axis=0)
    noise = got - expected
    assert abs(noise.mean()) < 0.1 * sigma * c / k
    # sensitivity of the mean C/K, noise std sigma*C/K
    assert np.std(noise) == pytest.approx(sigma * c / k, rel=0.05)
    entry = agg.ledger.entries[-1]
    assert entry.mechanisms[0]["name"] == "gaussian"
    assert entry.mechanisms[0]["noise_multiplier"] == sigma


def test_weighted_mode_noise_calibrated_to_max_weight():
    sigma, c, k = 1.5, 1.0, 4
    ref, ups = _setup(k)
    w = np.array([0.25, 0.5, 1.0, 1.0])
    agg = _agg(noise_multiplier=sigma, clip=c, weighting="weighted", max_weight=1.0)
    with agg.ledger.scope(0, "fedavg"):
        got = agg.weighted_mean([ref + u for u in ups], w, reference=ref)
    expected = ref + sum(wi * _clipped(u, c) for wi, u in zip(w, ups, strict=True)) / w.sum()
    # weighted sum sensitivity max_weight*C; its noise std sigma*max_weight*C; then / W
    assert np.std(got - expected) == pytest.approx(sigma * 1.0 * c / w.sum(), rel=0.05)
    with agg.ledger.scope(1, "fedavg"), pytest.raises(ValueError, match="above the public"):
        agg.weighted_mean([ref + u for u in ups], [1.0, 1.0, 2.0, 1.0], reference=ref)


def test_sum_noise_and_each_client_share():
    sigma, c, k = 1.0, 2.0, 4
    ref, ups = _setup(k)
    agg = _agg(noise_multiplier=sigma, clip=c)
    with agg.ledger.scope(0, "fedavg"):
        got = agg.sum([ref + u for u in ups], reference=ref)
    expected = k * ref + sum(_clipped(u, c) for u in ups)
    assert np.std(got - expected) == pytest.approx(sigma * c, rel=0.05)
    # every client's own shared row already carries N(0, sigma^2 C^2 / K)
    m = GaussianDP(sigma, c)
    ctx = ClientContext("sum", 0, k, None, ref, np.random.default_rng(3), 0, "fedavg")
    row = m.transform_contribution(ref + ups[1], ctx)
    assert np.std(row - ref - ups[1]) == pytest.approx(sigma * c / np.sqrt(k), rel=0.05)


def test_min_honest_scales_each_clients_noise():
    sigma, c, k = 1.0, 1.0, 4
    ref, ups = _setup(k)
    agg = _agg(noise_multiplier=sigma, clip=c, min_honest=1)
    with agg.ledger.scope(0, "fedavg"):
        got = agg.sum([ref + u for u in ups], reference=ref)
    expected = k * ref + sum(_clipped(u, c) for u in ups)
    # each client alone carries N(0, sigma^2 C^2): the sum carries K times that variance
    assert np.std(got - expected) == pytest.approx(sigma * c * np.sqrt(k), rel=0.05)
    with pytest.raises(ValueError, match="min_honest"):
        GaussianDP(1.0, 1.0, min_honest=0)


def test_metrics_suppressed_noised_or_revealed():
    res = [{"loss": 1.0, "val": 2.0}, {"loss": 3.0, "val": 4.0}]
    agg = _agg(noise_multiplier=1.0, clip=1.0)
    with agg.ledger.scope(0, "metrics"):
        assert agg.weighted_mean(res, [1, 1]) == {"loss": 0.0, "val": 0.0}
    agg = _agg(noise_multiplier=1.0, clip=1.0, metrics="reveal")
    with agg.ledger.scope(0, "metrics"):
        assert agg.weighted_mean(res, [1, 1]) == {"loss": 2.0, "val": 3.0}
    agg = _agg(noise_multiplier=1e-9, clip=1.0, metrics="noise", metrics_clip=100.0)
    with agg.ledger.scope(0, "metrics"):
        out = agg.weighted_mean(res, [1, 9])  # uniform: unweighted mean
    assert out["loss"] == pytest.approx(2.0, abs=1e-6)
    assert GaussianDP(1.0, 1.0, metrics="noise", metrics_clip=1.0).releases_per_round == 2
    assert GaussianDP(1.0, 1.0).releases_per_round == 1


def test_uncovered_tags_pass_and_gather_is_refused():
    ref, ups = _setup()
    xs = [ref + u for u in ups]
    agg = _agg(noise_multiplier=1.0, clip=1.0)
    with agg.ledger.scope(None, "correction/mean_latent"):
        assert np.array_equal(agg.sum(xs), np.sum(xs, axis=0))
    with agg.ledger.scope(0, "median"), pytest.raises(ValueError, match="gather"):
        agg.gather(xs)
    # tags=None covers every tag, including operations outside any scope
    agg = _agg(noise_multiplier=1.0, clip=1.0, tags=None)
    assert not np.array_equal(agg.sum(xs), np.sum(xs, axis=0))


def test_reproducible_with_mechanism_seed_and_options_validated():
    ref, ups = _setup()
    xs = [ref + u for u in ups]
    outs = []
    for _ in range(2):
        agg = _agg(noise_multiplier=1.0, clip=1.0)
        with agg.ledger.scope(0, "fedavg"):
            outs.append(agg.weighted_mean(xs, [1, 1, 1, 1], reference=ref))
    assert np.array_equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="noise_multiplier"):
        GaussianDP(-1.0, 1.0)
    with pytest.raises(ValueError, match="clip"):
        GaussianDP(1.0, 0.0)
    with pytest.raises(ValueError, match="max_weight"):
        GaussianDP(1.0, 1.0, weighting="weighted")
    with pytest.raises(ValueError, match="metrics_clip"):
        GaussianDP(1.0, 1.0, metrics="noise")
