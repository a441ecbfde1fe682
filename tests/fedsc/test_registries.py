"""Registries: methods, metric panels, upstream embeddings, backends; run-config validation
reads them up front."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import fedsc.methods
import smpc
from fedsc.cli import build_parser
from fedsc.errors import FedscInputError
from fedsc.evaluation import PANELS, evaluate, register_panel
from fedsc.methods import MethodSpec, get_method
from fedsc.preprocessing import fit_embedding
from fedsc.registry import Registry
from fedsc.run.config import RunConfig
from fedsc.upstream import EMBEDDING_METHODS, register_embedding


def test_registry_refuses_duplicates_and_names_the_choices():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="a widget named 'a' is already registered"):
        reg.register("a", 2)
    with pytest.raises(FedscInputError, match=r"unknown widget 'b'; choose one of \['a'\]"):
        reg.get("b")
    assert reg.unregister("a") == 1 and "a" not in reg and len(reg) == 0


def test_builtin_specs_declare_their_capabilities():
    sbp, fsg, sg = (get_method(n) for n in ("scbatchprox", "fedscgen", "scgen"))
    assert (sbp.input, sbp.outputs, sbp.evaluate) == (
        "embedding",
        ("X_scbatchprox",),
        "X_scbatchprox",
    )
    assert sorted(sbp.scenarios) == ["continual", "cumulative"] and not sbp.holdout
    assert (fsg.input, fsg.evaluate, fsg.holdout, fsg.inclusion) == (
        "expression",
        "layers/fedscgen",
        True,
        True,
    )
    assert not sg.federated and sg.inclusion and not sg.holdout
    assert sbp.config_class.__name__ == "ScBatchProxConfig"
    assert sbp.make_config({"mu": 0.0}).mu == 0.0


def test_method_spec_is_checked_when_made():
    with pytest.raises(ValueError, match="input 'cells'"):
        MethodSpec(name="m", config=dict, input="cells", run=print)
    with pytest.raises(ValueError, match="evaluate='X_other'"):
        MethodSpec(name="m", config=dict, input="embedding", run=print, evaluate="X_other")
    with pytest.raises(ValueError, match="must include the embedding 'X_m'"):
        MethodSpec(name="m", config=dict, input="expression", run=print, outputs=("layers/m",))
    assert MethodSpec(name="m", config=dict, input="counts", run=print).outputs == ("X_m",)
    with pytest.raises(TypeError, match="MethodSpec"):
        fedsc.methods.register("m")


def test_run_ids_of_existing_configs_are_unchanged():
    # the id `fedsc run scbatchprox --seed 0` had before the registries (and mechanisms)
    assert RunConfig(method="scbatchprox", seed=0).run_id == "11df342ea6a51c2a"


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"method": "scvi"}, "unknown method 'scvi'"),
        ({"method": "scbatchprox", "backend": "paillier"}, "unknown aggregation backend"),
        ({"method": "scgen", "backend": "crypten"}, "centralized"),
        ({"method": "scbatchprox", "holdout": ["a"]}, "does not support held-out batches"),
        ({"method": "scbatchprox", "inclusion": "dropped"}, "does not support inclusion"),
        ({"method": "fedscgen", "inclusion": "some"}, "unknown inclusion scenario 'some'"),
        ({"method": "fedscgen", "scenario": "continual", "stages": [["a"]]}, "not available"),
        ({"method": "scbatchprox", "scenario": "continual"}, "needs stages"),
        ({"method": "scbatchprox", "panels": ["scib", "umap"]}, "unknown: \\['umap'\\]"),
        ({"method": "scbatchprox", "upstream": "umap"}, "unknown embedding method 'umap'"),
        ({"method": "fedscgen", "params": {"mu": 0}}, "unknown FedScGenConfig option"),
        ({"method": "fedscgen", "params": {"rounds": 0}}, "rounds and local_epochs"),
        ({"method": "scbatchprox", "mechanisms": [3]}, "a mechanism must be a name"),
    ],
)
def test_run_config_refuses_what_the_registries_do_not_offer(settings, match):
    with pytest.raises(FedscInputError, match=match):
        RunConfig(**settings)


def test_mechanisms_are_validated_against_smpc(monkeypatch):
    from fedsc import backend

    monkeypatch.setattr(backend, "mechanism_names", lambda: None)
    with pytest.raises(FedscInputError, match="no mechanism registry"):
        RunConfig(method="scbatchprox", mechanisms=["clip"])
    monkeypatch.setattr(backend, "mechanism_names", lambda: ["clip", "dp_gaussian"])
    with pytest.raises(FedscInputError, match=r"unknown mechanism\(s\) \['dp'\]"):
        RunConfig(method="scbatchprox", mechanisms=["dp"])
    cfg = RunConfig(method="scbatchprox", mechanisms=[{"clip": {"max_norm": 1.0}}])
    assert cfg.run_id != RunConfig(method="scbatchprox").run_id
    with pytest.raises(FedscInputError, match="centralized; it takes no mechanisms"):
        RunConfig(method="scgen", mechanisms=["clip"])
    args = build_parser().parse_args(
        ["run", "scbatchprox", "--mechanism", "clip", "--mechanism", "dp_gaussian", "--out", "x"]
    )
    assert args.mechanism == ["clip", "dp_gaussian"]


def test_cli_backend_choices_come_from_smpc(monkeypatch):
    smpc.BACKENDS.register("fake", smpc.BACKENDS["plaintext"])
    try:
        args = build_parser().parse_args(["run", "scbatchprox", "--backend", "fake", "--out", "x"])
        assert args.backend == "fake"
        assert RunConfig(method="scbatchprox", backend="fake").backend == "fake"
    finally:
        smpc.BACKENDS.unregister("fake")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "scbatchprox", "--backend", "fake", "--out", "x"])


def test_backend_options_flag(capsys):
    args = build_parser().parse_args(
        ["run", "scbatchprox", "--backend", "crypten", "--backend-option", "parties=3",
         "--mode", "debug", "--out", "x"]
    )  # fmt: skip
    assert args.backend_option == ["parties=3"] and args.mode == "debug"


def _blobs() -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.normal(size=(60, 5)).astype(np.float32))
    a.obs["batch"] = np.repeat(["a", "b"], 30)
    a.obs["cell_type"] = np.tile(["x", "y", "z"], 20)
    return a


def test_a_registered_panel_is_evaluated_by_name():
    def mean_norm(X, batch, labels, *, X_pre=None, seed=0):
        return pd.DataFrame(
            {"panel": "toy", "metric": ["mean_norm"], "value": [float(np.linalg.norm(X.mean(0)))]}
        )

    register_panel("toy", mean_norm)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_panel("toy", mean_norm)
        a = _blobs()
        rows = evaluate(a, rep="X", panels=["toy"])
        assert rows["value"].iloc[0] == pytest.approx(np.linalg.norm(a.X.mean(0)))
        assert RunConfig(method="scbatchprox", panels=["toy"]).panels == ["toy"]
    finally:
        PANELS.unregister("toy")
    with pytest.raises(FedscInputError, match="unknown: \\['toy'\\]"):
        evaluate(_blobs(), rep="X", panels=["toy"])


def test_a_registered_upstream_embedding_is_fitted_by_name():
    from sklearn.decomposition import TruncatedSVD

    register_embedding("svd", lambda n, seed, shape: TruncatedSVD(n, random_state=seed))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_embedding("svd", TruncatedSVD)
        a = _blobs()
        model = fit_embedding(a, "svd", n_comps=2, seed=0)
        expected = TruncatedSVD(2, random_state=0).fit_transform(a.X.astype(np.float64))
        np.testing.assert_allclose(a.obsm["X_svd"], expected, atol=1e-5)
        np.testing.assert_allclose(model.transform(a), expected, atol=1e-5)
        assert RunConfig(method="scbatchprox", upstream="svd").upstream == "svd"
        assert (
            "svd"
            in build_parser()
            .parse_args(["run", "scbatchprox", "--upstream", "svd", "--out", "x"])
            .upstream
        )
    finally:
        EMBEDDING_METHODS.unregister("svd")
