"""The crypten backend with party processes: equivalence with plaintext, privacy evidence,
faults, multi-host. Every test stands alone (module fixtures only save start-up time)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from _helpers.processes import alive

import smpc
from smpc import sharing
from smpc.aggregator import AggregatorClosedError, lowest_index_argmax

try:
    from smpc.crypten_compat import import_crypten

    import_crypten()
except ImportError as err:  # pragma: no cover - crypten is installed by the Makefile
    pytest.skip(f"crypten unavailable: {err}", allow_module_level=True)

from _helpers.contributions import client_vectors
from _helpers.paths import ROOT, checkout_env
from _helpers.ports import free_ports

from smpc.crypten_backend import CryptenAggregator, PartyError

pytestmark = pytest.mark.timeout(180)

K = 5
WEIGHTS = [120.0, 850.0, 3000.0, 42.0, 999.0]  # cell counts


def _assert_all_gone(pids: list[int]) -> None:
    assert pids and not [p for p in pids if alive(p)]
    assert not [c for c in multiprocessing.active_children() if c.pid in pids]


@pytest.fixture(scope="module")
def agg():
    with CryptenAggregator(record_received=True) as a:
        yield a
    _assert_all_gone(a.pids)


@pytest.fixture(scope="module")
def plain():
    with smpc.make_aggregator("plaintext") as p:
        yield p


# ------------------------------------------------------------------ equivalence
def test_weighted_mean_matches_plaintext(agg, plain):
    xs = client_vectors(K, 1000)
    got = agg.weighted_mean(xs, WEIGHTS)
    np.testing.assert_allclose(got, plain.weighted_mean(xs, WEIGHTS), rtol=0, atol=1e-6)


def test_weighted_mean_of_a_3m_state_matches_plaintext(agg, plain):
    xs = [
        {"a": x[:2_000_000].reshape(2000, 1000), "b": x[2_000_000:]}
        for x in client_vectors(K, 3_000_000)
    ]
    got = agg.weighted_mean(xs, WEIGHTS)
    want = plain.weighted_mean(xs, WEIGHTS)
    for key in ("a", "b"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6)
    entry = agg.ledger.entries[-1]
    # additions only: no interaction between parties; each returns its result share
    assert entry.n_values == 3_000_000 and entry.mpc_rounds == 0
    assert entry.coordinator_bytes == 3 * 3_000_001 * 8
    # party 0 gets the full share; parties 1, 2 a 32-byte mask key per client
    assert entry.bytes_to_party == [K * 3_000_001 * 8, K * 32, K * 32]


def test_sum_matches_plaintext(agg, plain):
    xs = client_vectors(K, 500, seed=1)
    got = agg.sum(xs)
    np.testing.assert_allclose(got, plain.sum(xs), rtol=0, atol=1e-6)
    # each client's encoding rounds to the nearest 2^-(p+1): K of them add up
    bound = K * 2.0 ** -(agg.sum_precision_bits + 1)
    np.testing.assert_allclose(got, plain.sum(xs), rtol=0, atol=bound)


def test_dict_states_restore_structure_and_dtypes(agg, plain):
    states = [
        {"w": torch.full((3, 2), float(i), dtype=torch.float32), "n": np.array([i, 2 * i])}
        for i in range(K)
    ]
    got, want = agg.weighted_mean(states, WEIGHTS), plain.weighted_mean(states, WEIGHTS)
    assert got["w"].dtype == torch.float32 and got["n"].dtype == want["n"].dtype
    torch.testing.assert_close(got["w"], want["w"])
    np.testing.assert_array_equal(got["n"], want["n"])
    total = agg.sum(states)
    np.testing.assert_array_equal(total["n"], [10, 20])


# ------------------------------------------------------------------ argmax
def test_argmax_equals_lowest_index_argmax_on_200_count_matrices(agg):
    rng = np.random.default_rng(7)
    blocks = []
    for b in range(200):
        counts = rng.integers(0, [3, 50, 5000][b % 3], size=(K, 10))
        counts[:, 0] = 17  # an all-tied column
        counts[:, 1] = 0  # a zero column
        counts[rng.integers(K), 2] = counts[:, 2].max()  # ties at the top
        blocks.append(counts)
    matrix = np.concatenate(blocks, axis=1).astype(float)  # one call: 5 x 2000
    np.testing.assert_array_equal(agg.argmax(list(matrix)), lowest_index_argmax(matrix))
    for counts in blocks[:3]:
        np.testing.assert_array_equal(agg.argmax(list(counts)), lowest_index_argmax(counts))
    assert agg.ledger.entries[-1].coordinator_received == {"argmax_index": [10]}
    assert agg.ledger.entries[-1].mpc_rounds > 1


def test_argmax_for_every_client_count_with_ties_and_in_one_comparison(agg):
    # smpc.party.distinct_argmax: pairwise comparisons batched, product of the wins.
    rng = np.random.default_rng(3)
    for n_clients in range(1, 8):
        counts = rng.integers(0, 3, size=(n_clients, 40))  # many ties
        counts[:, 0] = 5  # an all-tied column
        counts[-1, 1] = counts[:, 1].max() + 1  # the last client wins
        got = agg.argmax(list(counts.astype(float)))
        np.testing.assert_array_equal(got, lowest_index_argmax(counts))
        entry = agg.ledger.entries[-1]
        assert entry.coordinator_received == {"argmax_index": [40]}
        if n_clients > 1:
            # one comparison with a carry-save step (~36 rounds) + ceil(log2(K-1))
            # multiplications; CrypTen's argmax took two comparisons with two adders
            # each (136 rounds for 5 clients).
            assert entry.mpc_rounds <= 50
    assert agg.ledger.entries[-3].mpc_rounds < agg.ledger.entries[-1].mpc_rounds


def test_argmax_of_fractional_values(agg):
    matrix = np.array([[0.25, -3.5, 7.0], [0.5, -3.25, 7.0], [-1.0, -3.5, 6.5]])
    np.testing.assert_array_equal(agg.argmax(list(matrix)), [1, 1, 0])


# ------------------------------------------------------------------ privacy
def test_no_party_receives_a_clients_plaintext(agg):
    agg.received_by_parties()  # clear what earlier tests left
    xs = client_vectors(K, 64, seed=3)
    agg.weighted_mean(xs, WEIGHTS)
    received = agg.received_by_parties()
    assert [len(r) for r in received] == [K, K, K]  # one message per client per party
    for client in range(K):
        plain_row = np.append(xs[client] * WEIGHTS[client], WEIGHTS[client])
        encoded = sharing.encode(plain_row, agg.sum_precision_bits)
        shares = [received[rank][client]["values"] for rank in range(3)]
        for share in shares:
            assert not np.any(share == encoded)  # no value of the encoding leaks as is
            assert not np.isin(plain_row, share.view(np.float64)).any()
        # ...yet together they are exactly a sharing of the client's encoding
        np.testing.assert_array_equal(sharing.reconstruct(shares), encoded)


def test_coordinator_receives_only_aggregates(agg):
    n_before = len(agg.ledger.entries)
    xs = client_vectors(K, 200, seed=6)
    agg.weighted_mean(xs, WEIGHTS)
    agg.sum(xs)
    agg.argmax([x[:7] for x in xs])
    expected = {
        "weighted_mean": {"sum_weighted": [200], "sum_weights": []},
        "sum": {"sum": [200]},
        "argmax": {"argmax_index": [7]},
    }
    entries = agg.ledger.entries[n_before:]
    assert [e.op for e in entries] == ["weighted_mean", "sum", "argmax"]
    for entry in entries:
        assert entry.private
        assert entry.coordinator_received == expected[entry.op]
        extra = 8 if entry.op == "weighted_mean" else 0
        # one share of each aggregate value from each of the 3 parties, nothing else
        assert entry.coordinator_bytes == 3 * (8 * entry.n_values + extra)
        assert entry.messages_to_party == [entry.n_clients] * 3
    assert agg.private and agg.privacy_note.startswith("private")


def test_pipe_transport_equals_plaintext(plain):
    xs = client_vectors(K, 20_000, seed=8)
    with CryptenAggregator(transport="pipe") as a:
        got = a.weighted_mean(xs, WEIGHTS)
        np.testing.assert_allclose(got, plain.weighted_mean(xs, WEIGHTS), rtol=0, atol=1e-9)
        counts = np.array([[3, 1, 4], [3, 5, 9], [2, 6, 5], [3, 5, 8], [0, 0, 9]], dtype=float)
        np.testing.assert_array_equal(a.argmax(list(counts)), [0, 2, 1])
        assert a.ledger.entries[0].bytes_to_party == [K * 20_001 * 8, K * 32, K * 32]
        pids = a.pids
    _assert_all_gone(pids)


def test_first_operation_overlaps_the_start_and_buffers_are_reused(plain, monkeypatch):
    # The clients' side of the first operation runs while fresh parties start (here kept
    # starting 0.5 s longer); reserve() allocates the shared buffers ahead; a buffer
    # serves every later operation of its size or smaller, in any order.
    from smpc.party_pool import PartyPool

    slow_ready = PartyPool.await_ready
    share_client = CryptenAggregator._share_client
    events: list[str] = []

    def await_ready(self, *args, **kwargs):
        time.sleep(0.5)
        out = slow_ready(self, *args, **kwargs)
        events.append("ready")
        return out

    def share(self, *args, **kwargs):
        events.append("share")
        return share_client(self, *args, **kwargs)

    monkeypatch.setattr(PartyPool, "await_ready", await_ready)
    monkeypatch.setattr(CryptenAggregator, "_share_client", share)
    with CryptenAggregator() as a:
        pool = a._party_pool
        a.reserve(K, 30_000)
        assert pool.starting
        a._join_reserve()  # reserve() alone allocated them, before any operation
        assert [b.capacity for b in pool.buffers] == [(K + 1) * 30_001, 30_001, 30_001]
        paths = [b.path for b in pool.buffers]
        xs = client_vectors(K, 30_000, seed=9)
        got = a.weighted_mean(xs, WEIGHTS)
        assert a.startup_seconds > 0.1  # waited for the parties inside the operation
        assert "share" in events and events.index("share") < events.index("ready")
        np.testing.assert_allclose(got, plain.weighted_mean(xs, WEIGHTS), rtol=0, atol=1e-9)
        assert [b.path for b in pool.buffers] == paths  # the reserved buffers served it
        for n in (7, 30_000, 1, 12_345):
            xs = client_vectors(K, n, seed=n)
            want = plain.weighted_mean(xs, WEIGHTS)
            np.testing.assert_allclose(a.weighted_mean(xs, WEIGHTS), want, rtol=0, atol=1e-9)
            np.testing.assert_allclose(a.sum(xs), plain.sum(xs), rtol=0, atol=1e-6)
        assert [b.path for b in pool.buffers] == paths
        xs = client_vectors(K, 40_000, seed=2)  # larger: new buffers
        want = plain.weighted_mean(xs, WEIGHTS)
        np.testing.assert_allclose(a.weighted_mean(xs, WEIGHTS), want, rtol=0, atol=1e-9)
        assert all(b.path not in paths for b in pool.buffers)
        counts = np.array([[3, 1, 4], [3, 5, 9], [2, 6, 5], [3, 5, 8], [0, 0, 9]], dtype=float)
        np.testing.assert_array_equal(a.argmax(list(counts)), [0, 2, 1])
        pids = a.pids
    _assert_all_gone(pids)


def test_secure_mode_refuses_tfp_and_seeds():
    with pytest.raises(ValueError, match=r"TFP.*refused in secure mode"):
        CryptenAggregator(provider="TFP")
    with pytest.raises(ValueError, match="seed is refused in secure mode"):
        CryptenAggregator(seed=1)


@pytest.mark.reproducibility
def test_debug_mode_is_bit_for_bit_reproducible():
    xs, counts = (
        client_vectors(K, 300, seed=4),
        np.random.default_rng(5).integers(0, 9, size=(K, 12)),
    )
    runs = []
    for _ in range(2):
        with CryptenAggregator(mode="debug", seed=11, record_received=True) as a:
            assert not a.private and a.privacy_note == "not private (debug mode: seeded masks)"
            mean, total, winners = a.weighted_mean(xs, WEIGHTS), a.sum(xs), a.argmax(list(counts))
            digests = [[r["sha256"] for r in party] for party in a.received_by_parties()]
            assert not a.ledger.entries[-1].private
        runs.append((mean.tobytes(), total.tobytes(), winners.tobytes(), digests))
        _assert_all_gone(a.pids)
    assert runs[0] == runs[1]
    np.testing.assert_array_equal(np.frombuffer(runs[0][2], np.int64), lowest_index_argmax(counts))


# ------------------------------------------------------------------ faults
def test_overflow_is_rejected_before_anything_is_sent(agg):
    before, n_entries = agg.party_counters(), len(agg.ledger.entries)
    xs = [{"w": np.zeros(3)} for _ in range(K)]
    xs[3]["w"][1] = 1e12
    with pytest.raises(
        sharing.RingOverflowError,
        match=r"client 3: max \|w\*x\| = 4.2e\+13 \(tensor 'w' at \(1,\)\)",
    ):
        agg.weighted_mean(xs, WEIGHTS)
    assert agg.party_counters() == before and len(agg.ledger.entries) == n_entries


def test_killed_party_raises_within_timeout_and_leaves_no_process():
    a = CryptenAggregator(timeout=5)
    pids = a.pids
    try:
        a.sum(client_vectors(K, 10))
        os.kill(pids[2], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(
            PartyError,
            match=rf"crypten party 2 \(pid {pids[2]}\) exited with code -9 during weighted_mean",
        ):
            a.weighted_mean(client_vectors(K, 10), WEIGHTS)
        assert time.monotonic() - start < 5
        _assert_all_gone(pids)
        with pytest.raises(AggregatorClosedError):
            a.sum(client_vectors(K, 10))
    finally:
        a.close()
    _assert_all_gone(pids)


def test_party_killed_mid_round_or_stopped_raises_and_reaps():
    with CryptenAggregator(timeout=4) as a:
        pids = a.pids
        big = client_vectors(K, 1_000_000)
        killer = threading.Timer(0.05, os.kill, args=(pids[0], signal.SIGKILL))
        killer.start()
        with pytest.raises(PartyError, match=r"crypten party 0 .*(exited with code -9|closed)"):
            for _ in range(20):  # the kill lands during one of these rounds
                a.weighted_mean(big, WEIGHTS)
        killer.join()
    _assert_all_gone(pids)

    with CryptenAggregator(timeout=2) as a:
        pids = a.pids
        os.kill(pids[1], signal.SIGSTOP)  # alive but not answering
        start = time.monotonic()
        with pytest.raises(
            PartyError, match=rf"crypten party 1 \(pid {pids[1]}\) did not answer within 2 s"
        ):
            a.sum(client_vectors(K, 10))
        assert time.monotonic() - start < 3
    _assert_all_gone(pids)


# ------------------------------------------------------------------ multi-host entry
def test_remote_parties_started_from_the_command_line_entry():
    gloo, *listen = free_ports(4)
    env = checkout_env(SMPC_AUTHKEY="test-key")
    cmd = [sys.executable, "-m", "smpc.party", "--world-size", "3"]
    procs = [
        subprocess.Popen(
            [*cmd, "--rank", str(r), "--rendezvous", f"tcp://127.0.0.1:{gloo}"]
            + ([] if r == 3 else ["--listen", f"127.0.0.1:{listen[r]}"]),
            env=env,
            cwd=ROOT,
        )
        for r in range(4)  # three parties and the dealer (rank == world size)
    ]
    try:
        addresses = [("127.0.0.1", p) for p in listen]
        with CryptenAggregator(party_addresses=addresses, authkey=b"test-key") as a:
            xs = client_vectors(K, 100, seed=9)
            want = np.average(np.stack(xs), axis=0, weights=WEIGHTS)
            np.testing.assert_allclose(a.weighted_mean(xs, WEIGHTS), want, rtol=0, atol=1e-6)
            counts = np.array([[3, 1, 4], [3, 5, 9], [2, 6, 5], [3, 5, 8], [0, 0, 9]])
            np.testing.assert_array_equal(a.argmax(list(counts)), [0, 2, 1])
        assert [p.wait(timeout=30) for p in procs] == [0, 0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
