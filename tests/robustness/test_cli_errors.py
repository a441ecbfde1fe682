"""``fedsc run`` with bad input: exit code 2, one message naming the problem, no traceback.

Every case here fails before any data is loaded (``no_data`` turns a load into a test
failure), and none changes an earlier run (``earlier_run`` is hashed before and after).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers.cli import run_cli
from _helpers.digests import folder_hash
from _helpers.paths import checkout_env

from fedsc.cli import main
from fedsc.errors import FedscInputError, FedscOutputError
from fedsc.run import execute
from fedsc.run.record import RUN_FILES


@pytest.fixture
def earlier_run(tmp_path):
    """A folder holding an earlier run's files (content is irrelevant to these checks)."""
    out = tmp_path / "earlier"
    out.mkdir()
    for name in RUN_FILES:
        (out / name).write_text(f"earlier {name}\n")
    before = folder_hash(out)
    yield out
    assert folder_hash(out) == before, "an earlier run changed"


def run_args(out: Path, *extra: str) -> list[str]:
    return ["run", "scbatchprox", "--out", str(out), *extra]


# (case id, extra argv, words the message must contain)
BAD_RUNS = [
    ("seed-negative", ["--seed", "-1"], ["--seed", "0..4294967295", "-1"]),
    ("seed-float", ["--seed", "1e3"], ["--seed", "write 1000"]),
    ("seed-too-big", ["--seed", str(2**32)], ["--seed", "4294967296", "random_state"]),
    ("seed-text", ["--seed", "abc"], ["--seed", "'abc'"]),
    ("rounds-zero", ["--rounds", "0"], ["rounds", "0"]),
    ("param-without-equals", ["--param", "mu"], ["KEY=VALUE", "'mu'"]),
    ("param-not-a-number", ["--param", "mu=abc"], ["params.mu", "number", "'abc'"]),
    ("param-unknown", ["--param", "muu=1"], ["unknown", "muu", "valid options"]),
    ("backend-option-on-plaintext", ["--backend-option", "parties=3"], ["plaintext", "no options"]),
    (
        "backend-option-unknown",
        ["--backend", "crypten", "--backend-option", "partys=3"],
        ["unknown crypten backend option", "partys", "parties"],
    ),
    (
        "backend-option-wrong-type",
        ["--backend", "crypten", "--backend-option", "parties=three"],
        ["parties", "expects int", "three"],
    ),
    (
        "backend-option-no-equals",
        ["--backend-option", "parties"],
        ["--backend-option", "KEY=VALUE"],
    ),
    (
        "crypten-mode-unknown",
        ["--backend", "crypten", "--backend-option", "mode=fast"],
        ["mode must be 'secure' or 'debug'", "'fast'"],
    ),
    (
        "crypten-seed-in-secure-mode",
        ["--backend", "crypten", "--backend-option", "seed=1"],
        ["seed is refused in secure mode", "mode debug"],
    ),
    (
        "crypten-one-party",
        ["--backend", "crypten", "--backend-option", "parties=1"],
        ["parties must be >= 2"],
    ),
    (
        "crypten-transport-unknown",
        ["--backend", "crypten", "--backend-option", "transport=udp"],
        ["transport must be one of", "'udp'"],
    ),
    ("mode-on-plaintext", ["--mode", "debug"], ["plaintext backend takes no options", "mode"]),
    ("panel-unknown", ["--panels", "scib,nope"], ["nope", "choose from"]),
    ("panel-twice", ["--panels", "scib,scib"], ["twice"]),
    ("holdout-unsupported", ["--holdout", "indrop"], ["does not support held-out", "fedscgen"]),
    ("input-missing", ["--input", "/no/such/file.h5ad"], ["not found", "/no/such/file.h5ad"]),
    ("input-directory", ["--input", "/tmp"], ["is a folder", ".h5ad"]),
]


@pytest.mark.parametrize("case, extra, words", BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_bad_run_exits_2_with_message(case, extra, words, tmp_path, capsys, no_data, earlier_run):
    code, err = run_cli(capsys, *run_args(tmp_path / "new", *extra))
    assert code == 2, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "new").exists()


def test_input_not_h5ad(tmp_path, capsys, no_data):
    bad = tmp_path / "cells.csv"
    bad.write_text("a,b\n1,2\n")
    code, err = run_cli(capsys, *run_args(tmp_path / "o", "--input", str(bad)))
    assert code == 2 and "not an .h5ad (HDF5) file" in err and "cells.csv" in err


def test_unknown_method_is_argparse_exit_2(tmp_path, capsys, no_data):
    code, err = run_cli(capsys, "run", "scvi", "--out", str(tmp_path / "o"))
    assert code == 2 and "invalid choice: 'scvi'" in err


def test_holdout_duplicated(tmp_path, capsys, no_data):
    argv = ["run", "fedscgen", "--holdout", "indrop", "--holdout", "indrop"]
    code, err = run_cli(capsys, *argv, "--out", str(tmp_path / "o"))
    assert code == 2 and "more than once" in err and "indrop" in err


# ----------------------------------------------------------------- --out checks
def test_out_dev_null(capsys, no_data):
    code, err = run_cli(capsys, *run_args(Path("/dev/null")))
    assert code == 2 and "/dev/null exists and is not a folder" in err


def test_out_inside_a_file(tmp_path, capsys, no_data):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    code, err = run_cli(capsys, *run_args(f / "sub" / "run"))
    assert code == 2 and "is a file, not a folder" in err
    assert f.read_text() == "keep me"


def test_out_folder_with_other_files(tmp_path, capsys, no_data):
    (tmp_path / "notes.txt").write_text("mine")
    code, err = run_cli(capsys, *run_args(tmp_path))
    assert code == 2 and "holding other files" in err and "notes.txt" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_holding_an_earlier_run_is_refused(capsys, no_data, earlier_run):
    code, err = run_cli(capsys, *run_args(earlier_run))
    assert code == 2 and "holds an earlier run" in err and "--overwrite" in err


def test_out_unwritable_place(capsys, no_data):
    code, err = run_cli(capsys, *run_args(Path("/proc/fedsc-no/run")))
    assert code == 2 and "cannot write in /proc" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_read_only_folder(tmp_path, capsys, no_data):  # pragma: no cover - non-root only
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = run_cli(capsys, *run_args(ro / "run"))
    finally:
        ro.chmod(0o700)
    assert code == 2 and "cannot write" in err


def test_debug_shows_the_traceback(no_data):
    with pytest.raises(FedscOutputError, match="not a folder"):
        main([*run_args(Path("/dev/null")), "--debug"])


# ------------------------------------------------ errors raised during a run
def test_party_error_is_one_message(tmp_path, capsys, monkeypatch):
    from smpc.party_pool import PartyError

    def dead_party(cfg, **kwargs):
        raise PartyError("party 1 exited with code -9 during weighted_mean")

    monkeypatch.setattr(execute, "execute_run", dead_party)
    code, err = run_cli(capsys, *run_args(tmp_path / "o", "--backend", "crypten"))
    assert code == 2
    assert err.strip() == (
        "fedsc: error: a computation party failed: party 1 exited with code -9 during weighted_mean"
    )
    assert not (tmp_path / "o").exists()


def test_smpc_config_value_error_is_one_message(tmp_path, capsys, monkeypatch):
    def bad_config(cfg, **kwargs):
        from smpc.crypten_backend import CryptenAggregator

        CryptenAggregator(timeout=-1)  # rejected before any party starts

    monkeypatch.setattr(execute, "execute_run", bad_config)
    code, err = run_cli(capsys, *run_args(tmp_path / "o", "--backend", "crypten"))
    assert code == 2 and "timeout must be positive" in err


def test_internal_error_is_exit_1_and_points_to_debug(tmp_path, capsys, monkeypatch):
    def bug(cfg, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(execute, "execute_run", bug)
    code, err = run_cli(capsys, *run_args(tmp_path / "o"))
    assert code == 1 and "KeyError" in err and "--debug" in err


# ------------------------------------------------------------ API edges
def test_api_holdout_string_is_one_batch_not_characters():
    from fedsc.run.config import RunConfig

    cfg = RunConfig(method="fedscgen", holdout="indrop")
    assert cfg.holdout == ["indrop"]


def test_api_use_rep_list_is_a_clear_error():
    from fedsc.run.config import RunConfig

    with pytest.raises(FedscInputError, match="use_rep must be an obsm key"):
        RunConfig(method="scbatchprox", use_rep=["X_pca"])


@pytest.mark.parametrize("seed", [True, 1.5, "42", -1, 2**32, 2**63])
def test_api_seed_refused(seed):
    from fedsc.run.config import RunConfig

    with pytest.raises(FedscInputError, match="seed must be"):
        RunConfig(method="scbatchprox", seed=seed)


def test_api_stages_with_a_batch_twice():
    from fedsc.run.config import RunConfig

    with pytest.raises(
        FedscInputError, match=r"stages list batch\(es\) \['celseq'\] more than once"
    ):
        RunConfig(
            method="scbatchprox", scenario="continual", stages=[["indrop", "celseq"], ["celseq"]]
        )


def test_subprocess_bad_out_no_traceback(tmp_path):
    """The real entry point (python -m fedsc.cli): one line on stderr, exit 2."""
    env = checkout_env()
    proc = subprocess.run(
        [sys.executable, "-m", "fedsc.cli", "run", "scbatchprox", "--out", "/dev/null"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "/dev/null exists and is not a folder" in proc.stderr
