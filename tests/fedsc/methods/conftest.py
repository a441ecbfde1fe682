"""Fixtures shared by the tests of fedsc.methods."""

from __future__ import annotations

import logging

import pytest

from fedsc.methods.vae import torch_threads


@pytest.fixture
def dp_one_thread():
    """DP-SGD on tiny models: one torch thread (fastest and steadiest on a shared machine),
    and the accountant's warnings about fractional RDP orders silenced."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    with torch_threads(1):
        yield
