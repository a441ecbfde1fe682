"""Observer views: the recorder changes nothing and each view holds only what it receives."""

from __future__ import annotations

import numpy as np
import pytest

import smpc
from fedsc.privacy import OBSERVERS, RunRecord, all_views, observer_view, recording_aggregator


def _run(backend: str = "plaintext", mechanisms=None):
    rng = np.random.default_rng(0)
    states = [{"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)} for _ in range(3)]
    ref = {"a": np.zeros((3, 2)), "b": np.zeros(4)}
    agg, rec = recording_aggregator(backend, mechanisms=mechanisms, mechanism_seed=1)
    with agg:
        with agg.ledger.scope(0, "fedavg"):
            mean = agg.weighted_mean(states, [1.0, 2.0, 3.0], reference=ref)
        with agg.ledger.scope(0, "presence"):
            total = agg.sum([s["b"] for s in states])
        with agg.ledger.scope(None, "dominant"):
            winners = agg.argmax([s["b"] for s in states])
        assert winners.dtype == np.int64
        record = RunRecord.from_run(agg, rec)
    return states, mean, total, record


def test_recorder_changes_nothing():
    states, mean, total, record = _run()
    with smpc.make_aggregator("plaintext") as plain:
        expected = plain.weighted_mean(states, [1.0, 2.0, 3.0])
    for k in expected:
        np.testing.assert_array_equal(mean[k], expected[k])
    np.testing.assert_allclose(total, sum(s["b"] for s in states))
    assert [(o.round, o.tag, o.op) for o in record.operations] == [
        (0, "fedavg", "weighted_mean"),
        (0, "presence", "sum"),
        (None, "dominant", "argmax"),
    ]
    np.testing.assert_array_equal(
        record.operations[2].aggregate, np.argmax([s["b"] for s in states], axis=0)
    )
    assert record.mechanisms == ()  # the recorder itself is not listed


def test_plaintext_views_hold_what_each_observer_receives():
    states, _, _, record = _run()
    views = all_views(record, client=1)
    assert set(views) == set(OBSERVERS)
    coord = views["coordinator"].operations[0]
    flat = np.concatenate([states[2]["a"].ravel(), states[2]["b"]])
    np.testing.assert_array_equal(coord.contributions[2], flat)  # plaintext: every row
    np.testing.assert_array_equal(coord.weights, [1.0, 2.0, 3.0])
    assert coord.total_weight == 6.0
    client = views["client"].operations[0]
    assert np.isnan(client.contributions[[0, 2]]).all()  # only its own row
    assert not np.isnan(client.contributions[1]).any()
    assert client.reference is not None and client.aggregate is not None  # final release
    reader = views["output_reader"].operations
    assert reader[0].aggregate is not None and reader[0].contributions is None
    assert reader[1].aggregate is None  # the presence sum is not part of the output
    # plaintext has no computation parties: their views are empty
    assert all(o.shares is None for o in views["party"].operations)


def test_view_hides_weights_when_asked_and_rejects_unknown_observers():
    _, _, _, record = _run()
    assert observer_view(record, "coordinator", public_weights=False).operations[0].weights is None
    with pytest.raises(ValueError, match="unknown observer"):
        observer_view(record, "eavesdropper")


def test_mechanisms_are_applied_before_the_recorder():
    _, _, _, record = _run(mechanisms=[{"name": "clip", "max_norm": 0.5}])
    shared = record.operations[0].contributions
    assert np.linalg.norm(shared, axis=1).max() <= 0.5 + 1e-12  # reference is 0: clipped rows
    assert record.mechanisms[0]["name"] == "clip"
