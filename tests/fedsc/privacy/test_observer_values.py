"""Observer views hold what the observer can compute; positive controls (σ·C → 0).

Under the gaussian mechanism's uniform weighting client c shares ``r + (ũ_c + n_c)/w_c``
and the backend reveals ``r + Σ(ũ_c + n_c)/W``; the weights, W and K are public, so an
observer holds the client's model ``r + ũ_c + n_c`` and the released (rescaled) mean.
With essentially no noise (σ·C = 1e-9) every attack must then read what it reads without
DP. Reading the raw shared values instead gave update relative errors of 1 − 1/w_c
(0.989 for 90 cells) with cosine 1.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedsc.privacy import RunRecord, Truth, observer_view, recording_aggregator, update_recovery
from fedsc.privacy.membership import ShadowDP, train_shadow_rounds
from fedsc.privacy.scbatchprox_rows import scbatchprox_row_recovery
from fedsc.privacy.views import client_model, released_aggregate

#: σ·C = 1e-9 with a clip that never binds (updates here have norms of order 1).
TINY_NOISE = {"name": "gaussian", "noise_multiplier": 1e-9, "clip": 1.0}
EQUAL = [90.0, 90.0, 90.0]


def _states(k: int = 3, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    ref = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)}
    return ref, [{n: v + 0.1 * rng.normal(size=v.shape) for n, v in ref.items()} for _ in range(k)]


def _record(weights, mechanisms=(), *, ref=None, states=None, tag="fedavg") -> RunRecord:
    if states is None:
        ref, states = _states(len(weights))
    agg, rec = recording_aggregator("plaintext", mechanisms=list(mechanisms), mechanism_seed=0)
    with agg:
        with agg.ledger.scope(0, tag):
            agg.weighted_mean(states, weights, reference=ref)
        return RunRecord.from_run(agg, rec)


def _metric(rows, name):
    sel = rows[rows["metric"] == name]["value"]
    assert len(sel), name
    return sel.to_numpy(float)


def test_sigma_to_zero_update_recovery_reads_the_clients_models():
    """Positive control: relative error ≈ 0 and cosine 1, as without DP (old: 0.989)."""
    for mechanisms in ((), (TINY_NOISE,)):
        record = _record(EQUAL, mechanisms)
        rows = update_recovery(observer_view(record, "coordinator"), Truth(record))
        assert _metric(rows, "update_relative_error").max() < 1e-6
        assert _metric(rows, "update_cosine").min() > 1 - 1e-12
    # the client's own row in its view is its model too
    record = _record(EQUAL, (TINY_NOISE,))
    own = observer_view(record, "client", client=1).operations[0]
    np.testing.assert_allclose(own.contributions[1], record.inputs[0][1], atol=1e-8)
    assert np.isnan(own.contributions[[0, 2]]).all()


def test_views_aggregate_is_the_released_one():
    """σ·C → 0: the coordinator's aggregate equals the non-DP one (equal weights); the raw
    shared rows and the revealed aggregate stay available."""
    plain = observer_view(_record(EQUAL), "coordinator").operations[0]
    record = _record(EQUAL, (TINY_NOISE,))
    noised = observer_view(record, "coordinator").operations[0]
    np.testing.assert_allclose(noised.aggregate, plain.aggregate, atol=1e-8)
    np.testing.assert_allclose(noised.contributions, plain.contributions, atol=1e-8)
    np.testing.assert_array_equal(noised.revealed, record.operations[0].aggregate)
    np.testing.assert_array_equal(noised.shared, record.operations[0].contributions)
    ref = noised.reference
    assert np.abs((noised.revealed - ref) * 90 - (noised.aggregate - ref)).max() < 1e-8
    np.testing.assert_array_equal(noised.mean_weights, [1.0, 1.0, 1.0])
    # derived from the mechanism's ledger description when the run did not record it
    bare = observer_view(replace(record, released={}), "coordinator")
    np.testing.assert_allclose(bare.operations[0].aggregate, noised.aggregate, atol=1e-12)
    # unequal weights: uniform weighting releases the unweighted mean of the models
    unequal = _record([10.0, 50.0, 90.0], (TINY_NOISE,))
    op = observer_view(unequal, "coordinator").operations[0]
    np.testing.assert_allclose(op.aggregate, unequal.inputs[0].mean(axis=0), atol=1e-8)
    for observer in ("client", "output_reader"):
        view = observer_view(unequal, observer).operations[0]
        np.testing.assert_allclose(view.aggregate, op.aggregate, atol=1e-12)


def test_weighted_weighting_and_other_tags_are_left_as_shared():
    """Only the uniform weighting divides by the weight; other tags pass through."""
    weighted = {**TINY_NOISE, "weighting": "weighted", "max_weight": 100.0}
    record = _record([10.0, 50.0, 90.0], (weighted,))
    op = observer_view(record, "coordinator").operations[0]
    np.testing.assert_array_equal(op.contributions, op.shared)
    np.testing.assert_array_equal(op.aggregate, op.revealed)
    np.testing.assert_array_equal(op.mean_weights, [10.0, 50.0, 90.0])
    other = _record([10.0, 50.0, 90.0], (TINY_NOISE,), tag="correction/x")
    op = observer_view(other, "coordinator").operations[0]
    np.testing.assert_array_equal(op.contributions, op.shared)
    with pytest.raises(ValueError, match="pass weight="):
        client_model(
            np.ones(3),
            mechanisms=[TINY_NOISE],
            op="weighted_mean",
            tag="fedavg",
            weight=None,
            reference=np.zeros(3),
        )
    assert released_aggregate(
        np.ones(3),
        mechanisms=[],
        op="weighted_mean",
        tag="fedavg",
        n_clients=3,
        total_weight=3.0,
        reference=None,
    ).tolist() == [1.0, 1.0, 1.0]


def test_sigma_to_zero_scbatchprox_rows_are_exact_with_and_without_the_weights():
    """Client b changes only row b (scBatchProx's structure): the rows attack solves the
    released mean with its public weights (all 1 under uniform DP), W-only views too."""
    k, d = 3, 4
    rng = np.random.default_rng(1)
    ref_g, ref_b = rng.normal(size=(k, d)), rng.normal(size=(k, d))
    states = []
    for b in range(k):
        g, be = ref_g.copy(), ref_b.copy()
        g[b] += 0.1 * rng.normal(size=d)
        be[b] += 0.1 * rng.normal(size=d)
        states.append({"beta": be, "gamma": g})
    ref = {"beta": ref_b, "gamma": ref_g}
    weights = [30.0, 60.0, 90.0]
    for mechanisms in ((), (TINY_NOISE,)):
        record = _record(weights, mechanisms, ref=ref, states=states)
        for public in (True, False):
            view = observer_view(record, "coordinator", public_weights=public)
            rows = scbatchprox_row_recovery(view, record)
            if not mechanisms and not public:
                continue  # W only, no DP: the scale is guessed (tested elsewhere)
            assert _metric(rows, "update_relative_error").max() < 1e-6, (mechanisms, public)


@pytest.mark.parametrize(
    ("options", "weights"),
    [
        ({}, [30.0, 60.0, 90.0, 90.0]),
        ({"min_honest": 2}, [30.0, 60.0, 90.0, 90.0]),
        ({"weighting": "weighted", "max_weight": 100.0}, [30.0, 60.0, 90.0, 90.0]),
    ],
)
def test_shadow_noise_is_the_noise_the_attacked_models_carry(options, weights):
    """The adaptive shadows' noise levels match what the gaussian mechanism puts on a
    client's model (coordinator view) and on the released mean (global model)."""
    n = 20_000
    zeros = np.zeros(n)
    mech = {"name": "gaussian", "noise_multiplier": 2.0, "clip": 0.5, **options}
    record = _record(weights, (mech,), ref=zeros, states=[zeros] * len(weights))
    op = observer_view(record, "coordinator").operations[0]
    dp = ShadowDP.of_run(_NoDP, [mech], [int(w) for w in weights])
    assert dp is not None and dp.clip == 0.5
    for c, w in enumerate(weights):
        assert op.contributions[c].std() == pytest.approx(dp.client_noise_std(w), rel=0.03)
    assert op.aggregate.std() == pytest.approx(dp.mean_noise_std(weights), rel=0.03)


class _NoDP:
    """A FedscGen config without DP-SGD (only ``dp`` is read)."""

    dp = None


def test_adaptive_shadow_rounds_clip_and_noise_each_update(one_torch_thread):
    """Client-level pipeline: each round's update is clipped to C, then noised."""
    import torch

    from fedsc.methods.vae import VAE, VAEConfig, derive_generator
    from smpc.flatten import flatten

    cfg = VAEConfig(hidden=(16,), latent=4, batch_size=10, batch_norm=False)
    x = torch.rand(20, 30, generator=derive_generator(0, 1))
    rows = torch.arange(20)

    def shadow(clip, std):
        model = VAE(30, cfg, derive_generator(0, 2))
        start = flatten({k: v.clone() for k, v in model.state_dict().items()})[0]
        dp = ShadowDP(clip=clip, noise_multiplier=1.0, n_clients=3)
        train_shadow_rounds(
            model, x, rows, rounds=1, local_epochs=2, key=(0, 7), dp=dp, noise_std=std
        )
        return flatten(model.state_dict())[0] - start

    free, clipped = shadow(1e6, 0.0), shadow(1e-3, 0.0)
    assert np.linalg.norm(free) > 1e-2
    assert np.linalg.norm(clipped) == pytest.approx(1e-3, rel=1e-3)
    np.testing.assert_allclose(clipped / 1e-3, free / np.linalg.norm(free), atol=1e-4)
    noised = shadow(1e-3, 0.05)
    assert (noised - clipped).std() == pytest.approx(0.05, rel=0.1)


def test_adaptive_shadows_under_cell_level_dp_run_dp_sgd(one_torch_thread):
    """Cell-level pipeline: the run's σ and clip (resolved like the run's), DP-SGD rounds."""
    import torch

    from fedsc.methods.fedscgen import FedScGenConfig
    from fedsc.methods.vae import VAE, derive_generator
    from smpc.flatten import flatten

    cfg = FedScGenConfig(
        hidden=(16,),
        latent=4,
        batch_size=10,
        batch_norm=False,
        dp={"level": "cell", "noise_multiplier": 50.0, "clip": 0.5, "delta": 1e-3},
    )
    dp = ShadowDP.of_run(cfg, [], [20, 20])
    assert dp is not None and dp.clip is None and dp.dp_sgd is not None
    assert (dp.dp_sgd.noise_multiplier, dp.dp_sgd.clip, dp.dp_sgd.simulated) == (50.0, 0.5, True)
    assert ShadowDP.of_run(FedScGenConfig(), [], [20, 20]) is None  # no DP: no pipeline
    x = torch.rand(20, 30, generator=derive_generator(0, 1))

    def update(pipeline):
        model = VAE(30, cfg, derive_generator(0, 2))
        start = flatten({k: v.clone() for k, v in model.state_dict().items()})[0]
        train_shadow_rounds(
            model,
            x,
            torch.arange(20),
            rounds=1,
            local_epochs=2,
            key=(0, 7),
            dp=pipeline,
            noise_std=0.0,
        )
        return flatten(model.state_dict())[0] - start

    free, noised = update(ShadowDP()), update(dp)
    np.testing.assert_array_equal(noised, update(dp))  # the attacker's own seeded noise
    cos = float(free @ noised) / float(np.linalg.norm(free) * np.linalg.norm(noised))
    assert cos < 0.5  # sigma = 50 per minibatch gradient: not the non-DP update


def test_uniform_dp_releases_no_cell_counts_but_w_only_views_still_get_the_rows():
    """W only (crypten's coordinator) under uniform DP: the released mean is unweighted,
    so the rows come out exactly (σ·C → 0) and the counts only set the number of Adam
    steps; equal-step counts tie and attack (a') keeps the equal-share guess W / K."""
    from fedsc.methods.scbatchprox import ScBatchProxConfig
    from fedsc.privacy import run_attacks
    from fedsc.privacy.runs import record_scbatchprox

    rng = np.random.default_rng(0)
    sizes = [20, 30, 40]  # 18, 27, 36 training cells; one minibatch each
    z = np.concatenate([rng.normal(loc=i, size=(n, 5)) for i, n in enumerate(sizes)])
    labels = np.repeat(["a", "b", "c"], sizes)
    record, _ = record_scbatchprox(
        z, labels, mechanisms=[TINY_NOISE], mechanism_seed=0, config=ScBatchProxConfig(rounds=3)
    )
    view = observer_view(record, "coordinator", public_weights=False)
    rows = run_attacks(view, Truth(record), ["scbatchprox_rows", "scbatchprox_weights"])
    assert _metric(rows, "update_relative_error").max() < 1e-4
    np.testing.assert_array_equal(_metric(rows, "estimated_weight"), [27.0, 27.0, 27.0])
