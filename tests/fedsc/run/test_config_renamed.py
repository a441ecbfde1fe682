"""``RunConfig.labels_key`` (scvi-tools' name): ``label_key`` still works, warns, keeps run ids.

The sweep store resumes runs by id, so the rename must not change any id: the run id hashes
the setting under its old name. The ids below were computed before the rename.
"""

from __future__ import annotations

import warnings

import pytest

from fedsc.errors import FedscInputError
from fedsc.run.config import RunConfig
from fedsc.sweep.study import Study


def _study(labels: dict) -> Study:
    return Study.from_dict(
        {
            "study": "old",
            "datasets": ["pancreas"],
            "seeds": [0, 1],
            "defaults": {"batch_key": "batch", **labels},
            "methods": {"scbatchprox": {"variants": {"mu0": {"params": {"mu": 0.0}}}}},
        }
    )


def test_an_old_studys_run_ids_are_unchanged_under_either_name():
    with pytest.warns(FutureWarning, match="label_key= is deprecated; use labels_key="):
        old = [r.run_id for r in _study({"label_key": "cell_type"}).expand()]
    assert old == ["7720213fd63e4559", "2aed1c8b7255df71"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name: no warning
        runs = _study({"labels_key": "cell_type"}).expand()
    assert [r.run_id for r in runs] == old
    assert "labels_key" in runs[0].to_dict() and "label_key" not in runs[0].to_dict()


def test_the_old_keyword_and_attribute_warn_and_mean_the_new_one():
    with pytest.warns(FutureWarning, match="use labels_key"):
        cfg = RunConfig(
            method="fedscgen",
            label_key="celltype",
            batch_key="sample",
            seed=2,
            params={"rounds": 2},
        )
    assert cfg.labels_key == "celltype" and cfg.run_id == "e0b6cec1871a3ae9"
    with pytest.warns(FutureWarning, match="RunConfig.label_key is deprecated"):
        assert cfg.label_key == "celltype"
    with pytest.raises(FedscInputError, match="given both"):
        RunConfig.from_dict({"method": "scbatchprox", "label_key": "a", "labels_key": "b"})
    assert RunConfig(method="scbatchprox", seed=0).run_id == "11df342ea6a51c2a"
