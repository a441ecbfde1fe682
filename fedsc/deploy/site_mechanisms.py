"""Mechanisms deployed: each site transforms its own value before it leaves the site.

In simulation, a mechanism (clipping, quantisation, client-level DP's ``gaussian``) is
applied by an :class:`smpc.mechanisms.MechanismAggregator`: for every client it transforms
a copy of that client's contribution as the client itself would before sharing it, and
then transforms the revealed aggregate. Deployed, the first half runs where it belongs,
at the site (:func:`noised_at_site`, called by :meth:`fedsc.deploy.site.Site.run` on every
value it sends), and the second at the coordinator (:class:`SiteMechanisms`, wrapping the
deployed aggregator of any transport; :func:`with_site_mechanisms` builds it from a run's
params). The run's mechanisms (``params["mechanisms"]``, a run config's ``mechanisms``)
are applied in order, then client-level DP's ``gaussian`` (``config.dp``), as the run layer
orders them in simulation. The coordinator's process never holds an un-noised update.

Client-level DP: what a site does not take from the coordinator (docs/deployment.md,
"Threat model"):

- the mechanism: σ and C follow from the agreed config (``config.dp``: σ, or σ
  calibrated to ``target_epsilon`` over the configured rounds, exactly as the run layer
  calibrates it), never from the request;
- the role of a value: the site's training update is always clipped and noised, its
  round metrics suppressed (or noised, as the agreed config says), whatever ledger tag
  the coordinator names; an update request without the mechanism's context is refused;
- the share of the noise: the number of clients the noise is split among must be the
  number of training sites the request lists (a coordinator that claimed more would
  shrink every site's share);
- the randomness: the site's OS CSPRNG, unless the agreed config says ``simulated``
  (then the noise is seeded from the run seed per operation and client, as the simulated
  aggregator seeds it: reproducible, for tests, never private).

The other mechanisms are the run's research settings (not privacy guarantees): the site
builds them from the operation's context, rebuilt for each operation (stateless, as the
built-in ones are), with the simulated aggregator's randomness rule (seeded from the run
seed unless DP runs with fresh noise). Steps outside DP's guarantee (FedscGen's
correction) pass the gaussian untouched, as in simulation.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from typing_extensions import override

from fedsc.deploy.remote import RemoteValue, is_remote
from fedsc.errors import FedscInputError
from smpc.aggregator import Aggregator
from smpc.flatten import flatten, flatten_all, flatten_like
from smpc.mechanisms import Mechanism, make_mechanism, make_mechanisms
from smpc.mechanisms.aggregator import seeded_generator
from smpc.mechanisms.base import ClientContext, RandomSource, ResultContext
from smpc.mechanisms.gaussian import METRICS_TAG, STATE_TAGS
from smpc.mechanisms.secure_random import SecureRandom

__all__ = [
    "SiteMechanisms",
    "agreed_mechanism",
    "client_dp_of",
    "epsilon_by_observer",
    "noised_at_site",
    "run_client_dp",
    "with_site_mechanisms",
]

#: What a site keeps between its update and that round's metrics: the agreed mechanism's
#: config and the number of training sites its update request listed.
_KEPT = "client_dp/agreed"


def client_dp_of(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The agreed client-level DP settings of a method config (``None`` without them)."""
    dp = None if config is None else config.get("dp")
    if not isinstance(dp, Mapping) or str(dp.get("level", "client")) != "client":
        return None
    return dict(dp)


def run_client_dp(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """A run's agreed client-level DP settings (``None`` without them).

    In its method config (FedscGen, whose model has a DP variant) or beside it
    (``params["dp"]``: a method without DP in its config, e.g. scBatchProx, whose
    clients' updates the gaussian mechanism protects as they are).
    """
    return client_dp_of(params.get("config")) or client_dp_of({"dp": params.get("dp")})


def agreed_mechanism(dp: Mapping[str, Any], rounds: int, n_clients: int) -> Mechanism:
    """The ``gaussian`` mechanism of the agreed settings, σ calibrated as the run layer does.

    ``n_clients``: the training clients, for the δ < 1/n check. Resolved once per agreed
    settings (the accountant's calibration is not redone for every operation a site
    serves); the mechanism is stateless, so one instance serves them all.
    """
    return _agreed_mechanism(json.dumps(dict(dp), sort_keys=True), int(rounds), int(n_clients))


@functools.lru_cache(maxsize=16)
def _agreed_mechanism(dp_json: str, rounds: int, n_clients: int) -> Mechanism:
    from fedsc.privacy.accounting import DPConfig

    dp = json.loads(dp_json)
    fields = {k: v for k, v in dp.items() if k not in ("level", "simulated", "clients")}
    resolved = DPConfig.from_dict({"level": "client", **fields})
    assert resolved is not None
    resolved.validate_for(int(n_clients))
    return make_mechanism(resolved.resolve(int(rounds)).mechanism_spec())


def epsilon_by_observer(ledger: Any, delta: float) -> dict[str, float | None]:
    """ε of each observer (:data:`fedsc.privacy.accounting.LEDGER_OBSERVERS`) from the ledger.

    ``None`` where it is not finite (∞: values revealed without noise) or does not apply
    (NaN: no computation parties), as run.json writes them.
    """
    from fedsc.privacy.accounting import LEDGER_OBSERVERS, client_level_from_ledger

    out: dict[str, float | None] = {}
    for observer in LEDGER_OBSERVERS:
        eps = float(client_level_from_ledger(ledger, delta, observer=observer).epsilon)
        out[observer] = eps if np.isfinite(eps) else None
    return out


def noised_at_site(
    state: dict[str, Any],
    step: str,
    params: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    value: Any,
) -> Any:
    """``value`` as this site shares it under the run's mechanisms (else unchanged).

    Parameters
    ----------
    state
        The site's run state (what it keeps between the update and its metrics).
    step, params, arrays
        The request (``params["mechanism"]``: the coordinator's context of the operation,
        with the run's other mechanisms as ``specs``).
    value
        What the step computed.

    Returns
    -------
    The transformed value (float64 arrays by key, so that no rounding separates it from
    the simulated client's), or ``value`` when no mechanism applies to it.
    """
    ctx = params.get("mechanism")
    dp_role = _dp_role(state, step, params, arrays)
    if dp_role is not None and not isinstance(ctx, Mapping):
        raise FedscInputError(
            f"check 'dp': the agreed config is client-level DP, but the coordinator asks for "
            f"{step!r} without the mechanism's context; this site shares no value it has not "
            "clipped and noised."
        )
    if not isinstance(ctx, Mapping):
        return value
    n = int(ctx["n_clients"])
    steps: list[tuple[Mechanism, str | None, Any]] = [
        (make_mechanism(spec), ctx.get("tag"), arrays if step.endswith("/update") else None)
        for spec in ctx.get("specs") or []
    ]
    kept = _kept(state)
    if dp_role is not None:
        if n != kept["n_sites"]:
            raise FedscInputError(
                f"check 'dp': the coordinator splits the noise among {n} clients, but the "
                f"update request lists {kept['n_sites']} training sites; each site's share of "
                "the noise is σ²C² over the number of sites that really take part."
            )
        steps.append((agreed_mechanism(kept["dp"], kept["rounds"], n), *dp_role))
    if not steps:
        return value
    flat, spec = flatten(value, name=step)
    seed = _mechanism_seed(_any_dp(params), params.get("seed"))
    if kept:  # a metrics request carries no config: the update's kept one
        seed = _mechanism_seed(kept["dp"], kept["seed"])
    generator: RandomSource = (  # one source per operation and client, as in simulation
        SecureRandom()
        if seed is None
        else seeded_generator(seed, int(ctx["operation"]), 1, int(ctx["client"]))
    )
    weight = ctx.get("weight")
    for mechanism, tag, reference in steps:
        context = ClientContext(
            op=str(ctx["op"]),
            client=int(ctx["client"]),
            n_clients=n,
            weight=None if weight is None else float(weight),
            reference=None if reference is None else flatten_like(dict(reference), spec),
            generator=generator,
            round=ctx.get("round"),
            tag=tag,
        )
        flat = np.asarray(mechanism.transform_contribution(flat, context), dtype=np.float64)
    keys = [leaf.key for leaf in spec.leaves]
    sizes = [int(np.prod(leaf.shape)) for leaf in spec.leaves]
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    shaped = {k: p.reshape(leaf.shape) for k, p, leaf in zip(keys, parts, spec.leaves, strict=True)}
    return shaped if spec.is_mapping else shaped[None]


def _dp_role(
    state: dict[str, Any], step: str, params: Mapping[str, Any], arrays: Mapping[str, Any]
) -> tuple[str, Any] | None:
    """(tag, reference) of the gaussian for this step under client-level DP, else None.

    The update is the state (its reference the global state the request carries), the
    round's metrics are the metrics; the site decides, not the request's tag. An update
    request keeps the agreed settings for that round's metrics.
    """
    if step.endswith("/update"):
        dp = run_client_dp(params)
        if dp is None:
            return None
        state[_KEPT] = {  # arrays: a site without a worker keeps its state in Flower's
            "dp": np.frombuffer(json.dumps(dp).encode(), dtype=np.uint8),
            "n_sites": np.asarray(len(params.get("n_train") or {})),
            "rounds": np.asarray(int((params.get("config") or {}).get("rounds", 1))),
            "seed": np.asarray(int(params["seed"])),
        }
        return STATE_TAGS[0], arrays
    if step == "metrics" and _KEPT in state:
        return METRICS_TAG, None
    return None


def _kept(state: Mapping[str, Any]) -> dict[str, Any]:
    """The client-level DP settings this run's update kept (empty without)."""
    if _KEPT not in state:
        return {}
    kept = {k: v.item() for k, v in state[_KEPT].items() if k != "dp"}
    kept["dp"] = json.loads(np.asarray(state[_KEPT]["dp"], dtype=np.uint8).tobytes().decode())
    return kept


def _any_dp(params: Mapping[str, Any]) -> Any:
    """The run's DP settings, any level (in the method config or beside it)."""
    return (params.get("config") or {}).get("dp") or params.get("dp")


def _mechanism_seed(dp: Any, seed: Any) -> int | None:
    """The run layer's rule (:func:`fedsc.privacy.accounting.mechanism_seed`) on a mapping."""
    from fedsc.privacy.accounting import mechanism_seed  # start-up time: dp-accounting

    simulated = bool(dp.get("simulated")) if isinstance(dp, Mapping) else None
    return mechanism_seed(simulated, seed)


def with_site_mechanisms(
    aggregator: Aggregator, params: Mapping[str, Any], rounds: int, n_training: int
) -> Aggregator:
    """``aggregator`` with the run's mechanisms applied at the sites (unchanged without any).

    ``params["mechanisms"]`` (specs, in order), then client-level DP's ``gaussian`` built
    from the run's agreed settings (:func:`run_client_dp`) over ``rounds`` rounds and
    ``n_training`` sites.
    """
    mechanisms = make_mechanisms(list(params.get("mechanisms") or []))
    specs = [m.describe() for m in mechanisms]
    dp = run_client_dp(params)
    if dp is not None:
        mechanisms.append(agreed_mechanism(dp, rounds, n_training))
    if not mechanisms:
        return aggregator
    seed = _mechanism_seed(_any_dp(params), params.get("seed"))
    return SiteMechanisms(aggregator, mechanisms, seed=seed, specs=specs)


class SiteMechanisms(Aggregator):
    """A deployed aggregator whose mechanisms run at the sites, then on the aggregate.

    Each operation a mechanism applies to sends every site, with its request, the
    operation's public context (its index, the site's client index and weight, the
    number of clients, the ledger scope); the site transforms its own value
    (:func:`noised_at_site`) and the inner aggregator aggregates what the sites shared.
    The result is transformed here, as :class:`smpc.mechanisms.MechanismAggregator`
    does, and cast to the structure of ``reference``. The inner aggregator's ledger
    entries list the mechanisms (``site_mechanisms``).

    Parameters
    ----------
    inner
        The transport's deployed aggregator.
    mechanisms
        The mechanisms the sites apply (built from the agreed config).
    seed
        ``None``: the coordinator's draws from the OS CSPRNG; an integer seeds them as
        the simulated aggregator does.
    specs
        The descriptions of the mechanisms the sites build from the context (the run's
        own; client-level DP's gaussian the sites build from their agreed config).
    """

    def __init__(
        self,
        inner: Aggregator,
        mechanisms: Sequence[Mechanism],
        *,
        seed: int | None = None,
        specs: Sequence[dict[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.specs = [dict(s) for s in specs]
        self.inner = inner
        self.mechanisms: tuple[Mechanism, ...] = tuple(mechanisms)
        self.ledger = inner.ledger
        self.name = inner.name
        self.seed = seed
        self._operations = 0
        inner.site_mechanisms = self.mechanisms  # type: ignore[attr-defined]

    @property
    def private(self) -> bool:
        """As the transport."""
        return self.inner.private

    @property
    def privacy_note(self) -> str:
        """The transport's note and the mechanisms the sites apply."""
        names = ", ".join(repr(m) for m in self.mechanisms)
        return f"{self.inner.privacy_note}; mechanisms at the sites: {names}"

    @override
    def close(self) -> None:
        self.inner.close()
        super().close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @override
    def weighted_mean(
        self, contributions: Sequence[Any], weights: Sequence[float], *, reference: Any = None
    ) -> Any:
        return self._apply(
            "weighted_mean",
            contributions,
            weights,
            reference,
            lambda sent: self.inner.weighted_mean(sent, weights, reference=reference),
        )

    @override
    def sum(self, contributions: Sequence[Any], *, reference: Any = None) -> Any:
        return self._apply(
            "sum",
            contributions,
            None,
            reference,
            lambda sent: self.inner.sum(sent, reference=reference),
        )

    @override
    def argmax(self, columns: Sequence[Any]) -> np.ndarray:
        self._refuse_if_active("argmax")
        return self.inner.argmax(columns)

    @override
    def gather(self, contributions: Sequence[Any], *, reference: Any = None) -> list[Any]:
        self._refuse_if_active("gather")
        return self.inner.gather(contributions, reference=reference)

    @override
    def weighted_mean_to_owners(
        self,
        contributions: Sequence[Any],
        weights: Sequence[float],
        owners: Sequence[Mapping[str | None, Sequence[int]]],
        deliver: Callable[[int, dict[str | None, np.ndarray]], None],
    ) -> float:
        self._refuse_if_active("weighted_mean_to_owners", also="weighted_mean")
        return self.inner.weighted_mean_to_owners(contributions, weights, owners, deliver)

    def _refuse_if_active(self, op: str, also: str | None = None) -> None:
        active = [m for m in self.mechanisms if m.applies_to(op) or (also and m.applies_to(also))]
        if active:
            raise ValueError(
                f"mechanisms {active} do not cover {op} deployed (a gather would reveal "
                "every site's value; an owner-revealed mean is never whole at the coordinator "
                "to be rescaled); use weighted_mean or sum."
            )

    def _apply(
        self,
        op: str,
        contributions: Sequence[Any],
        weights: Sequence[float] | None,
        reference: Any,
        run: Callable[[list[Any]], Any],
    ) -> Any:
        active = [m for m in self.mechanisms if m.applies_to(op)]
        if not active or not is_remote(contributions):
            if active:
                raise TypeError("a deployed mechanism aggregates site references only.")
            return run(list(contributions))
        operation = self._operations
        self._operations += 1
        n = len(contributions)
        scope: dict[str, Any] = {"op": op, "operation": operation, "n_clients": n}
        scope["specs"] = self.specs
        scope.update(round=self.ledger.round, tag=self.ledger.tag)
        sent: list[Any] = []
        for i, v in enumerate(contributions):
            assert isinstance(v, RemoteValue)
            weight = None if weights is None else float(weights[i])
            context = {**scope, "client": i, "weight": weight}
            sent.append(replace(v, params={**v.params, "mechanism": context}))
        result = run(sent)
        flat, spec = flatten(result, name="aggregate")
        out_spec = spec
        ref = None
        if reference is not None:
            _, out_spec = flatten_all([reference])  # the caller's structure and dtypes
            ref = flatten_like(reference, spec)
        rctx = ResultContext(
            op=op,
            n_clients=n,
            total_weight=None if weights is None else float(np.sum(weights)),
            reference=ref,
            generator=self._generator(operation),
            round=self.ledger.round,
            tag=self.ledger.tag,
        )
        for m in reversed(active):
            flat = np.asarray(m.transform_result(flat, rctx), dtype=np.float64)
        return out_spec.unflatten(flat)

    def _weighted_sum(self, matrix: Any, weights: Any) -> Any:
        raise NotImplementedError("deployed mechanisms aggregate site references")

    def _sum(self, matrix: Any) -> Any:
        raise NotImplementedError("deployed mechanisms aggregate site references")

    def _argmax(self, matrix: Any) -> Any:
        raise NotImplementedError("deployed mechanisms aggregate site references")

    def _generator(self, operation: int) -> RandomSource:
        return SecureRandom() if self.seed is None else seeded_generator(self.seed, operation, 0)
