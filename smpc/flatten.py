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


def _leaf(key: str | None, value: Any, name: str) -> tuple[_Leaf, np.ndarray]:
    """One leaf's spec and a numpy view of its values (no copy where numpy can view them)."""
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu().resolve_conj().resolve_neg()
        try:
            source = t.numpy()  # a view: no copy
        except TypeError:  # a dtype numpy lacks (bfloat16): through float64
            source = t.to(torch.float64).numpy()
        return _Leaf(key, tuple(t.shape), value.dtype, True), source
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(
            f"{name}: expected a numeric tensor or array, got dtype {arr.dtype}; "
            "convert it with numpy.asarray(x, dtype=float) first."
        )
    return _Leaf(key, tuple(arr.shape), arr.dtype, False), arr


def _parse(value: Any, name: str) -> tuple[Spec, list[np.ndarray]]:
    """The spec of a tensor, array or mapping of them, and its leaves' values in order."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{name}: empty mapping; pass at least one tensor.")
        parsed = [_leaf(str(key), value[key], f"{name}[{key!r}]") for key in sorted(value)]
        return Spec(tuple(leaf for leaf, _ in parsed), True), [src for _, src in parsed]
    leaf, source = _leaf(None, value, name)
    return Spec((leaf,), False), [source]


def _fill(out: np.ndarray, sources: Sequence[np.ndarray]) -> None:
    """Write the leaves into ``out`` (float64), converting on the way: one pass, no temporaries."""
    offset = 0
    for source in sources:
        n = source.size
        out[offset : offset + n] = source.reshape(-1)
        offset += n


def flatten(value: Any, name: str = "contribution") -> tuple[np.ndarray, Spec]:
    """Flatten a tensor, array, or mapping of them to (float64 vector, spec)."""
    spec, sources = _parse(value, name)
    flat = np.empty(spec.size, dtype=np.float64)
    _fill(flat, sources)
    return flat, spec


def flatten_all(contributions: Sequence[Any]) -> tuple[np.ndarray, Spec]:
    """Flatten K contributions of identical structure into a (K, D) float64 matrix.

    Each value is written once, straight into the matrix (a model state of millions of
    values per client: converting, concatenating and stacking copies took ~3x longer).
    """
    if isinstance(contributions, Mapping) or not isinstance(contributions, Sequence):
        raise TypeError(
            "contributions must be a list with one entry per client, "
            f"got {type(contributions).__name__}."
        )
    if len(contributions) == 0:
        raise ValueError("contributions is empty: at least one client must contribute.")
    parsed = [_parse(c, f"client {i}") for i, c in enumerate(contributions)]
    spec0 = parsed[0][0]
    structure = [(leaf.key, leaf.shape) for leaf in spec0.leaves]
    for i, (spec, _) in enumerate(parsed):
        if [(leaf.key, leaf.shape) for leaf in spec.leaves] != structure:
            raise ValueError(
                f"client {i}: its contribution has keys/shapes "
                f"{[(leaf.key, leaf.shape) for leaf in spec.leaves]} but client 0 has "
                f"{structure}; all clients must send the same structure."
            )
    matrix = np.empty((len(parsed), spec0.size), dtype=np.float64)
    for i, (_, sources) in enumerate(parsed):
        _fill(matrix[i], sources)
        if not np.isfinite(matrix[i]).all():
            raise ValueError(
                f"client {i}: contribution contains NaN or Inf; fix the local update "
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
