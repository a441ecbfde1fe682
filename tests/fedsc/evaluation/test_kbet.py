"""fedsc.evaluation._kbet: the diffusion map's eigensolver runs on one BLAS thread."""

from __future__ import annotations

import numpy as np
from _helpers.embeddings import blobs
from sklearn.neighbors import kneighbors_graph
from threadpoolctl import threadpool_info, threadpool_limits

from fedsc.evaluation import _kbet


def test_diffusion_map_eigensolver_on_one_blas_thread(monkeypatch):
    # ARPACK's ~10^3 small BLAS calls per label cost ~10x more CPU on 2 OpenBLAS threads
    # (kBET at 3e4 cells: 73 CPU-s vs 6.5); fails if eigsh runs on the caller's threads
    seen = []

    def eigsh(*args, **kwargs):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return real(*args, **kwargs)

    real = _kbet.eigsh
    monkeypatch.setattr(_kbet, "eigsh", eigsh)
    X, _, _ = blobs(n_per=30)
    graph = kneighbors_graph(X, 15)
    with threadpool_limits(limits=2, user_api="blas"):
        nn = _kbet.diffusion_nn_exact(graph + graph.T, k=10, n_comps=20)
    assert seen and set(seen) == {1}
    assert nn.indices.shape == (len(X), 11) and np.all(nn.indices[:, 0] == np.arange(len(X)))
