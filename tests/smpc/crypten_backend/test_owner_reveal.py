"""weighted_mean_to_owners: each segment of a weighted mean revealed only to its owner."""

from __future__ import annotations

import numpy as np
import pytest

import smpc
from smpc import sharing
from smpc.crypten_backend import CryptenAggregator, OwnerEndpoint

K = 4
WEIGHTS = [120.0, 850.0, 3000.0, 42.0]
# Client b owns row b of both tables; row K (the last) is owned by nobody.
OWNERS = [{"beta": [b], "gamma": [b]} for b in range(K)]


def _tables(seed: int = 0, rows: int = K + 1, dim: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {"gamma": rng.normal(1, 0.1, (rows, dim)), "beta": rng.normal(0, 0.1, (rows, dim))}
        for _ in range(K)
    ]


def _collect(agg, tables, owners=OWNERS, weights=WEIGHTS):
    got: dict[int, dict] = {}

    def deliver(b, owned):
        assert b not in got, "each client is delivered once"
        got[b] = owned

    total = agg.weighted_mean_to_owners(tables, weights, owners, deliver)
    return total, got


def test_plaintext_is_bit_identical_to_weighted_mean_and_honest_in_the_ledger():
    tables = _tables()
    with smpc.make_aggregator("plaintext") as agg:
        mean = agg.weighted_mean(tables, WEIGHTS)
        total, got = _collect(agg, tables)
        entry = agg.ledger.entries[-1]
    assert total == sum(WEIGHTS)
    assert sorted(got) == list(range(K))
    for b in range(K):
        assert list(got[b]) == ["beta", "gamma"]  # the order of owners[b]
        for key in ("gamma", "beta"):
            assert got[b][key].shape == (1, 6)
            assert np.array_equal(got[b][key][0], np.asarray(mean[key])[b])  # bit-identical
    # Plaintext is not private: the ledger says the coordinator saw every contribution.
    assert entry.op == "weighted_mean_to_owners" and not entry.private
    assert set(entry.coordinator_received) == {f"client[{c}]" for c in range(K)} | {"weights"}
    assert entry.client_received == {
        f"client[{b}]": {"owned": [12], "sum_weights": []} for b in range(K)
    }


def test_crypten_threads_reveals_only_the_total_to_the_coordinator(monkeypatch):
    tables = _tables(1)
    with smpc.make_aggregator("plaintext") as plain:
        want = plain.weighted_mean(tables, WEIGHTS)

    # Instrument the coordinator's side: every reconstruction it does itself, and every
    # share slice it hands to a client endpoint.
    coordinator_reconstructed: list[int] = []
    routed: list[tuple[int, int, int, int]] = []
    original = sharing.reconstruct_decode
    inside_endpoint = [False]

    def spy_reconstruct(shares, bits):
        if not inside_endpoint[0]:
            coordinator_reconstructed.append(len(shares[0]))
        return original(shares, bits)

    reveal, receive = OwnerEndpoint.reveal, OwnerEndpoint.receive

    def spy_reveal(self):
        inside_endpoint[0] = True
        try:
            return reveal(self)
        finally:
            inside_endpoint[0] = False

    def spy_receive(self, rank, start, stop, blob):
        routed.append((self.client, rank, start, stop - start))
        return receive(self, rank, start, stop, blob)

    monkeypatch.setattr(sharing, "reconstruct_decode", spy_reconstruct)
    monkeypatch.setattr(OwnerEndpoint, "reveal", spy_reveal)
    monkeypatch.setattr(OwnerEndpoint, "receive", spy_receive)

    with CryptenAggregator(transport="threads") as agg:
        total, got = _collect(agg, tables)
        entry = agg.ledger.entries[-1]
        parties = agg.parties
    assert total == pytest.approx(sum(WEIGHTS), abs=1e-6)
    for b in range(K):
        for key in ("gamma", "beta"):
            np.testing.assert_allclose(got[b][key][0], np.asarray(want[key])[b], atol=1e-6)
    # The coordinator reconstructed the total weight only (one value), never a row.
    assert coordinator_reconstructed == [1]
    # Each client got, from every party, its own two rows and the total weight; the
    # unowned row K went to nobody. Flat layout: gamma (K+1)x6 then beta (K+1)x6, + w.
    size = 2 * (K + 1) * 6 + 1
    for b in range(K):
        starts = sorted({s for c, _, s, _ in routed if c == b})
        assert starts == [b * 6, (K + 1) * 6 + b * 6, size - 1]
        assert sorted(r for c, r, s, _ in routed if c == b and s == b * 6) == list(range(parties))
    unowned = {K * 6, (K + 1) * 6 + K * 6}
    assert not unowned & {s for _, _, s, _ in routed}
    # The ledger: the coordinator received sum w; client b its 12 values and sum w.
    assert entry.private and entry.coordinator_received == {"sum_weights": []}
    assert entry.coordinator_bytes == parties * 8
    assert entry.client_received == {
        f"client[{b}]": {"owned": [12], "sum_weights": []} for b in range(K)
    }


def test_crypten_threads_equals_its_own_weighted_mean():
    tables = _tables(2)
    with CryptenAggregator(transport="threads") as agg:
        mean = agg.weighted_mean(tables, WEIGHTS)
        _, got = _collect(agg, tables)
    for b in range(K):
        assert np.array_equal(got[b]["gamma"][0], np.asarray(mean["gamma"])[b])


def test_non_contiguous_and_unsorted_ownership():
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(6, 3)) for _ in range(K)]
    owners = [{None: [5, 0]}, {None: [2]}, {}, {None: [3, 4]}]
    with smpc.make_aggregator("plaintext") as plain:
        mean = plain.weighted_mean(xs, WEIGHTS)
    with CryptenAggregator(transport="threads") as agg:
        _, got = _collect(agg, xs, owners)
    assert got[2] == {}
    np.testing.assert_allclose(got[0][None], mean[[5, 0]], atol=1e-6)
    np.testing.assert_allclose(got[1][None], mean[[2]], atol=1e-6)
    np.testing.assert_allclose(got[3][None], mean[[3, 4]], atol=1e-6)


@pytest.mark.parametrize(
    ("owners", "match"),
    [
        (OWNERS[:-1], "one entry per client"),
        ([{"delta": [0]}, {}, {}, {}], "names tensor 'delta'"),
        ([{"gamma": [K + 1]}, {}, {}, {}], "has 5 rows"),
        ([{"gamma": [0]}, {"gamma": [0]}, {}, {}], "at most one owner"),
    ],
)
def test_invalid_owners_are_refused(owners, match):
    with smpc.make_aggregator("plaintext") as agg, pytest.raises(ValueError, match=match):
        agg.weighted_mean_to_owners(_tables(), WEIGHTS, owners, lambda b, o: None)


def test_result_mechanisms_are_refused():
    with (
        smpc.make_aggregator("plaintext", mechanisms=[("clip", {"max_norm": 1.0})]) as agg,
        pytest.raises(NotImplementedError, match="not supported by weighted_mean_to_owners"),
    ):
        agg.weighted_mean_to_owners(_tables(), WEIGHTS, OWNERS, lambda b, o: None)


def test_party_processes_route_owner_shares():
    """Real CrypTen party processes (shared-memory transport): the same answer."""
    tables = _tables(4)
    with smpc.make_aggregator("plaintext") as plain:
        want = plain.weighted_mean(tables, WEIGHTS)
    with smpc.make_aggregator("crypten") as agg:
        total, got = _collect(agg, tables)
        entry = agg.ledger.entries[-1]
        again = agg.weighted_mean(tables, WEIGHTS)  # the parties still serve other ops
    assert total == pytest.approx(sum(WEIGHTS), abs=1e-6)
    assert entry.coordinator_received == {"sum_weights": []}
    for b in range(K):
        for key in ("gamma", "beta"):
            np.testing.assert_allclose(got[b][key][0], np.asarray(want[key])[b], atol=1e-6)
    np.testing.assert_allclose(again["gamma"], want["gamma"], atol=1e-6)
