"""Progress reports: log lines when no bar is drawn."""

from __future__ import annotations

import importlib
import logging
import time

import pytest

from fedsc import progress as progress_mod
from fedsc.progress import progress


@pytest.fixture
def not_a_tty(monkeypatch):
    monkeypatch.setattr(progress_mod.sys.stderr, "isatty", lambda: False, raising=False)


def _slow(n: int):
    for i in range(n):
        time.sleep(0.01)
        yield i


def test_progress_logs_periodically_when_not_a_terminal(not_a_tty, caplog):
    with caplog.at_level(logging.INFO, logger="fedsc.progress"):
        out = list(progress(_slow(5), desc="rounds", total=5, interval=0.001))
    assert out == list(range(5))
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsc.progress"]
    assert lines[0].startswith("rounds: 1/5 (20%)") and "left" in lines[0]
    assert any(line.startswith("rounds: 5/5 (100%)") for line in lines)
    assert lines[-1].startswith("rounds: finished 5 in")


def test_progress_interval_from_settings_and_unknown_total(not_a_tty, caplog, monkeypatch):
    from fedsc import settings

    monkeypatch.setitem(settings._values, "progress_interval", 0.0)
    with caplog.at_level(logging.INFO, logger="fedsc.progress"):
        list(progress(iter(_slow(3)), desc="runs"))
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsc.progress"]
    assert lines[:3] == [f"runs: {i} done, 0:00 elapsed" for i in (1, 2, 3)]


def test_progress_is_quiet_below_the_interval_and_when_disabled(not_a_tty, caplog):
    with caplog.at_level(logging.DEBUG, logger="fedsc.progress"):
        assert list(progress(range(3), desc="fast", interval=60)) == [0, 1, 2]
        assert list(progress(range(3), desc="off", enable=False, interval=0)) == [0, 1, 2]
    infos = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert infos == []
    assert all("off" not in r.getMessage() for r in caplog.records)


def test_library_adds_no_handlers():
    importlib.import_module("fedsc.settings")
    for name in ("fedsc", "fedsc.progress", "fedsc.settings"):
        assert logging.getLogger(name).handlers == []
