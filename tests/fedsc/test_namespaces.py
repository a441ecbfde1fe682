"""scanpy-style namespaces: ``fedsc.pp`` (preprocessing) and ``fedsc.pl`` (plots)."""

from __future__ import annotations

import fedsc
from fedsc import plots, preprocessing
from fedsc.data import federated_preprocessing


def test_pp_gathers_the_preprocessing_functions():
    assert fedsc.pp.preprocess is preprocessing.preprocess
    assert fedsc.pp.fit_embedding is preprocessing.fit_embedding
    assert fedsc.pp.federated_hvg is federated_preprocessing.federated_hvg
    assert fedsc.pp.federated_pca is federated_preprocessing.federated_pca


def test_pl_gathers_the_figures():
    for name in fedsc.pl.__all__:
        assert getattr(fedsc.pl, name) is getattr(plots, name)
    assert "umap_grid" in fedsc.pl.__all__ and "privacy_utility_frontier" in fedsc.pl.__all__
