"""Sweeps: expansion, resume, failures, crash safety (SIGKILL), Dask == local."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _helpers.paths import ROOT

from fedsc.comparison import compare_sweep, report_sweep
from fedsc.datasets import simulate
from fedsc.errors import FedscInputError
from fedsc.sweep import RunStore, Study, run_sweep


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory) -> Path:
    adata = simulate(240, 300, n_batches=3, n_cell_types=3, seed=0)
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


def study_dict(dataset: Path, seeds=(0, 1), **extra) -> dict:
    return {
        "study": "tiny",
        "datasets": [str(dataset)],
        "seeds": list(seeds),
        "defaults": {"n_comps": 10, "n_top_genes": 200},
        "methods": {
            "scbatchprox": {
                "settings": {"params": {"rounds": 2}},
                "variants": {"mu=1e-3": {"params": {"mu": 1e-3}}, "mu=0": {"params": {"mu": 0.0}}},
                **extra,
            }
        },
    }


def test_expand_variants_grid_and_merge(tiny_h5ad):
    d = study_dict(tiny_h5ad)
    d["methods"]["scbatchprox"]["grid"] = {"params.rounds": [1, 3]}
    runs = Study.from_dict(d).expand()
    assert len(runs) == 2 * 2 * 2
    names = {r.variant for r in runs}
    assert names == {"mu=1e-3,rounds=1", "mu=1e-3,rounds=3", "mu=0,rounds=1", "mu=0,rounds=3"}
    r = next(r for r in runs if r.variant == "mu=0,rounds=3")
    assert r.params == {"rounds": 3, "mu": 0.0} and r.n_comps == 10
    assert len({r.run_id for r in runs}) == len(runs)


def test_bad_study_configs(tiny_h5ad):
    with pytest.raises(FedscInputError, match="unknown method"):
        Study.from_dict({**study_dict(tiny_h5ad), "methods": {"scvi": {}}})
    with pytest.raises(FedscInputError, match="lacks"):
        Study.from_dict({"study": "x", "datasets": []})
    with pytest.raises(FedscInputError, match="unknown run setting"):
        Study.from_dict({**study_dict(tiny_h5ad), "defaults": {"n_comp": 3}}).expand()
    # method options are checked against the method's config before any run starts
    broken = study_dict(tiny_h5ad)
    broken["methods"]["scbatchprox"]["variants"]["broken"] = {"params": {"rounds": 0}}
    with pytest.raises(FedscInputError, match="invalid scBatchProx setting"):
        Study.from_dict(broken).expand()
    broken["methods"]["scbatchprox"]["variants"]["broken"] = {"holdout": ["batch0"]}
    with pytest.raises(FedscInputError, match="does not support held-out batches"):
        Study.from_dict(broken).expand()


def test_every_shipped_study_expands():
    root = ROOT / "experiments"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        assert Study.from_yaml(f).expand(), f


@pytest.fixture(scope="module")
def local_sweep(tiny_h5ad, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    study = Study.from_dict(study_dict(tiny_h5ad))
    return study, out, run_sweep(study, out)


def test_sweep_runs_resumes_and_writes_tables(local_sweep):
    study, out, res = local_sweep
    assert (res.executed, res.skipped, res.failed) == (4, 0, 0)
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["variant"]) == {"mu=1e-3", "mu=0"}
    assert table["run_id"].nunique() == 4
    assert (out / "results.csv").is_file()
    again = run_sweep(study, out)
    assert (again.executed, again.skipped) == (0, 4)
    pd.testing.assert_frame_equal(again.table, table)


def test_failed_run_recorded_and_others_continue(tiny_h5ad, tmp_path):
    d = study_dict(tiny_h5ad, seeds=(0,))
    # only the data can tell that this embedding is missing: the run fails, not the study
    d["methods"]["scbatchprox"]["variants"]["broken"] = {"use_rep": "X_nosuch"}
    res = run_sweep(Study.from_dict(d), tmp_path)
    assert res.failed == 1 and res.executed == 3
    failures = RunStore(tmp_path).failures()
    assert failures["variant"].tolist() == ["broken"]
    assert "X_nosuch" in failures["error"].iloc[0]
    assert set(res.table["variant"]) == {"mu=1e-3", "mu=0"}


def test_sigkill_mid_sweep_then_resume_loses_and_duplicates_nothing(tiny_h5ad, tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study_dict(tiny_h5ad, seeds=(0, 1, 2))))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fedsc.cli", "sweep", str(study_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs_dir = out / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if runs_dir.is_dir() and len(list(runs_dir.glob("*.json"))) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"sweep ended before it could be killed: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(runs_dir.glob("*.json")))
    assert 2 <= done_before < 6
    res = run_sweep(study_file, out)
    assert res.skipped == done_before and res.executed == 6 - done_before
    table = res.table
    per_run = table.groupby("run_id").size()
    assert len(per_run) == 6 and per_run.nunique() == 1  # one identical row set per run
    assert not table.duplicated(["run_id", "embedding", "metric"]).any()
    assert not list(runs_dir.glob(".tmp-*"))


def test_dask_path_equals_local_path(local_sweep, tmp_path):
    distributed = pytest.importorskip("distributed")
    study, _, local = local_sweep
    study = Study.from_dict({**study_dict(Path(study.datasets[0])), "seeds": [0]})
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        host="127.0.0.1",
        protocol="tcp",
        dashboard_address=None,
    ) as cluster:
        res = run_sweep(study, tmp_path, scheduler=cluster.scheduler_address)
    assert res.executed == 2
    key = ["run_id", "embedding", "metric"]
    a = local.table[local.table["seed"] == 0].sort_values(key).reset_index(drop=True)
    b = res.table.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns=["wall_time_s"]), b.drop(columns=["wall_time_s"]))


def test_compare_and_report_on_sweep(local_sweep):
    _, out, _ = local_sweep
    with pytest.warns(UserWarning):  # 2 seeds per side: significance unreachable
        table = compare_sweep(out, {"variant": "mu=0"}, {"variant": "mu=1e-3"})
    assert (out / "comparison.csv").is_file()
    assert set(table["method"]) == {"pca", "scbatchprox"}
    assert table["n_a"].eq(2).all() and not table["significant"].any()
    assert np.isfinite(table["delta_mean"]).all()
    # the upstream embedding does not depend on mu: its rows must not differ
    assert table.loc[table["method"] == "pca", "delta_mean"].eq(0).all()
    path = report_sweep(out)
    text = path.read_text()
    assert "mu=0" in text and (out / "figures").is_dir()


def test_cli_compare_and_report(local_sweep, capsys):
    from fedsc.cli import main

    _, out, _ = local_sweep
    target = out / "cli_comparison.csv"
    with pytest.warns(UserWarning):
        code = main(["compare", str(out), "--a", "variant=mu=0", "--b", "variant=mu=1e-3",
                     "--out", str(target)])  # fmt: skip
    assert code == 0 and target.is_file()
    assert "kbet_per_label" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file()
    assert main(["compare", str(out), "--a", "variant"]) == 2  # not KEY=VALUE: clear error
