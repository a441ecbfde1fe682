"""The OS-CSPRNG noise source of the DP mechanisms (smpc.mechanisms.secure_random)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from smpc.mechanisms import secure_random
from smpc.mechanisms.secure_random import SecureRandom

N = 200_000  # KS distance of a correct sampler ~ 1/sqrt(N) = 0.002; p-values uniform


def test_standard_normal_mean_variance_and_normality():
    z = SecureRandom().standard_normal(N)
    assert z.shape == (N,) and z.dtype == np.float64
    assert abs(z.mean()) < 5 / np.sqrt(N)  # 5 standard errors
    assert z.var() == pytest.approx(1.0, abs=5 * np.sqrt(2 / N))
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # neighbouring values are independent: no correlation between the two halves
    half = N // 2
    assert abs(np.corrcoef(z[:half], z[half:])[0, 1]) < 5 / np.sqrt(half)
    # odd sizes, shapes, scalars, dtype
    assert SecureRandom().standard_normal((3, 5)).shape == (3, 5)
    assert SecureRandom().standard_normal(7).shape == (7,)
    assert isinstance(SecureRandom().standard_normal(), float)
    assert SecureRandom().standard_normal(4, dtype=np.float32).dtype == np.float32
    x = SecureRandom().normal(3.0, 2.0, size=N)
    assert x.mean() == pytest.approx(3.0, abs=5 * 2 / np.sqrt(N))
    assert x.std() == pytest.approx(2.0, rel=0.01)


def test_uniform_and_torch_samples():
    u = SecureRandom().random(N)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    t = SecureRandom().standard_normal_torch((400, 250), dtype=torch.float32)
    assert t.shape == (400, 250) and t.dtype == torch.float32
    assert stats.kstest(t.double().flatten().numpy(), "norm").pvalue > 1e-4


def test_two_draws_differ_and_nothing_is_seeded():
    a, b = SecureRandom(), SecureRandom()
    draws = [a.standard_normal(1000), a.standard_normal(1000), b.standard_normal(1000)]
    for i in range(3):
        for j in range(i):
            assert not np.array_equal(draws[i], draws[j])
    assert not np.array_equal(a.random(1000), b.random(1000))
    # no seed, no state: the instance holds nothing that could be recorded or replayed
    assert vars(a) == {}


def test_every_value_comes_from_os_urandom(monkeypatch):
    # replace the OS CSPRNG by a constant source: the output becomes constant, so nothing
    # else (no seeded generator, no state kept between calls) feeds the values; restoring
    # it gives fresh values again
    calls = []

    def fixed(n: int) -> bytes:
        calls.append(n)
        return bytes(range(256)) * (n // 256) + bytes(range(n % 256))

    monkeypatch.setattr(secure_random.os, "urandom", fixed)
    source = SecureRandom()
    first = source.standard_normal(64)
    assert np.array_equal(first, SecureRandom().standard_normal(64))
    assert calls == [32, 32]  # one fresh AES-256 key per call, expanded in counter mode
    assert np.array_equal(source.random(10), SecureRandom().random(10))
    monkeypatch.undo()  # the real os.urandom
    assert not np.array_equal(first, SecureRandom().standard_normal(64))
