"""σ = 0, the control of DP-vs-no-DP comparisons, and the DP settings a run records."""

from __future__ import annotations

import logging
import math

import anndata as ad
import numpy as np
import pytest

import smpc
from fedsc.errors import FedscInputError
from fedsc.methods import dp_sgd
from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen
from fedsc.privacy.accounting import DPConfig, client_level_from_ledger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"hidden": (16,), "latent": 3, "batch_size": 20, "rounds": 1, "local_epochs": 1}
KEYS = {"batch_key": "batch", "labels_key": "cell_type"}


@pytest.fixture(autouse=True)
def _quiet_absl():
    logging.getLogger("absl").setLevel(logging.ERROR)


def _adata(cells: int = 60, genes: int = 12) -> ad.AnnData:
    """Three batches of ``cells`` cells, two cell types, shifted per batch."""
    rng = np.random.default_rng(0)
    batches = np.repeat(["a", "b", "c"], cells)
    types = np.tile(["t0", "t1"], 3 * cells // 2)
    x = rng.gamma(2.0, 1.0, size=(3 * cells, genes))
    x += (types == "t1")[:, None] * 2.0 + (batches == "b")[:, None] * 0.5
    obs = {"batch": batches, "cell_type": types}
    return ad.AnnData(np.log1p(x).astype(np.float32), obs=obs)


def test_sigma_zero_is_accepted_and_accounted_as_never_private():
    zero = DPConfig(noise_multiplier=0.0, clip=1.0, delta=1e-3)
    assert zero.epsilon(8) == math.inf and zero.resolve(8) is zero
    assert zero.mechanism_spec()["noise_multiplier"] == 0.0
    assert DPConfig(noise_multiplier=0.0, level="cell").epsilon(100, 0.1) == math.inf
    with pytest.raises(FedscInputError, match=r"noise_multiplier=0 .* cannot meet target"):
        DPConfig(noise_multiplier=0.0, target_epsilon=4.0)
    with pytest.raises(FedscInputError, match="must be >= 0, got -1"):
        DPConfig(noise_multiplier=-1.0)
    # what a sigma = 0 run's ledger says: every state aggregation released without noise
    agg = smpc.make_aggregator("plaintext", mechanisms=[zero.mechanism_spec()])
    ref = np.zeros(5)
    for r in range(2):
        with agg.ledger.scope(r, "fedavg"):
            agg.weighted_mean([ref + 10.0, ref - 1.0, ref], [1.0, 2.0, 3.0], reference=ref)
    account = client_level_from_ledger(agg.ledger, 1e-3)
    assert account.epsilon == math.inf and account.releases == {0.0: 2}


def test_fedscgen_records_the_sigma_that_ran():
    # client level: the gaussian mechanism's (resolved) sigma, not DPConfig's default 1.0
    a = _adata()
    sigma = 0.276
    mech = {"name": "gaussian", "noise_multiplier": sigma, "clip": 0.5}
    cfg = FedScGenConfig(**TINY, dp={"level": "client", "clip": 0.5, "delta": 1e-3})
    with smpc.make_aggregator("plaintext", mechanisms=[mech]) as agg:
        res = run_fedscgen(a, **KEYS, aggregator=agg, config=cfg, seed=0)
    rec = a.uns["fedscgen"]["dp"]
    assert rec["noise_multiplier"] == sigma and rec["clip"] == 0.5
    assert rec["normalisation"] == dp_sgd.NORMALISATION and res.info["dp"] == rec
    # without a gaussian mechanism nothing would be noised: refused before training
    b = _adata()
    with pytest.raises(FedscInputError, match="adds no noise by itself"):
        run_fedscgen(b, **KEYS, aggregator="plaintext", config=cfg, seed=0)
    assert "fedscgen" not in b.uns


def test_fedscgen_cell_level_records_the_calibrated_sigma_and_the_relation():
    a = _adata()
    dp = {"level": "cell", "target_epsilon": 1.0, "clip": 1.0, "delta": 1e-3}
    cfg = FedScGenConfig(**TINY, dp=dp)
    res = run_fedscgen(a, **KEYS, aggregator="plaintext", config=cfg, seed=0)
    rec = a.uns["fedscgen"]["dp"]
    # 54 training cells per client (ceil(0.9 * 60)), B = 20: 2 steps, q = 20/54
    steps, q = rec["steps"], rec["sampling_rate"]
    assert (steps, q) == (2, pytest.approx(20 / 54))
    calibrated = DPConfig(None, 1.0, 1e-3, target_epsilon=1.0, level="cell").resolve(steps, q)
    assert rec["noise_multiplier"] == calibrated.noise_multiplier != 1.0
    assert rec["relation"] == dp_sgd.RELATION and rec["accountant"] == "pld"
    assert rec["epsilon"] == calibrated.epsilon(steps, q) <= 1.0
    assert rec["epsilon"] == pytest.approx(1.0, rel=1e-2)
    assert res.info["dp"] == rec


def test_run_fedscgen_refuses_client_dp_without_the_gaussian_mechanism():
    """A direct run_fedscgen call with client-level dp and a bare aggregator trained the DP
    model variant with no noise and no epsilon; it is refused before any training."""
    import smpc
    from fedsc.datasets import simulate
    from fedsc.errors import FedscInputError
    from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen

    adata = simulate(60, 30, n_batches=2, n_cell_types=2, seed=0)
    config = FedScGenConfig(rounds=1, local_epochs=1, hidden=[8], latent=2, dp={"level": "client"})
    for aggregator in ("plaintext", smpc.make_aggregator("plaintext")):
        with pytest.raises(FedscInputError, match="adds no noise by itself"):
            run_fedscgen(
                adata,
                batch_key="batch",
                labels_key="cell_type",
                aggregator=aggregator,
                config=config,
            )
