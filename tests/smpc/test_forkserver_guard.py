"""The parties' fork server dies with its parent also while it still imports torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _helpers.paths import ROOT, checkout_env
from _helpers.processes import alive

# Starts the fork server (as smpc.prestart does) with a preload that takes a minute, as
# torch's import does on a loaded machine, and prints the server's pid.
_PARENT = r"""
import sys, time
import multiprocessing.forkserver as forkserver
from smpc import party_pool
party_pool.FORKSERVER_PRELOAD = sys.argv[1].split(",")
party_pool.start_fork_server()
print(forkserver._forkserver._forkserver_pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("guarded", [True, False])
def test_fork_server_dies_with_its_parent_during_its_imports(tmp_path, guarded):
    marker = tmp_path / "importing"
    (tmp_path / "slow_preload.py").write_text(
        f"import time\nopen({str(marker)!r}, 'w').close()\ntime.sleep(60)\n"
    )
    preload = ["smpc.forkserver_guard", "slow_preload"] if guarded else ["slow_preload"]
    # the fork server finds its preloads on the environment's path, not the parent's sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, ",".join(preload)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    server = 0
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the fork server never reached its slow import"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 3.0
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        # unguarded, the server outlives its parent until the import ends (the control)
        assert alive(server) is not guarded
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server and alive(server):
            os.kill(server, signal.SIGKILL)


_RELEASED = r"""
import atexit, sys
atexit.register(print, "teardown ran", flush=True)  # as torch's and CrypTen's hooks are
import smpc.forkserver_guard as guard
guard.release()
sys.exit(0)  # how the fork server ends when its parent dies (SystemExit from its loop)
"""


def test_the_released_fork_server_ends_without_the_interpreters_teardown():
    # torch's and CrypTen's teardown kept a dead coordinator's fork server alive 0.5 s quiet
    # and over 5 s under load; after release() its exit skips every earlier atexit hook
    env = checkout_env()
    done = subprocess.run(
        [sys.executable, "-c", _RELEASED], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "teardown ran" not in done.stdout
