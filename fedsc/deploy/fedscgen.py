"""FedscGen deployed: the sites' steps and the deployed clients of the one driver.

No second implementation: a site trains with :class:`fedsc.methods.fedscgen.FedScGenMethod`
(its own cells only; with cell- or donor-level DP, DP-SGD with the site's own noise and
accountant)
and corrects with :class:`~fedsc.methods.fedscgen.CorrectionSite`; the coordinator runs
FedscGen's one driver, :func:`fedsc.methods.fedscgen_driver.drive`, over
:class:`RemoteSites`, whose steps return :class:`~fedsc.deploy.remote.RemoteValue`
references where simulation holds the clients' values. Client ``i`` is the ``i``-th
training site in sorted (or ``client_order``) order, then the held-out sites, exactly as
:func:`fedsc.data.split_clients` numbers the batches of one AnnData, so a deployment at a
seed reproduces the simulation at that seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import smpc
from fedsc.data.validate import get_representation
from fedsc.deploy.checks import fedscgen_deployable as check_deployable
from fedsc.deploy.remote import RemoteMethod, RemoteValue
from fedsc.deploy.site import Site, keep_metrics, register_step, write_output
from fedsc.deploy.site_mechanisms import (
    client_dp_of,
    epsilon_by_observer,
    with_site_mechanisms,
)
from fedsc.errors import FedscInputError
from fedsc.federation import LocalResult, State
from fedsc.federation.seeding import client_generators
from fedsc.methods import RunInputs
from fedsc.methods.configs import dp_mapping
from fedsc.methods.fedscgen import (
    CorrectionSite,
    FedScGenConfig,
    FedScGenMethod,
    donor_codes,
    training_donors,
)
from fedsc.methods.fedscgen_driver import check_labels, drive, global_model, training_cells
from fedsc.methods.vae import as_tensor, torch_threads

if TYPE_CHECKING:
    from fedsc.privacy.accounting import DPConfig

__all__ = [
    "RemoteCorrectionSite",
    "RemoteSites",
    "check_deployable",
    "config_of",
    "run",
    "run_params",
    "site_order",
    "training_cells",
]

#: Metrics a FedscGen client reports per round (without DP-SGD).
METRICS = ("train_loss", "val_loss")
_MODEL = "fedscgen/model"
#: What a site keeps of its DP-SGD for its accountant: steps so far, q and σ.
_DP = "fedscgen/dp"
#: A site's Adam moments between rounds (``keep_optimizer_state``); never sent.
_OPTIMIZER = "fedscgen/optimizer"


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
    config = site_dp_config(config_of(params), params.get("noise_multiplier"))
    index, r, seed = int(params["index"]), int(params["round"]), int(params["seed"])
    donors = {index: _donors(site, config)} if _level(config) == "donor" else None
    with torch_threads(config.num_threads):
        # with cell- or donor-level DP, DP-SGD here: the noise from this site's own fresh
        # randomness (seeded from the run seed only when the agreed config says simulated:
        # tests); at donor level the site's weight is its own count of training donors
        method = FedScGenMethod(
            {index: _expression(site, params)},
            config,
            seed,
            {index: site.name or str(index)},
            donors=donors,
        )
        if config.keep_optimizer_state and _OPTIMIZER in site.state:
            method.restore_optimizer_state(index, _state(site.state[_OPTIMIZER]))
        result = method.local_update(
            index, _state(arrays), r, client_generators(seed, r, [index])[0]
        )
    if config.keep_optimizer_state:  # kept here for the next round, as a simulated client
        moments = method.optimizer_state(index)
        site.state[_OPTIMIZER] = {k: v.detach().numpy().copy() for k, v in moments.items()}
    keep_metrics(site, "fedscgen", r, result.metrics, weight=result.weight)
    if index in method.dp_steps:  # the site's own accountant: what its cells went through
        steps, q = method.dp_steps[index]
        assert method.dp is not None
        site.state[_DP] = {
            "steps": np.asarray(steps),
            "sampling_rate": np.asarray(q),
            "noise_multiplier": np.asarray(float(method.dp.noise_multiplier or 0.0)),
        }
    return result.state


def _level(config: FedScGenConfig) -> str | None:
    return None if config.dp is None else str(config.dp.get("level", "client"))


def _donors(site: Site, config: FedScGenConfig) -> torch.Tensor:
    """The site's donor id per cell (``obs[donor_key]``, coded among its own donors)."""
    return donor_codes(site.adata, str(config.donor_key))


@register_step("fedscgen/donors", public=True)
def site_donors(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> int:
    """D: this site's training donors, its FedAvg weight under donor-level DP.

    Public under the donor relation (as the training-cell count is under the cell
    relation): the number, never the donors' names. Counted on the split training uses.
    """
    config = config_of(params)
    if _level(config) != "donor":
        raise FedscInputError(
            "the coordinator asks for this site's donor count, but the agreed config is not "
            "donor-level DP; a site reveals it only when donors are the protected unit."
        )
    return training_donors(_donors(site, config), config, int(params["seed"]), int(params["index"]))


def site_dp_config(config: FedScGenConfig, sigma: Any) -> FedScGenConfig:
    """The config a site trains with: the agreed one, σ the coordinator calibrated.

    Cell and donor level; client level unchanged (its noise is the site's share of the
    ``gaussian`` mechanism, :mod:`fedsc.deploy.site_mechanisms`, not DP-SGD). With σ in
    the agreed config, a different σ is refused; with a ``target_epsilon`` to calibrate
    to, the coordinator calibrates σ over every site's training cells (public weights)
    and the site, when it builds its DP-SGD, checks that its own ε stays within the
    target (:func:`~fedsc.methods.fedscgen_driver.resolve_dp`).
    """
    if config.dp is None:
        return config
    from fedsc.privacy.accounting import DPConfig

    agreed = DPConfig.from_dict(dp_mapping(config.dp))
    assert agreed is not None
    if agreed.level == "client":
        return config
    if agreed.noise_multiplier is not None:
        if sigma is not None and float(sigma) != agreed.noise_multiplier:
            raise FedscInputError(
                f"the coordinator asks for noise_multiplier={sigma}, but the agreed DP "
                f"config fixes {agreed.noise_multiplier}; this site trains with the agreed one."
            )
        return config
    if sigma is None:
        raise FedscInputError(
            "the agreed DP config calibrates sigma to target_epsilon, but the coordinator "
            "sent none; the site cannot train with DP-SGD without it."
        )
    return replace(config, dp={**config.dp, "noise_multiplier": float(sigma)})


def _site_epsilon(config: FedScGenConfig, kept: Mapping[str, np.ndarray]) -> float:
    """ε of this site's cells after its DP-SGD (its own accountant)."""
    from fedsc.privacy.accounting import DPConfig

    dp = site_dp_config(config, float(kept["noise_multiplier"])).dp
    resolved = DPConfig.from_dict(dp_mapping(dict(dp or {})))
    assert resolved is not None
    return float(resolved.epsilon(int(kept["steps"]), float(kept["sampling_rate"])))


def _correction_site(
    site: Site, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> CorrectionSite:
    if arrays:
        site.state[_MODEL] = {k: np.asarray(v) for k, v in arrays.items()}
    if _MODEL not in site.state:
        raise FedscInputError("the coordinator has not sent the trained model to this site yet.")
    config = config_of(params)
    x = _expression(site, params)
    model = global_model(_state(site.state[_MODEL]), int(x.shape[1]), config)
    vocab = [str(v) for v in params["vocabulary"]]
    labels = site.adata.obs[params["labels_key"]].astype(str).to_numpy()
    check_labels(labels, vocab, "this site")
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
    receipt = write_output(
        site,
        str(params["batch_key"]),
        out,
        keys=[f"X_{key}", f"layers/{key}"],
        run_token=params.get("run_token"),
    )
    kept = site.state.get(_DP)
    if kept is not None:  # a training site's ε (public: from public counts and settings)
        receipt["epsilon"] = _site_epsilon(config, kept)
    return receipt


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
        "labels_key": inputs.labels_key,
        "layer": inputs.layer,
        "holdout": list(inputs.holdout),
    }


class RemoteSites:
    """A deployment's sites as the driver's clients (a :class:`FedscGenSites`).

    Each step returns a reference to the value the site computes (a
    :class:`~fedsc.deploy.remote.RemoteValue`); the deployed aggregator asks the sites for
    it through the transport.

    Parameters
    ----------
    hello
        Each site's public facts (step ``hello``), by site name.
    params
        The run's ``params`` (:func:`run`).
    apply
        Runs a public step at the sites (the final correction, which writes each output).
    live
        ``live(sites) -> sites`` without those that dropped out (their output is skipped).
    """

    kind = "sites"

    def __init__(
        self,
        hello: Mapping[str, Mapping[str, Any]],
        params: Mapping[str, Any],
        apply: Callable[[dict[str, Any]], dict[str, Any]],
        live: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        train, held = site_order(hello, params)
        self.names = train + held
        self.n_training = len(train)
        self.n_obs = {n: int(hello[n]["n_obs"]) for n in self.names}
        self.n_genes = int(next(iter(hello.values()))["n_vars"])
        self.hello = hello
        self.config = config_of(params)
        self.base = {
            "config": self.config.to_dict(),
            "seed": int(params["seed"]),
            "batch_key": params["batch_key"],
            "labels_key": params["labels_key"],
            "layer": params.get("layer"),
        }
        self.key_added = str(params.get("key_added", "fedscgen"))
        self._apply = apply
        self._live = live
        self._method: RemoteMethod | None = None
        self._donors: dict[str, int] = {}
        self._correction: dict[str, Any] = {}
        #: The sites' receipts of the final step, and those that dropped out before it.
        self.receipts: dict[str, Any] = {}
        self.dropped: list[str] = []

    def labels(self) -> list[str]:
        """The sorted union of the sites' cell types (their ``hello``)."""
        return sorted(set().union(*(set(h["labels"]) for h in self.hello.values())))

    def n_donors(self) -> dict[str, int]:
        """Each training site's count of training donors (a public step at the sites)."""
        train = self.names[: self.n_training]
        replies = self._apply(
            {s: ("fedscgen/donors", {**self.base, "index": i}, {}) for i, s in enumerate(train)}
        )
        self._donors = {s: int(replies[s]) for s in train}
        return dict(self._donors)

    def start_training(
        self, dp: DPConfig | None, n_train: Mapping[str, int], initial: State
    ) -> None:
        """The update requests: public weights, SecAgg+'s bound, the calibrated σ."""
        cfg = self.config
        # BatchNorm's step counter is part of the state: SecAgg+ must cover its range
        steps = cfg.rounds * cfg.local_epochs * -(-max(n_train.values()) // cfg.batch_size)
        update = {**self.base, "n_train": dict(n_train), "bound": steps + 1}
        metrics: Sequence[str] = METRICS
        if dp is not None and dp.level in ("cell", "donor"):
            update["noise_multiplier"] = dp.noise_multiplier
            metrics = ()  # DP-SGD reports no losses (un-noised functions of the cells)
        if dp is not None and dp.level == "donor":
            update["weights"] = dict(self._donors)  # FedAvg over donors (each site checks)
        names = dict(enumerate(self.names[: self.n_training]))
        self._method = RemoteMethod("fedscgen", names, update, initial, metrics)

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """A reference to the site's update of this round, and to its metrics."""
        assert self._method is not None
        return self._method.local_update(client, global_state, round_index, generator)

    def correction_steps(
        self, state: State, vocabulary: Sequence[str]
    ) -> list[RemoteCorrectionSite]:
        """Stand-ins for each site's correction steps (the first request carries ``state``)."""
        # a latent sum of up to n cells: values up to 64 n (sites refuse larger ones)
        cap = max(self.n_obs.values())
        self._correction = {**self.base, "vocabulary": list(vocabulary), "bound": 64.0 * cap}
        final = {k: v.detach().clone() for k, v in state.items()}
        return [RemoteCorrectionSite(n, self._correction, final) for n in self.names]

    def apply(self, shared: np.ndarray, means: np.ndarray) -> dict[str, Any]:
        """Step e at every site still there; each writes its output; their receipts."""
        alive = list(self.names) if self._live is None else self._live(list(self.names))
        self.dropped = [n for n in self.names if n not in alive]
        params = {**self._correction, "shared": _ints(shared), "key_added": self.key_added}
        arrays = {"means": np.asarray(means, dtype=np.float64)}
        self.receipts = self._apply({s: ("fedscgen/apply", params, arrays) for s in alive})
        return self.receipts

    def epsilon(self) -> dict[str, float]:
        """The ε each training site reported with its output (its own accountant)."""
        return {
            s: float(r["epsilon"])
            for s, r in self.receipts.items()
            if isinstance(r, Mapping) and "epsilon" in r
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
        ``config`` (FedScGenConfig fields), ``seed``, ``batch_key``, ``labels_key``, ``layer``,
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
    sites = RemoteSites(hello, params, apply, live)
    dp = client_dp_of(params["config"])
    # the run's mechanisms and client-level DP's noise, applied by each site to its value
    aggregator = with_site_mechanisms(aggregator, params, config.rounds, sites.n_training)
    with torch_threads(config.num_threads):
        done = drive(
            sites,
            aggregator,
            config,
            int(params["seed"]),
            vocabulary=params.get("label_vocabulary"),
            strategy=strategy,
            show_progress=False,
            description="FedscGen rounds (deployed)",
            on_round_end=on_round_end,
        )
    fed = done.federation
    record = dict(done.dp_record)
    if dp is not None:  # ε per observer, read off the ledger as a simulated run's is
        record["epsilon_by_observer"] = epsilon_by_observer(aggregator.ledger, float(dp["delta"]))
    return {
        "history": fed.history,
        "clients": done.clients,
        "correction": done.correction.summary(),
        "dp": record,
        "outputs": done.outputs,
        "dropped_sites": sites.dropped,
        "seconds_training": fed.seconds,
        "model_state": {k: v.detach().cpu().numpy() for k, v in fed.state.items()},
    }
