"""Upstream (batch-agnostic) embeddings by name: PCA, ICA, factor analysis, ...

:data:`EMBEDDING_METHODS` maps a name (``upstream: pca`` in a run config, ``fedsc run
--upstream``) to an estimator factory; :func:`fedsc.preprocessing.fit_embedding` fits the
estimator it returns. scikit-learn loads only when an estimator is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsc.registry import Registry

__all__ = ["EMBEDDING_METHODS", "EstimatorFactory", "register_embedding"]

#: ``factory(n_comps, seed, shape) -> estimator`` with ``fit_transform``/``transform``.
EstimatorFactory = Callable[[int, int, tuple[int, int]], Any]


def _pca(n_comps: int, seed: int, shape: tuple[int, int]) -> Any:
    """scikit-learn PCA; the exact covariance eigen-solver when cells outnumber genes."""
    from sklearn.decomposition import PCA

    solver = "covariance_eigh" if shape[0] > shape[1] else "full"
    return PCA(n_components=n_comps, svd_solver=solver, random_state=seed)


def _ica(n_comps: int, seed: int, shape: tuple[int, int]) -> Any:
    """FastICA with unit-variance whitening (eigh whitening when cells outnumber genes)."""
    from sklearn.decomposition import FastICA

    return FastICA(
        n_components=n_comps,
        whiten="unit-variance",
        whiten_solver="eigh" if shape[0] > shape[1] else "svd",
        max_iter=1000,
        random_state=seed,
    )


def _fa(n_comps: int, seed: int, shape: tuple[int, int]) -> Any:
    """scikit-learn FactorAnalysis."""
    from sklearn.decomposition import FactorAnalysis

    return FactorAnalysis(n_components=n_comps, random_state=seed)


#: Upstream embeddings by name. Add one with :func:`register_embedding`.
EMBEDDING_METHODS: Registry[EstimatorFactory] = Registry("embedding method")
for _name, _factory in (("pca", _pca), ("ica", _ica), ("fa", _fa)):
    EMBEDDING_METHODS.register(_name, _factory)


def register_embedding(name: str, factory: EstimatorFactory) -> None:
    """Register an upstream embedding ``name`` (usable as ``upstream:`` in run configs).

    Parameters
    ----------
    name
        Lower-case name; the embedding is stored as ``obsm["X_<name>"]``.
    factory
        ``factory(n_comps, seed, shape)`` returning an unfitted estimator with
        ``fit_transform`` and ``transform`` (``shape`` is the (cells, genes) matrix shape).
    """
    EMBEDDING_METHODS.register(name, factory)
