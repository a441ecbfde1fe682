"""Fitted upstream embeddings kept on disk, so the runs of a sweep fit each one once.

A Table-1 study runs every upstream under several variants (plaintext, μ = 0, CrypTen) that
differ only after the upstream: each variant refitted the same scVI on the same cells with
the same seed. The upstream is computed centrally and is deterministic given its inputs
(docs/reproducibility.md), so a run may take the embedding another run fitted when
everything it depends on is the same. The cache key is a hash of all of it: the cells
(``X``, every layer, cell and gene names, the batch and label columns), the upstream, its
dimensions, seed and options, the numerical settings that change its bits (threads,
reproducibility mode, device) and the versions of fedsc and the fitting libraries. Any
change gives another key, hence a fresh fit.

:func:`fedsc.sweep.run_sweep` keeps one in ``<out>/upstream_cache`` (the setting
``fedsc.settings.upstream_cache``, ``$FEDSC_UPSTREAM_CACHE``, overrides it; a run outside a
sweep uses one only when the setting names a folder). A run that took its embedding from
the cache says so in ``run.json`` (``upstream.cached``, with the original fit's seconds).
Hand-written: joblib's ``Memory`` hashes the arguments of a function call, but not an
AnnData's arrays and settings as this key needs, and caches the whole fitted model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from fedsc._deprecation import renamed_arguments

__all__ = ["CACHE_FORMAT", "UpstreamCache", "fingerprint"]

#: Bumped when what a cache entry holds or how its key is made changes.
CACHE_FORMAT = 1
#: Libraries whose version is part of the key (those installed).
_LIBRARIES = ("fedsc", "scikit-learn", "scvi-tools", "torch", "numpy", "scipy")


def _feed(h: Any, x: Any) -> None:
    """Hash an array (dense or sparse) with its shape and dtype."""
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        h.update(f"csr{x.shape}{x.dtype}".encode())
        for part in (x.data, x.indices, x.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        arr = np.ascontiguousarray(np.asarray(x))
        h.update(f"dense{arr.shape}{arr.dtype}".encode())
        h.update(arr.tobytes())


def fingerprint(adata: ad.AnnData, columns: Sequence[str] = ()) -> str:
    """A hash of ``adata``'s ``X``, layers, cell and gene names and ``obs[columns]``."""
    h = hashlib.blake2b(digest_size=20)
    _feed(h, adata.X)
    for name in sorted(adata.layers):
        h.update(f"layer:{name}".encode())
        _feed(h, adata.layers[name])
    for names in (adata.obs_names, adata.var_names):
        h.update("\0".join(map(str, names)).encode())
    for col in columns:
        if col in adata.obs:
            h.update(f"obs:{col}".encode())
            h.update("\0".join(adata.obs[col].astype(str)).encode())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class UpstreamCache:
    """Fitted embeddings in ``folder``: ``<key>.npy`` (float32, cells × dims) + ``<key>.json``.

    Entries are written atomically (a temporary file, then a rename), so runs in parallel
    worker processes may share the folder; two runs fitting the same key write the same
    bits.
    """

    folder: Path

    @renamed_arguments(label_key="labels_key")
    def key(
        self,
        adata: ad.AnnData,
        *,
        method: str,
        n_comps: int | None,
        seed: int,
        batch_key: str | None,
        labels_key: str | None,
        params: Mapping[str, Any] | None,
    ) -> str:
        """The key of the embedding of ``adata`` by this upstream and these settings."""
        from fedsc import settings

        described = {
            "format": CACHE_FORMAT,
            "data": fingerprint(adata, [c for c in (batch_key, labels_key) if c]),
            "method": str(method).lower(),
            "n_comps": n_comps,
            "seed": int(seed),
            "batch_key": batch_key,
            "label_key": labels_key,  # its old name: the entries cached before keep their keys
            "params": dict(sorted((params or {}).items())),
            "threads": settings.resolved_threads(),
            "reproducible": settings.reproducible,
            "device": settings.device,
            "versions": _versions(),
        }
        text = json.dumps(described, sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def load(self, key: str, n_obs: int) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The cached embedding and its record, or ``None`` (absent or unreadable)."""
        array, record = self.folder / f"{key}.npy", self.folder / f"{key}.json"
        if not (array.exists() and record.exists()):
            return None
        try:
            emb = np.load(array, allow_pickle=False)
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is refitted (and rewritten), never used
        if emb.ndim != 2 or emb.shape[0] != n_obs or not np.isfinite(emb).all():
            return None
        if (
            isinstance(info, dict) and "label_key" in info
        ):  # an entry recorded before the rename (scvi-tools' name)
            info["labels_key"] = info.pop("label_key")
        return emb, info

    def store(self, key: str, embedding: np.ndarray, record: Mapping[str, Any]) -> None:
        """Write one entry (array first, then its record: a record means a whole entry)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._atomic(f"{key}.npy", lambda f: np.save(f, np.asarray(embedding), allow_pickle=False))
        text = json.dumps(dict(record), default=str).encode()
        self._atomic(f"{key}.json", lambda f: f.write(text))

    def _atomic(self, name: str, write: Any) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
