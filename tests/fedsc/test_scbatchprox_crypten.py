"""scBatchProx with the CrypTen backend equals plaintext on a real embedding."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import fedsc.tl
import smpc
from fedsc.evaluation import scib_panel


@pytest.fixture(scope="module")
def cell_lines(shared_data):
    return ad.read_h5ad(shared_data("cell_lines_293t_jurkat_harmony_pcs.h5ad"))


@pytest.fixture(scope="module")
def crypten_agg():
    with smpc.make_aggregator("crypten") as agg:
        yield agg


@pytest.mark.parametrize("seed", [0, 42])
def test_crypten_equals_plaintext_on_cell_lines(cell_lines, crypten_agg, seed):
    adata = cell_lines
    batch = adata.obs["batch"].astype(str).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    out = {}
    for name, backend in (("plaintext", "plaintext"), ("crypten", crypten_agg)):
        key = f"X_{name}"
        fedsc.tl.scbatchprox(adata, use_rep="X", backend=backend, seed=seed, key_added=key)
        out[name] = adata.obsm[key]
    assert np.abs(out["crypten"] - out["plaintext"]).max() <= 1e-5
    assert not np.array_equal(out["plaintext"], np.asarray(adata.X))  # it did refine
    assert "private" in adata.uns["crypten"]["privacy"]
    # scIB panel on a 3000-cell subsample (the full set is in the closing note). A
    # control embedding, plaintext + 1e-6 noise, measures how much each metric moves
    # under a perturbation as small as the fixed-point error.
    rng = np.random.default_rng(seed)
    idx = rng.choice(adata.n_obs, 3000, replace=False)
    out["control"] = out["plaintext"] + rng.normal(scale=1e-6, size=out["plaintext"].shape)
    pre = np.asarray(adata.X)[idx]
    scores = {
        name: scib_panel(z[idx], batch[idx], labels[idx], X_pre=pre).set_index("metric")["value"]
        for name, z in out.items()
    }
    # kBET (a diffusion map + per-cell chi-square accept/reject) and the aggregates that
    # average it flip under 1e-6 perturbations: they are compared against the control.
    unstable = ["kbet_per_label", "batch_correction", "total"]
    stable = scores["plaintext"].drop(unstable)
    np.testing.assert_array_equal(
        scores["crypten"].drop(unstable).round(4), stable.round(4), err_msg="stable metrics"
    )
    for metric in unstable:
        gap = abs(scores["crypten"][metric] - scores["plaintext"][metric])
        noise = abs(scores["control"][metric] - scores["plaintext"][metric])
        assert gap <= max(3 * noise, 1e-4) + 0.01, (metric, gap, noise)
