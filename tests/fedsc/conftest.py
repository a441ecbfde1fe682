"""Fixtures shared by the fedsc tests."""

from __future__ import annotations

import anndata as ad
import pytest
from _helpers.adata import lognormalized_pancreas


@pytest.fixture(scope="module")
def panc() -> ad.AnnData:
    """The bundled pancreas data, normalised to 1e4 and log1p (all 2000 genes)."""
    return lognormalized_pancreas()
