"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ../shared/data beside the repository root (CI has it; see docs/data.md).
#: This file is <root>/tests/conftest.py, so parents[1] is the repository root.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_path(name: str) -> Path:
    """Path of a file in ../shared/data; skip the test if the folder is absent and CI is unset.

    Under CI (env ``CI`` set) a missing file is an error, never a skip.
    """
    path = SHARED_DATA / name
    if not SHARED_DATA.is_dir() and not os.environ.get("CI"):
        pytest.skip(f"{SHARED_DATA} is absent (and CI is not set); {name} is needed")
    if not path.exists():
        raise FileNotFoundError(f"shared data file missing: {path}")
    return path


@pytest.fixture(scope="session")
def shared_data():
    """The :func:`shared_data_path` helper as a fixture: ``shared_data("file.h5ad")``."""
    return shared_data_path


@pytest.fixture
def one_torch_thread():
    """Tiny matrices: one thread avoids OpenMP stalls on a loaded 2-core machine.

    (scanpy's preprocessing resets torch's thread count, hence per test.)
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- Scheduling (pytest-xdist; `make test` runs ``-n 2 --dist loadgroup``) -------------
#
# The deployment tests share deployments and session data (tests/deploy/conftest.py) and
# start many processes whose steps have timeouts: they run on one worker, one after the
# other (one scheduling unit). Everything else is scheduled test by test. (The scheduler
# below does this itself: xdist 3.8's own grouping sets ``item._nodeid``, which pytest 9
# no longer reads, so ``xdist_group`` marks would be ignored.)
#
# The longest tests are collected first, so that no worker is left with a long test at
# the end while the other idles. Whole modules move (module-scoped fixtures stay shared);
# the order within a module is kept. Without xdist this only changes the module order.
_ONE_WORKER = ("tests/deploy/",)
_FIRST = (
    "tests/deploy/",
    "tests/test_notebooks.py",
    "tests/fedsc/run/test_refactor_safety.py",
    "tests/robustness/test_parties_faults.py",
    "tests/fedsc/sweep/test_sweep.py",
    "tests/fedsc/evaluation/test_evaluation_real.py",
    "tests/fedsc/settings/test_settings.py",
    "tests/robustness/test_parties_rendezvous.py",
    "tests/fedsc/methods/test_scbatchprox_crypten.py",
    "tests/fedsc/privacy/test_privacy_study.py",
)


# --- Tiers: `make test-fast` deselects `slow` ------------------------------------------
#
# Besides the tests marked `slow` where they are defined, every test of these modules is
# slow: Flower deployments, CrypTen party processes started and killed, sweeps and runs in
# fresh interpreters. Together about 75% of the suite's time.
_SLOW_MODULES = (
    "tests/deploy/",
    "tests/robustness/test_parties_faults.py",
    "tests/robustness/test_parties_rendezvous.py",
    "tests/smpc/test_sealed.py",
    "tests/smpc/test_party_pool.py",
    "tests/fedsc/sweep/test_sweep.py",
    "tests/fedsc/methods/test_scbatchprox_crypten.py",
    "tests/fedsc/privacy/test_privacy_study.py",
    "tests/fedsc/settings/test_settings.py",
    "tests/fedsc/evaluation/test_evaluation_real.py",
)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::")[0]
    return next((i for i, p in enumerate(_FIRST) if path.startswith(p)), len(_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(_SLOW_MODULES):
            item.add_marker(pytest.mark.slow)
    items[:] = sorted(items, key=_rank)  # stable: the rest keeps pytest's order


def _scope(nodeid: str) -> str:
    """The scheduling unit of a test: its folder in _ONE_WORKER, its xdist group (when
    xdist could set one), else the test itself."""
    if nodeid.rfind("@") > nodeid.rfind("]"):
        return nodeid.split("@")[-1]
    return next((p for p in _ONE_WORKER if nodeid.startswith(p)), nodeid)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadgroup":
        return None  # xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerFolders(LoadScopeScheduling):
        """Units in collection order; a worker asks for the next when it has < 2 left."""

        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return OneWorkerFolders(config, log)
