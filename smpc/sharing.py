"""Client-side additive secret sharing in the ring Z/2^64, in pure numpy.

A client encodes its float64 vector in fixed point (``round(x * 2^p)``, an int64) and
splits it into ``n`` shares that sum to the encoding modulo 2^64; int64 arithmetic in
numpy wraps around, which is exactly arithmetic mod 2^64. Any ``n - 1`` shares are
uniformly random and independent of the input. Share ``i`` goes to party ``i`` only.

CrypTen can share a tensor only from inside a party (``crypten.cryptensor(x, src=...)``),
which would make the client a party; so clients share here and the parties load the
shares with ``ArithmeticSharedTensor.from_shares``.

Overflow: the ring holds signed values in ``[-2^63, 2^63)``. Additions are exact mod 2^64,
so an aggregate that leaves that interval wraps around *silently*. :func:`check_ring_bounds`
rejects such inputs before anything is encoded or sent (see :func:`ring_bound`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from smpc.masks import CHUNK_VALUES, KEY_BYTES, MaskStream, expand_key
from smpc.options import MASK_SOURCES

#: Bits of the ring (CrypTen's int64 shares).
RING_BITS = 64
#: Bits of headroom kept below 2^63: aggregates stay below 2^61, so that a difference of
#: two aggregates (as in a comparison) still fits and float64 rounding of values near the
#: bound cannot push them over it.
HEADROOM_BITS = 2


class RingOverflowError(ValueError):
    """An input is too large for fixed-point aggregation in Z/2^64."""


def ring_bound(n_clients: int, precision_bits: int = 16) -> float:
    """Largest ``|value|`` one client may contribute so that aggregates cannot overflow.

    Each encoded value satisfies ``|round(v * 2^p)| <= |v| * 2^p + 1/2``. A sum of ``K``
    contributions (or ``K * v + (K - 1)``, the tie-broken key of argmax) then stays below
    ``K * (|v| * 2^p + 2)``. Requiring that to be below ``2^(63 - HEADROOM_BITS)`` gives
    ``|v| <= (2^61 / K - 2) / 2^p``: about 7.0e12 for ``K = 5`` at 16 precision bits.

    Parameters
    ----------
    n_clients
        Number of contributions added together (``K``).
    precision_bits
        Fixed-point fractional bits ``p``.
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}.")
    limit = 2.0 ** (RING_BITS - 1 - HEADROOM_BITS) / n_clients - 2.0
    return limit / 2.0**precision_bits


def check_ring_bounds(
    matrix: np.ndarray,
    precision_bits: int = 16,
    *,
    what: str = "x",
    label: Callable[[int], str] | None = None,
) -> None:
    """Raise :class:`RingOverflowError` if any client's values could overflow the ring.

    Parameters
    ----------
    matrix
        ``(K, D)`` float64 values exactly as they will be encoded (weights already applied).
    precision_bits
        Fixed-point fractional bits.
    what
        How to name the values in the message (e.g. ``"w*x"``).
    label
        Maps a flat column index to a readable location (e.g. ``"tensor 'fc.weight'"``).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"expected a (clients, values) matrix, got shape {matrix.shape}.")
    if matrix.size == 0:
        return
    if not np.all(np.isfinite(matrix)):
        client = int(np.argwhere(~np.isfinite(matrix))[0, 0])
        raise RingOverflowError(f"client {client}: {what} contains NaN or Inf.")
    bound = ring_bound(matrix.shape[0], precision_bits)
    peaks = np.max(np.abs(matrix), axis=1)
    bad = np.flatnonzero(peaks > bound)
    if bad.size == 0:
        return
    lines = []
    for client in bad.tolist():
        column = int(np.argmax(np.abs(matrix[client])))
        where = f" ({label(column)})" if label is not None else f" (value index {column})"
        lines.append(
            f"client {client}: max |{what}| = {peaks[client]:.3g}{where} exceeds the ring "
            f"bound {bound:.3g} by a factor {peaks[client] / bound:.3g}"
        )
    raise RingOverflowError(
        "; ".join(lines) + f" (Z/2^64 with {precision_bits} precision bits and "
        f"{matrix.shape[0]} clients); rescale the inputs or lower precision_bits."
    )


def encode(values: np.ndarray, precision_bits: int = 16) -> np.ndarray:
    """Fixed-point encode: ``round(values * 2^p)`` (to nearest, ties to even) as int64.

    The caller must have checked :func:`check_ring_bounds`; values beyond ``2^63`` would
    not fit an int64.
    """
    scaled = np.rint(np.asarray(values, dtype=np.float64) * float(2**precision_bits))
    if scaled.size and np.max(np.abs(scaled)) >= 2.0**63:
        raise RingOverflowError(
            f"values up to {np.max(np.abs(values)):.3g} do not fit Z/2^64 at "
            f"{precision_bits} precision bits; rescale the inputs or lower precision_bits."
        )
    return scaled.astype(np.int64)


def decode(encoded: np.ndarray, precision_bits: int = 16) -> np.ndarray:
    """Fixed-point decode in float64: ``v * 2^-p``, correctly rounded.

    The int64 -> float64 conversion rounds once (exact below 2^53) and scaling by a power
    of two is exact, so this equals the exact floor division ``floor(v / 2^p) + (v mod
    2^p) / 2^p`` rounded to float64. Unlike CrypTen 0.4.1's decoder it is exact for
    negative values (see :mod:`smpc.crypten_compat`).
    """
    decoded = np.asarray(encoded, dtype=np.int64).astype(np.float64)
    decoded *= 2.0**-precision_bits
    return decoded


def reconstruct_decode(shares: list[np.ndarray], precision_bits: int) -> np.ndarray:
    """``decode(reconstruct(shares))`` in one chunked pass (result shares stay in cache)."""
    size = shares[0].shape[0]
    out = np.empty(size, dtype=np.float64)
    acc = np.empty(min(CHUNK_VALUES, max(size, 1)), dtype=np.int64)
    scale = 2.0**-precision_bits
    for start in range(0, size, CHUNK_VALUES):
        stop = min(start + CHUNK_VALUES, size)
        part = acc[: stop - start]
        np.add(shares[0][start:stop], shares[1][start:stop], out=part)
        for share in shares[2:]:
            np.add(part, share[start:stop], out=part)
        np.multiply(part, scale, out=out[start:stop], casting="unsafe")
    return out


class ShareRandomness:
    """Source of uniformly random ring elements for the masks.

    Parameters
    ----------
    mode
        ``"secure"``: fresh OS randomness for every mask. ``"debug"``: one seeded numpy
        generator (reproducible, NOT private).
    seed
        Seed for ``"debug"`` mode; refused in ``"secure"`` mode.
    source
        Secure mode only. ``"prng"`` (default): each mask is expanded with AES-256-CTR from
        its own 256-bit key drawn from :func:`os.urandom` (:func:`smpc.masks.expand_key`).
        ``"urandom"``: every mask byte comes from the OS CSPRNG and is sent in full.
    """

    def __init__(self, mode: str = "secure", seed: int | None = None, source: str = "prng") -> None:
        if source not in MASK_SOURCES:
            raise ValueError(f"source must be one of {list(MASK_SOURCES)}, got {source!r}.")
        if mode == "secure":
            if seed is not None:
                raise ValueError(
                    "secure mode draws masks from OS randomness and refuses a seed; "
                    "use mode='debug' for seeded (non-private) masks."
                )
            self._rng = None
        elif mode == "debug":
            self._rng = np.random.Generator(np.random.PCG64(0 if seed is None else seed))
        else:
            raise ValueError(f"mode must be 'secure' or 'debug', got {mode!r}.")
        self.mode = mode
        self.source = source

    @property
    def keyed(self) -> bool:
        """Whether masks are sent as keys (:meth:`mask_key` returns bytes, not None)."""
        return self._rng is not None or self.source == "prng"

    def mask_key(self) -> bytes | None:
        """A fresh 32-byte key for :func:`expand_key`, or None for source ``"urandom"``."""
        if self._rng is not None:
            return self._rng.bytes(KEY_BYTES)
        if self.source == "urandom":
            return None
        return os.urandom(KEY_BYTES)


def split_compressed(
    encoded: np.ndarray, n_shares: int = 3, randomness: ShareRandomness | None = None
) -> list[np.ndarray | bytes]:
    """Like :func:`split`, but shares ``1 .. n-1`` are returned as their 32-byte keys.

    Pseudo-random secret sharing: a mask that is the expansion of a key can be sent as the
    key, so parties 1 .. n-1 receive 32 bytes per client instead of 8 bytes per value and
    expand it with :func:`expand_key`. With source ``"urandom"`` masks are sent in full.
    """
    if n_shares < 2:
        raise ValueError(f"n_shares must be >= 2 for secret sharing, got {n_shares}.")
    randomness = randomness if randomness is not None else ShareRandomness("secure")
    encoded = np.asarray(encoded, dtype=np.int64)
    first = encoded.copy()
    sent: list[np.ndarray | bytes] = [first]
    for _ in range(n_shares - 1):
        key = randomness.mask_key()
        if key is None:
            mask = np.frombuffer(os.urandom(8 * encoded.size), dtype=np.int64)
            sent.append(mask.reshape(encoded.shape))
        else:
            mask = expand_key(key, encoded.size)
            sent.append(key)
        np.subtract(first, mask.reshape(encoded.shape), out=first)  # wraps mod 2^64
    return sent


def split(
    encoded: np.ndarray, n_shares: int = 3, randomness: ShareRandomness | None = None
) -> list[np.ndarray]:
    """Split an int64 encoding into ``n_shares`` additive shares mod 2^64.

    Shares ``1 .. n-1`` are uniform random masks; share 0 is ``encoded - sum(masks)``.
    """
    encoded = np.asarray(encoded, dtype=np.int64)
    return [
        expand_key(s, encoded.size).reshape(encoded.shape) if isinstance(s, bytes) else s
        for s in split_compressed(encoded, n_shares, randomness)
    ]


def reconstruct(shares: list[np.ndarray]) -> np.ndarray:
    """Sum shares mod 2^64 (int64 wraparound)."""
    total = np.array(shares[0], dtype=np.int64, copy=True)
    for share in shares[1:]:
        np.add(total, share, out=total)
    return total


def peak_magnitudes(matrix: np.ndarray) -> np.ndarray:
    """Per row, ``max |value|`` (NaN when a row holds NaN), computed chunk by chunk.

    Equivalent to ``np.max(np.abs(matrix), axis=1)`` without a full-size temporary.
    """
    peaks = np.zeros(matrix.shape[0], dtype=np.float64)
    scratch = np.empty((matrix.shape[0], min(CHUNK_VALUES, matrix.shape[1])), matrix.dtype)
    for start in range(0, matrix.shape[1], CHUNK_VALUES):
        part = matrix[:, start : start + CHUNK_VALUES]
        out = scratch[:, : part.shape[1]]
        np.abs(part, out=out)
        np.fmax(peaks, out.max(axis=1), out=peaks)
        peaks[np.isnan(out).any(axis=1)] = np.nan
    return peaks


def write_first_share(
    values: np.ndarray,
    scale: float,
    mask_keys: list[bytes],
    out: np.ndarray,
    precision_bits: int,
    extra: float | None = None,
    mask_total: np.ndarray | None = None,
) -> None:
    """Party 0's share of one client, fused and chunked: ``encode(scale * values) - masks``.

    The masks are the expansions of ``mask_keys`` (the shares of parties 1..), or their
    sum prepared ahead (``mask_total``); each chunk is encoded, masked and written to
    ``out`` while in cache, so the client's vector is read once and the share written once
    (``out`` may be a shared-memory buffer).

    Parameters
    ----------
    values
        The client's float vector (any float dtype; arithmetic in float64).
    scale
        Multiplier applied before encoding (the client's FedAvg weight, or 1).
    mask_keys
        One key per other party.
    out
        Contiguous int64 vector of ``values.size`` (+1 with ``extra``) values.
    precision_bits
        Fixed-point fractional bits.
    extra
        A value appended after ``values`` (the client's weight for FedAvg), or None.
    mask_total
        The sum of the client's masks, ``out.size`` int64 values (:mod:`smpc.prepared`);
        then ``mask_keys`` must be empty.

    The caller must have checked :func:`check_ring_bounds` on ``scale * values``.
    """
    size = values.shape[0]
    factor = float(scale) * float(2**precision_bits)
    if mask_total is not None and (mask_keys or mask_total.shape != out.shape):
        raise ValueError("give mask keys or a mask total of the share's size, not both.")
    streams = [MaskStream(key) for key in mask_keys]
    step = CHUNK_VALUES
    scaled = np.empty(min(step, max(size, 1)), dtype=np.float64)
    mask = np.empty(min(step, max(size, 1)), dtype=np.int64)
    for start in range(0, size, step):
        stop = min(start + step, size)
        n = stop - start
        tmp = scaled[:n]
        np.multiply(values[start:stop], factor, out=tmp, casting="unsafe")
        np.rint(tmp, out=tmp)
        target = out[start:stop]
        target[...] = tmp  # float64 -> int64 (bounded by the ring check)
        if mask_total is not None:
            np.subtract(target, mask_total[start:stop], out=target)
        for stream in streams:
            np.subtract(target, stream.fill(mask[:n]), out=target)
    if extra is not None:
        tail = out[size : size + 1]
        tail[0] = int(np.rint(float(extra) * 2.0**precision_bits))
        if mask_total is not None:
            np.subtract(tail, mask_total[size : size + 1], out=tail)
        one = np.empty(1, dtype=np.int64)
        for stream in streams:
            np.subtract(tail, stream.fill(one), out=tail)
