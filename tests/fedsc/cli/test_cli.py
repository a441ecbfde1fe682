"""The command line: fedsc run writes corrected.h5ad, metrics.csv and run.json."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest

from fedsc.cli import main
from fedsc.datasets import pancreas
from fedsc.results import TIDY_COLUMNS


def test_run_scbatchprox_writes_outputs(tmp_path, capsys):
    src = pancreas()
    src.obsm["X_pca"] = src.obsm["X_pca"][:, :10]
    path = tmp_path / "in.h5ad"
    src.write_h5ad(path)
    out = tmp_path / "out"
    code = main(
        ["run", "scbatchprox", "--input", str(path), "--use-rep", "X_pca", "--seed", "3",
         "--mu", "0", "--rounds", "2", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    corrected = ad.read_h5ad(out / "corrected.h5ad")
    assert corrected.obsm["X_scbatchprox"].shape == (500, 10)
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == TIDY_COLUMNS
    assert set(metrics["method"]) == {"pca", "scbatchprox"}
    assert {"total", "bio_conservation", "batch_correction"} <= set(metrics["metric"])
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["seed"] == 3 and run["config"]["params"] == {"mu": 0.0, "rounds": 2}
    assert run["versions"]["torch"].startswith("2.13")
    assert run["ledger"]["totals"]["operations"] == 4  # per round: FedAvg + metrics mean
    assert run["backend_privacy_note"].startswith("not private")
    assert run["privacy"].startswith("coordinator: receives") and "in the clear" in run["privacy"]
    assert "total" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    code = main(["run", "scbatchprox", "--input", str(tmp_path / "missing.h5ad"), "--out", "x"])
    assert code == 2
    assert "missing.h5ad" in capsys.readouterr().err


def test_param_parsing_errors():
    with pytest.raises(SystemExit):
        main(["run", "nosuchmethod", "--out", "x"])


def test_unknown_method_option_in_a_scenario_is_a_clear_error():
    from fedsc.errors import FedscInputError
    from fedsc.run.config import RunConfig

    with pytest.raises(FedscInputError, match="unknown ScBatchProxConfig option"):
        RunConfig(
            method="scbatchprox",
            scenario="continual",
            stages=[["indrop", "celseq"], ["celseq2"]],
            params={"mu_typo": 0},
        )


def test_run_starts_the_backend_before_the_runner_loads(monkeypatch, tmp_path):
    """`fedsc run` prestarts a federated method's backend (CrypTen's fork server) first."""
    import smpc.registry
    from fedsc.run import execute

    events: list[str] = []
    prestarts = smpc.registry.Registry("backend start-up")  # the registry, with a spy
    prestarts.register("crypten", lambda **opts: events.append(f"prestart {opts}"))
    monkeypatch.setattr(smpc.registry, "PRESTARTS", prestarts)
    monkeypatch.setattr(execute, "load_dataset", lambda name: events.append("load") or 1 / 0)
    args = ["--backend", "crypten", "--backend-option", "transport=pipe", "--out"]
    code = main(["run", "scbatchprox", "--input", "pancreas", *args, str(tmp_path / "o")])
    assert code == 1  # the stubbed loader's ZeroDivisionError
    assert events == [
        "prestart {'transport': 'pipe'}",  # the CLI, before fedsc's own imports
        "prestart {'transport': 'pipe'}",  # execute_run, before loading (idempotent)
        "load",
    ]
    events.clear()  # a centralized method: refused, and no fork server started for it
    assert main(["run", "scgen", "--input", "pancreas", *args, str(tmp_path / "p")]) == 2
    assert events == []
