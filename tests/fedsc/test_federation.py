"""The federated engine: rounds, FedAvg weighting, seeding, no global RNG side effects."""

from __future__ import annotations

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
