"""Random numbers for DP noise from a cryptographically secure generator with fresh entropy.

Differential privacy assumes the noise is unpredictable to everyone but the party that
adds it. numpy's PCG64 and torch's Mersenne Twister are not cryptographically secure:
their state can be recovered from enough outputs, and a seeded generator can be replayed
by anyone who learns the seed. :class:`SecureRandom` draws, for every call, a fresh
256-bit key from the kernel's CSPRNG (``os.urandom``, the source ``secrets`` uses) and
expands it with AES-256 in counter mode (:func:`smpc.masks.expand_key`, OpenSSL through
``cryptography``: the construction of NIST SP 800-90A's CTR_DRBG). The key lives only
inside the call; the instance has no seed and no state a caller could record or restore,
so nobody (the holder included) can regenerate its output. (AES-CTR instead of reading
every byte from ``os.urandom``: 0.75 ms instead of 8 ms for the 4.4 MB one DP-SGD step of
a 552k-parameter model needs, measured on this project's 2-core machine.)

It offers the parts of :class:`numpy.random.Generator` the mechanisms use
(:meth:`~SecureRandom.standard_normal`, :meth:`~SecureRandom.normal`,
:meth:`~SecureRandom.random`) and a torch tensor of normals
(:meth:`~SecureRandom.standard_normal_torch`), all vectorised.

Written by hand because no maintained library here provides it: numpy ships no
cryptographically secure bit generator, and Opacus' ``secure_mode`` needs torchcsprng,
which is not installable for this torch. The transforms are textbook:

- uniform doubles: 53 random bits ``k`` per value, ``k / 2**53`` in [0, 1) (every double
  of that grid equally likely, as numpy's ``random``);
- normals: the inverse-CDF transform (scipy's ``ndtri``, the standard normal quantile
  function) of a uniform on the lower half, with a random sign: 52 bits ``j`` give
  ``u = (j + 1/2) / 2**53`` in (0, 1/2), one more bit the sign, ``z = ±ndtri(u)``.
  Exactly symmetric, never ``ndtri(0)`` or ``ndtri(1)``; ``|z| <= 8.3`` (probability
  ~1e-16 beyond). One uniform per value; measured ~1.7x faster than the Box–Muller
  transform here (numpy's float64 ``cos``/``sin`` are slow).

The samples are floating point: their low-order bits can still leak the un-noised value
(Mironov, CCS 2012); this module fixes the predictability of the generator, not that.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtri

from smpc.masks import KEY_BYTES, expand_key

if TYPE_CHECKING:
    import torch

__all__ = ["SecureRandom", "secure_uniform"]

_SCALE = 2.0**-53  # a 53-bit integer times this is a double in [0, 1)
_LOW52 = np.uint64((1 << 52) - 1)
_SIGN = np.uint64(1 << 63)

Size = int | tuple[int, ...] | None


def _count(size: Size) -> int:
    if size is None:
        return 1
    if isinstance(size, int | np.integer):
        shape: tuple[int, ...] = (int(size),)
    else:
        shape = tuple(int(s) for s in size)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimensions are not allowed, got size={size!r}.")
    return math.prod(shape)


def _bits53(n: int) -> np.ndarray:
    """``n`` independent uniform integers in [0, 2**53): AES-256-CTR under a fresh key."""
    raw = expand_key(os.urandom(KEY_BYTES), n).view(np.uint64)  # the key is not kept
    return raw >> np.uint64(11)  # keep 53 of the 64 random bits


def secure_uniform(n: int) -> np.ndarray:
    """``n`` uniform doubles in [0, 1) from a fresh CSPRNG key (float64, shape ``(n,)``)."""
    return _bits53(n).astype(np.float64) * _SCALE


def _standard_normal(n: int) -> np.ndarray:
    raw = expand_key(os.urandom(KEY_BYTES), n).view(np.uint64)  # fresh key, not kept
    z = (raw & _LOW52).astype(np.float64)  # j: bits 0-51
    z += 0.5
    z *= _SCALE  # u in (0, 1/2)
    ndtri(z, out=z)  # z < 0: its sign bit is set
    z.view(np.uint64)[:] ^= raw & _SIGN  # bit 63 flips it: a random sign
    return z


def _shaped(values: np.ndarray, size: Size) -> Any:
    if size is None:
        return float(values[0])
    return values.reshape(size)


class SecureRandom:
    """numpy-``Generator``-like source of DP noise: a fresh OS-CSPRNG key per call (AES-CTR).

    No seed, no state: two instances (or two calls) are independent, and nothing about
    the values can be recorded or replayed. ``size=None`` returns a Python float, like
    numpy.
    """

    #: The values come from a cryptographically secure source (not reproducible).
    secure = True

    def random(self, size: Size = None) -> Any:
        """Uniform doubles in [0, 1) (``numpy.random.Generator.random``)."""
        return _shaped(secure_uniform(_count(size)), size)

    def standard_normal(self, size: Size = None, dtype: Any = np.float64) -> Any:
        """Standard normal samples (``numpy.random.Generator.standard_normal``)."""
        values = _standard_normal(_count(size))
        if np.dtype(dtype) != np.float64:
            values = values.astype(dtype)
        return _shaped(values, size)

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Size = None) -> Any:
        """Normal samples of mean ``loc`` and standard deviation ``scale``."""
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale!r}.")
        return loc + scale * self.standard_normal(size)

    def standard_normal_torch(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A torch tensor of standard normals (drawn in float64, then cast to ``dtype``)."""
        import torch

        n = _count(tuple(shape))
        values = torch.from_numpy(_standard_normal(n)).reshape(tuple(shape))
        return values.to(dtype=dtype or torch.get_default_dtype(), device=device)

    def __repr__(self) -> str:
        return "SecureRandom(os.urandom)"
