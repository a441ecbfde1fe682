"""Fixtures shared by the fedsc tests."""

from __future__ import annotations

import anndata as ad
import pytest
import scanpy as sc
import torch

from fedsc.datasets import pancreas


@pytest.fixture
def one_torch_thread():
    """Tiny matrices: one thread avoids OpenMP stalls on a loaded 2-core machine.

    (scanpy's preprocessing resets torch's thread count, hence per test.)
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def panc() -> ad.AnnData:
    """The bundled pancreas data, normalised to 1e4 and log1p (all 2000 genes)."""
    a = pancreas()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a
