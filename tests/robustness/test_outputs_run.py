"""Run outputs: never replace an earlier run silently, write atomically, skip evaluation.

Runs here are real but tiny (500 pancreas cells, a 10-dim embedding, one round, no
metric panels: well under a second after the imports).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from _helpers.cli import run_cli_output
from _helpers.digests import folder_hash

from fedsc.errors import FedscOutputError
from fedsc.run import execute
from fedsc.run.outcome import RunResult
from fedsc.run.record import RUN_FILES, write_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from fedsc.datasets import pancreas

    adata = pancreas()
    adata.obsm["X_pca"] = adata.obsm["X_pca"][:, :10]
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


def run(tiny: Path, out: Path, *extra: str, method: str = "scbatchprox") -> list[str]:
    return [
        "run", method, "--input", str(tiny), "--use-rep", "X_pca", "--panels", "",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_panels_empty_skips_evaluation_but_writes_outputs(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli_output(capsys, *run(tiny, out, "--rounds", "1"))
    assert code == 0 and "evaluation skipped" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics.empty and "metric" in metrics.columns
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["panels"] == []
    assert "X_scbatchprox" in ad.read_h5ad(out / "corrected.h5ad").obsm
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left


def test_panels_none_is_the_same_as_empty(tiny, tmp_path, capsys):
    argv = run(tiny, tmp_path / "run", "--rounds", "1")
    argv[argv.index("--panels") + 1] = "none"
    assert run_cli_output(capsys, *argv)[0] == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["panels"] == []


@pytest.fixture
def done(tiny, tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    assert run_cli_output(capsys, *run(tiny, out, "--rounds", "1", "--seed", "1"))[0] == 0
    return out


def test_second_run_into_the_same_folder_is_refused(tiny, done, capsys, monkeypatch):
    before = folder_hash(done)
    called = []
    monkeypatch.setattr(execute, "load_dataset", lambda *a: called.append(a))
    code, _, err = run_cli_output(capsys, *run(tiny, done, "--rounds", "1", "--seed", "2"))
    assert code == 2 and "holds an earlier run" in err and "--overwrite" in err
    assert not called, "the check must come before loading data"
    assert folder_hash(done) == before


def test_overwrite_replaces_the_earlier_run(tiny, done, capsys):
    code, _, _ = run_cli_output(
        capsys, *run(tiny, done, "--rounds", "1", "--seed", "2", "--overwrite")
    )
    assert code == 0
    assert json.loads((done / "run.json").read_text())["config"]["seed"] == 2
    assert [p.name for p in done.parent.iterdir()] == ["run"]


def test_crash_while_writing_keeps_the_earlier_run(tiny, done, capsys, monkeypatch):
    before = folder_hash(done)

    def disk_full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", disk_full)
    code, _, err = run_cli_output(
        capsys, *run(tiny, done, "--rounds", "1", "--seed", "3", "--overwrite")
    )
    assert code == 2 and "could not write the run" in err and "No space left" in err
    assert folder_hash(done) == before
    assert [p.name for p in done.parent.iterdir()] == ["run"]  # temporary folder removed


def test_crash_on_a_first_write_leaves_nothing(tiny, tmp_path, capsys, monkeypatch):
    def disk_full(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", disk_full)
    code, _, _ = run_cli_output(capsys, *run(tiny, tmp_path / "new", "--rounds", "1"))
    assert code == 2
    assert list(tmp_path.iterdir()) == []


def test_write_run_api_refuses_an_earlier_run(tiny, done):
    from fedsc.run.config import RunConfig

    before = folder_hash(done)
    cfg = RunConfig(method="scbatchprox", dataset=str(tiny), use_rep="X_pca", panels=[])
    result = RunResult(cfg, ad.read_h5ad(tiny), pd.DataFrame(), {"x": 1})
    with pytest.raises(FedscOutputError, match="holds an earlier run"):
        write_run(result, done)
    assert folder_hash(done) == before


@pytest.mark.parametrize(
    "holdouts, words",
    [
        (["nosuch"], ["holdout ['nosuch'] names no batch", "celseq"]),
        (
            ["celseq", "celseq2", "fluidigmc1", "indrop", "smartseq2"],
            ["holds out every batch", "at least one batch must train"],
        ),
    ],
    ids=["holdout-names-no-batch", "holdout-all-batches"],
)
def test_holdout_checked_right_after_loading(tiny, tmp_path, capsys, monkeypatch, holdouts, words):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before the holdout was checked")

    monkeypatch.setattr(execute, "_run_method", no_training)
    extra = [a for h in holdouts for a in ("--holdout", h)]
    argv = run(tiny, tmp_path / "o", "--rounds", "1", *extra, method="fedscgen")
    argv.remove("--use-rep")
    argv.remove("X_pca")
    code, _, err = run_cli_output(capsys, *argv)
    assert code == 2
    for word in words:
        assert word in err, err
    assert not (tmp_path / "o").exists()
