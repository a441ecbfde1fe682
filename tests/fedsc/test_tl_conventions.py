"""``fedsc.tl`` follows scanpy/scvi-tools: ``labels_key``, ``key_added`` = the obsm key,
outputs written into ``adata`` and ``None`` returned unless ``copy``/``return_model``;
the old spellings still work with a ``FutureWarning`` naming the new one."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import fedsc
import fedsc.methods
from fedsc.datasets import simulate
from fedsc.methods import MethodSpec


@dataclass
class ToyConfig:
    shift: float = 1.0


def _run(adata, inputs, config):
    """Centralized toy: the embedding shifted; the 'model' says what it was given."""
    z = np.asarray(adata.obsm[inputs.use_rep], dtype=np.float32)
    adata.obsm[f"X_{inputs.key_added or 'toy_tl'}"] = z + config.shift
    return {"labels_key": inputs.labels_key, "key_added": inputs.key_added}


@pytest.fixture(scope="module")
def toy():
    fedsc.methods.register(
        MethodSpec(name="toy_tl", config=ToyConfig, input="embedding", run=_run, federated=False)
    )
    yield fedsc.tl.toy_tl
    fedsc.methods.unregister("toy_tl")


@pytest.fixture
def cells():
    adata = simulate(60, 20, n_batches=2, n_cell_types=2, seed=0)
    adata.obs["kind"] = adata.obs["cell_type"]
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 3))
    return adata


def _quiet(call):
    """The call's result; any FutureWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return call()


def test_labels_key_and_its_deprecated_spelling(toy, cells):
    model = _quiet(lambda: toy(cells, use_rep="X_pca", labels_key="kind", return_model=True))
    assert model["labels_key"] == "kind"
    with pytest.warns(FutureWarning, match=r"label_key= is deprecated; use labels_key=") as rec:
        model = toy(cells, use_rep="X_pca", label_key="kind", return_model=True, overwrite=True)
    assert model["labels_key"] == "kind"
    assert rec[0].filename == __file__  # the warning names the caller's line
    with pytest.raises(TypeError, match="both label_key= and labels_key="):
        toy(cells, use_rep="X_pca", label_key="kind", labels_key="kind")


def test_writes_into_adata_and_returns_none_unless_asked(toy, cells):
    assert _quiet(lambda: toy(cells, use_rep="X_pca")) is None  # the default, as scanpy's
    np.testing.assert_allclose(cells.obsm["X_toy_tl"], cells.obsm["X_pca"] + 1.0, atol=1e-5)
    assert _quiet(lambda: toy(cells, use_rep="X_pca", return_model=False)) is None
    model = _quiet(lambda: toy(cells, use_rep="X_pca", return_model=True))
    assert model == {"labels_key": "cell_type", "key_added": None}


def test_copy_leaves_adata_unchanged(toy, cells):
    out = _quiet(lambda: toy(cells, use_rep="X_pca", copy=True, shift=2.0))
    assert "X_toy_tl" not in cells.obsm and out is not cells
    np.testing.assert_allclose(out.obsm["X_toy_tl"], cells.obsm["X_pca"] + 2.0, atol=1e-5)
    copy, model = _quiet(lambda: toy(cells, use_rep="X_pca", copy=True, return_model=True))
    assert "X_toy_tl" in copy.obsm and isinstance(model, dict)


def test_key_added_is_the_obsm_key(toy, cells):
    _quiet(lambda: toy(cells, use_rep="X_pca", key_added="X_mine"))
    assert "X_mine" in cells.obsm and "X_X_mine" not in cells.obsm
    assert cells.uns["mine"]["fedsc_method"] == "toy_tl"
    with pytest.warns(FutureWarning, match=r"pass key_added='X_old'"):
        toy(cells, use_rep="X_pca", key_added="old")
    assert "X_old" in cells.obsm  # the stem reading, until the default changes


@pytest.mark.parametrize("command", [["run", "scbatchprox"], ["deploy", "local", "d.h5ad"]])
def test_cli_labels_key_and_its_deprecated_spelling(command, capsys):
    from fedsc.cli import build_parser

    parser = build_parser()
    rest = ["--out", "x"]
    args = parser.parse_args([*command, "--labels-key", "kind", *rest])
    assert args.labels_key == "kind" and "deprecated" not in capsys.readouterr().err
    args = parser.parse_args([*command, "--label-key", "kind", *rest])
    assert args.labels_key == "kind"
    assert "--label-key is deprecated; use --labels-key" in capsys.readouterr().err
    assert parser.parse_args([*command, *rest]).labels_key == "cell_type"
