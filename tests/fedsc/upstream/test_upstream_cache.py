"""Fitted upstream embeddings reused across runs (fedsc.upstream.cache).

A hit must give the bits a fresh fit gives, and anything the embedding depends on must
change the key; a damaged entry is refitted, never used. Cheap: PCA on simulated cells.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsc import settings
from fedsc.datasets import simulate
from fedsc.preprocessing import preprocess
from fedsc.run.prepare import INPUT_PREPARATION
from fedsc.run_config import RunConfig
from fedsc.sweep import _upstream_cache
from fedsc.upstream.cache import UpstreamCache, fingerprint


@pytest.fixture(scope="module")
def cells():
    return simulate(240, 300, n_batches=3, n_cell_types=3, seed=0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(settings._values, "upstream_cache", tmp_path / "cache")
    return tmp_path / "cache"


def _prepare(adata, **kw):
    cfg = RunConfig(method="scbatchprox", batch_key="batch", labels_key="cell_type", **kw)
    return INPUT_PREPARATION.get("embedding")(adata, cfg)


def _key(cache, adata, **kw):
    args = dict(
        method="pca", n_comps=10, seed=0, batch_key="batch", labels_key="cell_type", params={}
    )
    return cache.key(adata, **{**args, **kw})


def test_every_input_of_the_fit_changes_the_key(cells, tmp_path, monkeypatch):
    cache = UpstreamCache(tmp_path)
    expr = preprocess(cells, n_top_genes=100)
    base = _key(cache, expr)
    assert _key(cache, expr) == base  # deterministic
    changed = [
        _key(cache, expr, seed=1),
        _key(cache, expr, n_comps=11),
        _key(cache, expr, method="ica"),
        _key(cache, expr, params={"max_epochs": 5}),
        _key(cache, expr, batch_key="cell_type"),
    ]
    other = expr.copy()
    other.X = other.X.copy()
    other.X[0, 0] += 1.0  # one value of one cell
    changed.append(_key(cache, other))
    relabel = expr.copy()
    relabel.obs["cell_type"] = np.roll(relabel.obs["cell_type"].astype(str).to_numpy(), 1)
    changed.append(_key(cache, relabel))
    other_threads = 1 if settings.resolved_threads() != 1 else 2  # within the CPUs here
    monkeypatch.setitem(settings._values, "threads", other_threads)
    changed.append(_key(cache, expr))  # threads change a fit's bits in the fast mode
    assert base not in changed and len(set(changed)) == len(changed)
    assert fingerprint(expr, ["batch"]) != fingerprint(expr, ["batch", "cell_type"])


def test_a_second_run_takes_the_first_runs_embedding_bit_for_bit(cells, cache_dir):
    first = _prepare(cells.copy(), upstream="pca", n_comps=10, seed=3)
    assert first.info["upstream"].get("cached") is False
    (entry,) = cache_dir.glob("*.npy")
    second = _prepare(cells.copy(), upstream="pca", n_comps=10, seed=3)
    record = second.info["upstream"]
    assert record["cached"] is True and record["cache_key"] == entry.stem
    assert record["seconds"] == first.info["upstream"]["seconds"]  # the fit's own time
    a = first.adata.obsm[first.use_rep]
    b = second.adata.obsm[second.use_rep]
    np.testing.assert_array_equal(a, b)
    assert b.dtype == a.dtype and second.adata.uns["fedsc_embedding"][second.use_rep]
    # another seed is another fit, and another entry (exact PCA ignores it; ICA, FA and
    # the scvi-tools models do not)
    third = _prepare(cells.copy(), upstream="pca", n_comps=10, seed=4)
    assert third.info["upstream"]["cached"] is False
    assert len(list(cache_dir.glob("*.npy"))) == 2


def test_a_damaged_entry_is_refitted_not_used(cells, cache_dir):
    first = _prepare(cells.copy(), upstream="pca", n_comps=10, seed=3)
    (entry,) = cache_dir.glob("*.npy")
    np.save(entry, np.zeros((5, 10), dtype=np.float32))  # wrong number of cells
    again = _prepare(cells.copy(), upstream="pca", n_comps=10, seed=3)
    assert again.info["upstream"]["cached"] is False
    np.testing.assert_array_equal(again.adata.obsm[again.use_rep], first.adata.obsm[first.use_rep])
    entry.with_suffix(".json").write_text("{not json")
    assert UpstreamCache(cache_dir).load(entry.stem, cells.n_obs) is None


def test_no_cache_unless_a_folder_is_set(cells, monkeypatch, tmp_path):
    monkeypatch.setitem(settings._values, "upstream_cache", None)
    prepared = _prepare(cells.copy(), upstream="pca", n_comps=10, seed=3)
    assert "cached" not in prepared.info["upstream"]
    # a sweep sets its own folder for its runs, and puts the setting back
    with _upstream_cache(tmp_path / "out", scheduler=None):
        assert settings.upstream_cache == tmp_path / "out" / "upstream_cache"
    assert settings.upstream_cache is None
    with _upstream_cache(tmp_path / "out", scheduler="tcp://127.0.0.1:1"):
        assert settings.upstream_cache is None  # Dask workers may not see this folder
    monkeypatch.setitem(settings._values, "upstream_cache", tmp_path / "mine")
    with _upstream_cache(tmp_path / "out", scheduler=None):
        assert settings.upstream_cache == tmp_path / "mine"  # the user's folder wins
    json.dumps(settings.snapshot())  # picklable/JSON-able for worker processes


def test_entries_cached_before_the_labels_key_rename_are_still_found(cells, tmp_path, monkeypatch):
    """The key hashes the labels column under its old name, ``label_key`` (as the run id
    does), and an old entry's record reads ``labels_key``."""
    import fedsc.upstream.cache as cache_module

    hashed = []
    dumps = cache_module.json.dumps
    monkeypatch.setattr(
        cache_module.json, "dumps", lambda o, **kw: hashed.append(o) or dumps(o, **kw)
    )
    cache = UpstreamCache(tmp_path)
    key = _key(cache, cells)
    assert hashed[-1]["label_key"] == "cell_type" and "labels_key" not in hashed[-1]
    monkeypatch.undo()
    cache.store(key, np.ones((cells.n_obs, 2), dtype=np.float32), {"label_key": "cell_type"})
    _, record = cache.load(key, cells.n_obs)
    assert record == {"labels_key": "cell_type"}
