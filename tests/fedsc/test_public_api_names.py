"""Cell types are ``labels_key`` (scvi-tools' name) in every public signature of fedsc;
``label_key=``, the old spelling, is only accepted through
:func:`fedsc._deprecation.renamed_arguments` (a ``FutureWarning``, the same result)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import fedsc
from fedsc.data.inclusion import apply_inclusion
from fedsc.datasets import simulate
from fedsc.methods import RunInputs


def _public_modules() -> Iterator[Any]:
    """``fedsc`` and every module under it whose dotted name has no ``_`` part."""
    yield fedsc
    for info in pkgutil.walk_packages(fedsc.__path__, "fedsc."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield importlib.import_module(info.name)


def _signatures() -> Iterator[tuple[str, inspect.Signature]]:
    """Each ``__all__`` entry's signature, a class's public methods' too (decorated ones
    unwrapped: what a reader of the API sees)."""
    for module in _public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            members = [(name, obj)]
            if inspect.isclass(obj):
                members += [
                    (f"{name}.{k}", v)
                    for k, v in vars(obj).items()
                    if not k.startswith("_") and inspect.isfunction(v)
                ]
            for label, member in members:
                try:
                    yield f"{module.__name__}.{label}", inspect.signature(member)
                except (TypeError, ValueError):  # no signature (a constant, a builtin)
                    continue


def test_no_public_signature_names_label_key():
    signatures = dict(_signatures())
    offenders = sorted(name for name, sig in signatures.items() if "label_key" in sig.parameters)
    assert not offenders, f"say labels_key (label_key= through renamed_arguments): {offenders}"
    # the walk reached the functions that used to say label_key
    for name in (
        "fedsc.methods.fedscgen.run_fedscgen",
        "fedsc.data.validate.validate_adata",
        "fedsc.preprocessing.fit_embedding",
        "fedsc.methods.spec.RunInputs",
    ):
        assert "labels_key" in signatures[name].parameters, name


def test_label_key_warns_and_gives_the_same_result():
    adata = simulate(60, 10, n_batches=2, n_cell_types=2, seed=0)
    adata.obs["kind"] = ["rare" if i < 4 else t for i, t in enumerate(adata.obs["cell_type"])]
    kw = {"batch_key": "batch", "scenario": "combined", "min_cells": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        new = apply_inclusion(adata, labels_key="kind", **kw)
        inputs = RunInputs(labels_key="kind")
    with pytest.warns(FutureWarning, match=r"apply_inclusion: label_key= is deprecated") as rec:
        old = apply_inclusion(adata, label_key="kind", **kw)
    assert rec[0].filename == __file__  # the warning names the caller's line
    assert old.obs.equals(new.obs) and old.uns["inclusion"] == new.uns["inclusion"]
    assert new.uns["inclusion"]["minority_types"] == ["rare"]  # the scenario relabelled
    with pytest.warns(FutureWarning, match=r"RunInputs.__init__: label_key= is deprecated"):
        assert RunInputs(label_key="kind") == inputs
    with pytest.warns(FutureWarning, match=r"RunInputs.label_key is deprecated"):
        assert inputs.label_key == "kind"
