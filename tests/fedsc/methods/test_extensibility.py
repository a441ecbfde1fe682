"""A new federated method is one module plus one ``register`` line, and then it runs through
``fedsc run``, ``fedsc sweep``, ``fedsc compare``/``report`` and ``fedsc.tl`` unchanged."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

import fedsc.methods
from fedsc.cli import main
from fedsc.datasets import simulate
from fedsc.errors import FedscInputError

#: The whole new method: config, federated run function, spec. Nothing else is edited.
TOY_MODULE = '''
"""Toy federated method: move every batch's embedding mean onto the global mean."""

from dataclasses import dataclass

import numpy as np

from fedsc.data import obs_column, representation
from fedsc.errors import FedscInputError
from fedsc.methods import MethodSpec


@dataclass
class ToyCentringConfig:
    scale: float = 1.0  # weight of the global mean added back after centring

    def __post_init__(self):
        if self.scale < 0:
            raise FedscInputError(f"scale must be >= 0, got {self.scale}.")


def run(adata, inputs, config):
    """Each client sends its embedding sum and cell count through ``aggregator.sum``."""
    z = representation(adata, inputs.use_rep, "use_rep").astype(np.float64)
    batch = obs_column(adata, inputs.batch_key, "batch_key").astype(str).to_numpy()
    clients = sorted(set(batch))
    parts = [{"sum": z[batch == b].sum(0), "count": np.array([(batch == b).sum()], float)}
             for b in clients]
    total = inputs.aggregator.sum(parts)  # only the totals are revealed
    global_mean = np.asarray(total["sum"]) / np.asarray(total["count"])
    out = z.copy()
    for b in clients:  # local: a client knows its own mean
        rows = batch == b
        out[rows] = z[rows] - z[rows].mean(0) + config.scale * global_mean
    adata.obsm["X_toy_centring"] = out.astype(np.float32)
    return global_mean


SPEC = MethodSpec(
    name="toy_centring",
    config=ToyCentringConfig,
    input="embedding",
    run=run,
    panels=("fedscgen",),
    options=("scale",),
    description="toy: federated per-batch mean centring",
)
'''


def expected(z: np.ndarray, batch: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The hand computation: z - mean(batch) + scale * mean(all cells)."""
    z = z.astype(np.float64)
    out = z.copy()
    for b in np.unique(batch):
        rows = batch == b
        out[rows] = z[rows] - z[rows].mean(0) + scale * z.mean(0)
    return out


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_centring.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_centring", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_centring"] = module
    spec.loader.exec_module(module)
    fedsc.methods.register(module.SPEC)  # the one registry line
    yield module
    fedsc.methods.unregister("toy_centring")
    sys.modules.pop("toy_centring", None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    adata = simulate(240, 300, n_batches=3, n_cell_types=3, seed=0)
    rng = np.random.default_rng(0)
    adata.obsm["X_emb"] = rng.normal(size=(adata.n_obs, 6)).astype(np.float32)
    adata.obsm["X_emb"] += 3.0 * (adata.obs["batch"].cat.codes.to_numpy()[:, None])
    path = tmp_path_factory.mktemp("toy") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


def test_register_refuses_a_duplicate_name(toy):
    with pytest.raises(ValueError, match="'toy_centring' is already registered"):
        fedsc.methods.register(toy.SPEC)


def test_fedsc_run_runs_the_new_method(toy, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["run", "toy_centring", "--input", str(tiny), "--use-rep", "X_emb", "--scale", "0.5",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    corrected = ad.read_h5ad(out / "corrected.h5ad")
    batch = corrected.obs["batch"].astype(str).to_numpy()
    np.testing.assert_allclose(
        corrected.obsm["X_toy_centring"], expected(corrected.obsm["X_emb"], batch, 0.5), atol=1e-5
    )
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["method"]) == {"emb", "toy_centring"}
    assert set(metrics["panel"]) == {"fedscgen"}
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["params"] == {"scale": 0.5}
    assert run["ledger"]["totals"]["operations"] == 1  # one secure sum
    assert run["evaluated"] == {"before": "X_emb", "after": "X_toy_centring"}


def test_new_method_options_are_validated_up_front(toy, tiny, tmp_path, capsys):
    args = ["run", "toy_centring", "--input", str(tiny), "--out", str(tmp_path / "x")]
    assert main([*args, "--param", "nope=1"]) == 2
    assert "unknown ToyCentringConfig option(s) ['nope']" in capsys.readouterr().err
    assert main([*args, "--scale", "-1"]) == 2
    assert "scale must be >= 0" in capsys.readouterr().err
    assert main([*args, "--holdout", "batch0"]) == 2  # the spec does not support held-out batches
    assert "does not support held-out batches" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_tl_serves_the_new_method(toy, tiny):
    import fedsc.tl

    adata = ad.read_h5ad(tiny)
    fedsc.tl.toy_centring(adata, use_rep="X_emb", scale=2.0)
    batch = adata.obs["batch"].astype(str).to_numpy()
    np.testing.assert_allclose(
        adata.obsm["X_toy_centring"], expected(adata.obsm["X_emb"], batch, 2.0), atol=1e-5
    )
    with pytest.raises(FedscInputError, match="unknown ToyCentringConfig option"):
        fedsc.tl.toy_centring(adata, use_rep="X_emb", mu=0)


def test_sweep_compare_and_report_run_the_new_method(toy, tiny, tmp_path, capsys):
    study = {
        "study": "toy",
        "datasets": [str(tiny)],
        "seeds": [0, 1],
        "defaults": {"n_comps": 8, "n_top_genes": 200},
        "methods": {
            "toy_centring": {
                "variants": {"full": {"params": {"scale": 1.0}}, "half": {"params": {"scale": 0.5}}}
            }
        },
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 0
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["method"]) == {"pca", "toy_centring"}
    assert set(table["variant"]) == {"full", "half"} and table["run_id"].nunique() == 4
    with pytest.warns(UserWarning):  # 2 seeds per side: significance unreachable
        assert main(["compare", str(out), "--a", "variant=half", "--b", "variant=full"]) == 0
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["method"]) == {"pca", "toy_centring"}
    assert comparison.loc[comparison["method"] == "pca", "delta_mean"].eq(0).all()
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "toy_centring" in report
    assert (out / "figures" / "umap.png").is_file()
    # the stored embedding of the first seed is the method's output, centred per batch
    record = next(
        json.loads(p.read_text())
        for p in sorted((out / "runs").glob("*.json"))
        if "embedding" in json.loads(p.read_text())
    )
    values = np.asarray(record["embedding"]["values"])
    batch = np.asarray(record["embedding"]["batch"])
    for b in np.unique(batch):
        np.testing.assert_allclose(values[batch == b].mean(0), values.mean(0), atol=1e-4)
