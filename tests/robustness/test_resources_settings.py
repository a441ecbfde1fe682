"""Issue 23: thread settings, model sizes and study sizes checked before any work.

A bad ``FEDSC_*`` variable is named (exit 2, no traceback); thread counts are capped at
the CPUs available; a model or a study above its stated limit (:mod:`fedsc.resources`) is
refused before any data are read or any run starts, a large one warned about with its
count and an estimate; ``--force`` (or the limit set to 0) runs it anyway.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from _checks import has_words, record
from _helpers.cli import run_cli
from _helpers.paths import checkout_env
from _helpers.study import write_study

from fedsc import settings
from fedsc.errors import FedscInputError
from fedsc.resources import ResourceBudgetWarning, vae_parameters
from fedsc.run.config import RunConfig
from fedsc.sweep import Study, run_sweep


@pytest.fixture
def own_settings(monkeypatch):
    """Settings changed by a case are restored afterwards."""
    monkeypatch.setattr(settings, "_values", dict(settings._values))
    monkeypatch.setattr(settings, "_env_errors", {})


# ------------------------------------------------------------------------------- threads
@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("FEDSC_THREADS", "abc", ["FEDSC_THREADS='abc'", "positive integer", "e.g. 4 or auto"]),
        ("FEDSC_THREADS", "0", ["FEDSC_THREADS='0'", "unset FEDSC_THREADS"]),
        ("FEDSC_MAX_MODEL_PARAMS", "-3", ["FEDSC_MAX_MODEL_PARAMS='-3'", "integer >= 0"]),
        ("FEDSC_PASSIVE_WAIT", "maybe", ["FEDSC_PASSIVE_WAIT='maybe'", "e.g. 1 or 0"]),
    ],
)
def test_bad_environment_variable_is_named(variable, value, words, monkeypatch, own_settings):
    """Read when fedsc loads: the setting keeps its default (import never fails) and the
    CLI, the runner and apply() refuse it by name."""
    monkeypatch.setenv(variable, value)
    errors: dict[str, str] = {}
    settings._from_env(errors)
    assert list(errors) == [variable]
    has_words(errors[variable], words)
    monkeypatch.setattr(settings, "_env_errors", errors)
    with pytest.raises(FedscInputError, match=variable):
        settings.apply()
    record(
        "settings",
        f"env-{variable}={value}",
        f"{variable}={value}",
        "FedscInputError",
        errors[variable],
    )


def test_bad_fedsc_threads_cli_exits_2_naming_it(tmp_path, nothing_left):
    """The real entry point: it printed a traceback without naming the variable."""
    env = checkout_env(FEDSC_THREADS="abc")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsc.cli", "run", "scbatchprox", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    has_words(proc.stderr, ["FEDSC_THREADS='abc'", "unset FEDSC_THREADS"])
    assert not out.exists()
    record("CLI", "env-threads-cli", "FEDSC_THREADS=abc fedsc run ...", 2, proc.stderr.strip())


def test_threads_capped_at_the_cpus(own_settings, caplog):
    """``--threads 100000`` flooded MemoryErrors or aborted in LLVM's OpenMP."""
    settings.threads = 100000
    assert settings.resolved_threads() == settings.available_cpus()
    with caplog.at_level("WARNING", logger="fedsc.settings"):
        settings._note_capped_threads()
    has_words(caplog.text, ["threads=100000 is more than the", "CPU(s) available", "using"])
    record(
        "settings", "threads-100000", "--threads 100000", "capped (warning)", caplog.text.strip()
    )


@pytest.mark.parametrize("text", ["0", "-2", "many"])
def test_cli_threads_not_a_count(text, tmp_path, capsys, no_data):
    code, err = run_cli(capsys, "--threads", text, "run", "scbatchprox", "--out", str(tmp_path))
    assert code == 2
    has_words(err, ["--threads", "positive integer or 'auto'"])
    record("CLI", f"threads-{text}", f"fedsc --threads {text}", code, err.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- model size
def test_huge_model_refused_before_any_data(own_settings):
    """``hidden: [100000, 100000]`` died in the allocator."""
    with pytest.raises(FedscInputError) as info:
        RunConfig("fedscgen", params={"hidden": [100000, 100000]})
    message = str(info.value)
    has_words(
        message,
        ["20,404,202,020 parameters", "above the limit of 200,000,000", "GiB", "hidden: [800, 800]",
         "FEDSC_MAX_MODEL_PARAMS", "--force"],
    )  # fmt: skip
    record(
        "resources",
        "model-too-large",
        "params: {hidden: [100000, 100000]}",
        "FedscInputError",
        message,
    )


def test_model_size_counted_exactly():
    """The count behind the limit is the VAE's own parameter count."""
    import torch

    from fedsc.methods.fedscgen import FedScGenConfig
    from fedsc.methods.vae import VAE

    config = FedScGenConfig(hidden=(12, 7), latent=3)
    model = VAE(20, config, torch.Generator().manual_seed(0))
    assert vae_parameters(20, config.hidden, config.latent) == sum(
        p.numel() for p in model.parameters()
    )


def test_large_model_warns_and_force_lifts_the_limit(own_settings):
    with pytest.warns(ResourceBudgetWarning, match="parameters .* per federated round") as w:
        RunConfig("fedscgen", params={"hidden": [4000, 4000]})  # 32 M: a tenth of the limit
    record("resources", "model-large-warning", "params: {hidden: [4000, 4000]}",
           "ResourceBudgetWarning (runs)", str(w[0].message))  # fmt: skip
    settings.max_model_params = 0  # what --force does for one command
    RunConfig("fedscgen", params={"hidden": [100000, 100000]})


def test_cli_huge_model_exits_2_and_force_passes(tmp_path, capsys, no_data, nothing_left):
    out = tmp_path / "run"
    big = ["--param", "hidden=[100000,100000]"]
    code, err = run_cli(capsys, "run", "fedscgen", *big, "--out", str(out))
    assert code == 2 and not out.exists()
    has_words(err, ["parameters, above the limit", "--force"])
    with pytest.raises(AssertionError, match="data were loaded"):  # past the check: loads
        run_cli(capsys, "--force", "run", "fedscgen", *big, "--out", str(out), "--debug")
    assert settings.max_model_params > 0  # --force held for that command only


def test_tl_huge_model_refused_before_training():
    import anndata as ad
    import numpy as np

    import fedsc.tl

    adata = ad.AnnData(np.ones((4, 3), dtype=np.float32))
    with pytest.raises(FedscInputError, match="above the limit") as info:
        fedsc.tl.fedscgen(adata, hidden=[100000, 100000])
    record("fedsc.tl", "tl-model-too-large", "fedsc.tl.fedscgen(adata, hidden=[100000, 100000])",
           "FedscInputError", str(info.value))  # fmt: skip
    assert not adata.obsm and not adata.layers


# ---------------------------------------------------------------------------- study size
GRID = """\
study: huge
datasets: [pancreas]
seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
methods:
  scbatchprox:
    settings: {use_rep: X_pca, panels: []}
    grid:
      params.mu: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
      params.lam: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
      params.rounds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
"""


def test_huge_study_refused_before_the_sweep_folder(tmp_path, own_settings, nothing_left):
    """A study that expands to 10,000 runs started without a word."""
    study = tmp_path / "study.yaml"
    study.write_text(GRID)
    out = tmp_path / "sweep"
    with pytest.raises(FedscInputError) as info:
        run_sweep(study, out)
    message = str(info.value)
    has_words(
        message,
        ["expands to 10,000 runs", "1 dataset(s) x (1000 scbatchprox variant(s)) x 10 seed(s)",
         "above the limit of 2,000", "trim the grid", "--force"],
    )  # fmt: skip
    assert not out.exists()
    record(
        "resources",
        "study-10000-runs",
        "a grid expanding to 10,000 runs",
        "FedscInputError",
        message,
    )


def test_large_study_warns_with_count_and_estimate(tmp_path, own_settings):
    study = Study.from_yaml(
        write_study(tmp_path, GRID.replace("seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "seeds: [0]"))
    )
    settings.max_study_runs = 5000
    with pytest.warns(ResourceBudgetWarning) as warned:
        study.check_size(mean_seconds=30.0, workers=2)
    has_words(
        str(warned[0].message), ["expands to 1,000 runs", "about 4.2 h at the 30 s", "2 at a time"]
    )
    record("resources", "study-1000-runs-warning", "a grid expanding to 1,000 runs (limit 5,000)",
           "ResourceBudgetWarning (runs)", str(warned[0].message))  # fmt: skip
    settings.max_study_runs = 0  # no limit: nothing said
    study.check_size()


def test_cli_sweep_huge_study_exits_2(tmp_path, capsys, nothing_left):
    study = write_study(tmp_path, GRID)
    out = tmp_path / "sweep"
    code, err = run_cli(capsys, "sweep", str(study), "--out", str(out))
    assert code == 2 and not out.exists()
    has_words(err, ["expands to 10,000 runs", "--force"])
    record("CLI sweep", "study-10000-runs", "fedsc sweep huge.yaml", code, err.strip())


def test_sweep_workers_capped_at_the_cpus(tmp_path, own_settings, caplog, monkeypatch):
    """Each worker is an interpreter with torch: more than the CPUs only contend."""
    from fedsc import sweep

    assert sweep._check_workers(1) == 1
    with caplog.at_level("WARNING", logger="fedsc.sweep"):
        assert sweep._check_workers(1000) == settings.available_cpus()
    has_words(caplog.text, ["workers=1000 is more than the", "CPU(s) available"])
    record("resources", "sweep-workers-1000", "fedsc sweep --workers 1000", "capped (warning)",
           caplog.text.strip())  # fmt: skip
    for bad in (0, -2, 1.5, True):
        with pytest.raises(FedscInputError, match="workers must be a positive integer"):
            sweep._check_workers(bad)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["demo", "--workers", "0"], ["--workers", "positive integer"]),
        (["sweep", "s.yaml", "--out", "o", "--workers", "-1"], ["--workers", "positive integer"]),
    ],
    ids=["demo-workers-zero", "sweep-workers-negative"],
)
def test_cli_counts_and_levels(argv, words, capsys, tmp_path, monkeypatch, nothing_left):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, *argv)
    assert code == 2
    has_words(err, words)
    assert [p.name for p in tmp_path.iterdir()] == ["tmpdir"]
    record("CLI", "cli-" + " ".join(argv[:1] + argv[-2:]), "fedsc " + " ".join(argv), code,
           err.strip().splitlines()[-1])  # fmt: skip
