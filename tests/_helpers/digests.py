"""Digests that show a test's inputs were left unchanged: a folder's files, an AnnData."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def folder_hash(path: Path) -> str:
    """Names and bytes of every file under ``path`` (to show nothing changed)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def adata_digest(adata: Any) -> str:
    """X, layers, obsm, obs and the uns keys of an AnnData (to show it was not changed)."""
    import numpy as np
    import scipy.sparse as sp

    h = hashlib.sha256()

    def add(m: Any) -> None:
        if sp.issparse(m):
            for part in (m.data, m.indices, m.indptr):
                h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(np.ascontiguousarray(np.asarray(m)).tobytes())

    add(adata.X)
    for store in (adata.layers, adata.obsm):
        for key in sorted(store):
            h.update(key.encode())
            add(store[key])
    h.update(adata.obs.to_csv().encode())
    h.update(repr(sorted(adata.uns)).encode())
    return h.hexdigest()
