"""Sweep store: corrupt run files, locking, temporary files; compare/report notice damage."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers.cli import run_cli_output
from _helpers.digests import folder_hash

from fedsc.errors import StoreLockedError
from fedsc.results import TIDY_COLUMNS
from fedsc.sweep import RunStore, Study, run_sweep


def record(run_id: str, backend: str, seed: int, value: float) -> dict:
    row = {
        "run_id": run_id, "study": "s", "dataset": "pancreas", "method": "m",
        "variant": backend, "backend": backend, "private": backend == "crypten",
        "privacy": "", "dp_epsilon": float("nan"), "dp_delta": float("nan"), "seed": seed,
        "embedding": "X_m", "panel": "scib", "metric": "total", "value": value,
        "wall_time_s": 1.0, "ledger_bytes": 0, "observer": "", "chance": float("nan"),
    }  # fmt: skip
    assert list(row) == TIDY_COLUMNS
    return {"run_id": run_id, "status": "ok", "config": {"variant": backend}, "rows": [row]}


@pytest.fixture
def store_dir(tmp_path) -> Path:
    """A sweep folder with 6 hand-made runs (2 backends x 3 seeds) and its tables."""
    store = RunStore(tmp_path / "sweep")
    for i, (backend, seed) in enumerate(
        (b, s) for b in ("crypten", "plaintext") for s in (1, 2, 3)
    ):
        store.write(record(f"run{i}", backend, seed, 0.5 + 0.01 * i))
    store.write_tables()
    return store.root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------- corrupt run files
def test_records_skip_a_corrupt_file_with_a_warning(store_dir, caplog):
    truncate(store_dir / "runs" / "run0.json")
    with caplog.at_level(logging.WARNING, logger="fedsc.sweep.store"):
        records = RunStore(store_dir).records()
    assert len(records) == 5
    assert "run0.json" in caplog.text and "corrupt" in caplog.text


def test_renamed_run_file_is_corrupt(store_dir):
    os.replace(store_dir / "runs" / "run0.json", store_dir / "runs" / "other.json")
    assert [p.name for p in RunStore(store_dir).corrupt()] == ["other.json"]


def test_compare_warns_about_a_truncated_run_file(store_dir, capsys):
    truncate(store_dir / "runs" / "run1.json")
    code, _, err = run_cli_output(
        capsys, "compare", str(store_dir), "--a", "backend=crypten", "--b", "backend=plaintext"
    )
    assert code == 0
    assert "run1.json" in err and "corrupt" in err and "fedsc sweep" in err


def test_report_warns_about_a_truncated_run_file(store_dir, capsys):
    truncate(store_dir / "runs" / "run4.json")
    code, _, err = run_cli_output(capsys, "report", str(store_dir))
    assert code == 0 and (store_dir / "report.md").is_file()
    assert "run4.json" in err and "corrupt" in err


def test_compare_warns_when_the_table_misses_runs(store_dir, capsys):
    RunStore(store_dir).write(record("run9", "crypten", 4, 0.6))  # table not rebuilt
    code, _, err = run_cli_output(
        capsys, "compare", str(store_dir), "--a", "backend=crypten", "--b", "backend=plaintext"
    )
    assert code == 0 and "does not match the run files" in err and "run9" in err


def test_truncated_results_parquet(store_dir, capsys):
    truncate(store_dir / "results.parquet")
    code, _, err = run_cli_output(capsys, "report", str(store_dir))
    assert code == 2 and "results.parquet cannot be read" in err and "fedsc sweep" in err


# ------------------------------------------------------------ compare / report input
@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--a", "backend=crypto", "--b", "backend=plaintext"],
            ["--a", "selects no results", "crypten"],
        ),
        (
            ["--a", "backnd=crypten", "--b", "backend=plaintext"],
            ["--a", "unknown column", "backnd"],
        ),
        (["--a", "backend", "--b", "backend=plaintext"], ["--a expects KEY=VALUE"]),
        (["--b", "backend=plaintext"], ["--a needs at least one KEY=VALUE"]),
        (["--a", "seed=abc", "--b", "backend=plaintext"], ["seed='abc'", "int"]),
        (
            ["--a", "backend=crypten", "--b", "backend=plaintext", "--alpha", "2"],
            ["--alpha", "between 0 and 1"],
        ),
    ],
    ids=["selects-nothing", "unknown-column", "no-equals", "no-a", "wrong-type", "alpha"],
)
def test_compare_bad_selectors(store_dir, capsys, argv, words):
    before = folder_hash(store_dir)
    code, _, err = run_cli_output(capsys, "compare", str(store_dir), *argv)
    assert code == 2
    for word in words:
        assert word in err, err
    assert folder_hash(store_dir) == before


def test_report_on_an_empty_folder(tmp_path, capsys):
    code, _, err = run_cli_output(capsys, "report", str(tmp_path))
    assert code == 2 and "results.parquet not found" in err and "fedsc sweep" in err
    assert list(tmp_path.iterdir()) == []


def test_compare_on_a_missing_folder(tmp_path, capsys):
    code, _, err = run_cli_output(
        capsys, "compare", str(tmp_path / "nope"), "--a", "x=1", "--b", "x=2"
    )
    assert code == 2 and "not found" in err
    assert not (tmp_path / "nope").exists()


# ----------------------------------------------------------------------- locking
def test_second_sweep_on_a_locked_folder_fails_fast(store_dir, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "study: s\ndatasets: [pancreas]\nseeds: [0]\n"
        "methods: {scbatchprox: {settings: {use_rep: X_pca, panels: []}}}\n"
    )
    before = folder_hash(store_dir / "runs")
    with RunStore(store_dir).lock():
        start = time.perf_counter()
        with pytest.raises(StoreLockedError, match="in use by another sweep"):
            run_sweep(study, store_dir)
        code, _, err = run_cli_output(capsys, "sweep", str(study), "--out", str(store_dir))
        assert code == 2 and f"pid {os.getpid()}" in err and "another --out" in err
        assert time.perf_counter() - start < 30
    assert folder_hash(store_dir / "runs") == before


# ------------------------------------------------------------- temporary files
def test_only_own_or_dead_processes_temporary_files_are_removed(tmp_path):
    store = RunStore(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = store.runs / f".tmp-{os.getpid()}-abc.part"
        theirs = store.runs / f".tmp-{live.pid}-abc.part"
        gone = store.runs / f".tmp-{dead.pid}-abc.part"
        for p in (mine, theirs, gone):
            p.write_text("{")
        assert store.clean_temporary() == 2
        assert sorted(p.name for p in store.runs.iterdir()) == [theirs.name]
    finally:
        live.kill()
        live.wait()


def test_write_names_its_temporary_file_with_the_pid(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(Path(a).name), real(a, b)))
    store.write(record("r", "plaintext", 0, 0.1))
    assert seen and seen[0].startswith(f".tmp-{os.getpid()}-")


# ---------------------------------------------- a real sweep: quarantine and resume
def test_truncated_run_is_quarantined_and_run_again(tmp_path, caplog):
    study = Study.from_dict(
        {
            "study": "tiny",
            "datasets": ["pancreas"],
            "seeds": [0, 1],
            "methods": {
                "scbatchprox": {
                    "settings": {"use_rep": "X_pca", "panels": [], "params": {"rounds": 1}}
                }
            },
        }
    )
    out = tmp_path / "sweep"
    first = run_sweep(study, out)
    assert (first.executed, first.failed) == (2, 0)
    victim = sorted((out / "runs").glob("*.json"))[0]
    good = json.loads(victim.read_text())
    truncate(victim)
    with caplog.at_level(logging.WARNING, logger="fedsc.sweep.store"):
        again = run_sweep(study, out)
    assert (again.executed, again.skipped, again.failed) == (1, 1, 0)
    assert "quarantined 1 corrupt run file" in caplog.text and victim.name in caplog.text
    moved = list((out / "runs").glob(f"{victim.name}.corrupt-*"))
    assert len(moved) == 1
    assert json.loads(victim.read_text())["run_id"] == good["run_id"]
    third = run_sweep(study, out)
    assert (third.executed, third.skipped) == (0, 2)
    assert not list((out / "runs").glob(".tmp-*"))


def test_sweep_out_is_a_file(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "study: s\ndatasets: [pancreas]\nseeds: [0]\n"
        "methods: {scbatchprox: {settings: {use_rep: X_pca, panels: []}}}\n"
    )
    target = tmp_path / "results.txt"
    target.write_text("keep")
    code, _, err = run_cli_output(capsys, "sweep", str(study), "--out", str(target))
    assert code == 2 and "is not a folder" in err and "--out" in err
    assert target.read_text() == "keep"


def test_run_config_from_a_list_is_a_clear_error():
    from fedsc.errors import FedscInputError
    from fedsc.run.config import RunConfig

    with pytest.raises(FedscInputError, match="must be a mapping"):
        RunConfig.from_dict(["scbatchprox"])
