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
