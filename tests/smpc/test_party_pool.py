"""Warm party pools: reuse across aggregators, replacement of dead parties, reaping."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from _helpers.paths import checkout_env
from _helpers.processes import alive

from smpc import party_pool
from smpc.crypten_backend import CryptenAggregator

pytestmark = pytest.mark.timeout(180)

try:
    from smpc.crypten_compat import import_crypten

    import_crypten()
except ImportError as err:  # pragma: no cover - crypten is installed by the Makefile
    pytest.skip(f"crypten unavailable: {err}", allow_module_level=True)

WEIGHTS = [1.0, 2.0, 3.0]


def _mean_ok(agg: CryptenAggregator) -> None:
    xs = [np.full(100, float(i)) for i in range(3)]
    np.testing.assert_allclose(agg.weighted_mean(xs, WEIGHTS), np.full(100, 8 / 6), atol=1e-9)


def test_warm_pool_is_reused_replaced_when_a_party_died_and_reaped_at_the_end():
    with party_pool.warm_parties():
        with CryptenAggregator() as first:
            _mean_ok(first)
            pids = first.pids
        assert all(alive(p) for p in pids)  # kept warm after close
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
        assert not any(alive(p) for p in pids)  # the broken pool was reaped
    assert not any(alive(p) for p in fresh)  # leaving warm_parties reaps the warm pool


def test_without_opt_in_close_stops_the_parties():
    assert not party_pool.keeping_warm()
    with CryptenAggregator() as agg:
        pids = agg.pids
    assert not any(alive(p) for p in pids)


def test_a_pool_that_failed_is_never_given_back():
    with party_pool.warm_parties():
        agg = CryptenAggregator(timeout=3)
        pids = agg.pids
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(party_pool.PartyError, match="crypten party 0"):
            _mean_ok(agg)
        agg.close()
        assert not party_pool._WARM.get(agg._pool.settings)
        assert not any(alive(p) for p in pids)


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


# ------------------------------------------------------------------ background start-up
def test_fresh_parties_start_in_the_background_and_the_first_operation_waits(monkeypatch):
    release = threading.Event()
    original = party_pool.PartyPool.await_ready

    def held(self, *args, **kwargs):
        assert release.wait(60), "the test never released the start-up"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(party_pool.PartyPool, "await_ready", held)
    begin = time.monotonic()
    agg = CryptenAggregator()
    try:
        assert time.monotonic() - begin < 5.0  # returned while the start-up was held
        assert agg.rendezvous and not agg._party_pool._starting.is_set()
        threading.Timer(0.5, release.set).start()
        _mean_ok(agg)  # waits for the parties, then computes as before
        assert agg.startup_seconds >= 0.4
        assert len(agg.pids) == 4 and all(alive(p) for p in agg.pids)
    finally:
        release.set()
        agg.close()
    assert not any(alive(p) for p in agg.pids)


def test_closing_before_the_parties_are_up_stops_them():
    agg = CryptenAggregator()
    agg.close()  # at once, while they are still starting
    pool = agg._party_pool
    assert pool is not None and pool.closed
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(alive(p) for p in pool.pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pool.pids)
    assert not os.path.exists(pool.rendezvous.removeprefix("file://").rsplit("/", 1)[0])


def test_a_rank_that_dies_while_the_mpc_forms_is_named_within_the_timeout():
    # Parties answer Ready and join the MPC (crypten.init) in the background; the dealer
    # dies before they can: argmax (which needs the MPC) must name it, not hang.
    agg = CryptenAggregator(timeout=10)
    os.kill(agg.pids[-1], signal.SIGKILL)  # the dealer
    begin = time.monotonic()
    with pytest.raises(party_pool.PartyError, match=r"crypten dealer \(pid \d+\) exited"):
        agg.argmax([np.arange(4.0), np.ones(4), np.zeros(4)])
    assert time.monotonic() - begin < 10.0
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(alive(p) for p in agg.pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in agg.pids)


MAIN_SCRIPT = """
import os, sys
with open(sys.argv[1], "a") as f:  # every process that imports this module, at import
    f.write(f"{os.getpid()}\\n")
if __name__ == "__main__":
    import numpy as np
    from smpc.crypten_backend import CryptenAggregator

    with CryptenAggregator() as agg:
        print(agg.sum([np.ones(3)] * 3).tolist(), agg.pids)
"""


def test_parties_do_not_import_the_coordinators_main_module(tmp_path):
    import subprocess
    import sys

    script, marks = tmp_path / "coordinator.py", tmp_path / "imported_by"
    script.write_text(MAIN_SCRIPT)
    env = checkout_env()
    done = subprocess.run(
        [sys.executable, str(script), str(marks)],
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[3.0, 3.0, 3.0]" in done.stdout
    # Only the coordinator ran it: not the 3 parties, the dealer or the fork server.
    assert len(marks.read_text().split()) == 1, marks.read_text()


def test_a_rank_that_could_not_join_is_named_only_when_no_other_rank_died():
    from types import SimpleNamespace

    from smpc.party import JOIN_FAILED_EXIT_CODE

    pool = party_pool.PartyPool(party_pool.PoolSettings())
    try:
        pool.names = [f"crypten party {r} (pid {100 + r})" for r in range(3)]
        codes = [None, JOIN_FAILED_EXIT_CODE, None, None]  # parties 0-2, then the dealer
        pool.procs = [SimpleNamespace(pid=100 + i, exitcode=c) for i, c in enumerate(codes)]
        assert pool.dead_party() == f"crypten party 1 (pid 101) exited with code {codes[1]}"
        pool.procs[3].exitcode = -9  # the dealer died: it is the cause
        assert pool.dead_party() == "crypten dealer (pid 103) exited with code -9"
        pool.procs[2].exitcode = -9
        assert pool.dead_party() == "crypten party 2 (pid 102) exited with code -9"
    finally:
        pool.procs = []
        pool.kill()


def test_spawned_parties_outlive_their_start_up():
    # A spawn child's parent is the thread that started it (PR_SET_PDEATHSIG fires when
    # that thread ends): spawned parties are started by the caller, not in the background.
    with CryptenAggregator(start_method="spawn", warm=False) as agg:
        assert agg._party_pool is not None and agg._party_pool._starting.is_set()
        time.sleep(0.5)
        assert all(alive(p) for p in agg.pids)
        _mean_ok(agg)
