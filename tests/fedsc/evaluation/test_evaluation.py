"""fedsc.evaluation: hand-computed metric cases, determinism, the evaluate() API."""

from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _helpers.embeddings import blobs, blobs_adata
from _helpers.metrics import metric_values

from fedsc.errors import FedscInputError
from fedsc.evaluation import (
    downstream_accuracy,
    enable_compilation_caches,
    evaluate,
    fedscgen_panel,
    scib_panel,
)
from fedsc.evaluation.scib_panel import silhouette_batch

# exact on every CPU: rerun by make test-dispatch (docs/reproducibility.md)
pytestmark = pytest.mark.reproducibility

# the package exports the function fedscgen_panel, which shadows the module attribute
fp = importlib.import_module("fedsc.evaluation.fedscgen_panel")


# --- EBM -------------------------------------------------------------------------------
def test_ebm_is_one_for_perfectly_mixed_ring_and_zero_for_separated_batches():
    # 200 points evenly on a circle, batches alternating. With k = 16 every cell's
    # neighbours are the 8 on each side: offsets 1..8, odd offsets (4 per side) are the
    # other batch -> 8/8 split -> entropy log 2 -> EBM exactly 1.
    n = 200
    ang = 2 * np.pi * np.arange(n) / n
    Z = np.c_[np.cos(ang), np.sin(ang)].astype(np.float32) * 100
    batch = np.arange(n) % 2
    idx, _ = fp.knn_without_self(Z, 16)
    ebm = fp.entropy_batch_mixing(idx, batch, 2, rng=np.random.default_rng(0))
    assert ebm == pytest.approx(1.0, abs=1e-12)

    # two far-apart clusters, one batch each -> every neighbourhood pure -> 0
    rng = np.random.default_rng(1)
    Z2 = np.r_[rng.normal(0, 1, (50, 3)), rng.normal(100, 1, (50, 3))].astype(np.float32)
    b2 = np.repeat([0, 1], 50)
    idx2, _ = fp.knn_without_self(Z2, 15)
    assert fp.entropy_batch_mixing(idx2, b2, 2, rng=np.random.default_rng(0)) == 0.0


def test_ebm_hand_value_three_batches():
    # neighbourhoods given directly: every cell sees batches (0,0,1,2) -> p = (1/2,1/4,1/4)
    idx = np.tile([0, 1, 2, 3], (4, 1))
    b = np.array([0, 0, 1, 2])
    h = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)) / np.log(3)
    got = fp.entropy_batch_mixing(idx, b, 3, n_cells=2, n_draws=3, rng=np.random.default_rng(0))
    assert got == pytest.approx(h)


# --- kNN accuracy, ASW_B, GC, ILF1 ------------------------------------------------------
def test_knn_accuracy_one_for_separated_clusters_and_hand_value():
    X, _batch, labels = blobs()
    idx, _ = fp.knn_without_self(X, 15)
    assert fp.knn_accuracy(idx, labels) == 1.0
    # hand case: type a: cells with 1/2 and 1 correct -> 0.75; type b: one cell 0 -> 0
    idx = np.array([[1, 2], [0, 1], [0, 1]])
    lab = np.array(["a", "a", "b"])
    # cell0 nbrs (a, b) -> 0.5; cell1 nbrs (a, a) -> 1; cell2 nbrs (a, a) -> 0
    assert fp.knn_accuracy(idx, lab) == pytest.approx((0.75 + 0.0) / 2)


def test_asw_batch_hand_case():
    # type T in 1-D: batch A at 0, 1 and batch B at 10, 11; a = 1 for every cell,
    # b = 10.5 (ends) or 9.5 (inner) -> s = 1 - 1/b and 1 - |s| = 1/b.
    # type U lives in one batch only and is skipped.
    X = np.array([[0.0], [1.0], [10.0], [11.0], [50.0], [51.0]], dtype=np.float32)
    labels = np.array(["T", "T", "T", "T", "U", "U"])
    batch = np.array(["A", "A", "B", "B", "A", "A"])
    expected = (1 / 10.5 + 1 / 9.5) / 2
    assert silhouette_batch(X, labels, batch) == pytest.approx(expected, rel=1e-5)
    # no type in two batches -> NaN instead of an error
    assert np.isnan(silhouette_batch(X[4:], labels[4:], np.array(["A", "B"])[[0, 0]]))


def test_graph_connectivity_hand_case():
    # type A: a clump of 30 and a clump of 10 far apart; type B: 40 cells next to the
    # small A clump. The small clump's neighbour lists reach B, never the big A clump,
    # so restricted to A there are two components: 30/40. B is one component: 1.
    rng = np.random.default_rng(0)
    a_big = rng.normal(0, 0.1, (30, 2))
    a_small = rng.normal([100, 0], 0.1, (10, 2))
    b = rng.normal([102, 0], 0.3, (40, 2))
    Z = np.r_[a_big, a_small, b].astype(np.float32)
    labels = np.array(["A"] * 40 + ["B"] * 40)
    idx, dist = fp.knn_without_self(Z, 15)
    import scib_metrics

    assert scib_metrics.graph_connectivity(fp.with_self(idx, dist), labels) == pytest.approx(
        (30 / 40 + 1.0) / 2
    )


def test_isolated_label_f1_uses_clusters_hand_case():
    # label "iso" is in one batch only (others in two). Best cluster for it: cluster 1 with
    # 3 of its 4 cells plus 1 other -> F1 = 2*3 / (4 + 4) = 0.75.
    labels = np.array(["iso"] * 4 + ["x"] * 6)
    batch = np.array(["b1"] * 4 + ["b1", "b2"] * 3)
    clusters = np.array([1, 1, 1, 2, 1, 2, 2, 3, 3, 3])
    assert fp.isolated_label_f1(clusters, labels, batch) == pytest.approx(0.75)


# --- kBET, LISI, whole FedscGen panel ----------------------------------------------------
def test_kbet_and_lisi_extremes():
    rng = np.random.default_rng(0)
    # well mixed: one Gaussian, batches assigned at random -> most cells accepted
    Z = rng.normal(size=(300, 5)).astype(np.float32)
    b_mixed = rng.integers(0, 2, 300).astype(str)
    assert fp.kbet_sweep(Z, b_mixed, rng=np.random.default_rng(0)) > 0.75
    # separated by batch -> every test rejects
    Z_sep = Z + 50 * (b_mixed == "1")[:, None]
    assert fp.kbet_sweep(Z_sep, b_mixed, rng=np.random.default_rng(0)) == 0.0

    labels = np.where(rng.random(300) < 0.5, "u", "v")
    mixed = metric_values(fedscgen_panel(Z, b_mixed, labels))
    sep = metric_values(fedscgen_panel(Z_sep, b_mixed, labels))
    assert 1.7 < mixed["ilisi"] <= 2.0 and sep["ilisi"] == pytest.approx(1.0, abs=1e-3)
    assert 1.0 <= sep["clisi"] <= 2.0
    assert mixed["ebm"] > 0.85 and sep["ebm"] == 0.0


def test_kbet_subsamples_large_inputs_with_k_capped():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(1000, 4)).astype(np.float32)
    b = rng.integers(0, 3, 1000).astype(str)
    # 1000 cells > 100 / 0.25 = 400: runs on 400-cell draws, k = 20..100
    v = fp.kbet_sweep(Z, b, max_k=100, n_draws=2, rng=np.random.default_rng(0))
    assert 0.75 < v <= 1.0


def test_kbet_transition_matrix_by_hand():
    from scipy import sparse

    from fedsc.evaluation._kbet import transition_matrix

    # star graph 0-1, 0-2: degrees q = (2, 1, 1); K_ij = C_ij / (q_i q_j) = 1/2 on each
    # edge; column sums of K s = (1, 1/2, 1/2); T_ij = K_ij / sqrt(s_i s_j) = 1/sqrt(2)
    conn = sparse.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=np.float32))
    s = 1 / np.sqrt(2)
    expected = np.array([[0, s, s], [s, 0, 0], [s, 0, 0]])
    np.testing.assert_allclose(transition_matrix(conn).toarray(), expected, rtol=1e-6)


def test_kbet_transition_matrix_matches_scib_metrics_private_function():
    # _kbet.transition_matrix replaces scib-metrics' private _compute_transitions (which a
    # release may change or remove): while that function exists, both must agree bit for bit
    private = pytest.importorskip("scib_metrics.utils._diffusion_nn")
    if not hasattr(private, "_compute_transitions"):
        pytest.skip("scib-metrics no longer has _compute_transitions")
    from fedsc.evaluation._kbet import transition_matrix
    from fedsc.evaluation.scib_panel import knn

    X, _, _ = blobs(n_per=30)
    conn = knn(X, 15).knn_graph_connectivities
    ours, theirs = transition_matrix(conn), private._compute_transitions(conn)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.toarray(), theirs.toarray())


def test_fedscgen_panel_on_separated_blobs():
    X, batch, labels = blobs()
    v = metric_values(fedscgen_panel(X, batch, labels, seed=0))
    assert list(v) == list(fp.METRICS)
    assert v["knn_acc"] == 1.0
    assert v["nmi"] == pytest.approx(1.0) and v["gc"] == 1.0
    assert v["ilf1"] == pytest.approx(1.0)  # all types isolated alike; clusters match them
    assert v["asw_c"] > 0.95
    assert 0.0 <= v["kbet"] <= 1.0 and 0.0 <= v["ebm"] <= 1.0
    assert 1.0 <= v["ilisi"] <= 2.0 and v["clisi"] == pytest.approx(1.0, abs=1e-3)


def test_fedscgen_panel_deterministic_and_seed_sensitive():
    X, batch, labels = blobs(sep=3.0, seed=3)
    a = fedscgen_panel(X, batch, labels, seed=7)
    b = fedscgen_panel(X, batch, labels, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = metric_values(fedscgen_panel(X, batch, labels, seed=8))
    assert c["ebm"] != metric_values(a)["ebm"]  # the random EBM draws follow the seed


def test_top_pcs_reduces_to_n_pcs():
    X = np.random.default_rng(0).normal(size=(50, 30)).astype(np.float32)
    assert fp.top_pcs(X, 20).shape == (50, 20)
    assert fp.top_pcs(X[:, :5], 20).shape == (50, 5)


# --- scIB panel --------------------------------------------------------------------------
def test_scib_panel_rows_and_aggregates():
    X, batch, labels = blobs(n_per=40)
    rng = np.random.default_rng(0)
    X_pre = X + 5.0 * (batch == "b1")[:, None]  # "before": a batch shift
    df = scib_panel(X, batch, labels, X_pre=X_pre)
    assert list(df.columns) == ["panel", "metric", "value"] and (df["panel"] == "scib").all()
    v = metric_values(df)
    bio = ["kmeans_nmi", "kmeans_ari", "silhouette_label", "isolated_labels", "clisi_knn"]
    bat = ["silhouette_batch", "ilisi_knn", "kbet_per_label", "graph_connectivity"]
    assert list(v) == [
        *bio,
        *bat,
        "pcr_comparison",
        "bio_conservation",
        "batch_correction",
        "total",
    ]
    assert v["kmeans_nmi"] == pytest.approx(1.0) and v["kmeans_ari"] == pytest.approx(1.0)
    assert v["graph_connectivity"] == 1.0 and v["clisi_knn"] == pytest.approx(1.0)
    assert v["pcr_comparison"] > 0.5  # the shift was removed
    assert v["bio_conservation"] == pytest.approx(np.mean([v[m] for m in bio]))
    assert v["batch_correction"] == pytest.approx(np.mean([v[m] for m in [*bat, "pcr_comparison"]]))
    assert v["total"] == pytest.approx(0.6 * v["bio_conservation"] + 0.4 * v["batch_correction"])
    # without X_pre the PCR row is omitted and not averaged
    v2 = metric_values(scib_panel(X, batch, labels))
    assert "pcr_comparison" not in v2
    assert v2["batch_correction"] == pytest.approx(np.mean([v2[m] for m in bat]))
    del rng


# --- downstream --------------------------------------------------------------------------
def test_downstream_separated_blobs_perfect_and_no_global_rng_side_effect():
    X, _, labels = blobs(n_per=30, n_types=3)
    batch = np.tile(["b0", "b1", "b2"], 30)
    state = torch.get_rng_state()
    df = downstream_accuracy(X, batch, labels, seed=0, epochs=30, per_batch=True)
    assert torch.equal(state, torch.get_rng_state())
    assert list(df["metric"]) == [
        "lobo_accuracy",
        "lobo_accuracy[b0]",
        "lobo_accuracy[b1]",
        "lobo_accuracy[b2]",
    ]
    assert (df["panel"] == "downstream").all() and df["value"].eq(1.0).all()


def test_downstream_deterministic():
    X, batch, labels = blobs(n_per=30, sep=1.0, seed=2)
    a = downstream_accuracy(X, batch, labels, seed=3, epochs=3)
    b = downstream_accuracy(X, batch, labels, seed=3, epochs=3)
    pd.testing.assert_frame_equal(a, b)
    assert 0.0 <= a["value"].iloc[0] <= 1.0


# --- evaluate() and input validation -----------------------------------------------------
def _adata():
    X, batch, labels = blobs()
    a = blobs_adata(X, batch, labels)
    a.obsm["X_emb"] = X[:, :3].copy()
    return a


def test_evaluate_tidy_rows_with_embedding_column():
    a = _adata()
    df = evaluate(a, rep="X_emb", panels=("scib", "downstream"), X_pre_rep="X")
    assert list(df.columns) == ["embedding", "panel", "metric", "value"]
    assert (df["embedding"] == "X_emb").all()
    assert set(df["panel"]) == {"scib", "downstream"}
    assert "pcr_comparison" in set(df["metric"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rep": "X_nope"}, "not a key of adata.obsm"),
        ({"rep": "X", "batch_key": "donor"}, "not a column of adata.obs"),
        ({"rep": "X", "labels_key": "ct"}, "not a column of adata.obs"),
        ({"rep": "X", "panels": ("scib", "umap")}, "panels"),
        ({"rep": "X", "X_pre_rep": "X_missing"}, "X_pre_rep"),
    ],
)
def test_evaluate_rejects_bad_keys(kwargs, match):
    with pytest.raises(FedscInputError, match=match):
        evaluate(_adata(), **kwargs)


def test_inputs_rejected_with_clear_messages():
    a = _adata()
    a.obs["one"] = "b0"
    with pytest.raises(FedscInputError, match="fewer than 2 batches"):
        evaluate(a, rep="X", batch_key="one")
    X, batch, labels = blobs(n_per=10)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(FedscInputError, match="NaN"):
        scib_panel(Xn, batch, labels)
    with pytest.raises(FedscInputError, match="entries but the embedding has"):
        fedscgen_panel(X, batch[:-1], labels)
    lab = labels.astype(object)
    lab[0] = None
    with pytest.raises(FedscInputError, match="missing values"):
        downstream_accuracy(X, batch, lab)
    with pytest.raises(FedscInputError, match="2-D"):
        scib_panel(X[:, 0], batch, labels)
    with pytest.raises(FedscInputError, match="X_pre has"):
        scib_panel(X, batch, labels, X_pre=X[:-1])


def test_enable_compilation_caches_sets_dirs(tmp_path, monkeypatch):
    import jax

    caches = importlib.import_module("fedsc.settings._caches")
    monkeypatch.setattr(caches, "_ENABLED", None)  # restored after the test
    before = jax.config.jax_compilation_cache_dir
    try:
        root = enable_compilation_caches(tmp_path / "c")
        assert root == tmp_path / "c" and (root / "jax").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(root / "jax")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_knn_distances_do_not_depend_on_thread_layout():
    # Regression: scikit-learn's blocked distance expansion rounds differently with the
    # thread layout, and kBET amplified those last-bit changes into ~0.003 score changes.
    from threadpoolctl import threadpool_limits

    from fedsc.evaluation.scib_panel import knn

    x = np.random.default_rng(0).normal(size=(3000, 20)).astype(np.float32)
    with threadpool_limits(limits=1):
        one = knn(x, 30)
    with threadpool_limits(limits=2):
        two = knn(x, 30)
    np.testing.assert_array_equal(one.indices, two.indices)
    np.testing.assert_array_equal(one.distances, two.distances)
    exact = np.linalg.norm(x[one.indices[:5]].astype(np.float64) - x[:5, None], axis=2)
    np.testing.assert_allclose(one.distances[:5], exact, rtol=1e-6)


def test_evaluate_reads_layers():

    from fedsc.evaluation import evaluate, representation

    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.normal(size=(120, 30)).astype(np.float32))
    adata.obs["batch"] = np.repeat(["a", "b"], 60)
    adata.obs["cell_type"] = np.tile(["x", "y", "z"], 40)
    adata.layers["corrected"] = adata.X * 2
    np.testing.assert_array_equal(representation(adata, "layers/corrected"), adata.X * 2)
    rows = evaluate(adata, rep="layers/corrected", panels=("fedscgen",))
    assert set(rows["embedding"]) == {"layers/corrected"} and len(rows) == 11
    with pytest.raises(FedscInputError, match="layer 'missing' is not a key"):
        evaluate(adata, rep="layers/missing")
