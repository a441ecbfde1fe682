"""Fault injection on local parties: a party or its coordinator (or a sweep) is killed or
stopped; the error names the party within the timeout, and 5 s later no party process
and no temporary folder (rendezvous, shared memory) is left. Cases: CASES_PARTIES.md."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from _helpers.processes import alive, children

try:
    from smpc.crypten_compat import import_crypten

    import_crypten()
except ImportError as err:  # pragma: no cover - crypten is installed by the Makefile
    pytest.skip(f"crypten unavailable: {err}", allow_module_level=True)

from _helpers.paths import checkout_env

from smpc.channel import ConnectionChannel
from smpc.crypten_backend import CryptenAggregator, PartyError

pytestmark = pytest.mark.timeout(300)

ENV = checkout_env()
WEIGHTS = [1.0, 2.0, 3.0]
GRACE = 5.0  # "no party alive 5 s later"


def _gone_within(pids: list[int], seconds: float = GRACE) -> list[int]:
    """Pids still alive after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def _leftovers(pid: int) -> list[str]:
    """Temporary folders of coordinator ``pid`` still present."""
    return glob.glob(f"/tmp/smpc-crypten-{pid}-*") + glob.glob(f"/dev/shm/smpc-shm-{pid}-*")


def _clients(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, size) for _ in range(3)]


# ------------------------------------------------------------------ a party fails
@pytest.mark.parametrize("transport", ["shm", "pipe"])
def test_party_sigkill_during_an_operation_is_named_and_everything_is_reaped(transport):
    agg = CryptenAggregator(timeout=5, transport=transport)
    pids, folders = agg.pids, [agg._pool._tmpdir, agg._pool._shm_dir]
    big = _clients(400_000)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        os.kill(pids[1], signal.SIGKILL)

    timer = threading.Timer(0.2, kill)
    try:
        timer.start()
        with pytest.raises(
            PartyError, match=rf"crypten party 1 \(pid {pids[1]}\) (exited with code -9|closed)"
        ):
            for _ in range(200):  # the kill lands during one of these operations
                agg.weighted_mean(big, WEIGHTS)
        assert killed.is_set()
    finally:
        timer.cancel()
        agg.close()
    assert not _gone_within(pids)
    assert not [f for f in folders if f and os.path.exists(f)]
    assert not _leftovers(os.getpid())


def test_party_sigstop_during_an_operation_is_named_within_the_timeout():
    agg = CryptenAggregator(timeout=5)
    pids = agg.pids
    big = _clients(400_000)
    stopped_at: list[float] = []

    def stop() -> None:
        stopped_at.append(time.monotonic())
        os.kill(pids[2], signal.SIGSTOP)  # alive, but answers nothing

    timer = threading.Timer(0.2, stop)
    try:
        timer.start()
        with pytest.raises(
            PartyError, match=rf"crypten party 2 \(pid {pids[2]}\) did not answer within 5 s"
        ):
            for _ in range(200):
                agg.weighted_mean(big, WEIGHTS)
        # within the operation timeout of the stop (+ slack for a loaded machine)
        assert time.monotonic() - stopped_at[0] < 5 + 3
    finally:
        timer.cancel()
        agg.close()
    assert not _gone_within(pids)  # the stopped party was SIGKILLed too
    assert not _leftovers(os.getpid())


def test_startup_timeout_message_names_the_startup_timeout(monkeypatch):
    # Parties are Ready in ~0.1 s once the fork server runs: make them silent instead of
    # relying on a slow start-up, so the start-up deadline is what fires.
    def silent(self, timeout=0.0):
        time.sleep(timeout)
        return False

    monkeypatch.setattr(ConnectionChannel, "poll", silent)
    begin = time.monotonic()
    agg = CryptenAggregator(timeout=7, startup_timeout=0.3)  # parties start in the background
    with pytest.raises(PartyError) as caught:
        agg.sum(_clients(10))  # the first operation waits for them
    text = str(caught.value)
    assert "within 0.3 s during start-up" in text and "7 s" not in text
    assert time.monotonic() - begin < 0.3 + 10.0  # the fork server may take seconds to start
    assert not _leftovers(os.getpid())
    assert not _gone_within(agg.pids)


# ------------------------------------------------------------------ the coordinator dies
COORDINATOR = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from smpc.crypten_backend import CryptenAggregator

    if __name__ == "__main__":
        agg = CryptenAggregator(timeout=60, transport=sys.argv[1])
        xs = [np.ones(10)] * 3
        agg.sum(xs)
        print(json.dumps({"pids": agg.pids,
                          "folders": [agg._pool._tmpdir, agg._pool._shm_dir]}), flush=True)
        big = [np.ones(300_000)] * 3
        while True:
            if sys.argv[2] == "busy":
                agg.weighted_mean(big, [1.0, 2.0, 3.0])
            else:
                time.sleep(1)
    """
)


@pytest.mark.parametrize(("transport", "state"), [("shm", "busy"), ("pipe", "idle")])
def test_coordinator_sigkill_takes_its_parties_and_folders(tmp_path, transport, state):
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR)
    proc = subprocess.Popen(
        [sys.executable, str(script), transport, state],
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, "the coordinator did not start"
        info = json.loads(line)
        time.sleep(0.5)
        # parties, dealer, fork server, resource tracker
        processes = children(proc.pid, zombies=True)
        assert set(info["pids"]) <= set(processes)
        proc.kill()
        proc.wait()
        assert not _gone_within(processes)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and _leftovers(proc.pid):
            time.sleep(0.1)
        assert not _leftovers(proc.pid)
        assert not [f for f in info["folders"] if f and os.path.exists(f)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _forkserver_family(pid: int) -> list[int]:
    """Descendants of ``pid`` forked by a fork server: parties and dealers."""
    servers = []
    for child in children(pid, zombies=True):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"forkserver" in f.read():
                    servers.append(child)
        except OSError:
            pass
    return [p for server in servers for p in children(server, zombies=True)]


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_sigkill_takes_its_parties(tmp_path, workers):
    import yaml

    from fedsc.datasets import simulate

    data = tmp_path / "tiny.h5ad"
    simulate(120, 200, n_batches=3, n_cell_types=3, seed=0).write_h5ad(data)
    study = {
        "study": "tiny-crypten",
        "datasets": [str(data)],
        "seeds": list(range(20)),
        "defaults": {"n_comps": 10, "n_top_genes": 100},
        "methods": {
            "scbatchprox": {
                "settings": {"params": {"rounds": 50}},
                "variants": {"crypten": {"backend": "crypten"}},
            }
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "fedsc.cli", "sweep", str(path), "--out", str(tmp_path / "out")]
    cmd += ["--workers", str(workers)]
    # killed before any metric is computed: no need for the metric panels' compilation
    # caches, whose set-up (fedsc.settings.apply) imports pynndescent: ~13 CPU-s/process
    env = {**ENV, "FEDSC_COMPILE_CACHE": "0"}
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    everything: list[int] = []
    try:
        deadline = time.monotonic() + 200
        parties: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            # in-process runs: the sweep is the coordinator; with workers, each worker is
            # (3 parties + dealer per coordinator). Sweep workers themselves (and their fork
            # servers) are the executor's: not checked here.
            if len(_forkserver_family(proc.pid)) >= 4:
                parties = _forkserver_family(proc.pid)
                break
            time.sleep(0.2)
        assert parties, "the sweep never started its parties"
        time.sleep(1.0)
        parties = _forkserver_family(proc.pid)
        coordinators = [proc.pid, *children(proc.pid, zombies=True)]
        everything.extend(coordinators)
        proc.kill()
        proc.wait()
        assert not _gone_within(parties)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and any(_leftovers(p) for p in coordinators):
            time.sleep(0.1)
        assert not [f for p in coordinators for f in _leftovers(p)]
        # the sweep's own children (pool workers, their helpers) die with it too. They
        # notice the death by polling; on a 2-core machine running other work, the first
        # child the sweep started (pid + 1) outlived 5 s twice in about six full runs (never
        # on a quiet machine), so they get 3 x the parties' grace
        assert not _gone_within(coordinators[1:], seconds=3 * GRACE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # whatever survived a failed assertion is reaped here
        for pid in everything:
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
