"""Issue 10 (training): divergence stops the run naming lr; movement is measured and reported.

A diverging run raises :class:`TrainingDivergedError` (a ``FedscInputError``: the CLI exits
2 with the message, no traceback), names the method, round, client and ``lr``, suggests a
value, writes no output and leaves the input AnnData unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from _helpers.adata import lognormalize, pancreas_subset
from _helpers.digests import adata_digest

import fedsc.tl
from fedsc.cli import main
from fedsc.errors import FedscInputError
from fedsc.methods.health import TrainingDivergedError, relative_movement
from fedsc.run.config import RunConfig
from fedsc.run.evaluate import run_health
from fedsc.run.execute import execute_run

TINY = {"hidden": (16,), "latent": 4, "batch_size": 8, "rounds": 2, "local_epochs": 1}


def test_case_fedscgen_lr_1e3_diverges_with_lr_in_message():
    a = lognormalize(pancreas_subset(pcs=10))
    before = adata_digest(a)
    with pytest.raises(TrainingDivergedError) as info:
        fedsc.tl.fedscgen(a, show_progress=False, **{**TINY, "lr": 1e3})
    msg = str(info.value)
    assert "FedscGen training diverged at round 1/2" in msg
    assert "client 'celseq'" in msg and "loss is nan" in msg
    assert "lr=1000 is likely too large; try lr=0.001" in msg
    assert "X has NaN" not in msg and "impute" not in msg  # does not blame the input
    assert isinstance(info.value, FedscInputError)  # CLI: exit code 2, clean message
    assert "X_fedscgen" not in a.obsm and "fedscgen" not in a.layers  # no NaN output
    assert adata_digest(a) == before


def test_case_scbatchprox_lr_1e3_diverges_with_lr_in_message():
    a = pancreas_subset(pcs=10)
    before = adata_digest(a)
    with pytest.raises(TrainingDivergedError) as info:
        fedsc.tl.scbatchprox(a, show_progress=False, rounds=2, lr=1e3)
    msg = str(info.value)
    assert "scBatchProx training diverged at round 1/2, client 'celseq'" in msg
    assert "exceeds the cells' own mean squared norm" in msg
    assert "lr=1000 is likely too large; try lr=0.001" in msg
    assert "X_scbatchprox" not in a.obsm
    assert adata_digest(a) == before


def test_case_scgen_lr_1e3_diverges_with_lr_in_message():
    a = lognormalize(pancreas_subset(pcs=10))
    before = adata_digest(a)
    with pytest.raises(
        TrainingDivergedError, match=r"scGen training diverged at epoch 1/2"
    ) as info:
        fedsc.tl.scgen(
            a, show_progress=False, epochs=2, hidden=(16,), latent=4, batch_size=8, lr=1e3
        )
    assert "lr=1000 is likely too large" in str(info.value)
    assert "X_scgen" not in a.obsm and "scgen" not in a.layers
    assert adata_digest(a) == before


def test_case_runner_divergence_writes_nothing_and_cli_exit_code_2(tmp_path, capsys):
    a = lognormalize(pancreas_subset(pcs=10))
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    out = tmp_path / "out"
    code = main(
        ["run", "fedscgen", "--input", str(path), "--rounds", "1", "--local-epochs", "1",
         "--param", "lr=1000", "--param", "batch_size=8", "--param", "hidden=[16]",
         "--param", "latent=4", "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "FedscGen training diverged" in err and "lr=1000" in err
    assert "impute" not in err
    assert not (out / "corrected.h5ad").exists()
    # the same through the runner: the error type, and the input untouched
    before = adata_digest(a)
    cfg = RunConfig(method="fedscgen", params={**TINY, "lr": 1e3}, n_top_genes=100)
    with pytest.raises(TrainingDivergedError):
        execute_run(cfg, adata=a, show_progress=False)
    assert adata_digest(a) == before


def test_case_unchanged_output_is_reported_in_run_info(caplog):
    a = pancreas_subset(pcs=10)
    a.obsm["X_same"] = a.obsm["X_pca"] * (1 + 3.4e-4)
    rows = pd.DataFrame(
        {"embedding": "X_same", "panel": "scib", "metric": ["total"], "value": [0.5]}
    )
    with caplog.at_level(logging.WARNING, logger="fedsc.methods.health"):
        info = run_health(a, "X_pca", "X_same", {"pca": rows, "scbatchprox": rows}, "scbatchprox")
    assert info["movement"] == pytest.approx(3.4e-4, rel=1e-3)
    assert info["missing_metrics"] == []
    assert any("left its input practically unchanged" in w for w in info["warnings"])
    assert "= 0.00034 < 0.001" in info["warnings"][0] and "practically unchanged" in caplog.text
    # a method that moved the cells gets no warning
    a.obsm["X_moved"] = a.obsm["X_pca"] + 1.0
    assert run_health(a, "X_pca", "X_moved", {}, "m")["warnings"] == []


def test_relative_movement_shapes():
    z = np.ones((4, 3))
    assert relative_movement(z, z) == 0.0
    assert relative_movement(z, np.ones((4, 2))) is None  # latent vs genes: not comparable
