"""Strategies through the engine: FedAvgM and the coordinate median against hand cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smpc
from fedsc.federation import (
    CoordinateMedian,
    FedAvg,
    FedAvgM,
    LocalResult,
    make_strategy,
    run_federation,
)
from smpc.aggregator import RevealRefusedError
from smpc.plaintext import PlaintextAggregator


class ConstantMethod:
    """Client c returns a fixed state and weight, whatever the global state."""

    def __init__(self, states, weights):
        self.states, self.weights = states, weights

    def initial_state(self):
        return {"w": torch.zeros(2, dtype=torch.float64), "n": torch.zeros(1, dtype=torch.int64)}

    def local_update(self, client, global_state, round_index, generator):
        return LocalResult(self.states[client], weight=self.weights[client])


def two_clients():
    states = [
        {"w": torch.tensor([1.0, 0.0], dtype=torch.float64), "n": torch.tensor([1])},
        {"w": torch.tensor([0.0, 4.0], dtype=torch.float64), "n": torch.tensor([5])},
    ]
    return ConstantMethod(states, [1.0, 3.0])  # FedAvg mean m: w = [0.25, 3.0], n = 4


def test_fedavgm_server_momentum_hand_case():
    m = torch.tensor([0.25, 3.0], dtype=torch.float64)
    # beta = 0.5, lr = 1, x0 = 0. Round 0: d = -m, v = -m, x1 = m.
    # Round 1: d = x1 - m = 0, v = -0.5 m, x2 = 1.5 m.
    # Round 2: d = 0.5 m, v = -0.25 m + 0.5 m = 0.25 m, x3 = 1.25 m.
    expected = [m, 1.5 * m, 1.25 * m]
    seen = []
    with smpc.make_aggregator("plaintext") as agg:
        res = run_federation(
            two_clients(),
            [0, 1],
            agg,
            rounds=3,
            seed=0,
            strategy=FedAvgM(server_lr=1.0, momentum=0.5),
            on_round_end=lambda r, s: seen.append(s["w"].clone()),
        )
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert torch.equal(res.state["n"], torch.tensor([4]))  # integer entries: plain mean
    assert {e.tag for e in agg.ledger.entries} == {"fedavgm"}
    assert [e.op for e in agg.ledger.entries] == ["weighted_mean"] * 3


def test_fedavgm_instance_is_reset_between_federations():
    strategy = FedAvgM(server_lr=0.5, momentum=0.9)
    with smpc.make_aggregator("plaintext") as agg:
        a = run_federation(two_clients(), [0, 1], agg, rounds=2, seed=0, strategy=strategy)
        b = run_federation(two_clients(), [0, 1], agg, rounds=2, seed=0, strategy=strategy)
    assert torch.equal(a.state["w"], b.state["w"])


def test_fedavgm_without_momentum_at_unit_lr_is_fedavg():
    with smpc.make_aggregator("plaintext") as agg:
        avg = run_federation(two_clients(), [0, 1], agg, rounds=2, seed=0, strategy=FedAvg())
        avgm = run_federation(
            two_clients(), [0, 1], agg, rounds=2, seed=0, strategy=FedAvgM(1.0, 0.0)
        )
    torch.testing.assert_close(avgm.state["w"], avg.state["w"], rtol=0, atol=1e-15)


def test_coordinate_median_hand_case_and_ledger():
    states = [
        {"w": torch.tensor([1.0, 9.0], dtype=torch.float64), "n": torch.tensor([1])},
        {"w": torch.tensor([2.0, -3.0], dtype=torch.float64), "n": torch.tensor([2])},
        {"w": torch.tensor([100.0, 0.0], dtype=torch.float64), "n": torch.tensor([7])},
    ]
    method = ConstantMethod(states, [1.0, 1.0, 50.0])  # weights do not matter
    with smpc.make_aggregator("plaintext") as agg:
        res = run_federation(method, [0, 1, 2], agg, rounds=1, seed=0, strategy="median")
    torch.testing.assert_close(res.state["w"], torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert torch.equal(res.state["n"], torch.tensor([2]))
    (entry,) = agg.ledger.entries
    assert (entry.op, entry.tag, entry.round, entry.private) == ("gather", "median", 0, False)
    assert set(entry.coordinator_received) == {"client[0]", "client[1]", "client[2]"}


def test_coordinate_median_refuses_a_private_aggregator():
    class Private(PlaintextAggregator):
        name = "secret"

        @property
        def private(self) -> bool:
            return True

    with pytest.raises(RevealRefusedError, match=r"'secret'.*private.*FedAvg\(\)"):
        run_federation(two_clients(), [0, 1], Private(), rounds=1, seed=0, strategy="median")


def test_make_strategy():
    assert isinstance(make_strategy(None), FedAvg)
    assert make_strategy("fedavgm", momentum=0.5).describe() == {
        "name": "fedavgm",
        "server_lr": 1.0,
        "momentum": 0.5,
    }
    assert isinstance(make_strategy("median"), CoordinateMedian)
    with pytest.raises(ValueError, match=r"unknown strategy 'fedprox'.*\['fedavg', 'fedavgm'"):
        make_strategy("fedprox")
    with pytest.raises(ValueError, match="momentum"):
        FedAvgM(momentum=1.0)
    assert np.isclose(FedAvgM().momentum, 0.9)
