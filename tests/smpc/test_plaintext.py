"""The plaintext backend: the exact reference every other backend is compared with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smpc
from smpc.aggregator import AggregatorClosedError

# exact on every CPU: rerun by make test-dispatch (docs/reproducibility.md)
pytestmark = pytest.mark.reproducibility


@pytest.fixture
def agg():
    with smpc.make_aggregator("plaintext") as a:
        yield a


def test_weighted_mean_two_clients_by_hand(agg):
    # (10 * [1, 2] + 30 * [5, -2]) / 40 = [160, -40] / 40 = [4, -1]
    mean = agg.weighted_mean([np.array([1.0, 2.0]), np.array([5.0, -2.0])], weights=[10, 30])
    np.testing.assert_array_equal(mean, [4.0, -1.0])


def test_sum_and_dict_states_keep_structure_and_dtypes(agg):
    a = {"w": torch.ones(2, 3, dtype=torch.float32), "n": np.array([1, 2], dtype=np.int64)}
    b = {"w": 3 * torch.ones(2, 3, dtype=torch.float32), "n": np.array([4, 5], dtype=np.int64)}
    mean = agg.weighted_mean([a, b], weights=[1, 1])
    assert set(mean) == {"w", "n"}
    assert isinstance(mean["w"], torch.Tensor) and mean["w"].dtype == torch.float32
    assert mean["w"].shape == (2, 3)
    torch.testing.assert_close(mean["w"], 2 * torch.ones(2, 3))
    assert mean["n"].dtype == np.int64
    np.testing.assert_array_equal(mean["n"], [2, 4])  # rint(2.5) -> 2 (ties to even)
    total = agg.sum([a, b])
    np.testing.assert_array_equal(total["n"], [5, 7])
    torch.testing.assert_close(total["w"], 4 * torch.ones(2, 3))


def test_argmax_ties_go_to_lowest_index(agg):
    counts = [np.array([5, 0, 7, 2]), np.array([5, 0, 9, 1]), np.array([1, 0, 9, 2])]
    np.testing.assert_array_equal(agg.argmax(counts), [0, 0, 1, 0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: a.weighted_mean([np.ones(2)], weights=[1, 2]), "one entry per client"),
        (lambda a: a.weighted_mean([np.ones(2), np.ones(2)], weights=[1, 0]), "positive"),
        (lambda a: a.weighted_mean([np.ones(2), np.ones(3)], weights=[1, 1]), "same structure"),
        (lambda a: a.sum([np.array([1.0, np.nan])]), "NaN"),
        (lambda a: a.sum([]), "empty"),
        (lambda a: a.argmax([np.ones((2, 2))]), "1-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(agg, call, match):
    with pytest.raises(ValueError, match=match):
        call(agg)


def test_ledger_says_the_coordinator_saw_every_contribution(agg):
    with agg.ledger.scope(3, "fedavg"):
        agg.weighted_mean([np.zeros(4), np.ones(4)], weights=[1, 1])
    assert (agg.ledger.round, agg.ledger.tag) == (None, None)
    (entry,) = agg.ledger.entries
    assert (entry.op, entry.round, entry.tag) == ("weighted_mean", 3, "fedavg")
    assert (entry.n_clients, entry.n_values, entry.private) == (2, 4, False)
    assert entry.coordinator_received == {"client[0]": [4], "client[1]": [4], "weights": [2]}
    assert entry.coordinator_bytes == 2 * 4 * 8 + 2 * 8
    assert agg.ledger.totals()["operations"] == 1
    assert not agg.private and "not private" in agg.privacy_note


def test_closed_aggregator_refuses_work():
    agg = smpc.make_aggregator("plaintext")
    agg.close()
    agg.close()  # idempotent
    with pytest.raises(AggregatorClosedError, match="make_aggregator"):
        agg.sum([np.ones(2)])
