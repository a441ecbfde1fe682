"""AES-256-CTR mask expansion: deterministic per key, distinct per key, uniform."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from smpc import masks


def test_expansion_is_deterministic_per_key_and_distinct_across_keys():
    key, other = os.urandom(32), os.urandom(32)
    a, b = masks.expand_key(key, 100_001), masks.expand_key(key, 100_001)
    np.testing.assert_array_equal(a, b)
    c = masks.expand_key(other, 100_001)
    assert np.mean(a == c) < 1e-4
    # one bit of difference in the key changes the whole mask
    flipped = bytes([key[0] ^ 1]) + key[1:]
    assert np.mean(masks.expand_key(flipped, 1000) == a[:1000]) < 1e-2


def test_expansion_is_the_aes_256_ctr_keystream():
    key = bytes(range(32))
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    want = np.frombuffer(encryptor.update(bytes(8 * 1000)), dtype=np.int64)
    np.testing.assert_array_equal(masks.expand_key(key, 1000), want)


def test_streaming_across_chunk_boundaries_equals_one_expansion():
    key = os.urandom(32)
    n = 3 * masks.CHUNK_VALUES + 17
    whole = masks.expand_key(key, n)
    stream = masks.MaskStream(key)
    parts = [
        stream.fill(np.empty(m, np.int64))
        for m in (5, masks.CHUNK_VALUES + 3, n - 8 - masks.CHUNK_VALUES)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    acc = np.arange(n, dtype=np.int64)
    masks.add_mask(key, acc)
    np.testing.assert_array_equal(acc, np.arange(n, dtype=np.int64) + whole)


def test_sum_of_masks_equals_the_sum_of_expansions():
    keys = [os.urandom(32) for _ in range(4)]
    n = 2 * masks.CHUNK_VALUES + 5
    want = np.zeros(n, dtype=np.int64)
    for key in keys:
        want += masks.expand_key(key, n)  # wraps mod 2^64
    np.testing.assert_array_equal(masks.sum_masks(keys, np.empty(n, np.int64)), want)
    np.testing.assert_array_equal(masks.sum_masks([], np.ones(3, np.int64)), np.zeros(3))


def test_top_byte_of_masks_is_uniform():
    values = np.concatenate([masks.expand_key(os.urandom(32), 4096) for _ in range(4)])
    top = (values.view(np.uint64) >> np.uint64(56)).astype(np.int64)
    assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > 1e-4


def test_keys_must_have_256_bits():
    with pytest.raises(ValueError, match="32 bytes"):
        masks.MaskStream(bytes(16))
    with pytest.raises(ValueError, match="contiguous int64"):
        masks.MaskStream(bytes(32)).fill(np.empty(4, np.int32))
