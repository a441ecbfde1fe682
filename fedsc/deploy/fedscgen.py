"""FedscGen deployed: the sites' steps and the coordinator's driver.

No second implementation: a site trains with :class:`fedsc.methods.fedscgen.FedScGenMethod`
(its own cells only) and corrects with :class:`~fedsc.methods.fedscgen.CorrectionSite`;
the coordinator runs :func:`fedsc.federation.run_federation` (same strategies) and
:func:`~fedsc.methods.fedscgen.dominant_means`, with :class:`~fedsc.deploy.remote.RemoteValue`
references where simulation holds the clients' values. Client ``i`` is the ``i``-th
training site in sorted (or ``client_order``) order, then the held-out sites, exactly as
:func:`fedsc.data.split_clients` numbers the batches of one AnnData, so a deployment at a
seed reproduces the simulation at that seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import smpc
from fedsc.data.validate import get_representation
from fedsc.deploy.remote import RemoteMethod, RemoteValue
from fedsc.deploy.site import Site, keep_metrics, register_step, write_output
from fedsc.errors import FedscInputError
from fedsc.federation import State, run_federation
from fedsc.federation.seeding import client_generators
from fedsc.methods import RunInputs
from fedsc.methods.fedscgen import (
    CorrectionSite,
    FedScGenConfig,
    FedScGenMethod,
    dominant_means,
    model_from_state,
)
from fedsc.methods.vae import (
    INIT,
    SPLIT,
    VAE,
    as_tensor,
    derive_generator,
    split_train_validation,
    torch_threads,
)

#: Metrics a FedscGen client reports per round (without DP-SGD).
METRICS = ("train_loss", "val_loss")
_MODEL = "fedscgen/model"


def config_of(params: Mapping[str, Any]) -> FedScGenConfig:
    """The method config of a run's ``params`` (as :func:`run_params` wrote it)."""
    return FedScGenConfig(**params["config"])


def _state(arrays: Mapping[str, np.ndarray]) -> State:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def _expression(site: Site, params: Mapping[str, Any]) -> torch.Tensor:
    return as_tensor(get_representation(site.adata, layer=params.get("layer")))


# ----------------------------------------------------------------------------- site steps
@register_step("fedscgen/update")
def site_update(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> State:
    """Local training from the global state (``arrays``) for round ``params["round"]``."""
    config = config_of(params)
    index, r, seed = int(params["index"]), int(params["round"]), int(params["seed"])
    with torch_threads(config.num_threads):
        method = FedScGenMethod(
            {index: _expression(site, params)}, config, seed, {index: site.name or str(index)}
        )
        result = method.local_update(
            index, _state(arrays), r, client_generators(seed, r, [index])[0]
        )
    keep_metrics(site, "fedscgen", r, result.metrics, weight=result.weight)
    return result.state


def _correction_site(
    site: Site, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> CorrectionSite:
    if arrays:
        site.state[_MODEL] = {k: np.asarray(v) for k, v in arrays.items()}
    if _MODEL not in site.state:
        raise FedscInputError("the coordinator has not sent the trained model to this site yet.")
    config = config_of(params)
    x = _expression(site, params)
    model = model_from_state(_state(site.state[_MODEL]), int(x.shape[1]), config)
    vocab = [str(v) for v in params["vocabulary"]]
    labels = site.adata.obs[params["label_key"]].astype(str).to_numpy()
    unknown = sorted(set(labels) - set(vocab))
    if unknown:
        raise FedscInputError(
            f"this site has cell types {unknown} outside the agreed vocabulary; add them to "
            "label_vocabulary or relabel them."
        )
    with torch_threads(config.num_threads):
        return CorrectionSite(model, x, labels, {t: i for i, t in enumerate(vocab)})


@register_step("fedscgen/presence")
def site_presence(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Correction step b (receives and keeps the trained model)."""
    return _correction_site(site, params, arrays).presence()


@register_step("fedscgen/shared_counts")
def site_shared_counts(
    site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]
) -> np.ndarray:
    """Correction step c: counts of the shared types (argmax input)."""
    return _correction_site(site, params, {}).shared_counts(np.asarray(params["shared"]))


@register_step("fedscgen/contribution")
def site_contribution(
    site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Correction step d: latent sums of the types this site dominates."""
    corr = _correction_site(site, params, {})
    return corr.contribution(
        np.asarray(params["shared"]), np.asarray(params["winners"]), int(params["position"])
    )


@register_step("fedscgen/apply", public=True)
def site_apply(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Correction step e: shift and decode; write ``<out_dir>/<site>.h5ad`` at the site."""
    corr = _correction_site(site, params, {})
    config = config_of(params)
    with torch_threads(config.num_threads):
        latent, expression = corr.corrected(np.asarray(params["shared"]), arrays["means"])
    out = site.adata.copy()
    key = str(params.get("key_added", "fedscgen"))
    out.obsm[f"X_{key}"] = latent
    out.layers[key] = expression
    return write_output(
        site,
        str(params["batch_key"]),
        out,
        keys=[f"X_{key}", f"layers/{key}"],
        run_token=params.get("run_token"),
    )


# ----------------------------------------------------------------------------- coordinator
@dataclass
class RemoteCorrectionSite:
    """The coordinator's stand-in for one site's :class:`CorrectionSite`."""

    site: str
    params: Mapping[str, Any]
    model: State | None = None

    def presence(self) -> RemoteValue:
        """Step b at the site (the request carries the trained model)."""
        return RemoteValue(self.site, "fedscgen/presence", self.params, self.model)

    def shared_counts(self, shared: np.ndarray) -> RemoteValue:
        """Step c at the site."""
        return RemoteValue(
            self.site, "fedscgen/shared_counts", {**self.params, "shared": _ints(shared)}
        )

    def contribution(self, shared: np.ndarray, winners: np.ndarray, position: int) -> RemoteValue:
        """Step d at the site."""
        params = {
            **self.params,
            "shared": _ints(shared),
            "winners": _ints(winners),
            "position": position,
        }
        return RemoteValue(self.site, "fedscgen/contribution", params)


def _ints(values: Any) -> list[int]:
    return [int(v) for v in np.asarray(values).tolist()]


def site_order(
    hello: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(training sites, held-out sites) in client-index order, as split_clients numbers them."""
    names = sorted(hello)
    order = [str(o) for o in params.get("client_order") or names]
    if sorted(order) != names:
        raise FedscInputError(f"client_order {order} must list every site {names} exactly once.")
    holdout = [str(h) for h in params.get("holdout") or []]
    unknown = sorted(set(holdout) - set(names))
    if unknown:
        raise FedscInputError(f"held-out site(s) {unknown} are not connected; sites: {names}.")
    train = [n for n in order if n not in holdout]
    if not train:
        raise FedscInputError("every site is held out: at least one site must train.")
    return train, [n for n in order if n in holdout]


def run_params(inputs: RunInputs, config: FedScGenConfig) -> dict[str, Any]:
    """The driver's ``params`` for a run with ``inputs`` and ``config`` (same seed and keys)."""
    check_deployable(config)
    return {
        "config": config.to_dict(),
        "seed": int(inputs.seed),
        "batch_key": inputs.batch_key,
        "label_key": inputs.label_key,
        "layer": inputs.layer,
        "holdout": list(inputs.holdout),
    }


def check_deployable(config: FedScGenConfig, transport: str | None = None) -> None:
    """Refuse settings the deployment does not support yet, naming the fix (any transport)."""
    if config.dp is not None:
        raise FedscInputError(
            "differential privacy is not available in deployment yet (its mechanisms run in "
            "the coordinator's process in simulation); run DP studies with `fedsc run`."
        )
    if config.keep_optimizer_state:
        raise FedscInputError(
            "keep_optimizer_state=True needs each site to keep its Adam moments between "
            "rounds, which deployed sites do not yet do; use the default (fresh Adam)."
        )


def training_cells(
    n_obs: Mapping[str, int],
    order: list[str],
    train: list[str],
    config: FedScGenConfig,
    seed: int,
) -> dict[str, int]:
    """Training cells per training site, as the sites split them; refuse too few.

    A site with fewer training cells than one minibatch is refused. ``order``: every site in client-index order (training sites, then held-out ones).
    ``fedsc deploy local`` calls this before it starts Flower, the driver on the sites'
    counts.
    """
    n_train = {
        n: len(
            split_train_validation(
                int(n_obs[n]), config.validation_fraction, derive_generator(seed, SPLIT, i)
            )[0]
        )
        for i, n in enumerate(order)
        if n in train
    }
    small = {n: k for n, k in n_train.items() if k < config.batch_size}
    if small:
        raise FedscInputError(
            f"sites {sorted(small)} have fewer training cells ({small}) than one minibatch "
            f"(batch_size={config.batch_size}); lower batch_size or hold them out."
        )
    return n_train


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
    """Train and correct over the connected sites; returns the run's public record.

    Parameters
    ----------
    hello
        Each site's public facts (step ``hello``), by site name.
    aggregator
        A deployed aggregator (:mod:`fedsc.deploy.aggregators`).
    apply
        ``apply({site: (step, params, arrays)}) -> {site: public reply}``: runs a public
        step at the sites (the final correction, which writes each site's output).
    params
        ``config`` (FedScGenConfig fields), ``seed``, ``batch_key``, ``label_key``, ``layer``,
        ``holdout``, ``client_order``, ``label_vocabulary``, ``key_added``.
    on_round_end
        ``(round, global_state)`` after each round (e.g. to save the coordinator's model).
    live
        ``live(sites) -> sites`` without those that dropped out (their output is skipped).
    """
    config = config_of(params)
    check_deployable(config)
    digests = {h["genes"] for h in hello.values()}
    if len(digests) != 1:
        raise FedscInputError(
            "the sites measure different genes (or in a different order): "
            f"{ {s: h['genes'] for s, h in hello.items()} }; agree on one gene list first "
            "(docs/deployment.md, federated preprocessing)."
        )
    train, held = site_order(hello, params)
    names = {i: n for i, n in enumerate(train + held)}
    seed = int(params["seed"])
    n_genes = int(next(iter(hello.values()))["n_vars"])
    n_train = training_cells(
        {n: int(h["n_obs"]) for n, h in hello.items()}, train + held, train, config, seed
    )
    base = {
        "config": config.to_dict(),
        "seed": seed,
        "batch_key": params["batch_key"],
        "label_key": params["label_key"],
        "layer": params.get("layer"),
    }
    with torch_threads(config.num_threads):
        model = VAE(n_genes, config, derive_generator(seed, INIT))
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # BatchNorm's step counter is part of the state: SecAgg+ must cover its range
        steps = config.rounds * config.local_epochs * -(-max(n_train.values()) // config.batch_size)
        update = {**base, "n_train": n_train, "bound": steps + 1}
        method = RemoteMethod("fedscgen", names, update, initial, METRICS)
        fed = run_federation(
            method,
            list(range(len(train))),
            aggregator,
            rounds=config.rounds,
            seed=seed,
            show_progress=False,
            description="FedscGen rounds (deployed)",
            strategy=strategy,
            on_round_end=on_round_end,
        )
    vocabulary = params.get("label_vocabulary") or sorted(
        set().union(*(set(h["labels"]) for h in hello.values()))
    )
    # a latent sum of up to n cells: values up to 64 n (sites refuse larger ones)
    cap = max(int(h["n_obs"]) for h in hello.values())
    corr_params = {**base, "vocabulary": list(vocabulary), "bound": 64.0 * cap}
    final = {k: v.detach().clone() for k, v in fed.state.items()}
    sites = [RemoteCorrectionSite(names[i], corr_params, final) for i in range(len(names))]
    n_clients, shared, winners, means = dominant_means(sites, aggregator, config.latent)
    alive = list(names.values()) if live is None else live(list(names.values()))
    written = apply(
        {
            site: (
                "fedscgen/apply",
                {
                    **corr_params,
                    "shared": _ints(shared),
                    "key_added": params.get("key_added", "fedscgen"),
                },
                {"means": np.asarray(means, dtype=np.float64)},
            )
            for site in alive
        }
    )
    shared_names = [vocabulary[t] for t in shared]
    return {
        "history": fed.history,
        "clients": [
            {
                "name": names[i],
                "index": i,
                "held_out": names[i] in held,
                "n_cells": int(hello[names[i]]["n_obs"]),
                "n_train": n_train.get(names[i], 0),
            }
            for i in range(len(names))
        ],
        "correction": {
            "vocabulary": list(vocabulary),
            "n_clients_per_type": {t: int(n) for t, n in zip(vocabulary, n_clients, strict=True)},
            "shared_types": shared_names,
            "dominant": {t: names[int(w)] for t, w in zip(shared_names, winners, strict=True)},
        },
        "outputs": written,
        "dropped_sites": [n for n in names.values() if n not in alive],
        "seconds_training": fed.seconds,
        "model_state": {k: v.detach().cpu().numpy() for k, v in fed.state.items()},
    }
