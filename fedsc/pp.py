"""Preprocessing, as scanpy's ``sc.pp``: ``fedsc.pp.preprocess``, ``fedsc.pp.fit_embedding``.

The names live in :mod:`fedsc.preprocessing` (normalise/log1p/HVG, upstream embeddings)
and :mod:`fedsc.data.federated_preprocessing` (HVGs and PCA from secure sums, without
pooling the cells); this namespace gathers them.
"""

from __future__ import annotations

from fedsc.data.federated_preprocessing import federated_hvg, federated_pca
from fedsc.preprocessing import fit_embedding, preprocess, register_embedding

__all__ = ["federated_hvg", "federated_pca", "fit_embedding", "preprocess", "register_embedding"]
