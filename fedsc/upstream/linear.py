"""The linear, batch-agnostic upstreams of scBatchProx's Table 1: PCA, ICA, FA (scikit-learn).

Each is an estimator factory ``factory(n_comps, seed, shape)``;
:func:`fedsc.preprocessing.fit_embedding` fits it on the log-normalised expression.
scikit-learn loads only when an estimator is made.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fa", "ica", "pca"]


def pca(n_comps: int, seed: int, shape: tuple[int, int]) -> Any:
    """scikit-learn PCA; the exact covariance eigen-solver when cells outnumber genes."""
    from sklearn.decomposition import PCA

    solver = "covariance_eigh" if shape[0] > shape[1] else "full"
    return PCA(n_components=n_comps, svd_solver=solver, random_state=seed)


def ica(n_comps: int, seed: int, shape: tuple[int, int]) -> Any:
    """FastICA with unit-variance whitening (eigh whitening when cells outnumber genes)."""
    from sklearn.decomposition import FastICA

    return FastICA(
        n_components=n_comps,
        whiten="unit-variance",
        whiten_solver="eigh" if shape[0] > shape[1] else "svd",
        max_iter=1000,
        random_state=seed,
    )


def fa(n_comps: int, seed: int, shape: tuple[int, int]) -> Any:
    """scikit-learn FactorAnalysis."""
    from sklearn.decomposition import FactorAnalysis

    return FactorAnalysis(n_components=n_comps, random_state=seed)
