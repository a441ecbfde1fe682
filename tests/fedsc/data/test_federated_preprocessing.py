"""Federated HVG selection and PCA equal the pooled scanpy / scikit-learn results."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.decomposition import PCA

import smpc
from fedsc.data.federated_preprocessing import (
    PreprocessingSite,
    federated_hvg,
    federated_pca,
)
from fedsc.datasets import pancreas
from fedsc.errors import FedscInputError
from smpc.plaintext import PlaintextAggregator


def _batches(a: ad.AnnData) -> list[ad.AnnData]:
    names = list(dict.fromkeys(a.obs["batch"].astype(str)))
    return [a[a.obs["batch"].astype(str) == b].copy() for b in names]


@pytest.fixture(scope="module")
def raw_batches() -> list[ad.AnnData]:
    """The pancreas data (raw counts in X, 500 cells × 2000 genes), one AnnData per tech."""
    return _batches(pancreas())


@pytest.fixture(scope="module")
def sites(raw_batches) -> list[PreprocessingSite]:
    out = [PreprocessingSite(b, str(b.obs["batch"].iloc[0])) for b in raw_batches]
    for site in out:
        site.normalise(1e4)
    return out


@pytest.fixture(scope="module")
def pooled(raw_batches) -> ad.AnnData:
    """The cells of every site in one AnnData (site order), normalised as preprocess does."""
    a = ad.concat(raw_batches)
    a.X = a.X.astype(np.float32)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def _scanpy_hvg(pooled: ad.AnnData, k: int) -> np.ndarray:
    df = sc.pp.highly_variable_genes(pooled, flavor="seurat", n_top_genes=k, inplace=False)
    return pooled.var_names[df["highly_variable"].to_numpy()].to_numpy(dtype=str)


@pytest.mark.filterwarnings("ignore:`n_top_genes` > number of normalized dispersions")
# k = 1999: more genes than have a finite dispersion (scanpy then keeps all finite ones)
@pytest.mark.parametrize("k", [200, 1000, 1999])
def test_federated_hvg_equals_pooled_scanpy(sites, pooled, k):
    expected = _scanpy_hvg(pooled, k)
    with smpc.make_aggregator("plaintext") as agg:
        got = federated_hvg(sites, agg, k)
        assert [e.op for e in agg.ledger.entries] == ["sum"]  # one aggregation, nothing else
    np.testing.assert_array_equal(got, expected)
    assert got.size == min(k, 1947)  # 53 genes have zero dispersion on the pooled data


def test_federated_hvg_site_gene_order_and_scale(raw_batches, sites, pooled):
    """A site with permuted genes, and a public scale, change nothing."""
    shuffled = raw_batches[2][:, np.random.default_rng(0).permutation(2000)].copy()
    mixed = list(sites)
    mixed[2] = PreprocessingSite(shuffled, "shuffled")
    mixed[2].normalise(1e4)
    with smpc.make_aggregator("plaintext") as agg:
        got = federated_hvg(mixed, agg, 500, scale=1e4)
    np.testing.assert_array_equal(got, _scanpy_hvg(pooled, 500))


@pytest.mark.parametrize("solver", ["covariance_eigh", "full"])
def test_federated_pca_equals_sklearn(sites, pooled, solver):
    with smpc.make_aggregator("plaintext") as agg:
        genes = federated_hvg(sites, agg, 300)
        mean, comps, ev = federated_pca(sites, agg, genes, 40)
    x = pooled[:, genes].X.toarray().astype(np.float64)
    ref = PCA(40, svd_solver=solver).fit(x)
    # docs/algorithms.md quotes the measured agreement (components 1.5e-13, explained
    # variance 3e-15 relative, projections 7e-14 of the largest); the bounds leave ~100x
    # for other BLAS builds.
    np.testing.assert_allclose(mean, ref.mean_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ev, ref.explained_variance_, rtol=1e-12)
    signs = np.sign(np.sum(comps * ref.components_, axis=1))
    np.testing.assert_allclose(comps, signs[:, None] * ref.components_, rtol=0, atol=1e-11)
    assert (signs == 1).all()  # sklearn's sign convention is reproduced, not just matched
    emb = np.vstack([s.project(genes, mean, comps) for s in sites])
    want = ref.transform(x)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-11 * np.abs(want).max())


class _Ref:
    """A deployment's remote result: only the aggregator can open it."""

    def __init__(self, value: Any) -> None:
        self._value = value


class _Proxy:
    """A remote site: metadata plus step methods returning references."""

    def __init__(self, site: PreprocessingSite) -> None:
        self.name = site.name
        self.var_names = site.var_names
        self._site = site

    def hvg_moments(self, genes=None, *, scale=1.0) -> _Ref:
        return _Ref(self._site.hvg_moments(genes, scale=scale))

    def pca_moments(self, genes) -> _Ref:
        return _Ref(self._site.pca_moments(genes))


class _ResolvingAggregator(PlaintextAggregator):
    def sum(self, contributions, *, reference=None):
        assert all(isinstance(c, _Ref) for c in contributions)
        return super().sum([c._value for c in contributions], reference=reference)


def test_drivers_pass_step_results_to_the_aggregator_unopened(sites):
    proxies = [_Proxy(s) for s in sites]
    with _ResolvingAggregator() as deployed, smpc.make_aggregator("plaintext") as agg:
        genes = federated_hvg(proxies, deployed, 100)
        np.testing.assert_array_equal(genes, federated_hvg(sites, agg, 100))
        for a, b in zip(
            federated_pca(proxies, deployed, genes, 5),
            federated_pca(sites, agg, genes, 5),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_federated_preprocessing_under_crypten(sites):
    """Pancreas moments fit the ring bound (max site sum x^2 ~9.3e8 < 2.7e10)."""
    with smpc.make_aggregator("plaintext") as agg:
        hvg = federated_hvg(sites, agg, 300)
        mean0, comps0, ev0 = federated_pca(sites, agg, hvg, 40)
    with smpc.make_aggregator("crypten") as agg:
        assert agg.private
        np.testing.assert_array_equal(federated_hvg(sites, agg, 300), hvg)
        mean, comps, ev = federated_pca(sites, agg, hvg, 40)
    # sums carry <= K * 2^-25 = 1.5e-7 absolute error (24 fractional bits)
    np.testing.assert_allclose(mean, mean0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ev, ev0, rtol=1e-8)
    np.testing.assert_allclose(comps, comps0, rtol=0, atol=1e-7)
    emb = np.vstack([s.project(hvg, mean, comps) for s in sites])
    emb0 = np.vstack([s.project(hvg, mean0, comps0) for s in sites])
    np.testing.assert_allclose(emb, emb0, rtol=0, atol=1e-6)


def test_site_leaves_the_callers_counts_alone(raw_batches):
    before = raw_batches[0].X.copy()
    PreprocessingSite(raw_batches[0], "a").normalise(1e4)
    assert (raw_batches[0].X != before).nnz == 0


def test_bad_inputs_are_named(raw_batches, sites):
    agg = smpc.make_aggregator("plaintext")
    fewer = PreprocessingSite(raw_batches[1][:, 10:].copy(), "celseq2-lab")
    fewer.normalise(1e4)
    with pytest.raises(FedscInputError, match=r"site 'celseq2-lab'.*10 missing.*subset every"):
        federated_hvg([sites[0], fewer], agg, 100)
    with pytest.raises(FedscInputError, match="n_top_genes=2001"):
        federated_hvg(sites, agg, 2001)
    with pytest.raises(FedscInputError, match="n_top_genes=0"):
        federated_hvg(sites, agg, 0)
    genes = sites[0].var_names[:50]
    with pytest.raises(FedscInputError, match=r"n_comps=50 .*number of genes"):
        federated_pca(sites, agg, genes, 50)
    tiny = [PreprocessingSite(b[:4].copy(), f"s{i}") for i, b in enumerate(raw_batches[:2])]
    for site in tiny:
        site.normalise(1e4)
    with pytest.raises(FedscInputError, match=r"n_comps=8 .*total number of cells \(8\)"):
        federated_pca(tiny, agg, genes, 8)
    with pytest.raises(FedscInputError, match=r"site 'celseq2-lab' lacks 1 .*genes"):
        federated_pca([sites[0], fewer], agg, sites[0].var_names[[0, 500]], 1)
    raw = PreprocessingSite(raw_batches[0], "unnormalised")
    with pytest.raises(FedscInputError, match=r"site 'unnormalised'.*call normalise"):
        federated_hvg([raw], agg, 10)
    logged = raw_batches[0].copy()
    sc.pp.log1p(logged)
    with pytest.raises(FedscInputError, match=r"site 'logged'.*log-transformed"):
        PreprocessingSite(logged, "logged")
