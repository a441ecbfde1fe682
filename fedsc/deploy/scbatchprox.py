"""scBatchProx deployed (the paper's protocol): the sites' steps and the coordinator's driver.

A site trains its own adapter row with :class:`fedsc.methods.scbatchprox.ScBatchProxFederation`
built from its own cells only (its split seeded by its federation index, as in
simulation) and refines its cells with its row; the coordinator runs scBatchProx's one
driver, :func:`fedsc.methods.scbatchprox_driver.drive` (the simulation's), over
:class:`RemoteSites`, whose updates are :class:`~fedsc.deploy.remote.RemoteValue`
references. The upstream embedding is an agreed
shared model: each site's file holds its cells projected by it (``obsm[embedding_key]``);
``fedsc/data/federated_preprocessing.py`` fits such a PCA from secure sums.

``secure_rows`` (owner-revealed FedAvg, as :class:`~fedsc.federation.OwnerRevealFedAvg`
in simulation): each site keeps its own row in its state and sends its update in that
row (zeros elsewhere); the aggregator reveals row ``b`` of the weighted mean to site ``b``
only (``weighted_mean_to_owners``: over CrypTen the parties seal it for the site and
the coordinator relays ciphertext; the site's ClientApp opens it). The delivery rides on
the site's next request (the next round's update, or the final apply step), where the
site adds it to its row, as :meth:`ScBatchProxFederation.receive` does in simulation.
The coordinator holds no row and learns the total weight only. Over SecAgg+ it is
refused: the coordinator unmasks SecAgg+'s sum, so it would see every row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import smpc
from fedsc.deploy.checks import scbatchprox_deployable as check_deployable
from fedsc.deploy.fedscgen import site_order
from fedsc.deploy.records import OWNED_PREFIX, OWNER_PREFIX
from fedsc.deploy.remote import RemoteMethod, RemoteValue
from fedsc.deploy.site import RefusedRequest, Site, keep_metrics, register_step, write_output
from fedsc.deploy.site_mechanisms import (
    epsilon_by_observer,
    run_client_dp,
    with_site_mechanisms,
)
from fedsc.errors import FedscInputError
from fedsc.federation import LocalResult, State
from fedsc.federation.seeding import client_generators
from fedsc.methods import RunInputs
from fedsc.methods.scbatchprox import ScBatchProxConfig, ScBatchProxFederation
from fedsc.methods.scbatchprox_driver import check_strategy, drive

METRICS = ("recon_loss",)


def config_of(params: Mapping[str, Any]) -> ScBatchProxConfig:
    """The method config of a run's ``params`` (as :func:`run_params` wrote it)."""
    cfg = dict(params["config"])
    cfg["adam_betas"] = tuple(cfg["adam_betas"])
    return ScBatchProxConfig(**cfg)


def _z(site: Site, params: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(site.adata.obsm[params["embedding_key"]], dtype=np.float64)


#: Site state (``secure_rows``): this site's own rows and how many means it received;
#: the operation whose owner-revealed mean it waits for.
_ROWS, _PENDING = "scbatchprox/rows", "scbatchprox/pending"


def _layout(n_sites: int, dims: int) -> dict[str, list[int]]:
    """The structure of a ``secure_rows`` update (public): both tables, every row."""
    return {"beta": [n_sites, dims], "gamma": [n_sites, dims]}


def owner_runs(
    layout: Mapping[str, Any], owners: list[dict[str | None, list[int]]]
) -> list[list[tuple[int, int]]]:
    """:func:`fedsc.deploy.crypten.owner_runs` (imported when a secure_rows step runs)."""
    from fedsc.deploy.crypten import owner_runs as runs

    return runs(layout, owners)


def _own_runs(params: Mapping[str, Any], index: int) -> list[tuple[int, int]]:
    """The flat runs of row ``index`` of both tables in a ``secure_rows`` update."""
    return owner_runs(params["layout"], [{"gamma": [index], "beta": [index]}])[0]


def _check_owned(site_name: str, params: Mapping[str, Any], index: int) -> None:
    """``secure_rows`` over CrypTen: this site's row may be revealed to this site only.

    The context (bound to every sealed share; the parties send result slices exactly as
    it says, ``smpc.sealed.check_owner_destinations``) must give this site its row's runs
    and no other site any of them; a plain sum would give the coordinator the row.
    """
    owned = json.loads(str(params["context"])).get("owned")
    mine = _own_runs(params, index)
    if owned is None or [tuple(r) for r in owned.get(site_name, [])] != mine:
        raise RefusedRequest(
            "check 'owner slices': a secure_rows update is revealed only to its owner, but "
            f"the operation gives this site {None if owned is None else owned.get(site_name)} "
            f"instead of its row's runs {mine}; the coordinator would receive the row."
        )
    taken = {c for lo, hi in mine for c in range(lo, hi)}
    for other, runs in owned.items():
        if other != site_name and any(c in taken for lo, hi in runs for c in range(lo, hi)):
            raise RefusedRequest(
                f"check 'owner slices': the operation reveals part of this site's row to "
                f"{other!r}; each row goes to its owner only."
            )


def _delivered_mean(
    params: Mapping[str, Any], arrays: Mapping[str, np.ndarray], pending: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The site's row of the last owner-revealed mean (gamma row, beta row)."""
    index = int(params["index"])
    expected = np.asarray(pending["context"], np.uint8).tobytes()
    if not expected:  # plaintext (no context): the coordinator handed the rows
        return (
            np.asarray(arrays[f"{OWNED_PREFIX}gamma"], np.float64)[0],
            np.asarray(arrays[f"{OWNED_PREFIX}beta"], np.float64)[0],
        )
    # a private contribution: only slices the parties sealed for it, opened by the ClientApp
    context = np.asarray(arrays.get(f"{OWNED_PREFIX}context", []), np.uint8).tobytes()
    if context != expected:
        raise RefusedRequest(
            "check 'owner slices': the delivered slices belong to another operation than "
            "this site's last contribution (a replayed or re-targeted delivery)."
        )
    runs = _own_runs(params, index)
    tails = [k[len(OWNED_PREFIX) :] for k in arrays if k.startswith(OWNED_PREFIX)]
    starts = sorted(int(t) for t in tails if t.isdigit())
    if starts != sorted([lo for lo, _ in runs] + [int(np.prod(params["layout"]["beta"])) * 2]):
        raise RefusedRequest(
            f"check 'owner slices': slices starting at {starts} delivered, but this site's "
            f"row is {runs} and the total weight."
        )
    total = float(np.asarray(arrays[f"{OWNED_PREFIX}{starts[-1]}"]).reshape(-1)[0])
    flat = np.concatenate([np.asarray(arrays[f"{OWNED_PREFIX}{lo}"]) for lo, _ in runs]) / total
    d = int(params["layout"]["beta"][1])  # flat order: sorted keys (beta, then gamma)
    return flat[d:], flat[:d]


def _own_rows(
    site: Site, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray], dims: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``secure_rows``: this site's rows (identity before round 0) with the delivered mean.

    As :meth:`ScBatchProxFederation.receive` in simulation: the row plus the site's row of
    the last round's averaged update. Returns (gamma row, beta row, means received).
    """
    kept = site.state.get(_ROWS)
    if kept is None and int(params.get("round", 0)) > 0:
        raise RefusedRequest(
            f"check 'schedule': round {params['round']} requested, but this site keeps no "
            "row of this run (it trains secure_rows from round 0 on)."
        )
    if kept is None:
        gamma, beta, received = np.ones(dims), np.zeros(dims), 0
    else:
        gamma, beta = np.asarray(kept["gamma"]), np.asarray(kept["beta"])
        received = int(np.asarray(kept["received"]))
    pending = site.state.get(_PENDING)
    delivered = any(k.startswith(OWNED_PREFIX) for k in arrays)
    if pending is None and delivered:
        raise RefusedRequest(
            "check 'owner slices': a row of a mean was delivered, but this site contributed "
            "to no owner-revealed mean that it has not received yet."
        )
    if pending is not None:
        if not delivered:
            raise RefusedRequest(
                "check 'schedule': the owner-revealed mean of this site's last update was "
                "not delivered with this request; the site cannot go on from a stale row."
            )
        g_mean, b_mean = _delivered_mean(params, arrays, pending)
        gamma, beta, received = gamma + g_mean, beta + b_mean, received + 1
        site.state.pop(_PENDING)
    site.state[_ROWS] = {"gamma": gamma, "beta": beta, "received": np.asarray(received)}
    return gamma, beta, received


@register_step("scbatchprox/update")
def site_update(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> State:
    """Local epochs on this site's row from the global tables (``arrays``).

    ``secure_rows``: from the site's own row (with the last round's mean it was
    delivered); the value is the update in that row, zeros elsewhere.
    """
    config = config_of(params)
    index, r, seed = int(params["index"]), int(params["round"]), int(params["seed"])
    z = _z(site, params)
    if config.secure_rows:
        n_sites, dims = (int(n) for n in params["layout"]["gamma"])
        if dims != z.shape[1] or n_sites != len(params["n_train"]):
            raise FedscInputError(
                f"the update's layout {params['layout']} does not match this site's "
                f"{z.shape[1]}-dim embedding and the {len(params['n_train'])} sites."
            )
        if params.get("transport") == "crypten":
            _check_owned(site.site_name(str(params["batch_key"])), params, index)
        gamma, beta, _ = _own_rows(site, params, arrays, dims)
        init = (np.ones((n_sites, dims)), np.zeros((n_sites, dims)))
    else:
        if _ROWS in site.state:
            raise RefusedRequest(
                "check 'schedule': this run trains secure_rows (the site keeps its own row); "
                "an update that sends the whole row to the coordinator is refused."
            )
        init = (np.asarray(arrays["gamma"]), np.asarray(arrays["beta"]))
    method = ScBatchProxFederation(
        z,
        client_rows=[index],
        client_cells=[np.arange(len(z))],
        init=init,
        config=config,
        seed=seed,
        indices=[index],
    )
    method.client_names = [site.name or str(index)]
    if config.secure_rows:
        method.own_rows[0] = (gamma, beta)
        pending = str(params.get("context", "")).encode()
        site.state[_PENDING] = {"context": np.frombuffer(pending, np.uint8).copy()}
    state = {
        k: torch.from_numpy(np.array(v, copy=True))
        for k, v in arrays.items()
        if not k.startswith(OWNED_PREFIX)
    }
    gen = client_generators(seed, r, [index])[0]
    result = method.local_update(0, state, r, gen)
    keep_metrics(site, "scbatchprox", r, result.metrics, weight=result.weight)
    return result.state


@register_step("scbatchprox/apply", public=True)
def site_apply(site: Site, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Refine this site's cells with its own row; write ``<out_dir>/<site>.h5ad``."""
    index = int(params["index"])
    z = _z(site, params)
    config = config_of(params)
    if config.secure_rows:  # the site's own row, with the last round's mean added
        gamma, beta, received = _own_rows(site, params, arrays, z.shape[1])
        if received != config.rounds:
            raise RefusedRequest(
                f"check 'schedule': this site received {received} of {config.rounds} "
                "rounds' means of its row; it applies its row once training is complete."
            )
        refined = gamma * z + beta
    else:
        refined = arrays["gamma"][index] * z + arrays["beta"][index]
    out = site.adata.copy()
    key = f"X_{params.get('key_added', 'scbatchprox')}"
    out.obsm[key] = refined
    return write_output(
        site, str(params["batch_key"]), out, keys=[key], run_token=params.get("run_token")
    )


@dataclass
class OwnedRowsMethod(RemoteMethod):
    """:class:`RemoteMethod` for ``secure_rows``: each site's delivery rides on its next request.

    ``deliver`` (:class:`~fedsc.federation.OwnerRevealFedAvg`'s channel to a client) keeps
    what the aggregator hands site ``b`` (sealed slices over CrypTen, its rows in
    plaintext); the site's next update request, or its final apply step, carries it.
    """

    pending: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def deliver(self, client: int, owned: Mapping[str | None, np.ndarray]) -> None:
        """Keep site ``client``'s delivery until its next request."""
        self.pending[self.names[client]] = {
            (str(k) if str(k).startswith(OWNER_PREFIX) else f"{OWNED_PREFIX}{k}"): np.asarray(v)
            for k, v in owned.items()
        }

    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        """The reference to the site's update, carrying its pending delivery."""
        result = super().local_update(client, global_state, round_index, generator)
        ref = result.state
        assert isinstance(ref, RemoteValue)
        arrays = {**(ref.arrays or {}), **self.pending.pop(ref.site, {})}
        state = RemoteValue(ref.site, ref.step, ref.params, arrays, ref.torch, ref.scalars)
        return LocalResult(state, result.weight, result.metrics)  # type: ignore[arg-type]


def run_params(inputs: RunInputs, config: ScBatchProxConfig) -> dict[str, Any]:
    """The driver's ``params`` for a run with ``inputs`` and ``config`` (same seed and keys)."""
    check_deployable(config)
    return {
        "config": config.to_dict(),  # tuples travel as JSON lists; config_of restores them
        "seed": int(inputs.seed),
        "batch_key": inputs.batch_key,
        "labels_key": inputs.labels_key,
        "embedding_key": inputs.use_rep,
    }


class RemoteSites:
    """A deployment's sites as the one driver's clients (a :class:`ScBatchProxSites`).

    The sites train and refine; :meth:`start_training` gives the engine references to
    their updates (:class:`~fedsc.deploy.remote.RemoteMethod`, or
    :class:`OwnedRowsMethod` with ``secure_rows``), which the deployed aggregator asks
    the sites for through the transport.

    Parameters
    ----------
    hello
        Each site's public facts (step ``hello``), by site name.
    params
        The run's ``params`` (:func:`run`).
    apply
        Runs a public step at the sites (the final one, which writes each output).
    live
        ``live(sites) -> sites`` without those that dropped out (their output is skipped).
    """

    def __init__(
        self,
        hello: Mapping[str, Mapping[str, Any]],
        params: Mapping[str, Any],
        apply: Callable[[dict[str, Any]], dict[str, Any]],
        live: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        dims = {int(h.get("n_dims", -1)) for h in hello.values()}
        if len(dims) != 1 or -1 in dims:
            raise FedscInputError(
                f"the sites' embeddings differ in width ({ {s: h.get('n_dims') for s, h in hello.items()} }); "
                "project every site with the same agreed upstream model."
            )
        train, held = site_order(hello, params)
        if held:
            raise FedscInputError(
                "scBatchProx trains every site (no holdout: a held-out site would have no "
                "adapter row, as in simulation); drop holdout."
            )
        self.names = train
        self.n_obs = {n: int(hello[n]["n_obs"]) for n in train}
        self.dims = dims.pop()
        self.config = config_of(params)
        self.base: dict[str, Any] = {
            "config": self.config.to_dict(),  # tuples travel as JSON lists; config_of restores
            "seed": int(params["seed"]),
            "batch_key": params["batch_key"],
            "embedding_key": params["embedding_key"],
        }
        if params.get("dp"):  # client-level DP: every site noises its own update
            self.base["dp"] = dict(params["dp"])
        self.key_added = params.get("key_added", "scbatchprox")
        self._apply, self._live = apply, live
        self._method: RemoteMethod | None = None
        #: The sites that dropped out before the final step.
        self.dropped: list[str] = []

    def start_training(
        self, initial: tuple[np.ndarray, np.ndarray], n_train: Mapping[str, int]
    ) -> RemoteMethod:
        """The update requests: public weights; with ``secure_rows``, the update's layout."""
        self.base["n_train"] = dict(n_train)
        names = dict(enumerate(self.names))
        if self.config.secure_rows:  # the coordinator holds no rows: each site keeps its own
            self.base["layout"] = _layout(len(names), self.dims)
            self._method = OwnedRowsMethod("scbatchprox", names, self.base, {}, METRICS)
        else:
            gamma, beta = initial
            tables = {"gamma": torch.from_numpy(gamma), "beta": torch.from_numpy(beta)}
            self._method = RemoteMethod("scbatchprox", names, self.base, tables, METRICS)
        return self._method

    def receive(self, client: int, owned: dict[str | None, np.ndarray]) -> None:
        """``secure_rows``: keep site ``client``'s delivery for its next request."""
        assert isinstance(self._method, OwnedRowsMethod)
        self._method.deliver(client, owned)

    def apply(self, tables: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The final step at every site still there (its row, or its last delivery)."""
        alive = list(self.names) if self._live is None else self._live(list(self.names))
        self.dropped = [n for n in self.names if n not in alive]
        pending = getattr(self._method, "pending", {})
        return self._apply(
            {
                site: (
                    "scbatchprox/apply",
                    {
                        **self.base,
                        "index": self.names.index(site),
                        "key_added": self.key_added,
                        "site_name": site,
                    },
                    {**tables, **pending.get(site, {})},
                )
                for site in alive
            }
        )


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
    The coordinator's logic is scBatchProx's one driver,
    :func:`fedsc.methods.scbatchprox_driver.drive`, over :class:`RemoteSites`.
    """
    config = config_of(params)
    check_deployable(config, getattr(aggregator, "name", None))
    check_strategy(config, strategy)  # before any site is asked
    sites = RemoteSites(hello, params, apply, live)
    # the run's mechanisms (e.g. clip), applied by each site to its own value
    aggregator = with_site_mechanisms(aggregator, params, config.rounds, len(sites.names))
    done = drive(
        sites,
        aggregator,
        config,
        int(params["seed"]),
        strategy=strategy,
        show_progress=False,
        description="scBatchProx rounds (deployed)",
        on_round_end=on_round_end,
    )
    fed = done.federation
    dp = run_client_dp(params)
    record: dict[str, Any] = {}
    if dp is not None:  # client-level DP: ε per observer, read off the ledger
        record = {"epsilon_by_observer": epsilon_by_observer(aggregator.ledger, dp["delta"])}
    return {
        "history": fed.history,
        "clients": done.clients,
        **({"dp": record} if record else {}),
        "outputs": done.outputs,
        "dropped_sites": sites.dropped,
        "seconds_training": fed.seconds,
        "model_state": done.tables,
    }
