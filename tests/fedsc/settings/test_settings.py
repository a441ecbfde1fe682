"""fedsc.settings: opt-in global configuration, threads from the CPUs available, logging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fedsc import settings
from fedsc.settings import _caches
from smpc import cpus

ENV_KEYS = (
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)

_PROBE = r"""
import json, os, sys, warnings
# third-party imports first: the filters they add themselves are not fedsc's doing
import anndata, igraph, jax, numba, pynndescent, scib_metrics, sklearn, torch, umap.umap_
from numba.core import config as nc
from numba.core.dispatcher import Dispatcher

def state():
    umap_cached = sum(
        isinstance(f, Dispatcher) and type(f._cache).__name__ != "NullCache"
        for f in vars(sys.modules["umap.umap_"]).values()
    )
    return {
        "filters": [repr(f) for f in warnings.filters],
        "numba_cache_dir": nc.CACHE_DIR,
        "numba_env": os.environ.get("NUMBA_CACHE_DIR"),
        "umap_cached": umap_cached,
        "jax_dir": jax.config.jax_compilation_cache_dir,
        "jax_min_secs": jax.config.jax_persistent_cache_min_compile_time_secs,
        "omp_wait": os.environ.get("OMP_WAIT_POLICY"),
    }

before = state()
import fedsc, fedsc.evaluation, fedsc.settings, fedsc.progress, fedsc.methods.scgen
imported = state()
fedsc.settings.apply()
applied = state()
fedsc.settings.apply()
again = state()
print(json.dumps({"before": before, "imported": imported, "applied": applied, "again": again}))
"""


def test_import_changes_nothing_and_apply_sets_caches_and_filters(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (*ENV_KEYS, "NUMBA_CACHE_DIR")}
    env.update(FEDSC_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(Path.cwd()))
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["imported"] == s["before"]
    applied = s["applied"]
    assert applied["jax_dir"] == str(tmp_path / "cache" / "jax")
    assert applied["jax_min_secs"] == 0.0
    assert applied["numba_env"] == str(tmp_path / "cache" / "numba")
    assert applied["numba_cache_dir"] == str(tmp_path / "cache" / "numba")
    assert applied["umap_cached"] > 0 and s["before"]["umap_cached"] == 0
    assert any("Cannot cache compiled function" in f for f in applied["filters"])
    assert applied["omp_wait"] == "PASSIVE"
    assert s["again"] == applied  # idempotent


def test_threads_default_to_the_available_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpus, "_cgroup_cpu_limit", lambda: None)
    assert settings.available_cpus() == 4
    monkeypatch.setitem(settings._values, "threads", None)
    monkeypatch.setattr(settings, "_USER_OMP_THREADS", None)
    assert settings.resolved_threads() == 4
    monkeypatch.setattr(settings, "_USER_OMP_THREADS", 1)  # a user's OMP_NUM_THREADS
    assert settings.resolved_threads() == 1
    settings.threads = 2
    assert settings.threads == 2 and settings.resolved_threads() == 2


def test_settings_are_validated_and_read_from_the_environment(monkeypatch):
    monkeypatch.setattr(settings, "_values", dict(settings._values))
    for bad in (0, -1, "x", 1.5):
        with pytest.raises(ValueError, match="threads"):
            settings.threads = bad
    settings.threads = "auto"
    assert settings.threads is None
    with pytest.raises(ValueError, match="unknown setting"):
        settings.update(thread=2)
    with pytest.raises(AttributeError):
        settings.no_such_setting  # noqa: B018
    monkeypatch.setenv("FEDSC_THREADS", "3")
    monkeypatch.setenv("FEDSC_PASSIVE_WAIT", "off")
    monkeypatch.setenv("FEDSC_PROGRESS_INTERVAL", "5")
    values = settings._from_env()
    assert values["threads"] == 3 and values["passive_wait"] is False
    assert values["progress_interval"] == 5.0
    monkeypatch.setenv("FEDSC_PASSIVE_WAIT", "maybe")
    with pytest.raises(ValueError, match="FEDSC_PASSIVE_WAIT"):
        settings._from_env()


def test_configure_environment_keeps_user_values(monkeypatch):
    monkeypatch.setattr(settings, "_values", {**settings._values, "threads": None})
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    changed = settings.configure_environment(environ=env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["OMP_NUM_THREADS"] == "7"
    assert env["GOMP_SPINCOUNT"] == "0" and "OMP_WAIT_POLICY" not in changed
    changed = settings.configure_environment(3, environ=env)  # explicit threads win
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert settings.configure_environment(3, environ=env) == {}


def test_apply_sets_torch_threads(monkeypatch):
    import torch

    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)  # restored after the test
    monkeypatch.setattr(settings, "_values", {**settings._values, "compile_cache": False})
    monkeypatch.setattr(settings, "_applied", None)
    monkeypatch.setattr(_caches, "_REQUESTED", _caches._REQUESTED)
    before = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            state = settings.apply(threads=1)
        assert state["resolved_threads"] == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_cli_verbosity_and_threads(capsys, tmp_path, monkeypatch):
    import torch

    from fedsc.cli import main

    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(settings, "_values", {**settings._values, "compile_cache": False})
    monkeypatch.setattr(settings, "_applied", None)
    before = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            main(["-v", "--threads", "1", "report", str(tmp_path / "missing")])
    except Exception:  # the command itself may fail on the missing folder
        pass
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "INFO fedsc.settings: settings applied: 1 threads" in err
    assert logging.getLogger("fedsc").handlers == []  # the CLI's handler is removed after
    assert logging.getLogger("fedsc").level == logging.NOTSET


def test_configure_logging_levels(capsys):
    verbosity_before = settings.snapshot()["verbosity"]
    with settings.logging_to_stderr(0):
        logging.getLogger("fedsc.sweep").info("hidden")
        logging.getLogger("fedsc.progress").info("progress line")
        logging.getLogger("smpc").warning("shown")
    with settings.logging_to_stderr(2):
        logging.getLogger("fedsc.methods.vae").debug("debug line")
    err = capsys.readouterr().err
    assert "hidden" not in err and "progress line" in err and "shown" in err
    assert "DEBUG fedsc.methods.vae: debug line" in err
    assert logging.getLogger("fedsc").handlers == []
    # the block's verbosity does not outlive it (a later CLI call without -v stays quiet)
    assert settings.snapshot()["verbosity"] == verbosity_before


def test_sweep_pool_workers_share_the_cpus_and_wait_passively(monkeypatch):
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    from multiprocessing import get_context

    import torch

    from fedsc.sweep.executor import _init_worker

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(settings, "_values", {**settings._values, "compile_cache": False})
    with ProcessPoolExecutor(
        1,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(1, settings.worker_snapshot()),
    ) as pool:
        assert pool.submit(settings.resolved_threads).result() == 1
        assert pool.submit(torch.get_num_threads).result() == 1
        assert pool.submit(partial(os.getenv, "OMP_WAIT_POLICY")).result() == "PASSIVE"


def test_kernels_compiled_at_import_are_cached_on_first_import(tmp_path, monkeypatch):
    """pynndescent compiles its distance kernels at import without cache=True (~10 CPU-s a
    process): while a package is first imported, numba's decorators default to caching."""
    import numba
    from numba.core.dispatcher import Dispatcher

    pkg = tmp_path / "eager_kernels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import numba\n\n"
        "@numba.njit('f8(f8)')\n"  # compiled at decoration, like pynndescent's distances
        "def double(x):\n    return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # wherever this process's numba cache is (NUMBA_CACHE_DIR), it is under tmp_path here
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path / "numba"))
    njit, jit = numba.njit, numba.jit
    _caches._enable_numba_caching(("eager_kernels",))
    assert numba.njit is njit and numba.jit is jit  # restored
    mod = sys.modules["eager_kernels"]
    assert isinstance(mod.double, Dispatcher) and mod.double(2.0) == 4.0
    assert type(mod.double._cache).__name__ != "NullCache"
    index = [p.name for p in tmp_path.rglob("*.nbi")]  # written when it compiled
    assert any(name.startswith("__init__.double") for name in index), index
