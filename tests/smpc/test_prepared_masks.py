"""Masks prepared ahead of an operation (:mod:`smpc.prepared`): same results, same
evidence, fresh keys, each set used once and only for the shape it was prepared for."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from _helpers.contributions import client_vectors

import smpc
from smpc import messages as msg
from smpc import sharing
from smpc.channel import in_process_pair
from smpc.crypten_backend import CryptenAggregator
from smpc.masks import expand_key
from smpc.party import serve_in_thread
from smpc.party_pool import warm_parties
from smpc.prepared import ClientMasks, PartyMasks

pytestmark = pytest.mark.timeout(180)

K = 4
N = 3_000
WEIGHTS = [120.0, 850.0, 3000.0, 42.0]


def test_client_and_party_totals_are_the_sums_of_the_masks():
    keys = [[bytes([c, r]) * 16 for r in (1, 2)] for c in range(K)]
    clients = ClientMasks(keys, 1000)
    want = [sharing.reconstruct([expand_key(k, 1000) for k in row]) for row in keys]
    np.testing.assert_array_equal(clients.totals(), np.stack(want))
    party = PartyMasks("t", 1000, [row[0] for row in keys])
    np.testing.assert_array_equal(
        party.total(), sharing.reconstruct([expand_key(r[0], 1000) for r in keys])
    )
    assert ClientMasks(keys, 10).token != clients.token  # a random name per set
    # the next set takes over a used set's memory and holds its own masks
    memory = clients.totals()
    other = [[bytes([c, r + 5]) * 16 for r in (1, 2)] for c in range(K)]
    again = ClientMasks(other, 1000, reuse=clients)
    assert again.totals() is memory
    want = [sharing.reconstruct([expand_key(k, 1000) for k in row]) for row in other]
    np.testing.assert_array_equal(again.totals(), np.stack(want))
    spent = party.total()
    next_party = PartyMasks("u", 1000, [row[1] for row in other], reuse=party)
    assert next_party.total() is spent
    np.testing.assert_array_equal(
        spent, sharing.reconstruct([expand_key(r[1], 1000) for r in other])
    )


@pytest.mark.parametrize("transport", ["threads", "pipe", "shm"])
def test_prepared_operations_equal_plaintext_and_are_used_once_per_shape(transport):
    xs, other = client_vectors(K, N, seed=1), client_vectors(K, N + 5, seed=2)
    with (
        smpc.make_aggregator("plaintext") as plain,
        CryptenAggregator(transport=transport, prepare_masks=True) as agg,
    ):
        agg.wait_for_parties()
        agg.reserve(K, N)  # weighted means of N values: N + 1 per client
        for round_ in range(3):
            mean = agg.weighted_mean(xs, WEIGHTS)
            np.testing.assert_allclose(mean, plain.weighted_mean(xs, WEIGHTS), rtol=0, atol=1e-9)
            assert agg.prepared_operations == round_ + 1
            # another shape between them is shared at operation time, and leaves the set
            np.testing.assert_allclose(agg.sum(other), plain.sum(other), rtol=0, atol=K * 2.0**-25)
            assert agg.prepared_operations == round_ + 1
        entry = agg.ledger.entries[-2]  # the evidence of a prepared operation
        assert entry.bytes_to_party == [K * (N + 1) * 8, K * 32, K * 32]
        assert entry.messages_to_party == [K, K, K]
        # an argmax of the reserved shape is never prepared (parties need every share)
        winners = agg.argmax([x[:7] for x in xs]) if transport != "threads" else None
        if winners is not None:
            np.testing.assert_array_equal(winners, np.argmax(np.stack([x[:7] for x in xs]), axis=0))


def test_parties_receive_a_sharing_with_fresh_keys_each_operation():
    xs = client_vectors(K, N, seed=3)
    with CryptenAggregator(transport="threads", record_received=True, prepare_masks=True) as agg:
        agg.reserve(K, N)
        agg.received_by_parties()
        agg.weighted_mean(xs, WEIGHTS)
        agg.weighted_mean(xs, WEIGHTS)
        assert agg.prepared_operations == 2
        received = agg.received_by_parties()
        counters = agg.party_counters()
    assert [len(r) for r in received] == [2 * K] * 3
    for op in range(2):
        for client in range(K):
            row = np.append(xs[client] * WEIGHTS[client], WEIGHTS[client])
            encoded = sharing.encode(row, agg.sum_precision_bits)
            shares = [received[rank][op * K + client]["values"] for rank in range(3)]
            for share in shares:
                assert not np.any(share == encoded)
            np.testing.assert_array_equal(sharing.reconstruct(shares), encoded)
    for rank in (1, 2):  # same input twice, a different mask each time
        digests = [r["sha256"] for r in received[rank]]
        assert len(set(digests)) == 2 * K
    assert [c["bytes"] for c in counters[1:]] == [2 * K * 32] * 2


def test_warm_parties_ignore_a_set_an_earlier_aggregator_left():
    xs = client_vectors(K, N, seed=4)
    with smpc.make_aggregator("plaintext") as plain, warm_parties():
        want = plain.weighted_mean(xs, WEIGHTS)
        for _ in range(2):
            with CryptenAggregator(transport="pipe", prepare_masks=True) as agg:
                agg.wait_for_parties()
                agg.reserve(K, N)
                np.testing.assert_allclose(agg.weighted_mean(xs, WEIGHTS), want, atol=1e-9)
                # closed with the next operation's set prepared and never used
            assert agg.prepared_operations == 1
        with CryptenAggregator(transport="pipe") as agg:  # borrowed, no reserve
            assert agg.borrowed
            np.testing.assert_allclose(agg.weighted_mean(xs, WEIGHTS), want, atol=1e-9)
            assert agg.prepared_operations == 0


@contextlib.contextmanager
def _party():
    """Party 1's loop in a thread; yields the coordinator's end of its channel."""
    coordinator, party = in_process_pair()
    thread = serve_in_thread(1, party)
    assert isinstance(coordinator.recv(), msg.Ready)
    try:
        yield coordinator
    finally:
        coordinator.send(msg.Close())
        thread.join(5)


def _send_prepare(channel, token: str, keys: list[bytes]) -> None:
    channel.send(msg.PrepareMasks(token=token, n_clients=len(keys), size=5))
    for client, key in enumerate(keys):
        channel.send(msg.MaskKey(client=client, key=key.hex()))


def _assert_refused(channel, error: str) -> None:
    reply = channel.recv()
    assert isinstance(reply, msg.Failure) and error in reply.error


def _aggregate(token: str | None, n_clients: int = 2, size: int = 5, kind: str = "sum"):
    return msg.Aggregate(
        op_id=1,
        kind=kind,
        n_clients=n_clients,
        size=size,
        share_format="prepared",
        prepared=token,
    )


@pytest.mark.parametrize(
    "prepare, aggregate, error",
    [
        (None, _aggregate("abc"), "did not prepare"),
        ("abc", _aggregate("xyz"), "did not prepare"),
        ("abc", _aggregate("abc", size=6), "prepared for a sum of 2 x 5"),
        ("abc", _aggregate("abc", n_clients=3), "prepared for a sum of 2 x 5"),
    ],
)
def test_a_party_refuses_an_operation_naming_other_masks(prepare, aggregate, error):
    with _party() as channel:
        if prepare is not None:
            _send_prepare(channel, prepare, [bytes(32)] * 2)
        channel.send(aggregate)
        _assert_refused(channel, error)


def test_a_prepared_set_is_used_once():
    keys = [bytes([c + 1]) * 32 for c in range(2)]
    with _party() as channel:
        _send_prepare(channel, "abc", keys)
        channel.send(_aggregate("abc"))
        assert isinstance(channel.recv(), msg.SharesReceived)
        assert isinstance(channel.recv(), msg.Result)
        share = channel.recv_array(into=np.empty(5, np.int64))
        np.testing.assert_array_equal(share, sharing.reconstruct([expand_key(k, 5) for k in keys]))
        channel.send(_aggregate("abc"))  # again: refused
        _assert_refused(channel, "did not prepare")


def test_a_malformed_key_list_is_refused():
    with _party() as channel:
        channel.send(msg.PrepareMasks(token="abc", n_clients=2, size=5))
        channel.send(msg.MaskKey(client=1, key=bytes(32).hex()))  # client 0 expected
        _assert_refused(channel, "mask key of client 0")


@pytest.mark.parametrize(
    ("mode", "source", "keyed"),
    [("secure", "prng", True), ("secure", "urandom", False), ("debug", "urandom", True)],
)
def test_masks_are_prepared_exactly_when_they_travel_as_keys(mode, source, keyed):
    """Debug mode draws every mask from its seeded key stream, whatever the source."""
    xs = client_vectors(K, N, seed=5)
    seed = 1 if mode == "debug" else None
    with (
        smpc.make_aggregator("plaintext") as plain,
        CryptenAggregator(
            transport="threads", mode=mode, seed=seed, mask_source=source, prepare_masks=True
        ) as agg,
    ):
        assert agg._randomness.keyed is keyed
        agg.reserve(K, N)
        mean = agg.weighted_mean(xs, WEIGHTS)
        np.testing.assert_allclose(mean, plain.weighted_mean(xs, WEIGHTS), rtol=0, atol=1e-9)
        assert agg.prepared_operations == int(keyed)
        key_bytes = K * 32 if keyed else K * (N + 1) * 8
        assert agg.ledger.entries[-1].bytes_to_party[1:] == [key_bytes, key_bytes]


@pytest.mark.parametrize(("cpus", "torch_threads", "prepared"), [(2, 1, False), (8, 4, True)])
def test_by_default_masks_are_prepared_only_with_spare_cpus(
    monkeypatch, cpus, torch_threads, prepared
):
    """One expansion thread here and one per party 1..: 3 CPUs spare besides torch's."""
    import torch

    import smpc.crypten_backend.masks_ahead as backend

    monkeypatch.setattr(backend, "available_cpus", lambda: cpus)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    xs = client_vectors(K, N, seed=6)
    with smpc.make_aggregator("plaintext") as plain, CryptenAggregator(transport="threads") as agg:
        agg.reserve(K, N)
        assert agg.prepares_masks is prepared
        for _ in range(2):
            mean = agg.weighted_mean(xs, WEIGHTS)
            np.testing.assert_allclose(mean, plain.weighted_mean(xs, WEIGHTS), rtol=0, atol=1e-9)
        assert agg.prepared_operations == (2 if prepared else 0)
    with CryptenAggregator(transport="threads", prepare_masks=not prepared) as agg:
        agg.reserve(K, N)  # an explicit choice wins
        assert agg.prepares_masks is not prepared
