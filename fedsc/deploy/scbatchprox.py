"""scBatchProx deployed (the paper's protocol): the sites' steps and the coordinator's driver.

A site trains its own adapter row with :class:`fedsc.methods.scbatchprox.ScBatchProxFederation`
built from its own cells only (its split seeded by its federation index, as in
simulation) and refines its cells with its row; the coordinator runs
:func:`fedsc.federation.run_federation` (same strategies) over
:class:`~fedsc.deploy.remote.RemoteValue` references. The upstream embedding is an agreed
shared model: each site's file holds its cells projected by it (``obsm[embedding_key]``);
``fedsc/data/federated_preprocessing.py`` fits such a PCA from secure sums.
``secure_rows`` (owner-revealed FedAvg) is not deployed yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import smpc
from fedsc.deploy.fedscgen import site_order
from fedsc.deploy.remote import RemoteMethod
from fedsc.deploy.site import Site, keep_metrics, register_step, write_output
from fedsc.errors import FedscInputError
from fedsc.federation import State, run_federation
from fedsc.federation.seeding import client_generators
from fedsc.methods import RunInputs
from fedsc.methods.scbatchprox import (
    FiLMAdapter,
    ScBatchProxConfig,
    ScBatchProxFederation,
    training_split,
)

METRICS = ("recon_loss",)


def config_of(params: Mapping[str, Any]) -> ScBatchProxConfig:
    """The method config of a run's ``params`` (as :func:`run_params` wrote it)."""
    cfg = dict(params["config"])
    cfg["adam_betas"] = tuple(cfg["adam_betas"])
    return ScBatchProxConfig(**cfg)


def _z(site: Site, params: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(site.adata.obsm[params["embedding_key"]], dtype=np.float64)


@register_step("scbatchprox/update")
def site_update(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> State:
    """Local epochs on this site's row from the global tables (``arrays``)."""
    config = config_of(params)
    index, r, seed = int(params["index"]), int(params["round"]), int(params["seed"])
    z = _z(site, params)
    method = ScBatchProxFederation(
        z,
        client_rows=[index],
        client_cells=[np.arange(len(z))],
        init=(np.asarray(arrays["gamma"]), np.asarray(arrays["beta"])),
        config=config,
        seed=seed,
        indices=[index],
    )
    method.client_names = [site.name or str(index)]
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}
    gen = client_generators(seed, r, [index])[0]
    result = method.local_update(0, state, r, gen)
    keep_metrics(site, "scbatchprox", r, result.metrics, weight=result.weight)
    return result.state


@register_step("scbatchprox/apply", public=True)
def site_apply(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Refine this site's cells with its own row; write ``<out_dir>/<site>.h5ad``."""
    index = int(params["index"])
    z = _z(site, params)
    refined = arrays["gamma"][index] * z + arrays["beta"][index]
    out = site.adata.copy()
    key = f"X_{params.get('key_added', 'scbatchprox')}"
    out.obsm[key] = refined
    return write_output(
        site, str(params["batch_key"]), out, keys=[key], run_token=params.get("run_token")
    )


def check_deployable(config: ScBatchProxConfig) -> None:
    """Refuse settings the deployment does not support yet, naming the fix."""
    if config.secure_rows:
        raise FedscInputError(
            "secure_rows (owner-revealed FedAvg) is not deployed yet; deploy the paper's "
            "protocol (secure_rows=False) or run secure_rows in simulation."
        )


def run_params(inputs: RunInputs, config: ScBatchProxConfig) -> dict[str, Any]:
    """The driver's ``params`` for a run with ``inputs`` and ``config`` (same seed and keys)."""
    check_deployable(config)
    return {
        "config": config.to_dict(),  # tuples travel as JSON lists; config_of restores them
        "seed": int(inputs.seed),
        "batch_key": inputs.batch_key,
        "label_key": inputs.label_key,
        "embedding_key": inputs.use_rep,
    }


def run(
    hello: Mapping[str, Mapping[str, Any]],
    aggregator: smpc.Aggregator,
    apply: Any,
    params: Mapping[str, Any],
    *,
    strategy: Any = None,
    on_round_end: Any = None,
    live: Any = None,
) -> dict[str, Any]:
    """Train the adapters over the connected sites and refine each site's cells.

    ``params``: ``config`` (ScBatchProxConfig fields), ``seed``, ``batch_key``,
    ``embedding_key`` (the agreed upstream embedding in each site's ``obsm``),
    ``client_order``, ``key_added``. Other arguments as :func:`fedsc.deploy.fedscgen.run`.
    """
    config = config_of(params)
    check_deployable(config)
    dims = {int(h.get("n_dims", -1)) for h in hello.values()}
    if len(dims) != 1 or -1 in dims:
        raise FedscInputError(
            f"the sites' embeddings differ in width ({ {s: h.get('n_dims') for s, h in hello.items()} }); "
            "project every site with the same agreed upstream model."
        )
    train, held = site_order(hello, params)
    if held:
        raise FedscInputError("scBatchProx trains every site (no holdout); drop holdout.")
    names = dict(enumerate(train))
    seed = int(params["seed"])
    d = dims.pop()
    n_train = {
        n: len(training_split(int(hello[n]["n_obs"]), config.train_fraction, seed, i))
        for i, n in names.items()
    }
    base = {
        "config": config.to_dict(),  # tuples travel as JSON lists; config_of restores them
        "seed": seed,
        "batch_key": params["batch_key"],
        "embedding_key": params["embedding_key"],
        "n_train": n_train,
    }
    identity = FiLMAdapter.identity(list(names.values()), d)  # as ScBatchProx.fit starts
    initial = {"gamma": torch.from_numpy(identity.gamma), "beta": torch.from_numpy(identity.beta)}
    method = RemoteMethod("scbatchprox", names, base, initial, METRICS)
    fed = run_federation(
        method,
        list(range(len(names))),
        aggregator,
        rounds=config.rounds,
        seed=seed,
        show_progress=False,
        description="scBatchProx rounds (deployed)",
        strategy=strategy,
        on_round_end=on_round_end,
    )
    tables = {k: v.detach().cpu().numpy() for k, v in fed.state.items()}
    alive = list(names.values()) if live is None else live(list(names.values()))
    index = {n: i for i, n in names.items()}
    key_added = params.get("key_added", "scbatchprox")
    written = apply(
        {
            site: (
                "scbatchprox/apply",
                {**base, "index": index[site], "key_added": key_added},
                tables,
            )
            for site in alive
        }
    )
    return {
        "history": fed.history,
        "clients": [
            {"name": n, "index": i, "n_cells": int(hello[n]["n_obs"]), "n_train": n_train[n]}
            for i, n in names.items()
        ],
        "outputs": written,
        "dropped_sites": [n for n in names.values() if n not in alive],
        "seconds_training": fed.seconds,
        "model_state": tables,
    }
