"""CrypTen 0.4.1 on torch 2.13: import fix and exact fixed-point decoding."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from smpc import sharing
from smpc.crypten_compat import import_crypten

STEP = 2.0**-16


@pytest.fixture(scope="module")
def crypten():
    try:
        return import_crypten()
    except ImportError as err:  # pragma: no cover - crypten is installed by the Makefile
        pytest.skip(str(err))


def test_import_is_idempotent_and_aliases_the_moved_module(crypten):
    assert import_crypten() is crypten
    assert "torch.onnx._internal.registration" in sys.modules


def test_encoder_decode_is_exact_for_negatives(crypten):
    from crypten.encoder import FixedPointEncoder

    x = np.array([-1.5, -70000.25, -1.0, -(2.0**-16), 0.0, 3.75])
    decoded = FixedPointEncoder(precision_bits=16).decode(torch.from_numpy(sharing.encode(x)))
    assert decoded.dtype == torch.float64
    np.testing.assert_array_equal(decoded.numpy(), x)  # all exactly representable


def test_revealed_values_equal_inputs_within_the_fixed_point_step(crypten):
    from crypten.mpc.primitives import ArithmeticSharedTensor

    x = np.concatenate(
        [[-1.5, -70000.25], np.random.default_rng(0).uniform(-1e3, 1e3, size=1_000_000)]
    )
    # One in-process party: reveal() + get_plain_text() go through the patched decoder.
    crypten.init_thread(0, 1)
    try:
        shared = ArithmeticSharedTensor.from_shares(
            torch.from_numpy(sharing.encode(x)), precision=16
        )
        revealed = shared.get_plain_text().numpy()
    finally:
        crypten.uninit()
    assert revealed[0] == -1.5 and revealed[1] == -70000.25
    assert np.max(np.abs(revealed - x)) <= STEP / 2 + 1e-12  # round to nearest
