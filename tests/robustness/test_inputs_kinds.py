"""Issue 10 (inputs): wrong input kinds and malformed AnnData are refused before anything runs.

Every case asserts the exception type, that the message names the problem and the fix, and
that the input AnnData was not modified (hash of X, layers, obsm and obs before and after).
Data: a 150-cell / 200-gene subset of the bundled pancreas (30 cells per batch).
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from _helpers.adata import lognormalize, pancreas_subset
from _helpers.digests import adata_digest

import fedsc.tl
from fedsc.data.input_kind import EXPRESSION_MAX, check_input_kind, detect_input_kind
from fedsc.datasets import pancreas
from fedsc.errors import FedscInputError
from fedsc.methods.fedscgen import FedScGenConfig, run_fedscgen
from fedsc.methods.scbatchprox_scenarios import cumulative_retraining
from fedsc.run.config import RunConfig
from fedsc.run.execute import execute_run
from fedsc.run.prepare import looks_like_counts, prepare_expression

TINY = {"hidden": (16,), "latent": 4, "batch_size": 8, "rounds": 1, "local_epochs": 1}


def _refused(fn, a, *patterns, exc=FedscInputError):
    before = adata_digest(a)
    with pytest.raises(exc) as info:
        fn(a)
    msg = str(info.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in message: {msg}"
    assert adata_digest(a) == before, "the input AnnData was modified"
    return msg


# --- detection ---------------------------------------------------------------------------
def test_detects_bundled_pancreas_kinds():
    raw = pancreas()
    found = detect_input_kind(raw.X)
    # pancreas is distributed with non-integer estimated counts (54 % of non-zero values):
    # recognised as counts by range, not integrality
    assert found.kind == "counts" and found.nonint_share > 0.5 and looks_like_counts(raw.X)
    log = raw.copy()
    sc.pp.normalize_total(log, target_sum=1e4)
    sc.pp.log1p(log)
    assert detect_input_kind(log.X).kind == "expression"
    assert detect_input_kind(log.X).max <= EXPRESSION_MAX
    assert detect_input_kind(raw.obsm["X_pca"]).kind == "embedding"
    assert detect_input_kind(np.array([[0, 1], [2, 3]])).kind == "counts"  # small integers


# --- cases (CASES_INPUTS.md) -------------------------------------------------------------
def test_case_negative_count_refused_by_runner():
    a = pancreas_subset()
    x = a.X.toarray()
    x[3, 5] = -1.0
    a.X = sp.csr_matrix(x)
    cfg = RunConfig(method="fedscgen", params=dict(TINY), n_top_genes=100)
    msg = _refused(
        lambda ad_: execute_run(cfg, adata=ad_, show_progress=False),
        a,
        "negative",
        "neither counts nor log-normalised expression",
        repr(a.obs_names[3]),
        repr(a.var_names[5]),
    )
    assert "fix or drop" in msg


def test_case_negative_count_refused_by_prepare_expression_dense():
    a = pancreas_subset()
    a.X = a.X.toarray()
    a.X[0, 0] = -2.0
    cfg = RunConfig(method="fedscgen")
    _refused(lambda ad_: prepare_expression(ad_, cfg), a, "negative entr", "counts")


def test_case_counts_passed_to_tl_fedscgen():
    a = pancreas_subset()
    _refused(
        lambda ad_: fedsc.tl.fedscgen(ad_, show_progress=False, **TINY),
        a,
        "looks like raw counts",
        "FedscGen needs log-normalised expression",
        "fedsc.preprocessing.preprocess",
    )
    assert "X_fedscgen" not in a.obsm and "fedscgen" not in a.layers


def test_case_pcs_passed_to_tl_scgen():
    a = pancreas_subset()
    a = a[:, :50].copy()
    a.X = a.obsm["X_pca"][:, :50].copy()
    msg = _refused(
        lambda ad_: fedsc.tl.scgen(ad_, show_progress=False, epochs=1, hidden=(16,), latent=4),
        a,
        "negative values",
        "looks like an embedding",
        "scGen needs log-normalised expression",
    )
    assert "X_pca" in msg


def test_case_scaled_data_refused_by_runner():
    a = lognormalize(pancreas_subset())
    sc.pp.scale(a)
    cfg = RunConfig(method="fedscgen", params=dict(TINY))
    _refused(
        lambda ad_: execute_run(cfg, adata=ad_, show_progress=False),
        a,
        "negative values",
        "embedding or scaled data",
    )


def test_case_nan_in_x():
    a = lognormalize(pancreas_subset())
    x = a.X.toarray()
    x[1, 2] = np.nan
    a.X = x
    _refused(
        lambda ad_: fedsc.tl.fedscgen(ad_, show_progress=False, **TINY),
        a,
        "adata.X contains 1 NaN",
        "remove or impute",
    )


def test_case_inf_in_embedding():
    a = pancreas_subset()
    a.obsm["X_pca"] = a.obsm["X_pca"][:, :10].copy()
    a.obsm["X_pca"][4, 1] = np.inf
    _refused(
        lambda ad_: fedsc.tl.scbatchprox(ad_, show_progress=False, rounds=1),
        a,
        "adata.obsm['X_pca']",
        "1 infinite value",
        "remove or impute",
    )
    assert "X_scbatchprox" not in a.obsm


def test_case_single_cell_batch():
    a = lognormalize(pancreas_subset())
    keep = np.ones(a.n_obs, bool)
    keep[np.flatnonzero(a.obs["batch"].to_numpy() == "celseq")[1:]] = False
    a = a[keep].copy()
    _refused(
        lambda ad_: fedsc.tl.fedscgen(ad_, show_progress=False, **TINY),
        a,
        "'celseq' (1 cell)",
        "remove them",
    )


def test_case_label_column_with_nan():
    a = lognormalize(pancreas_subset())
    a.obs["cell_type"] = a.obs["cell_type"].astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("cell_type")] = np.nan
    _refused(
        lambda ad_: fedsc.tl.fedscgen(ad_, show_progress=False, **TINY),
        a,
        "adata.obs['cell_type'] has 1 missing (NaN)",
        "fill them",
    )


def test_case_batch_key_missing():
    a = lognormalize(pancreas_subset())
    _refused(
        lambda ad_: fedsc.tl.fedscgen(ad_, batch_key="donor", show_progress=False, **TINY),
        a,
        "batch_key 'donor' is not a column of adata.obs",
        "pass batch_key=",
    )


def test_case_use_rep_as_list():
    a = pancreas_subset()
    _refused(
        lambda ad_: fedsc.tl.scbatchprox(ad_, use_rep=["X_pca"], show_progress=False),
        a,
        "use_rep must be one name",
        "use_rep='X_pca'",
    )


def test_case_use_rep_missing():
    a = pancreas_subset()
    _refused(
        lambda ad_: fedsc.tl.scbatchprox(ad_, use_rep="X_umap", show_progress=False),
        a,
        "use_rep='X_umap' is not a key of adata.obsm",
        "fit_embedding",
    )


def test_case_holdout_duplicates_and_client_order_duplicates():
    a = lognormalize(pancreas_subset())
    _refused(
        lambda ad_: fedsc.tl.fedscgen(
            ad_, holdout=["celseq", "celseq"], show_progress=False, **TINY
        ),
        a,
        "holdout lists ['celseq'] more than once",
    )
    _refused(
        lambda ad_: run_fedscgen(
            ad_,
            batch_key="batch",
            labels_key="cell_type",
            aggregator="plaintext",
            config=FedScGenConfig(**TINY),
            client_order=["indrop", "celseq", "indrop", "celseq2", "fluidigmc1", "smartseq2"],
        ),
        a,
        "client_order lists ['indrop'] more than once",
    )


def test_case_stages_with_duplicates():
    a = pancreas_subset()
    _refused(
        lambda ad_: cumulative_retraining(
            ad_, [["celseq", "indrop"], ["indrop"]], "plaintext", n_comps=5, n_top_genes=50
        ),
        a,
        "listed more than once: ['indrop']",
        "each batch in one stage only",
    )


def test_case_holdout_as_string_means_one_batch():
    a = lognormalize(pancreas_subset())
    res = fedsc.tl.fedscgen(a, holdout="celseq", show_progress=False, return_model=True, **TINY)
    held = [c["name"] for c in res.info["clients"] if c["held_out"]]
    assert held == ["celseq"]
    assert np.isfinite(a.layers["fedscgen"]).all()


def test_case_all_zero_genes_and_one_type_batch_accepted():
    """All-zero genes carry no signal but are valid expression; a one-type batch is valid."""
    a = lognormalize(pancreas_subset())
    x = a.X.toarray()
    x[:, :5] = 0.0
    a.X = x
    smart = a.obs["batch"].to_numpy() == "smartseq2"
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.loc[smart, "cell_type"] = "alpha"  # smartseq2 holds one cell type only
    res = fedsc.tl.fedscgen(a, show_progress=False, return_model=True, **TINY)
    assert np.isfinite(a.layers["fedscgen"]).all()
    assert "alpha" in res.info["correction"]["shared_types"]


def test_check_input_kind_expression_accepts_lognorm_and_refuses_counts_message():
    a = lognormalize(pancreas_subset())
    assert check_input_kind(a.X, "expression").kind == "expression"
    with pytest.raises(FedscInputError, match=r"at most log1p\(1e4\) = 9\.21"):
        check_input_kind(pancreas_subset().X, "expression", method="FedscGen")


def test_case_log_cpm_is_not_mistaken_for_counts():
    """log1p(CPM) reaches 13.8 > 9.21: refused by name, not re-normalised as counts."""
    a = pancreas_subset()
    sc.pp.normalize_total(a, target_sum=1e6)
    sc.pp.log1p(a)
    assert detect_input_kind(a.X).kind == "log_other_scale"
    cfg = RunConfig(method="fedscgen")
    _refused(
        lambda ad_: prepare_expression(ad_, cfg),
        a,
        "looks log-normalised with a target sum above 1e4",
        "start from the raw counts",
    )


def test_case_validate_adata_refuses_list_keys():
    from fedsc.data import validate_adata

    a = pancreas_subset()
    _refused(
        lambda ad_: validate_adata(ad_, batch_key=["batch"]),
        a,
        "batch_key must be one name (a string), got list ['batch']",
        "pass batch_key='batch'",
    )
