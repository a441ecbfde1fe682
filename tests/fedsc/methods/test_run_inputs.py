"""What a method's run function receives (:class:`fedsc.methods.RunInputs`)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from fedsc.errors import FedscInputError
from fedsc.methods import RunInputs, get_method


def test_a_federated_method_without_an_aggregator_is_a_clear_error():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        np.zeros((20, 3), dtype=np.float32),
        obs=pd.DataFrame({"batch": ["a", "b"] * 10}, index=[f"c{i}" for i in range(20)]),
    )
    adata.obsm["X_pca"] = rng.normal(size=(20, 4)).astype(np.float32)
    spec = get_method("scbatchprox")
    with pytest.raises(FedscInputError, match="scBatchProx is federated: its run needs an agg"):
        spec.fit(adata, RunInputs(use_rep="X_pca"), spec.make_config({"rounds": 1}))
    assert "X_scbatchprox" not in adata.obsm
