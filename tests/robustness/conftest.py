"""Shared fixtures of the robustness tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread is faster and deterministic on a loaded machine."""


@pytest.fixture
def nothing_left(tmp_path, monkeypatch):
    """Temporary files go to a private folder that must be empty afterwards, and no
    process started during the case may outlive it."""
    import os
    import tempfile

    from _helpers.processes import children

    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    before = children(os.getpid())
    yield tmp
    tempfile.tempdir = None  # monkeypatch restores it; clear the cache first
    left = children(os.getpid()) - before
    assert not left, f"processes left running: {sorted(left)}"
    assert not list(tmp.iterdir()), f"temporary files left: {list(tmp.iterdir())}"


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: the case must fail before it."""
    from fedsc.run import execute

    def boom(*args, **kwargs):
        raise AssertionError("data were loaded before the bad input was reported")

    monkeypatch.setattr(execute, "load_dataset", boom)
