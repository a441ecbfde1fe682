"""The scvi-tools upstreams (scVI, LDVAE, scANVI) on a small real data set.

CellBench 3-cell-line (two protocols, raw UMI counts), 300 cells, 300 HVGs, one or two
epochs: shape, determinism under a fixed seed, the label and batch requirements, the
record of where the upstream was computed, and scArches query mapping of new batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsc.datasets import cellbench_3cl
from fedsc.errors import FedscInputError
from fedsc.preprocessing import fit_embedding, preprocess
from fedsc.run.config import RunConfig
from fedsc.upstream import CENTRAL, EMBEDDING_METHODS, check_upstream_params

pytest.importorskip("scvi")
pytestmark = pytest.mark.slow

EPOCHS = {"max_epochs": 2}


@pytest.fixture(scope="module")
def small():
    """300 cells (both protocols) of CellBench, preprocessed to 300 HVGs (counts kept)."""
    a = cellbench_3cl()
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(a.n_obs, 300, replace=False))
    return preprocess(a[idx].copy(), n_top_genes=300)


def _fit(adata, method, seed=0, **kw):
    params = dict(EPOCHS, **({"scanvi_max_epochs": 1} if method == "scanvi" else {}))
    kw.setdefault("batch_key", "batch")
    kw.setdefault("labels_key", "cell_type")
    return fit_embedding(adata, method, n_comps=10, seed=seed, params=params, **kw)


@pytest.fixture(scope="module")
def fitted(small):
    """Each scvi-tools upstream fitted once (seed 0) on the small set: (AnnData, model)."""
    torch.set_num_threads(1)
    out = {}
    for method in ("scvi", "ldvae", "scanvi"):
        a = small.copy()
        out[method] = (a, _fit(a, method))
    return out


@pytest.mark.parametrize("method", ["scvi", "ldvae", "scanvi"])
def test_scvi_upstreams_embed_deterministically(small, fitted, method, one_torch_thread):
    a, model = fitted[method]
    emb = a.obsm[f"X_{method}"]
    assert emb.shape == (a.n_obs, 10) and emb.dtype == np.float32
    assert np.isfinite(emb).all() and emb.std(axis=0).min() > 0
    b = small.copy()
    _fit(b, method)
    np.testing.assert_array_equal(b.obsm[f"X_{method}"], emb)  # same seed: same bits
    record = a.uns["fedsc_embedding"][f"X_{method}"]
    assert record["computed"] == CENTRAL and record["library"].startswith("scvi-tools")
    assert record["uses_labels"] is (method == "scanvi")
    assert record["batch_key"] == "batch"
    assert model.n_comps == 10 and model.key == f"X_{method}"


def test_another_seed_gives_another_embedding(small, fitted, one_torch_thread):
    c = small.copy()
    _fit(c, "scvi", seed=1)
    assert not np.allclose(c.obsm["X_scvi"], fitted["scvi"][0].obsm["X_scvi"])


def test_scanvi_is_refused_without_a_label_key(small):
    with pytest.raises(FedscInputError, match=r"labels_key.*has seen"):
        _fit(small.copy(), "scanvi", labels_key=None)
    with pytest.raises(FedscInputError, match="labels_key"):
        _fit(small.copy(), "scanvi", labels_key="no_such_column")


def test_batch_aware_upstreams_need_the_batch_key(small):
    with pytest.raises(FedscInputError, match="batch-aware: pass batch_key"):
        _fit(small.copy(), "scvi", batch_key=None)


def test_registry_declares_inputs_and_requirements():
    spec = {name: EMBEDDING_METHODS.get(name) for name in EMBEDDING_METHODS}
    assert {n for n, s in spec.items() if s.input == "counts"} >= {"scvi", "ldvae", "scanvi"}
    assert all(spec[n].input == "expression" and not spec[n].batch_aware for n in ("pca", "ica"))
    assert [n for n, s in spec.items() if s.label_aware] == ["scanvi"]
    assert spec["scvi"].defaults["n_latent"] == 10
    assert spec["ldvae"].new_cells is None and spec["scvi"].new_cells == "query mapping"
    # a run's default dims are the upstream's own: 40 (paper) for PCA, 10 (scvi-tools) for scVI
    assert RunConfig(method="scbatchprox").n_comps == 40
    assert RunConfig(method="scbatchprox", upstream="scvi").n_comps == 10
    with pytest.raises(FedscInputError, match="does not take \\['epochs'\\]"):
        check_upstream_params("scvi", {"epochs": 3})
    with pytest.raises(FedscInputError, match="does not take \\['max_epochs'\\]"):
        fit_embedding(cellbench_3cl(), "pca", n_comps=5, params={"max_epochs": 1})


def test_query_mapping_embeds_new_batches(small, fitted, one_torch_thread):
    ref = small[small.obs["batch"] == "CEL-seq2"].copy()
    new = small[small.obs["batch"] != "CEL-seq2"].copy()
    model = fit_embedding(
        ref, "scvi", n_comps=10, seed=0, batch_key="batch",
        params={"max_epochs": 1, "query_max_epochs": 1},
    )  # fmt: skip
    z = model.transform(new)  # raw counts in layers["counts"], a batch it has not seen
    assert z.shape == (new.n_obs, 10) and np.isfinite(z).all()
    assert not np.array_equal(z, np.zeros_like(z))
    with pytest.raises(FedscInputError, match="no query mapping"):
        fitted["ldvae"][1].transform(new)


def test_a_run_records_the_central_upstream_and_its_labels(one_torch_thread):
    from fedsc.run.execute import execute_run

    a = cellbench_3cl()
    a = a[np.sort(np.random.default_rng(1).choice(a.n_obs, 200, replace=False))].copy()
    options = {"max_epochs": 1, "scanvi_max_epochs": 1}
    cfg = RunConfig(
        method="scbatchprox", dataset="cellbench_3cl", upstream="scanvi", n_comps=10,
        upstream_params=options, n_top_genes=200, panels=[], params={"rounds": 1},
    )  # fmt: skip
    info = execute_run(cfg, adata=a).info
    assert info["upstream"]["computed"] == CENTRAL and info["upstream"]["uses_labels"] is True
    assert info["upstream"]["epochs"] == {"SCVI": 1, "SCANVI": 1}
    assert 0 < info["fit_seconds"] < info["method_seconds"]
    assert cfg.run_id != RunConfig(method="scbatchprox", upstream="scanvi", n_comps=10).run_id
    with pytest.raises(FedscInputError, match="does not take"):
        RunConfig(method="scbatchprox", upstream="pca", upstream_params={"max_epochs": 1})
