"""Mechanisms around aggregators: hand cases, isolation of clients, ledger, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smpc
from smpc.aggregator import RevealRefusedError
from smpc.mechanisms import (
    ClientContext,
    ClipL2,
    Mechanism,
    MechanismAggregator,
    Quantize,
    ResultContext,
    make_mechanism,
)
from smpc.plaintext import PlaintextAggregator

A = np.array([0.3, 3.0, -1.26])
B = np.array([1.0, 1.0, 0.04])
REF = np.array([0.5, 0.5, 0.0])
W = [1.0, 3.0]


def _quantize(x, step, ref=0.0):
    return ref + np.rint((x - ref) / step) * step


def _clip(x, c, ref=0.0):
    u = x - ref
    n = np.linalg.norm(u)
    return x if n <= c else ref + u * (c / n)


def test_quantize_then_clip_equals_hand_computation_and_ledger_records_both():
    specs = [{"name": "quantize", "step": 0.25}, ("clip", {"max_norm": 1.0})]
    with smpc.make_aggregator("plaintext", mechanisms=specs) as agg:
        with agg.ledger.scope(4, "fedavg"):
            got = agg.weighted_mean([A, B], W, reference=REF)
        total = agg.sum([A, B])  # no reference: clipped around 0
    rows = [_clip(_quantize(x, 0.25, REF), 1.0, REF) for x in (A, B)]
    np.testing.assert_allclose(got, (W[0] * rows[0] + W[1] * rows[1]) / 4.0, rtol=0, atol=1e-15)
    rows0 = [_clip(_quantize(x, 0.25), 1.0) for x in (A, B)]
    np.testing.assert_allclose(total, rows0[0] + rows0[1], rtol=0, atol=1e-15)
    entry = agg.ledger.entries[0]
    assert (entry.op, entry.round, entry.tag) == ("weighted_mean", 4, "fedavg")
    assert entry.mechanisms == [
        {"name": "quantize", "step": 0.25, "stochastic": False},
        {"name": "clip", "max_norm": 1.0},
    ]
    assert agg.ledger.entries[1].mechanisms == entry.mechanisms


def test_mechanisms_keep_structure_and_dtypes_of_dict_states():
    a = {"w": torch.tensor([[0.3, 3.0]]), "n": np.array([2], dtype=np.int64)}
    b = {"w": torch.tensor([[1.0, 1.0]]), "n": np.array([4], dtype=np.int64)}
    with smpc.make_aggregator("plaintext", mechanisms=[Quantize(step=0.5)]) as agg:
        mean = agg.weighted_mean([a, b], [1, 1], reference={"w": torch.zeros(1, 2), "n": [0]})
    assert mean["w"].dtype == torch.float32 and mean["n"].dtype == np.int64
    torch.testing.assert_close(mean["w"], torch.tensor([[0.75, 2.0]]))  # 0.3 -> 0.5


def test_argmax_passes_through_and_records_no_mechanism():
    with smpc.make_aggregator("plaintext", mechanisms=[Quantize(10.0)]) as agg:
        winners = agg.argmax([np.array([1.0, 7.0]), np.array([2.0, 3.0])])
    np.testing.assert_array_equal(winners, [1, 0])  # quantising to 10 would tie everything
    assert agg.ledger.entries[0].mechanisms == []


class Spy(Mechanism):
    """Records everything it is shown (one copy per client, one for the coordinator)."""

    name = "spy"

    def __init__(self) -> None:
        self.rows: list[tuple[int, np.ndarray, bool]] = []
        self.results: list[np.ndarray] = []

    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        self.rows.append((ctx.client, row.copy(), row.base is None and row.flags.owndata))
        return row + 1.0

    def transform_result(self, result: np.ndarray, ctx: ResultContext) -> np.ndarray:
        self.results.append(result.copy())
        return result


def test_a_mechanism_sees_only_its_own_clients_rows():
    spy = Spy()
    xs = [np.full(3, 10.0 * i) for i in range(3)]
    with MechanismAggregator(PlaintextAggregator(), [spy]) as agg:
        total = agg.sum(xs)
        agg.weighted_mean(xs, [1, 1, 1])
    np.testing.assert_array_equal(total, np.full(3, 33.0))  # every row + 1
    assert spy.rows == []  # the coordinator's instance never sees a contribution
    assert [r.tolist() for r in spy.results] == [[33.0] * 3, [11.0] * 3]
    for client, copies in agg._client_copies.items():
        (mine,) = copies
        assert [c for c, _, _ in mine.rows] == [client, client]  # its own, both operations
        for _, row, owns in mine.rows:
            np.testing.assert_array_equal(row, xs[client])
            assert owns  # a copy: no view into the other clients' matrix


def test_client_generators_are_per_client_reproducible_and_differ():
    def run(seed):
        mech = [Quantize(step=1.0, stochastic=True)]
        with smpc.make_aggregator("plaintext", mechanisms=mech, mechanism_seed=seed) as agg:
            return agg.sum([np.full(2000, 0.25), np.full(2000, 0.25)])

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, 1.0, 2.0}
    assert abs(a.mean() - 0.5) < 0.05  # unbiased: E = 2 * 0.25


def test_privacy_and_backend_attributes_are_delegated():
    inner = PlaintextAggregator()
    with MechanismAggregator(inner, [ClipL2(2.0)]) as agg:
        assert agg.name == "plaintext" and agg.private is False
        assert agg.privacy_note.startswith(inner.privacy_note)
        assert "ClipL2(max_norm=2.0)" in agg.privacy_note
        assert agg.ledger is inner.ledger
    with pytest.raises(smpc.AggregatorClosedError):
        inner.sum([np.ones(2)])  # closing the wrapper closed the backend


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (
            "nope",
            ValueError,
            r"unknown mechanism 'nope'; choose one of \['clip', 'gaussian', 'quantize'\]",
        ),
        ({"max_norm": 1.0}, ValueError, "no 'name'.*clip"),
        (("clip", {"maxnorm": 1.0}), TypeError, "mechanism 'clip'"),
        (("clip", {"max_norm": -1.0}), ValueError, "max_norm must be positive"),
    ],
)
def test_bad_mechanism_specs_raise_clear_errors(spec, error, match):
    with pytest.raises(error, match=match):
        smpc.make_aggregator("plaintext", mechanisms=[spec])


def test_make_mechanism_forms_agree():
    forms = [
        make_mechanism("clip", max_norm=2.0),
        make_mechanism({"name": "clip", "max_norm": 2.0}),
        make_mechanism(("clip", {"max_norm": 2.0})),
        make_mechanism(ClipL2(2.0)),
    ]
    assert [m.describe() for m in forms] == [{"name": "clip", "max_norm": 2.0}] * 4


def test_mechanism_errors_name_the_mechanism():
    class Bad(Mechanism):
        name = "bad"

        def transform_contribution(self, row, ctx):
            return row[:1]

    with MechanismAggregator(PlaintextAggregator(), [Bad()]) as agg:
        with pytest.raises(ValueError, match=r"Bad.*keep the shape"):
            agg.sum([np.ones(2)])
        with pytest.raises(ValueError, match="reference: keys/shapes"):
            agg.sum([np.ones(2)], reference=np.ones(3))


def test_gather_reveals_rows_on_plaintext_and_is_refused_when_private():
    with smpc.make_aggregator("plaintext", mechanisms=[ClipL2(1.0)]) as agg:
        rows = agg.gather([np.array([3.0, 4.0]), np.array([0.0, 0.5])])
    np.testing.assert_allclose(rows[0], [0.6, 0.8])
    np.testing.assert_array_equal(rows[1], [0.0, 0.5])
    (entry,) = agg.ledger.entries
    assert entry.op == "gather" and entry.mechanisms == [{"name": "clip", "max_norm": 1.0}]
    assert entry.coordinator_received == {"client[0]": [2], "client[1]": [2]}

    class Private(PlaintextAggregator):
        @property
        def private(self) -> bool:
            return True

    with pytest.raises(RevealRefusedError, match=r"private.*make_aggregator\(.plaintext.\)"):
        Private().gather([np.ones(2)])


# ----------------------------------------------------------------- crypten (real parties)
def test_mechanisms_compose_with_crypten():
    try:
        from smpc.crypten_compat import import_crypten

        import_crypten()
    except ImportError as err:  # pragma: no cover - crypten is installed by the Makefile
        pytest.skip(f"crypten unavailable: {err}")
    specs = [{"name": "quantize", "step": 0.25}, {"name": "clip", "max_norm": 1.0}]
    with smpc.make_aggregator("crypten", parties=3, mechanisms=specs) as agg:
        with agg.ledger.scope(0, "fedavg"):
            got = agg.weighted_mean([A, B], W, reference=REF)
        assert agg.private and agg.privacy_note.startswith("private")
        assert agg.pids and agg.pids == agg.inner.pids  # backend attributes reach through
    rows = [_clip(_quantize(x, 0.25, REF), 1.0, REF) for x in (A, B)]
    np.testing.assert_allclose(got, (W[0] * rows[0] + W[1] * rows[1]) / 4.0, atol=1e-6)
    (entry,) = agg.ledger.entries
    assert entry.private and len(entry.bytes_to_party) == 3
    assert [m["name"] for m in entry.mechanisms] == ["quantize", "clip"]
