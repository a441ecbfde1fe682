"""Flatten client contributions (tensor, array or dict of them) into float64 vectors.

Backends work on one flat float64 vector per client, so a whole model state crosses
the boundary in one round trip; :class:`Spec` restores the caller's structure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # torch is optional for smpc's plaintext use
    import torch
except ImportError:  # pragma: no cover - torch is always installed by the Makefile
    torch = None  # type: ignore[assignment]


@dataclass(frozen=True)
class _Leaf:
    key: str | None
    shape: tuple[int, ...]
    dtype: Any
    is_torch: bool


@dataclass(frozen=True)
class Spec:
    """Structure of one contribution: keys, shapes, dtypes and container kinds."""

    leaves: tuple[_Leaf, ...]
    is_mapping: bool

    @property
    def size(self) -> int:
        """Number of scalar values in one flattened contribution."""
        return int(sum(int(np.prod(leaf.shape)) for leaf in self.leaves))

    def unflatten(self, flat: np.ndarray) -> Any:
        """Rebuild the caller's structure from a flat float64 vector."""
        out: dict[str | None, Any] = {}
        offset = 0
        for leaf in self.leaves:
            n = int(np.prod(leaf.shape))
            values = flat[offset : offset + n].reshape(leaf.shape)
            offset += n
            if leaf.is_torch:
                t = torch.from_numpy(np.array(values, dtype=np.float64, copy=True))
                if not (leaf.dtype.is_floating_point or leaf.dtype.is_complex):
                    t = torch.round(t)
                out[leaf.key] = t.to(leaf.dtype)
            else:
                dtype = np.dtype(leaf.dtype)
                if not np.issubdtype(dtype, np.floating):
                    values = np.rint(values)
                out[leaf.key] = values.astype(dtype)
        return out if self.is_mapping else out[None]


def _to_numpy(value: Any, name: str) -> tuple[np.ndarray, Any, bool]:
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy().ravel(), value.dtype, True
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(
            f"{name}: expected a numeric tensor or array, got dtype {arr.dtype}; "
            "convert it with numpy.asarray(x, dtype=float) first."
        )
    return arr.astype(np.float64).ravel(), arr.dtype, False


def flatten(value: Any, name: str = "contribution") -> tuple[np.ndarray, Spec]:
    """Flatten a tensor, array, or mapping of them to (float64 vector, spec)."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{name}: empty mapping; pass at least one tensor.")
        parts, leaves = [], []
        for key in sorted(value):
            flat, dtype, is_torch = _to_numpy(value[key], f"{name}[{key!r}]")
            shape = tuple(np.shape(value[key]))
            parts.append(flat)
            leaves.append(_Leaf(str(key), shape, dtype, is_torch))
        return np.concatenate(parts), Spec(tuple(leaves), True)
    flat, dtype, is_torch = _to_numpy(value, name)
    return flat, Spec((_Leaf(None, tuple(np.shape(value)), dtype, is_torch),), False)


def flatten_all(contributions: Sequence[Any]) -> tuple[np.ndarray, Spec]:
    """Flatten K contributions of identical structure into a (K, D) float64 matrix."""
    if isinstance(contributions, Mapping) or not isinstance(contributions, Sequence):
        raise TypeError(
            "contributions must be a list with one entry per client, "
            f"got {type(contributions).__name__}."
        )
    if len(contributions) == 0:
        raise ValueError("contributions is empty: at least one client must contribute.")
    rows, spec0 = [], None
    for i, c in enumerate(contributions):
        flat, spec = flatten(c, name=f"client {i}")
        if spec0 is None:
            spec0 = spec
        elif [(leaf.key, leaf.shape) for leaf in spec.leaves] != [
            (leaf.key, leaf.shape) for leaf in spec0.leaves
        ]:
            raise ValueError(
                f"client {i}: its contribution has keys/shapes "
                f"{[(leaf.key, leaf.shape) for leaf in spec.leaves]} but client 0 has "
                f"{[(leaf.key, leaf.shape) for leaf in spec0.leaves]}; all clients must send "
                "the same structure."
            )
        rows.append(flat)
    assert spec0 is not None
    matrix = np.stack(rows)
    if not np.all(np.isfinite(matrix)):
        bad = int(np.argwhere(~np.isfinite(matrix))[0, 0])
        raise ValueError(
            f"client {bad}: contribution contains NaN or Inf; fix the local update "
            "(e.g. lower the learning rate) before aggregating."
        )
    return matrix, spec0


def flatten_like(value: Any, spec: Spec, name: str = "reference") -> np.ndarray:
    """Flatten ``value`` (e.g. the broadcast global state) to match ``spec``.

    Raises a ``ValueError`` naming both structures when keys or shapes differ.
    """
    flat, other = flatten(value, name=name)
    if [(leaf.key, leaf.shape) for leaf in other.leaves] != [
        (leaf.key, leaf.shape) for leaf in spec.leaves
    ]:
        raise ValueError(
            f"{name}: keys/shapes {[(leaf.key, leaf.shape) for leaf in other.leaves]} differ "
            f"from the contributions' {[(leaf.key, leaf.shape) for leaf in spec.leaves]}; "
            "pass the state the clients started from (same structure)."
        )
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{name} contains NaN or Inf.")
    return flat
