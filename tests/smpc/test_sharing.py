"""Client-side additive sharing in Z/2^64."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from smpc import sharing

# exact on every CPU: rerun by make test-dispatch (docs/reproducibility.md)
pytestmark = pytest.mark.reproducibility


def test_shares_sum_to_the_encoding_mod_2_64():
    x = np.random.default_rng(1).uniform(-1e6, 1e6, size=1000)
    encoded = sharing.encode(x, 16)
    for split in (sharing.split, sharing.split_compressed):
        shares = split(encoded, 3, sharing.ShareRandomness("secure"))
        full = [sharing.expand_key(s, x.size) if isinstance(s, bytes) else s for s in shares]
        np.testing.assert_array_equal(sharing.reconstruct(full), encoded)
    np.testing.assert_allclose(sharing.decode(encoded, 16), x, atol=2.0**-17)


def test_decode_is_exact_floor_division():
    encoded = np.array([-(2**16) * 3 // 2, -1, 0, 1, 2**40 + 5], dtype=np.int64)
    np.testing.assert_array_equal(
        sharing.decode(encoded, 16), [-1.5, -(2.0**-16), 0.0, 2.0**-16, 2.0**24 + 5 * 2.0**-16]
    )


@pytest.mark.parametrize("source", ["prng", "urandom"])
def test_top_byte_of_shares_of_a_constant_is_uniform(source):
    # 4096 sharings of the same value: each share's top byte must look uniform (chi-square).
    randomness = sharing.ShareRandomness("secure", source=source)
    encoded = np.full(4096, sharing.encode(np.array([42.0]))[0], dtype=np.int64)
    for share in sharing.split(encoded, 3, randomness):
        top = (share.view(np.uint64) >> np.uint64(56)).astype(np.int64)
        observed = np.bincount(top, minlength=256)
        assert stats.chisquare(observed).pvalue > 1e-4


def test_debug_randomness_is_reproducible_and_secure_refuses_seeds():
    a = sharing.split(np.arange(10), 3, sharing.ShareRandomness("debug", seed=5))
    b = sharing.split(np.arange(10), 3, sharing.ShareRandomness("debug", seed=5))
    for sa, sb in zip(a, b, strict=True):
        np.testing.assert_array_equal(sa, sb)
    with pytest.raises(ValueError, match="refuses a seed"):
        sharing.ShareRandomness("secure", seed=5)


def test_ring_bound_leaves_headroom():
    bound = sharing.ring_bound(5, 16)
    # five contributions at the bound, encoded, stay near 2^61: far below the ring's 2^63,
    # so even a difference of two such aggregates (a comparison) cannot wrap around.
    assert 5 * (int(bound * 2**16) + 1) < 2**62
    assert bound > 1e12


def test_overflow_is_rejected_naming_client_tensor_and_factor():
    matrix = np.zeros((5, 4))
    matrix[3, 2] = 4 * sharing.ring_bound(5, 16)
    with pytest.raises(sharing.RingOverflowError) as info:
        sharing.check_ring_bounds(matrix, 16, what="w*x", label=lambda i: f"tensor 'fc' at ({i},)")
    message = str(info.value)
    assert "client 3: max |w*x| = " in message
    assert "tensor 'fc' at (2,)" in message
    assert "by a factor 4" in message and "lower precision_bits" in message
    sharing.check_ring_bounds(matrix / 8, 16)  # within the bound: no error
