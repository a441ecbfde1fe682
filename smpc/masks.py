"""Mask expansion: a 256-bit key -> a uniformly random vector of Z/2^64 (AES-256-CTR).

Pseudo-random secret sharing sends a party the 32-byte key of its mask instead of the
mask; the party expands the key itself. The expansion must be a cryptographic PRG: to a
party without the key, the mask must be indistinguishable from uniform even when it knows
some inputs (e.g. the zeros non-dominant FedscGen clients send). AES-256 in counter mode
(keystream of the all-zero plaintext) is one, and runs at GB/s on CPUs with AES
instructions (SHAKE-256, used before, ran at ~0.4 GB/s). Every mask has its own fresh key,
so the fixed all-zero counter block never repeats under one key.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Bytes of a mask key (AES-256).
KEY_BYTES = 32
#: Values expanded per step when streaming (512 KiB: stays in the L2 cache).
CHUNK_VALUES = 1 << 16
_COUNTER_BLOCK = bytes(16)
_ZEROS = bytes(8 * CHUNK_VALUES)


class MaskStream:
    """The mask of one key, produced chunk by chunk (position advances with each call).

    Parameters
    ----------
    key
        32 bytes from a CSPRNG (``os.urandom``), never reused for another mask.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a mask key has {KEY_BYTES} bytes, got {len(key)}.")
        cipher = Cipher(algorithms.AES(bytes(key)), modes.CTR(_COUNTER_BLOCK))
        self._encryptor = cipher.encryptor()

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Write the next ``out.size`` mask values into the contiguous int64 array ``out``."""
        if out.dtype != np.int64 or not out.flags.c_contiguous:
            raise ValueError("out must be a contiguous int64 array.")
        view = memoryview(cast(Any, out)).cast("B")
        done = 0
        total = view.nbytes
        while done < total:
            step = min(len(_ZEROS), total - done)
            zeros = _ZEROS if step == len(_ZEROS) else _ZEROS[:step]
            self._encryptor.update_into(zeros, view[done : done + step])
            done += step
        return out


def expand_key(key: bytes, n: int) -> np.ndarray:
    """Expand a 32-byte key into ``n`` uniformly random ring elements (int64).

    Deterministic per key; distinct keys give independent-looking masks.
    """
    return MaskStream(key).fill(np.empty(int(n), dtype=np.int64))


def add_mask(key: bytes, accumulator: np.ndarray) -> None:
    """Add the mask of ``key`` to the int64 vector ``accumulator`` in place (mod 2^64)."""
    stream = MaskStream(key)
    scratch = np.empty(min(CHUNK_VALUES, accumulator.size), dtype=np.int64)
    for start in range(0, accumulator.size, CHUNK_VALUES):
        part = accumulator[start : start + CHUNK_VALUES]
        mask = stream.fill(scratch[: part.size])
        np.add(part, mask, out=part)


def sum_masks(keys: list[bytes], out: np.ndarray) -> np.ndarray:
    """Write the sum (mod 2^64) of the masks of ``keys`` into the int64 vector ``out``.

    Chunk by chunk over all keys, so ``out`` is written once (memory traffic of one vector
    instead of one read and write per key).
    """
    streams = [MaskStream(key) for key in keys]
    scratch = np.empty(min(CHUNK_VALUES, max(out.size, 1)), dtype=np.int64)
    for start in range(0, out.size, CHUNK_VALUES):
        part = out[start : start + CHUNK_VALUES]
        if not streams:
            part[...] = 0
            continue
        streams[0].fill(part)
        for stream in streams[1:]:
            np.add(part, stream.fill(scratch[: part.size]), out=part)
    return out
