"""Warm party pools: reuse across aggregators, replacement of dead parties, reaping."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from smpc import party_pool
from smpc.crypten_backend import CryptenAggregator

pytestmark = pytest.mark.timeout(180)

try:
    from smpc.crypten_compat import import_crypten

    import_crypten()
except ImportError as err:  # pragma: no cover - crypten is installed by the Makefile
    pytest.skip(f"crypten unavailable: {err}", allow_module_level=True)

WEIGHTS = [1.0, 2.0, 3.0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _mean_ok(agg: CryptenAggregator) -> None:
    xs = [np.full(100, float(i)) for i in range(3)]
    np.testing.assert_allclose(agg.weighted_mean(xs, WEIGHTS), np.full(100, 8 / 6), atol=1e-9)


def test_warm_pool_is_reused_replaced_when_a_party_died_and_reaped_at_the_end():
    with party_pool.warm_parties():
        with CryptenAggregator() as first:
            _mean_ok(first)
            pids = first.pids
        assert all(_alive(p) for p in pids)  # kept warm after close
        start = time.perf_counter()
        with CryptenAggregator() as second:
            assert second.pids == pids  # borrowed, not started
            assert time.perf_counter() - start < 0.5
            _mean_ok(second)
            np.testing.assert_array_equal(second.argmax([np.array([1.0, 5.0])] * 3), [0, 0])
        # a warm party dies between runs: the next aggregator gets fresh parties
        os.kill(pids[1], signal.SIGKILL)
        time.sleep(0.2)
        with CryptenAggregator() as third:
            assert third.pids and not set(third.pids) & set(pids)
            _mean_ok(third)
            fresh = third.pids
        assert not any(_alive(p) for p in pids)  # the broken pool was reaped
    assert not any(_alive(p) for p in fresh)  # leaving warm_parties reaps the warm pool


def test_without_opt_in_close_stops_the_parties():
    assert not party_pool.keeping_warm()
    with CryptenAggregator() as agg:
        pids = agg.pids
    assert not any(_alive(p) for p in pids)


def test_a_pool_that_failed_is_never_given_back():
    with party_pool.warm_parties():
        agg = CryptenAggregator(timeout=3)
        pids = agg.pids
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(party_pool.PartyError, match="crypten party 0"):
            _mean_ok(agg)
        agg.close()
        assert not party_pool._WARM.get(agg._pool.settings)
        assert not any(_alive(p) for p in pids)


def test_sweep_workers_opt_in_to_warm_parties(monkeypatch):
    import torch

    from fedsc.sweep import executor

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        executor._init_worker(1)
        assert party_pool.keeping_warm()
    finally:
        party_pool.keep_warm(False)
        torch.set_num_threads(threads)
    # in-process sweeps keep parties warm for their runs only
    seen = []
    monkeypatch.setattr(
        executor, "execute_record", lambda cfg, keep: seen.append(party_pool.keeping_warm()) or {}
    )
    list(executor.run_local([({}, False), ({}, False)], workers=1))
    assert seen == [True, True] and not party_pool.keeping_warm()


def test_folders_of_dead_coordinators_are_removed_at_the_next_start(tmp_path):
    import subprocess
    import sys

    from smpc import process_guard

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f"smpc-crypten-{dead.pid}-abcd"
    mine = tmp_path / f"smpc-shm-{os.getpid()}-abcd"
    foreign = tmp_path / "smpc-shm-nopid"
    for folder in (stale, mine, foreign):
        folder.mkdir()
    assert process_guard.remove_stale_directories([str(tmp_path)]) == [str(stale)]
    assert not stale.exists() and mine.exists() and foreign.exists()


def test_local_parties_watch_the_coordinator_and_name_their_folders_after_it():
    with CryptenAggregator() as agg:
        pool = agg._pool
        folders = [pool._tmpdir, pool._shm_dir]
        assert all(f"-{os.getpid()}-" in os.path.basename(f) for f in folders)
        assert all(os.stat(f).st_mode & 0o777 == 0o700 for f in folders)
    assert not any(os.path.exists(f) for f in folders)
