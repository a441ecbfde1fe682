"""A local party joins the MPC (``crypten.init()``) in the background; failures are loud."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from smpc.party import LazyCrypten


class _FakeCrypten:
    def __init__(self, fail: bool, delay: float = 0.0) -> None:
        self.fail = fail
        self.delay = delay
        self.seeds: tuple[int, ...] | None = None

    def init(self) -> None:
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("gloo: connection refused")

    def manual_seed(self, *seeds: int) -> None:
        self.seeds = seeds


def test_get_waits_for_the_background_init_and_seeds_debug_mode() -> None:
    fake = _FakeCrypten(fail=False, delay=0.2)
    lazy = LazyCrypten(fake, rank=1, mode="debug", seed=7)
    lazy.start()
    assert lazy.get() is fake
    assert fake.seeds is not None and lazy.seconds >= 0.2


def test_a_failed_blocking_init_names_the_party() -> None:
    lazy = LazyCrypten(_FakeCrypten(fail=True), rank=2, mode="secure", seed=None)
    with pytest.raises(RuntimeError, match="connection refused"):
        lazy.initialise()
    with pytest.raises(RuntimeError, match="party 2: CrypTen initialisation"):
        lazy.get()


def _fail_in_background() -> None:
    LazyCrypten(_FakeCrypten(fail=True), rank=0, mode="secure", seed=None).start()
    time.sleep(30)  # the init thread exits the process first


def test_a_failed_background_init_exits_the_party() -> None:
    proc = multiprocessing.get_context("fork").Process(target=_fail_in_background)
    proc.start()
    proc.join(20)
    assert proc.exitcode == 3
