"""Issue 23: ``fedsc.tl`` edges: DP without its noise, backed AnnData, integer batch labels,
``key_added`` (one meaning) and no silent replacement of an existing key.

Refusals happen before any training and leave the AnnData unchanged (digest before and
after). Data: 60 simulated cells x 30 genes, log-normalised, integer batch labels.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from _checks import has_words, record
from _helpers.digests import adata_digest

import fedsc.tl
import smpc
from fedsc.datasets import simulate
from fedsc.errors import FedscInputError

TINY = {"hidden": (8,), "latent": 2, "batch_size": 8, "rounds": 1, "local_epochs": 1}
DP_CLIENT = {"level": "client", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-3}


@pytest.fixture
def cells() -> ad.AnnData:
    a = simulate(60, 30, 3, 2, seed=0)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.obs["batch"] = a.obs["batch"].astype(str).str[-1].astype(int)  # 0, 1, 2
    return a


def refused(case: str, given: str, call, adata: ad.AnnData, words: list[str]) -> str:
    before = adata_digest(adata)
    with pytest.raises(FedscInputError) as info:
        call()
    message = str(info.value)
    has_words(message, words)
    assert adata_digest(adata) == before, "the AnnData was changed"
    record("fedsc.tl", case, given, "FedscInputError", message)
    return message


def test_client_dp_without_noise_is_refused(cells, nothing_left):
    """It trained the DP model variant with no noise and no epsilon."""
    refused(
        "tl-client-dp-no-gaussian",
        "fedsc.tl.fedscgen(adata, dp={level: client, ...})",
        lambda: fedsc.tl.fedscgen(cells, dp=DP_CLIENT, **TINY),
        cells,
        ["adds no noise by itself", "gaussian mechanism", "RunConfig(", "mechanism_spec()"],
    )


def test_client_dp_with_an_aggregator_without_gaussian_is_refused(cells):
    with smpc.make_aggregator("plaintext", mechanisms=[("clip", {"max_norm": 1.0})]) as agg:
        with pytest.raises(FedscInputError, match="this aggregator has none") as info:
            fedsc.tl.fedscgen(cells, backend=agg, dp=DP_CLIENT, **TINY)
    record("fedsc.tl", "tl-client-dp-aggregator-without-gaussian",
           "fedsc.tl.fedscgen(adata, backend=<clip-only aggregator>, dp={level: client})",
           "FedscInputError", str(info.value))  # fmt: skip


def test_client_dp_with_the_gaussian_mechanism_trains(cells):
    """The control: the same call with the mechanism that adds the noise runs."""
    from fedsc.privacy.accounting import DPConfig

    spec = DPConfig(**DP_CLIENT).resolve(1).mechanism_spec()
    with smpc.make_aggregator("plaintext", mechanisms=[spec]) as agg:
        fedsc.tl.fedscgen(cells, backend=agg, dp=DP_CLIENT, **TINY)
    assert "X_fedscgen" in cells.obsm


def test_backed_anndata_is_refused(cells, tmp_path):
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        refused(
            "tl-backed-anndata",
            "fedsc.tl.fedscgen(ad.read_h5ad(path, backed='r'))",
            lambda: fedsc.tl.fedscgen(backed, **TINY),
            cells,
            ["is backed by", "adata.to_memory()"],
        )
    finally:
        backed.file.close()


def test_integer_batch_labels_and_key_added_with_x_prefix(cells):
    """``holdout=3``-style integer labels gave internal errors; ``key_added="X_foo"`` wrote
    ``obsm["X_X_foo"]``. Now: one integer-labelled batch held out, and ``X_foo``/``foo``."""
    fedsc.tl.fedscgen(cells, holdout=2, key_added="X_foo", **TINY)
    assert "X_foo" in cells.obsm and "foo" in cells.layers and "X_X_foo" not in cells.obsm
    assert cells.uns["foo"]["params"]["holdout"] == ["2"]
    fedsc.tl.fedscgen(cells, holdout=[2], key_added="foo", **TINY)  # a rerun replaces its own


def test_key_added_cannot_silently_replace_the_input(cells):
    """``key_added="X_pca"`` on scBatchProx replaced its own input embedding."""
    sc.pp.pca(cells, n_comps=4)
    pca = cells.obsm["X_pca"].copy()
    refused(
        "tl-key-added-replaces-input",
        'fedsc.tl.scbatchprox(adata, key_added="X_pca")',
        lambda: fedsc.tl.scbatchprox(cells, key_added="X_pca", rounds=1),
        cells,
        ["would replace obsm['X_pca']", "key_added='X_scbatchprox_2'", "overwrite=True"],
    )
    fedsc.tl.scbatchprox(cells, key_added="pca", rounds=1, overwrite=True)  # when asked to
    assert not np.array_equal(cells.obsm["X_pca"], pca)


@pytest.mark.parametrize("key", ["", "X_", "a/b", 3])
def test_key_added_not_a_name(cells, key):
    with pytest.raises(FedscInputError, match="key_added") as info:
        fedsc.tl.scbatchprox(cells, use_rep="X", key_added=key)
    record("fedsc.tl", f"tl-key-added-{key!r}", f"key_added={key!r}", "FedscInputError",
           str(info.value))  # fmt: skip


@pytest.mark.parametrize("holdout", [True, [None], {"a": 1}])
def test_holdout_not_batch_names(cells, holdout):
    with pytest.raises(FedscInputError, match="holdout must be a batch name") as info:
        fedsc.tl.fedscgen(cells, holdout=holdout, **TINY)
    record("fedsc.tl", f"tl-holdout-{holdout!r}", f"holdout={holdout!r}", "FedscInputError",
           str(info.value))  # fmt: skip


TL_CASES = [
    ("tl-seed-negative", {"seed": -1}, ["seed must be in 0..4294967295", "-1"]),
    ("tl-seed-float", {"seed": 1.5}, ["seed must be an integer", "1.5"]),
    ("tl-seed-text", {"seed": "3"}, ["write 3 without quotes"]),
    (
        "tl-backend-option-on-plaintext",
        {"backend_options": {"parties": 3}},
        ["plaintext backend takes no options", "crypten"],
    ),
    (
        "tl-crypten-option-wrong-type",
        {"backend": "crypten", "backend_options": {"parties": "x"}},
        ["crypten backend option parties expects int", "'x'"],
    ),
]


@pytest.mark.parametrize("case, kwargs, words", TL_CASES, ids=[c[0] for c in TL_CASES])
def test_tl_checks_what_a_run_config_checks(case, kwargs, words, cells, nothing_left):
    """Seeds and backend options go through the run config's checks, before any backend
    starts (``seed=-1`` failed in numpy, ``parties="x"`` in the backend)."""
    refused(case, f"fedsc.tl.fedscgen(adata, {kwargs})",
            lambda: fedsc.tl.fedscgen(cells, **kwargs, **TINY), cells, words)  # fmt: skip


def test_tl_numpy_integer_seed_is_a_seed(cells):
    fedsc.tl.scbatchprox(cells, use_rep="X", seed=np.int64(3), rounds=1)
    assert cells.uns["scbatchprox"]["params"]["seed"] == 3
