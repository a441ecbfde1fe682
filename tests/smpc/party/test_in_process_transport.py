"""The party loop over in-process channels (threads, no CrypTen): fast protocol tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers.contributions import client_vectors

import smpc
from smpc import messages as msg
from smpc import sharing
from smpc.channel import in_process_pair
from smpc.crypten_backend import CryptenAggregator, PartyError
from smpc.party_pool import PartyPool, PoolSettings

K = 5
WEIGHTS = [120.0, 850.0, 3000.0, 42.0, 999.0]


@pytest.fixture
def agg():
    with CryptenAggregator(transport="threads", record_received=True) as a:
        yield a


@pytest.fixture
def plain():
    with smpc.make_aggregator("plaintext") as p:
        yield p


@pytest.mark.parametrize("mask_source", ["prng", "urandom"])
def test_weighted_mean_and_sum_equal_plaintext(plain, mask_source):
    xs = client_vectors(K, 10_000)
    with CryptenAggregator(transport="threads", mask_source=mask_source) as a:
        mean = a.weighted_mean(xs, WEIGHTS)
        # error of a weighted mean: K half-steps over sum(w)
        bound = K * 2.0 ** -(a.sum_precision_bits + 1)
        np.testing.assert_allclose(mean, plain.weighted_mean(xs, WEIGHTS), rtol=0, atol=1e-9)
        np.testing.assert_allclose(a.sum(xs), plain.sum(xs), rtol=0, atol=bound)
        entry = a.ledger.entries[0]
        key_bytes = K * 32 if mask_source == "prng" else K * 10_001 * 8
        assert entry.bytes_to_party == [K * 10_001 * 8, key_bytes, key_bytes]
        assert entry.coordinator_bytes == 3 * 10_001 * 8 and entry.mpc_rounds == 0
        assert entry.messages_to_party == [K, K, K]


def test_structure_dtypes_and_float32_inputs(agg, plain):
    states = [
        {"w": torch.full((3, 2), float(i) - 2.5, dtype=torch.float32), "n": np.array([i, 2 * i])}
        for i in range(K)
    ]
    got, want = agg.weighted_mean(states, WEIGHTS), plain.weighted_mean(states, WEIGHTS)
    assert got["w"].dtype == torch.float32
    torch.testing.assert_close(got["w"], want["w"])
    np.testing.assert_array_equal(agg.sum(states)["n"], [10, 20])


def test_parties_receive_only_uniform_looking_shares(agg):
    xs = client_vectors(K, 64, seed=3)
    agg.weighted_mean(xs, WEIGHTS)
    received = agg.received_by_parties()
    assert [len(r) for r in received] == [K, K, K]
    for client in range(K):
        row = np.append(xs[client] * WEIGHTS[client], WEIGHTS[client])
        encoded = sharing.encode(row, agg.sum_precision_bits)
        shares = [received[rank][client]["values"] for rank in range(3)]
        for share in shares:
            assert not np.any(share == encoded)
        np.testing.assert_array_equal(sharing.reconstruct(shares), encoded)
    assert agg.received_by_parties() == [[], [], []]  # cleared


def test_counters_and_overflow_before_sending(agg):
    agg.sum(client_vectors(K, 10))
    before = agg.party_counters()
    assert [c["operations"] for c in before] == [1, 1, 1]
    assert before[1]["bytes"] == K * 32
    xs = client_vectors(K, 10)
    xs[2][4] = 1e20
    with pytest.raises(sharing.RingOverflowError, match="client 2: max \\|x\\|"):
        agg.sum(xs)
    assert agg.party_counters() == before


def test_argmax_needs_party_processes(agg):
    with pytest.raises(ValueError, match="argmax needs CrypTen party processes"):
        agg.argmax([np.arange(3.0)] * K)


def test_a_party_failure_is_reported_with_its_traceback():
    with CryptenAggregator(transport="threads") as a:
        # a malformed command makes party 1 answer Failure; the pool is stopped
        a._pool.channels[1].send(msg.Query(what="nonsense"))
        with pytest.raises(PartyError, match="in-process party 1 failed during sum"):
            a.sum(client_vectors(K, 4))
        with pytest.raises(smpc.AggregatorClosedError):
            a.sum(client_vectors(K, 4))


def test_a_malformed_frame_from_a_party_is_a_party_error():
    settings = PoolSettings(transport="pipe")
    pool = PartyPool(settings)
    mine, theirs = in_process_pair()
    theirs.send_frame(b"\x80\x04K\x01.")  # a pickle: refused, never loaded
    pool.channels.append(mine)
    pool.names.append("party 0")
    with pytest.raises(PartyError, match="party 0 sent a malformed frame during start-up"):
        pool.await_ready(5.0)
    assert pool.closed


def test_settings_mismatch_is_a_clear_error_at_connect_time():
    # a party that announces other settings than the coordinator's
    settings = PoolSettings(precision_bits=16, transport="pipe")
    pool = PartyPool(settings)
    for rank in range(3):
        mine, theirs = in_process_pair()
        precision = 20 if rank == 1 else 16
        theirs.send(msg.Ready(rank, 1, 3, "TTP", "secure", precision))
        pool.channels.append(mine)
        pool.names.append(f"party {rank}")
    with pytest.raises(PartyError, match=r"party 1 runs with \{'precision_bits': 20\}.*16"):
        pool.await_ready(5.0)
    assert pool.closed
