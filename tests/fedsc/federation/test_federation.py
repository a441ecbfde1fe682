"""The federated engine: rounds, FedAvg weighting, seeding, no global RNG side effects."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import smpc
from fedsc.federation import LocalResult, client_generators, run_federation


class ConstantMethod:
    """Client c returns a fixed state and weight, whatever the global state."""

    def __init__(self, states, weights):
        self.states, self.weights = states, weights
        self.seen_globals = []

    def initial_state(self):
        return {"w": torch.zeros(2)}

    def local_update(self, client, global_state, round_index, generator):
        self.seen_globals.append((round_index, client, global_state["w"].clone()))
        return LocalResult({"w": self.states[client]}, weight=self.weights[client])


def test_fedavg_weighted_by_client_weight_hand_case():
    method = ConstantMethod([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 4.0])], [1.0, 3.0])
    with smpc.make_aggregator("plaintext") as agg:
        res = run_federation(method, [0, 1], agg, rounds=2, seed=0)
    # (1 * [1, 0] + 3 * [0, 4]) / 4 = [0.25, 3.0]
    torch.testing.assert_close(res.state["w"], torch.tensor([0.25, 3.0]))
    # round 1 broadcast the round-0 aggregate to both clients
    assert [r for r, _, _ in method.seen_globals] == [0, 0, 1, 1]
    torch.testing.assert_close(method.seen_globals[2][2], torch.tensor([0.25, 3.0]))
    assert [e.round for e in agg.ledger.entries] == [0, 1]
    assert all(e.tag == "fedavg" for e in agg.ledger.entries)


def test_fixed_weights_override():
    method = ConstantMethod([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 4.0])], [1.0, 3.0])
    with smpc.make_aggregator("plaintext") as agg:
        res = run_federation(method, [0, 1], agg, rounds=1, seed=0, weights=[1, 1])
    torch.testing.assert_close(res.state["w"], torch.tensor([0.5, 2.0]))


def test_generators_depend_on_seed_round_client_only():
    a = client_generators(7, 3, [0, 1, 2])
    b = client_generators(7, 3, [2, 0])
    assert torch.equal(torch.rand(4, generator=a[2]), torch.rand(4, generator=b[0]))
    c = client_generators(8, 3, [0])
    d = client_generators(7, 4, [0])
    x = torch.rand(4, generator=client_generators(7, 3, [0])[0])
    assert not torch.equal(x, torch.rand(4, generator=c[0]))
    assert not torch.equal(x, torch.rand(4, generator=d[0]))


def test_no_global_rng_side_effects():
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 - the global RNG is what we check
    expected_t, expected_np = torch.rand(3), np.random.rand(3)  # noqa: NPY002
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 - the global RNG is what we check
    method = ConstantMethod([torch.ones(2), torch.ones(2)], [1.0, 1.0])
    with smpc.make_aggregator("plaintext") as agg:
        run_federation(method, [0, 1], agg, rounds=3, seed=5)
    assert torch.equal(torch.rand(3), expected_t)
    assert np.array_equal(np.random.rand(3), expected_np)  # noqa: NPY002


def test_bad_arguments():
    method = ConstantMethod([torch.ones(2)], [1.0])
    with smpc.make_aggregator("plaintext") as agg:
        with pytest.raises(ValueError, match="rounds must be >= 1"):
            run_federation(method, [0], agg, rounds=0, seed=0)
        with pytest.raises(ValueError, match="at least one client"):
            run_federation(method, [], agg, rounds=1, seed=0)


def test_snapshots_are_copies():
    method = ConstantMethod([torch.tensor([1.0, 2.0])], [1.0])
    with smpc.make_aggregator("plaintext") as agg:
        res = run_federation(method, [0], agg, rounds=3, seed=0, snapshot_every_round=True)
    assert len(res.snapshots) == 3
    res.snapshots[0]["w"].add_(100)
    assert torch.equal(res.state["w"], torch.tensor([1.0, 2.0]))


class MetricMethod(ConstantMethod):
    """ConstantMethod that also reports per-client losses."""

    def __init__(self, states, weights, losses):
        super().__init__(states, weights)
        self.losses = losses

    def local_update(self, client, global_state, round_index, generator):
        res = super().local_update(client, global_state, round_index, generator)
        metrics = {"loss": self.losses[client] + round_index, "acc": 0.5 * client}
        return LocalResult(res.state, res.weight, metrics)


def test_history_holds_only_weighted_means_computed_through_the_aggregator(caplog):
    method = MetricMethod([torch.ones(2), torch.zeros(2)], [1.0, 3.0], losses=[2.0, 6.0])
    with (
        smpc.make_aggregator("plaintext") as agg,
        caplog.at_level(logging.INFO, logger="fedsc.federation.engine"),
    ):
        res = run_federation(method, [0, 1], agg, rounds=2, seed=0)
    # loss: (1 * 2 + 3 * 6) / 4 = 5 in round 0, +1 in round 1; acc: (0 + 3 * 0.5) / 4
    assert res.history == [
        {"round": 0, "acc": 0.375, "loss": 5.0},
        {"round": 1, "acc": 0.375, "loss": 6.0},
    ]
    metric_ops = [e for e in agg.ledger.entries if e.tag == "metrics"]
    assert [(e.op, e.round, e.n_clients, e.n_values) for e in metric_ops] == [
        ("weighted_mean", 0, 2, 2),
        ("weighted_mean", 1, 2, 2),
    ]
    assert [e.tag for e in agg.ledger.entries] == ["fedavg", "metrics"] * 2
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsc.federation.engine"]
    assert len(lines) == 2 and lines[1].startswith("round 1: ") and "loss=6" in lines[1]


def test_engine_logger_is_quiet_by_default():
    # a library adds no handlers and sets no level: the application decides
    for name in ("fedsc", "fedsc.federation", "fedsc.federation.engine"):
        logger = logging.getLogger(name)
        assert logger.level == logging.NOTSET and not logger.handlers


def test_clients_must_report_the_same_metrics():
    class Uneven(MetricMethod):
        def local_update(self, client, global_state, round_index, generator):
            res = super().local_update(client, global_state, round_index, generator)
            return LocalResult(res.state, res.weight, {} if client else res.metrics)

    method = Uneven([torch.ones(2), torch.zeros(2)], [1.0, 1.0], losses=[1.0, 1.0])
    with smpc.make_aggregator("plaintext") as agg:
        with pytest.raises(ValueError, match="client result 1 reports metrics"):
            run_federation(method, [0, 1], agg, rounds=1, seed=0)


def test_fedavg_passes_the_broadcast_state_as_reference_to_mechanisms():
    # Clip each client's update (state - global) to norm 1, around the broadcast state.
    method = ConstantMethod([torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5])], [1.0, 1.0])
    clip = [{"name": "clip", "max_norm": 1.0}]
    with smpc.make_aggregator("plaintext", mechanisms=clip) as agg:
        res = run_federation(method, [0, 1], agg, rounds=2, seed=0)
    # round 0 from 0: updates [0.6, 0.8] and [0, 0.5] -> mean [0.3, 0.65]
    # round 1 from g = [0.3, 0.65]: [2.7, 3.35] has norm > 1 -> g + u / |u|; [-0.3, -0.15]
    g = np.array([0.3, 0.65])
    u = np.array([3.0, 4.0]) - g
    expected = (g + u / np.linalg.norm(u) + np.array([0.0, 0.5])) / 2
    np.testing.assert_allclose(res.state["w"].numpy(), expected, rtol=1e-6)
    assert all(e.mechanisms == [{"name": "clip", "max_norm": 1.0}] for e in agg.ledger.entries)


def test_one_seed_derivation():
    from fedsc.federation import derive_generator, derive_rng
    from fedsc.methods import vae

    assert vae.derive_generator is derive_generator
    x = torch.rand(3, generator=client_generators(7, 2, [5])[0])
    assert torch.equal(x, torch.rand(3, generator=derive_generator(7, 2, 5)))
    expected = np.random.default_rng(np.random.SeedSequence([7, 2, 5])).random(3)
    np.testing.assert_array_equal(derive_rng(7, 2, 5).random(3), expected)
