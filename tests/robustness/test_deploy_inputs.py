"""Issue 23: deployment inputs checked like simulation inputs, before Flower starts.

``fedsc deploy local``/``site`` check input kinds, keys, seeds, options, ports and output
folders before any process starts (``no_flower`` fails a case that gets that far);
``fedsc deploy evaluate`` ties every site output to its run (run token and digest in the
output, reported to the coordinator) and to its site's batch; paths travel quoted.
No case here starts a Flower process: the outputs are built as a deployed site writes
them (:func:`fedsc.deploy.site.write_output`).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from _checks import has_words, record
from _helpers.adata import lognormalize, pancreas_subset
from _helpers.cli import run_cli
from _helpers.digests import folder_hash

from fedsc.deploy.site import OUTPUT_UNS, Site, hello, output_digest, write_output
from fedsc.errors import FedscInputError
from fedsc.methods.fedscgen import FedScGenConfig

TOKEN = "0123456789abcdef" * 2
KEYS = ["X_fedscgen", "layers/fedscgen"]


@pytest.fixture
def no_flower(monkeypatch):
    """Starting a deployment fails the test: every case must fail before it."""
    from fedsc.deploy import local

    def boom(self, *args, **kwargs):
        raise AssertionError("a Flower deployment was started before the bad input was reported")

    monkeypatch.setattr(local.LocalDeployment, "__init__", boom)


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "counts.h5ad"
    pancreas_subset(cells_per_batch=10, genes=50).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def lognorm_file(tmp_path_factory) -> Path:
    a = lognormalize(pancreas_subset(cells_per_batch=10, genes=50))
    path = tmp_path_factory.mktemp("data") / "lognorm.h5ad"
    a.write_h5ad(path)
    return path


def deploy_local(capsys, data: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run_cli(capsys, "deploy", "local", str(data), "--out", str(out), *extra)


# -------------------------------------------------------------------------- deploy local
def test_local_raw_counts_refused_before_flower(
    counts_file, tmp_path, capsys, no_flower, nothing_left
):
    """It trained for 83 s on raw counts and exited 0 (fedsc.tl.fedscgen refuses them)."""
    out = tmp_path / "dep"
    code, err = deploy_local(capsys, counts_file, out)
    assert code == 2, err
    has_words(err, ["looks like raw counts", "FedscGen", "log1p"])
    assert not out.exists()
    record("deploy local", "raw-counts", "fedsc deploy local counts.h5ad", code, err.strip())


LOCAL_CASES = [
    ("seed-negative", ["--seed", "-1"], ["--seed", "0..4294967295", "-1"]),
    ("seed-float", ["--seed", "1.5"], ["--seed", "1.5"]),
    ("rounds-zero", ["--rounds", "0"], ["rounds and local_epochs must be >= 1"]),
    ("local-epochs-negative", ["--local-epochs", "-2"], ["rounds and local_epochs must be >= 1"]),
    ("batch-key-missing", ["--batch-key", "nope"], ["'nope'", "batch_key"]),
    ("label-key-missing", ["--labels-key", "nope"], ["'nope'", "labels_key"]),
    ("transport-unknown", ["--transport", "smtp"], ["invalid choice: 'smtp'"]),
    (
        "sites-smaller-than-a-minibatch",
        [],
        ["fewer training cells", "than one minibatch (batch_size=50)", "lower batch_size"],
    ),
]


@pytest.mark.parametrize("case, extra, words", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_local_option_refused_before_flower(
    case, extra, words, lognorm_file, tmp_path, capsys, no_flower, nothing_left
):
    """``--seed -1`` failed 25 s in, after Flower had started."""
    out = tmp_path / "dep"
    code, err = deploy_local(capsys, lognorm_file, out, *extra)
    assert code == 2, err
    has_words(err, words)
    assert not out.exists()
    record("deploy local", case, "fedsc deploy local DATA " + " ".join(extra), code, err.strip())


def test_local_data_not_h5ad(tmp_path, capsys, no_flower, nothing_left):
    bad = tmp_path / "cells.csv"
    bad.write_text("a,b\n1,2\n")
    code, err = deploy_local(capsys, bad, tmp_path / "dep")
    assert code == 2 and not (tmp_path / "dep").exists()
    has_words(err, ["not an .h5ad (HDF5) file", "write_h5ad"])
    record("deploy local", "data-not-h5ad", "fedsc deploy local cells.csv", code, err.strip())
    code, err = deploy_local(capsys, tmp_path / "missing.h5ad", tmp_path / "dep")
    assert code == 2
    has_words(err, ["does not exist", ".h5ad"])
    record("deploy local", "data-missing", "fedsc deploy local missing.h5ad", code, err.strip())


def test_local_batch_name_that_cannot_be_a_file(tmp_path, capsys, no_flower, nothing_left):
    a = ad.read_h5ad(_lognorm(tmp_path))
    a.obs["batch"] = a.obs["batch"].astype(str).replace({"indrop": "in/drop"})
    path = tmp_path / "slash.h5ad"
    a.write_h5ad(path)
    code, err = deploy_local(capsys, path, tmp_path / "dep")
    assert code == 2 and not (tmp_path / "dep").exists()
    has_words(err, ["['in/drop']", "cannot be file names", "rename those batches"])
    record("deploy local", "batch-name-with-slash", "a batch named in/drop", code, err.strip())


def _lognorm(tmp_path: Path) -> Path:
    a = lognormalize(pancreas_subset(cells_per_batch=10, genes=50))
    path = tmp_path / "ln.h5ad"
    a.write_h5ad(path)
    return path


def test_local_out_holding_an_earlier_deployment(
    lognorm_file, tmp_path, capsys, no_flower, nothing_left
):
    """It replaced run.json, models and outputs without --overwrite (fedsc run refuses)."""
    out = tmp_path / "dep"
    for part in ("site-files", "deployment", "coordinator"):
        (out / part).mkdir(parents=True)
        (out / part / "run.json").write_text(f"earlier {part}")
    before = folder_hash(out)
    code, err = deploy_local(capsys, lognorm_file, out)
    assert code == 2, err
    has_words(err, ["holds an earlier deployment", "--overwrite", "another folder"])
    assert folder_hash(out) == before
    record("deploy local", "out-earlier-deployment", "--out EARLIER_DEPLOYMENT", code, err.strip())


def test_local_out_holding_other_files(lognorm_file, tmp_path, capsys, no_flower, nothing_left):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    code, err = deploy_local(capsys, lognorm_file, out, "--overwrite")
    assert code == 2
    has_words(err, ["holding other files (notes.txt)", "new or empty one"])
    record("deploy local", "out-with-other-files", "--out FOLDER_WITH_FILES --overwrite", code,
           err.strip())  # fmt: skip
    assert (out / "notes.txt").read_text() == "keep" and len(list(out.iterdir())) == 1


def test_local_overwrite_keeps_the_earlier_one_when_the_new_one_fails(
    lognorm_file, tmp_path, capsys, monkeypatch, nothing_left
):
    """With --overwrite the earlier deployment is replaced only once the new one finished."""
    from fedsc.deploy import local
    from fedsc.deploy.fleet import DeploymentError

    out = tmp_path / "dep"
    (out / "coordinator").mkdir(parents=True)
    (out / "coordinator" / "run.json").write_text("earlier")
    before = folder_hash(out)

    def failing(self, *args, **kwargs):
        raise DeploymentError("the SuperLink did not listen within 60 s")

    monkeypatch.setattr(local.LocalDeployment, "__init__", failing)
    code, err = deploy_local(capsys, lognorm_file, out, "--overwrite", "--batch-size", "4")
    assert code == 1 and "SuperLink did not listen" in err
    assert folder_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dep", "tmpdir"])


def test_split_does_not_replace_earlier_files(lognorm_file, tmp_path, capsys, nothing_left):
    out = tmp_path / "sites"
    out.mkdir()
    (out / "celseq.h5ad").write_text("a site's own file")
    code, err = run_cli(capsys, "deploy", "split", str(lognorm_file), "--out", str(out))
    assert code == 2
    has_words(err, ["already holds celseq.h5ad", "--overwrite"])
    assert [p.name for p in out.iterdir()] == ["celseq.h5ad"]
    assert (out / "celseq.h5ad").read_text() == "a site's own file"
    record("deploy split", "split-over-earlier-files", "fedsc deploy split --out DIR_WITH_FILES",
           code, err.strip())  # fmt: skip
    assert run_cli(capsys, "deploy", "split", str(lognorm_file), "--out", str(out),
                   "--overwrite")[0] == 0  # fmt: skip
    assert len(list(out.iterdir())) == 5


# --------------------------------------------------------------------------- deploy site
def test_site_port_in_use_refused_before_any_process(lognorm_file, tmp_path, capsys, nothing_left):
    """A busy port printed Flower's traceback and left the worker's key file behind."""
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_cli(
            capsys, "deploy", "site", "--data", str(lognorm_file), "--superlink",
            "127.0.0.1:9092", "--insecure", "--port", str(port),
        )  # fmt: skip
    assert code == 2, err
    has_words(err, [f"--port {port} is in use", "choose a free port with --port"])
    record("deploy site", "port-in-use", "fedsc deploy site --port BUSY", code, err.strip())


SITE_CASES = [
    ("superlink-no-port", ["--superlink", "127.0.0.1"], ["--superlink", "not HOST:PORT"]),
    ("port-out-of-range", ["--port", "70000"], ["TCP port in 1..65535"]),
    ("site-name-with-slash", ["--site", "a/b"], ["--site 'a/b'", "no '/'"]),
    (
        "root-certificates-missing",
        ["--root-certificates", "/no/ca.pem"],
        ["--root-certificates /no/ca.pem does not exist"],
    ),
]


@pytest.mark.parametrize("case, extra, words", SITE_CASES, ids=[c[0] for c in SITE_CASES])
def test_site_option_refused_before_any_process(
    case, extra, words, lognorm_file, capsys, nothing_left
):
    argv = ["deploy", "site", "--data", str(lognorm_file), "--superlink", "127.0.0.1:9092"]
    argv += [] if "--root-certificates" in extra else ["--insecure"]
    code, err = run_cli(capsys, *argv, *extra)
    assert code == 2, err
    has_words(err, words)
    record("deploy site", case, "fedsc deploy site " + " ".join(extra), code, err.strip())


def test_site_data_not_h5ad(tmp_path, capsys, nothing_left):
    bad = tmp_path / "site.txt"
    bad.write_text("x")
    argv = ["deploy", "site", "--data", str(bad), "--superlink", "h:1", "--insecure"]
    code, err = run_cli(capsys, *argv)
    assert code == 2
    has_words(err, ["--data", "not an .h5ad (HDF5) file"])
    record("deploy site", "data-not-h5ad", "fedsc deploy site --data site.txt", code, err.strip())


def _site(tmp_path: Path, adata: ad.AnnData, name: str | None = None) -> Site:
    path = tmp_path / "site.h5ad"
    adata.write_h5ad(path)
    return Site(path, name=name, out_dir=tmp_path / "out")


def test_site_file_with_two_batches_or_none_is_refused(lognorm_file, tmp_path):
    """Such a site became the dominant client for every cell type."""
    a = ad.read_h5ad(lognorm_file)
    for name in (None, "celseq"):  # named or not: one batch per site file
        with pytest.raises(FedscInputError) as info:
            _site(tmp_path, a, name).site_name("batch")
        has_words(str(info.value), ["holds 5 batches", "one batch", "fedsc deploy split"])
    record("deploy site (hello)", "site-file-two-batches", "a site file with 5 batches",
           "site refuses step hello", str(info.value))  # fmt: skip
    with pytest.raises(FedscInputError, match="holds no cells") as none:
        _site(tmp_path, a[:0].copy(), "celseq").site_name("batch")
    record("deploy site (hello)", "site-file-no-cells", "a site file with no cells",
           "site refuses step hello", str(none.value))  # fmt: skip


def test_site_with_raw_counts_refuses_hello(counts_file, tmp_path):
    a = ad.read_h5ad(counts_file)
    site = _site(tmp_path, a[a.obs["batch"] == "celseq"].copy())
    with pytest.raises(FedscInputError) as info:
        hello(site, {"batch_key": "batch", "input": "expression", "method": "fedscgen"}, {})
    has_words(str(info.value), ["looks like raw counts", "fedscgen"])
    record("deploy site (hello)", "site-raw-counts", "a site file of raw counts",
           "site refuses step hello", str(info.value))  # fmt: skip


def test_paths_with_quotes_travel_intact(tmp_path):
    """A ``"`` in --out broke the deployment's node config; Flower reads the TOML file."""
    from flwr.common.config import parse_config_args

    from fedsc.deploy.local import write_toml

    odd = tmp_path / 'we"ird \\ dir\tand $HOME é'
    config = {"data-path": odd / "a.h5ad", "out-dir": odd, "site": 'x"y', "n-sites": 3}
    parsed = parse_config_args([str(write_toml(tmp_path / "node.toml", config))])
    assert parsed == {k: v if isinstance(v, int) else str(v) for k, v in config.items()}


# ----------------------------------------------------------------------- deploy evaluate
def site_output(
    site: str, n: int = 12, token: str = TOKEN, seed: int = 0
) -> tuple[ad.AnnData, str]:
    """A site's corrected cells as the deployed site step writes them."""
    rng = np.random.default_rng(seed)
    a = ad.AnnData(rng.random((n, 5)).astype(np.float32))
    a.obs_names = [f"{site}-{i}" for i in range(n)]
    a.obs["batch"] = site
    a.obs["cell_type"] = ["alpha", "beta"] * (n // 2)
    out = a.copy()
    out.obsm["X_fedscgen"] = rng.random((n, 3)).astype(np.float32)
    out.layers["fedscgen"] = rng.random((n, 5)).astype(np.float32)
    return out, output_digest(out, KEYS)


@pytest.fixture
def deployment(tmp_path):
    """A finished deployment's coordinator folder and its two sites' output files."""
    root = tmp_path / "deployed"
    coordinator = root / "coordinator"
    coordinator.mkdir(parents=True)
    outputs, files = {}, {}
    for i, site in enumerate(("a", "b")):
        part, _ = site_output(site, seed=i)
        path = root / site / f"{site}.h5ad"
        path.parent.mkdir()
        receipt = write_output(
            Site(path, name=site, out_dir=path.parent, _adata=part), "batch", part,
            keys=KEYS, run_token=TOKEN,
        )  # fmt: skip
        outputs[site] = {k: receipt[k] for k in ("n_obs", "digest", "keys")}
        files[site] = path
    record_ = {
        "run_token": TOKEN,
        "method": "fedscgen",
        "params": {
            "config": FedScGenConfig(rounds=1, local_epochs=1).to_dict(),
            "seed": 0,
            "batch_key": "batch",
            "labels_key": "cell_type",
        },
        "clients": [{"name": "a"}, {"name": "b"}],
        "outputs": outputs,
        "deployment": {"transport": "plaintext", "sites": ["a", "b"]},
        "private": False,
        "privacy": "not private: plaintext",
        "seconds": 1.0,
    }
    (coordinator / "run.json").write_text(json.dumps(record_))
    ledger = {"totals": {"bytes_to_party": [], "coordinator_bytes": 0}, "entries": []}
    (coordinator / "ledger.json").write_text(json.dumps(ledger))
    return coordinator, files


def evaluate(capsys, coordinator: Path, files: list[Path], out: Path, *extra: str):
    argv = ["deploy", "evaluate", str(coordinator), *map(str, files), "--out", str(out)]
    return run_cli(capsys, *argv, "--panels", "none", *extra)


def test_evaluate_accepts_its_own_outputs(deployment, tmp_path, capsys, nothing_left):
    """The control: the outputs this run wrote are evaluated (and stored)."""
    coordinator, files = deployment
    store = tmp_path / "store"
    out = tmp_path / "run"
    code, err = evaluate(capsys, coordinator, list(files.values()), out, "--store", str(store))
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["deployment"]["run_token"] == TOKEN
    assert set(info["deployment"]["outputs"]["a"]) == {"n_obs", "digest"}
    assert len(list((store / "runs").glob("*.json"))) == 1


def _replace(files: dict[str, Path], site: str, part: ad.AnnData) -> None:
    part.write_h5ad(files[site])


EVALUATE_CASES = [
    # (case, how the output of site "a" is changed, words)
    (
        "output-of-another-deployment",
        lambda: _marked(site_output("a", seed=7)[0], "f" * 32),
        ["a.h5ad was not written by the deployed run", "another deployment", "give the outputs"],
    ),
    (
        "output-changed-after-the-run",
        lambda: _marked(site_output("a", seed=7)[0], TOKEN),
        ["differs from what site 'a' reported", "digest mismatch", "unmodified output"],
    ),
    (
        "uncorrected-input-given",
        lambda: _input_only("a"),
        ["a.h5ad holds no fedscgen output", "site's input", "<out-dir>/<site>.h5ad"],
    ),
    (
        "output-with-two-batches",
        lambda: _two_batches(),
        ["holds cells of batch(es) ['a', 'x']", "not of site 'a' alone"],
    ),
]


def _marked(part: ad.AnnData, token: str) -> ad.AnnData:
    part.uns[OUTPUT_UNS] = {"run_token": token, "site": "a", "keys": KEYS}
    return part


def _input_only(site: str) -> ad.AnnData:
    part, _ = site_output(site)
    del part.obsm["X_fedscgen"], part.layers["fedscgen"]
    return part


def _two_batches() -> ad.AnnData:
    part, _ = site_output("a")
    part.obs["batch"] = ["a", "x"] * 6
    return part


@pytest.mark.parametrize("case, change, words", EVALUATE_CASES, ids=[c[0] for c in EVALUATE_CASES])
def test_evaluate_refuses_outputs_not_of_this_run(
    case, change, words, deployment, tmp_path, capsys, nothing_left
):
    """Another seed's output (values differing by up to 1.25) was recorded as the run."""
    coordinator, files = deployment
    _replace(files, "a", change())
    out, store = tmp_path / "run", tmp_path / "store"
    code, err = evaluate(capsys, coordinator, list(files.values()), out, "--store", str(store))
    assert code == 2, err
    has_words(err, words)
    assert not out.exists() and not store.exists()
    record("deploy evaluate", case, "fedsc deploy evaluate COORD a.h5ad b.h5ad", code, err.strip())


def test_evaluate_reads_a_record_that_says_label_key(deployment, tmp_path, capsys, nothing_left):
    """A coordinator folder written before the rename to labels_key (scvi-tools' name)."""
    coordinator, files = deployment
    run = json.loads((coordinator / "run.json").read_text())
    run["params"]["label_key"] = run["params"].pop("labels_key")
    (coordinator / "run.json").write_text(json.dumps(run))
    code, err = evaluate(capsys, coordinator, list(files.values()), tmp_path / "run")
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["labels_key"] == "cell_type"
    run["params"]["label_key"] = "kind"  # read, not defaulted: a column the cells lack
    (coordinator / "run.json").write_text(json.dumps(run))
    code, err = evaluate(capsys, coordinator, list(files.values()), tmp_path / "run2")
    assert code == 2
    has_words(err, ["labels_key 'kind' is not a column"])


def test_evaluate_refuses_a_record_without_run_token(deployment, tmp_path, capsys, nothing_left):
    coordinator, files = deployment
    run = json.loads((coordinator / "run.json").read_text())
    del run["run_token"]
    (coordinator / "run.json").write_text(json.dumps(run))
    code, err = evaluate(capsys, coordinator, list(files.values()), tmp_path / "run")
    assert code == 2 and not (tmp_path / "run").exists()
    has_words(err, ["records no run token", "rerun the deployment"])
    record("deploy evaluate", "record-without-run-token", "a coordinator folder of an older fedsc",
           code, err.strip())  # fmt: skip


def test_evaluate_output_given_twice_or_not_h5ad(deployment, tmp_path, capsys, nothing_left):
    coordinator, files = deployment
    code, err = evaluate(capsys, coordinator, [files["a"], files["a"]], tmp_path / "run")
    assert code == 2
    has_words(err, ["two site outputs are named a.h5ad"])
    record("deploy evaluate", "output-given-twice", "COORD a.h5ad a.h5ad", code, err.strip())
    files["b"].write_text("not hdf5")
    code, err = evaluate(capsys, coordinator, list(files.values()), tmp_path / "run")
    assert code == 2 and not (tmp_path / "run").exists()
    has_words(err, ["b.h5ad is not an .h5ad (HDF5) file"])
    record("deploy evaluate", "output-not-h5ad", "COORD a.h5ad b.h5ad (text)", code, err.strip())


def test_store_refuses_another_deployment_of_the_same_run(
    deployment, tmp_path, capsys, nothing_left
):
    """Two deployments of one run config share a run id: the second replaced the first."""
    coordinator, files = deployment
    store = tmp_path / "store"
    argv = ["--store", str(store)]
    assert evaluate(capsys, coordinator, list(files.values()), tmp_path / "r1", *argv)[0] == 0
    stored = folder_hash(store)
    # the same run config deployed again: another token, its own outputs
    other = "e" * 32
    run = json.loads((coordinator / "run.json").read_text())
    run["run_token"] = other
    for path in files.values():
        part = ad.read_h5ad(path)
        part.uns[OUTPUT_UNS] = {**part.uns[OUTPUT_UNS], "run_token": other}
        part.write_h5ad(path)
    (coordinator / "run.json").write_text(json.dumps(run))
    code, err = evaluate(capsys, coordinator, list(files.values()), tmp_path / "r2", *argv)
    assert code == 2, err
    has_words(err, ["already holds run", "from another deployment", "--variant"])
    assert folder_hash(store) == stored and not (tmp_path / "r2").exists()
    record("deploy evaluate", "store-another-deployment", "--store holding the same run id",
           code, err.strip())  # fmt: skip
