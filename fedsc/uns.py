"""Make values storable in ``AnnData.uns`` (h5ad has no tuples or None)."""

from __future__ import annotations

from typing import Any


def uns_safe(value: Any) -> Any:
    """Tuples -> lists, None -> "none", recursively, so ``write_h5ad`` accepts the value."""
    if isinstance(value, dict):
        return {str(k): uns_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [uns_safe(v) for v in value]
    if value is None:
        return "none"
    return value
